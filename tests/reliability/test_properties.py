"""Property-based tests (hypothesis): cutouts at image edges, the stretch, HEALPix indexing."""

from __future__ import annotations

from pathlib import Path

import astropy.units as u
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from astropy_healpix import lonlat_to_healpix
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _reliability import record
from pipeline import catalogue
from pipeline.classify.graph import healpix_order_doc
from pipeline.imaging.cutouts import cut_stamps, round_half_up, stamp_touches_edge
from pipeline.imaging.preprocess import apply_stretch

FAST = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


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


@FAST
@given(_image_and_positions())
def test_cutouts_at_edges(case) -> None:
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


def test_record_cutout_property() -> None:
    record("hypothesis: cutouts at image edges (60 examples)", "property",
           "inside = image, outside = NaN, flag iff touching the edge", lost=None, doubled=None)


_finite = st.floats(-3.0000000054977558e+38, 3.0000000054977558e+38, allow_nan=False, width=32)


@FAST
@given(st.lists(_finite, min_size=2, max_size=64), st.sampled_from(["asinh", "linear"]),
       st.floats(0.1, 10.0), st.floats(0.1, 10.0))
def test_stretch_monotone_finite_invertible(values, name, softening, scale) -> None:
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


def test_record_stretch_property() -> None:
    record("hypothesis: stretch asinh/linear (60 examples)", "property",
           "finite, monotone, inverse recovers the input", lost=None, doubled=None)


def test_catalogue_healpix_equals_astropy_healpix(clean) -> None:
    meta_order = healpix_order_doc(10)["nside"]
    ok = np.isfinite(clean["ra"]) & np.isfinite(clean["dec"])
    want = lonlat_to_healpix(clean.loc[ok, "ra"].to_numpy() * u.deg,
                             clean.loc[ok, "dec"].to_numpy() * u.deg, meta_order, order="nested")
    np.testing.assert_array_equal(clean.loc[ok, "healpix"].to_numpy(), want)
    assert (clean.loc[~ok, "healpix"] == -1).all()


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
        catalogue.write_part(pa.Table.from_pandas(df.iloc[part], preserve_index=False),
                             catalogue.part_path(out, i), metadata=meta)
    return out, df


@FAST
@given(st.floats(0, 360, exclude_max=True), st.floats(-90, 90), st.floats(1e-3, 30.0))
def test_cone_never_misses_a_brute_force_match(sky_catalogue, ra, dec, radius) -> None:
    path, df = sky_catalogue
    got = catalogue.cone(path, ra, dec, radius)
    sep = catalogue._separation_deg(ra, dec, df["ra"].to_numpy(), df["dec"].to_numpy())
    want = np.sort(df["source_id"].to_numpy()[sep <= radius])
    np.testing.assert_array_equal(got["source_id"].to_numpy(), want)


def test_record_healpix_property() -> None:
    record("hypothesis: HEALPix column and cone over the whole sky (60 cones)", "property",
           "healpix = astropy-healpix nested; cone = brute force, poles and RA wrap included",
           lost=None, doubled=None)
