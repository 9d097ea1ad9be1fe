"""Property-based tests (hypothesis): cutouts at image edges, the stretch, HEALPix indexing.

Each property runs inside ``recorded``, so its row in the results table says
whether it held.  Each also has a twin that breaks the code it checks on purpose
(monkeypatch) and asserts the property then fails and is recorded as not held.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import astropy.units as u
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from astropy.coordinates import angular_separation
from astropy_healpix import lonlat_to_healpix
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from _reliability import RESULTS, recorded
from pipeline import catalogue
from pipeline.catalogue.layout import healpix_order_doc, part_path
from pipeline.catalogue.part_files import write_part
from pipeline.imaging.cutouts import cut_stamps, round_half_up, stamp_touches_edge
from pipeline.imaging.preprocess import apply_stretch

FAST = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
#: For the checks that a property catches broken code: no example database (a failure
#: found there must not be replayed elsewhere), no shrinking (only "it fails" matters).
BROKEN = settings(FAST, database=None, phases=[Phase.explicit, Phase.generate])

CUTOUTS = ("hypothesis: cutouts at image edges (60 examples)", "property",
           "inside = image, outside = NaN, flag iff touching the edge")
STRETCH = ("hypothesis: stretch asinh/linear (60 examples)", "property",
           "finite, monotone, inverse recovers the input")
HEALPIX = ("HEALPix column of a classify run", "property", "healpix = astropy-healpix nested")
CONE = ("hypothesis: cone over the whole sky (60 cones)", "property",
        "cone = brute force, poles and RA wrap included")


def _must_fail(check: Callable[[], None]) -> str:
    """Run ``check`` under ``recorded``; assert it fails and records a failed row; drop the row."""
    n = len(RESULTS)
    with pytest.raises(Exception):  # AssertionError, or hypothesis' group of them
        with recorded("broken on purpose", "property", "must not be recorded as held"):
            check()
    assert len(RESULTS) == n + 1
    row = RESULTS.pop()  # not a case of the suite: keep it out of the results table
    assert row["held"] is False and row["outcome"].startswith("FAILED: "), row
    return row["outcome"]


@st.composite
def _image_and_positions(draw):
    ny, nx = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    size = draw(st.integers(1, 11))
    n = draw(st.integers(1, 6))
    xs = draw(st.lists(st.floats(-size - 2.0, nx + size + 2.0, allow_nan=False), min_size=n,
                       max_size=n))
    ys = draw(st.lists(st.floats(-size - 2.0, ny + size + 2.0, allow_nan=False), min_size=n,
                       max_size=n))
    seed = draw(st.integers(0, 2**16))
    image = np.random.default_rng(seed).normal(size=(ny, nx)).astype(np.float32)
    return image, np.array(xs), np.array(ys), size


def _check_cutouts(case) -> None:
    """Stamp pixels equal the image inside, NaN outside; the edge flag is set iff a pixel is outside."""
    image, x, y, size = case
    ny, nx = image.shape
    stamps, edge = cut_stamps(image, x, y, size)
    assert stamps.shape == (len(x), size, size) and stamps.dtype == np.float32
    np.testing.assert_array_equal(edge, stamp_touches_edge(x, y, size, (ny, nx)))
    half = size // 2
    for k in range(len(x)):
        rows = round_half_up(y[k]) - half + np.arange(size)  # image row of stamp row j
        cols = round_half_up(x[k]) - half + np.arange(size)  # image column of stamp column i
        inside = ((rows >= 0) & (rows < ny))[:, None] & ((cols >= 0) & (cols < nx))[None, :]
        assert edge[k] == (not inside.all())
        ref = np.full((size, size), np.nan, np.float32)
        jj, ii = np.nonzero(inside)
        ref[jj, ii] = image[rows[jj], cols[ii]]
        np.testing.assert_array_equal(stamps[k], ref)


def _cutout_property(config: settings) -> Callable[[], None]:
    return config(given(_image_and_positions())(_check_cutouts))


def test_cutouts_at_edges() -> None:
    with recorded(*CUTOUTS):
        _cutout_property(FAST)()


def test_cutout_property_catches_zero_filled_edges(monkeypatch: pytest.MonkeyPatch) -> None:
    real = cut_stamps

    def zero_filled(image, x, y, size):
        stamps, edge = real(image, x, y, size)
        return np.nan_to_num(stamps, nan=0.0), edge

    monkeypatch.setitem(globals(), "cut_stamps", zero_filled)
    _must_fail(_cutout_property(BROKEN))


_finite = st.floats(-3.0000000054977558e+38, 3.0000000054977558e+38, allow_nan=False, width=32)


def _check_stretch(values, name, softening, scale) -> None:
    z = torch.tensor(sorted(values), dtype=torch.float32)
    stretch = {"name": name, "softening": softening, "scale": scale}
    out = apply_stretch(z, stretch)
    assert torch.isfinite(out).all()
    assert (out[1:] >= out[:-1]).all(), "not monotone"
    # invertible where it claims: asinh below its 1e18 clamp, linear below float32 max
    u64 = z.double() / softening
    ok = u64.abs() < (1e18 if name == "asinh" else 3e38 / max(scale, 1.0))
    back = (torch.sinh(out.double() / scale) if name == "asinh" else out.double() / scale) * softening
    ok &= back.abs() < 1e30
    torch.testing.assert_close(back[ok], z.double()[ok], rtol=2e-5, atol=1e-5)


def _stretch_property(config: settings) -> Callable[[], None]:
    # the explicit example overflows float32 before the clamp: checked on every run, so a
    # missing clamp is caught whatever the random examples are
    return config(example([3.0e38, -3.0e38, 0.0], "linear", 0.1, 10.0)(
        given(st.lists(_finite, min_size=2, max_size=64),
              st.sampled_from(["asinh", "linear"]), st.floats(0.1, 10.0),
              st.floats(0.1, 10.0))(_check_stretch)))


def test_stretch_monotone_finite_invertible() -> None:
    with recorded(*STRETCH):
        _stretch_property(FAST)()


def test_stretch_property_catches_an_unclamped_stretch(monkeypatch: pytest.MonkeyPatch) -> None:
    real = apply_stretch

    def unclamped(z, stretch):  # linear without the +-inf -> +-float32 max clamp
        if stretch["name"] == "linear":
            return z / stretch["softening"] * stretch["scale"]
        return real(z, stretch)

    monkeypatch.setitem(globals(), "apply_stretch", unclamped)
    _must_fail(_stretch_property(BROKEN))


def _check_healpix_column(df: pd.DataFrame) -> None:
    meta_order = healpix_order_doc(10)["nside"]
    ok = np.isfinite(df["ra"]) & np.isfinite(df["dec"])
    assert ok.any()
    want = lonlat_to_healpix(df.loc[ok, "ra"].to_numpy() * u.deg,
                             df.loc[ok, "dec"].to_numpy() * u.deg, meta_order, order="nested")
    np.testing.assert_array_equal(df.loc[ok, "healpix"].to_numpy(), want)
    assert (df.loc[~ok, "healpix"] == -1).all()


def test_catalogue_healpix_equals_astropy_healpix(clean) -> None:
    with recorded(*HEALPIX):
        _check_healpix_column(clean)


def test_healpix_check_catches_ring_ordering(clean) -> None:
    bad = clean.copy()
    ok = np.isfinite(bad["ra"]) & np.isfinite(bad["dec"])
    bad.loc[ok, "healpix"] = lonlat_to_healpix(bad.loc[ok, "ra"].to_numpy() * u.deg,
                                               bad.loc[ok, "dec"].to_numpy() * u.deg,
                                               healpix_order_doc(10)["nside"], order="ring")
    _must_fail(lambda: _check_healpix_column(bad))


@pytest.fixture(scope="module")
def sky_catalogue(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """Points over the whole sky, dense near the poles and RA = 0/360, written like classify does."""
    rng = np.random.default_rng(3)
    n = 4000
    ra = np.concatenate([rng.uniform(0, 360, n), rng.uniform(359.5, 360, 200) % 360,
                         rng.uniform(0, 0.5, 200), rng.uniform(0, 360, 200),
                         rng.uniform(0, 360, 200)])
    dec = np.concatenate([np.degrees(np.arcsin(rng.uniform(-1, 1, n))), rng.uniform(-5, 5, 400),
                          rng.uniform(89, 90, 200), rng.uniform(-90, -89, 200)])
    order = 6
    hp = lonlat_to_healpix(ra * u.deg, dec * u.deg, 2**order, order="nested").astype(np.int64)
    out = tmp_path_factory.mktemp("sky") / "catalogue"
    out.mkdir()
    df = pd.DataFrame({"source_id": np.arange(len(ra), dtype=np.int64), "ra": ra, "dec": dec,
                       "healpix": hp})
    meta = {"classes": ["a"], "healpix_order": healpix_order_doc(order)}
    for i, part in enumerate(np.array_split(np.arange(len(df)), 3)):
        write_part(pa.Table.from_pandas(df.iloc[part], preserve_index=False),
                   part_path(out, i), metadata=meta)
    return out, df


def _check_cone(sky_catalogue, ra, dec, radius) -> None:
    path, df = sky_catalogue
    got = catalogue.cone(path, ra, dec, radius)
    # The brute force: every row's great-circle distance, by astropy (not the code under test).
    sep = np.degrees(angular_separation(np.radians(ra), np.radians(dec),
                                        np.radians(df["ra"].to_numpy()),
                                        np.radians(df["dec"].to_numpy())))
    want = np.sort(df["source_id"].to_numpy()[sep <= radius])
    np.testing.assert_array_equal(got["source_id"].to_numpy(), want)


def _cone_property(config: settings) -> Callable[..., None]:
    return config(given(st.floats(0, 360, exclude_max=True), st.floats(-90, 90),
                        st.floats(1e-3, 30.0))(_check_cone))


def test_cone_never_misses_a_brute_force_match(sky_catalogue) -> None:
    with recorded(*CONE):
        _cone_property(FAST)(sky_catalogue)


def test_cone_property_catches_a_wrong_healpix_order(sky_catalogue,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.catalogue import api

    real = api._healpix_order
    monkeypatch.setattr(api, "_healpix_order", lambda path: real(path) + 1)
    _must_fail(lambda: _cone_property(BROKEN)(sky_catalogue))
