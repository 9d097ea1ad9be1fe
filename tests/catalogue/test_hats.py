"""HATS export: `skysieve catalogue to-hats` writes a catalogue LSDB opens, cone searches agree."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from pipeline import catalogue
from pipeline.catalogue import api as catalogue_api
from test_catalogue_readers import CENTRE, _canonical, write_fake_catalogue

lsdb = pytest.importorskip("lsdb", reason="lsdb is not installed (pip install 'skysieve[hats]')")
pytest.importorskip("hats_import", reason="hats-import is not installed (pip install 'skysieve[hats]')")
pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """A fake catalogue (3 rows without position) and its HATS export via the CLI."""
    from pipeline.cli.catalogue import catalogue_group

    root = tmp_path_factory.mktemp("hats")
    cat = write_fake_catalogue(root / "catalogue", parts=3, rows=300, no_position=3)
    out = root / "skysieve_hats"
    result = CliRunner().invoke(catalogue_group, ["to-hats", str(cat), str(out),
                                                  "--pixel-threshold", "120", "--highest-order", "8"])
    assert result.exit_code == 0, result.output
    too_coarse = CliRunner().invoke(catalogue_group, ["to-hats", str(cat), str(root / "coarse"),
                                                      "--pixel-threshold", "120",
                                                      "--highest-order", "5"])
    assert too_coarse.exit_code == 1
    assert "raise --highest-order (finer pixels) or --pixel-threshold" in too_coarse.output
    assert "897 in" in result.output and "3 rows without a sky position" in result.output
    return cat, out


def test_layout_and_properties(exported: tuple[Path, Path]) -> None:
    import hats
    import pyarrow.parquet as pq

    cat, out = exported
    props = dict(line.split("=", 1) for line in (out / "hats.properties").read_text().splitlines()
                 if "=" in line and not line.startswith("#"))
    assert props["dataproduct_type"] == "object"
    assert props["hats_col_ra"] == "ra" and props["hats_col_dec"] == "dec"
    assert int(props["hats_nrows"]) == 897
    info = pd.read_csv(out / "partition_info.csv")
    assert len(info) > 1  # 897 rows, at most 120 a partition
    pixels = hats.read_hats(out).get_healpix_pixels()
    assert len(pixels) == len(info)
    files = sorted((out / "dataset").glob("Norder=*/Dir=*/Npix=*.parquet"))
    assert len(files) == len(info)
    assert sum(pq.read_metadata(f).num_rows for f in files) == 897
    assert max(pq.read_metadata(f).num_rows for f in files) <= 120
    # the skysieve provenance travels into every partition
    meta = json.loads(pq.read_schema(files[0]).metadata[catalogue.METADATA_KEY])
    assert meta == catalogue.read_metadata(cat)


def test_lsdb_reads_the_same_rows(exported: tuple[Path, Path]) -> None:
    cat, out = exported
    by_lsdb = lsdb.open_catalog(out).compute().reset_index(drop=True)
    ref = catalogue.read_catalogue(cat).dropna(subset=["ra", "dec"])
    got = _canonical(by_lsdb[list(ref.columns)])
    pd.testing.assert_frame_equal(got, _canonical(ref), check_dtype=False)


@pytest.mark.parametrize("radius_arcsec", [30.0, 300.0, 1800.0])
def test_lsdb_cone_search_matches_brute_force(exported: tuple[Path, Path],
                                              radius_arcsec: float) -> None:
    cat, out = exported
    full = catalogue.read_catalogue(cat)
    hc = lsdb.open_catalog(out)
    rng = np.random.default_rng(int(radius_arcsec))
    centres = [(CENTRE[0] + rng.uniform(-0.4, 0.4), CENTRE[1] + rng.uniform(-0.4, 0.4))
               for _ in range(3)] + [tuple(full[["ra", "dec"]].iloc[100])]
    for ra, dec in centres:
        got = np.sort(hc.cone_search(ra, dec, radius_arcsec).compute()["source_id"].to_numpy())
        sep = catalogue_api._separation_deg(ra, dec, full["ra"].to_numpy(), full["dec"].to_numpy())
        want = np.sort(full["source_id"].to_numpy()[sep * 3600 <= radius_arcsec])
        np.testing.assert_array_equal(got, want)
        # and skysieve's own HEALPix-pruned cone agrees
        ours = catalogue.cone(cat, ra, dec, radius_arcsec / 3600)["source_id"].to_numpy()
        np.testing.assert_array_equal(ours, want)
    assert len(want) >= 1  # the last centre is a source


def test_refuses_existing_and_bad_names(exported: tuple[Path, Path], tmp_path: Path) -> None:
    from pipeline.cli.catalogue import catalogue_group
    from pipeline.catalogue.hats import HatsExportError, to_hats

    cat, out = exported
    result = CliRunner().invoke(catalogue_group, ["to-hats", str(cat), str(out)])
    assert result.exit_code == 1
    assert "already exists; pass overwrite=True (--overwrite)" in result.output
    with pytest.raises(HatsExportError, match="folder name 'bad name'"):
        to_hats(cat, tmp_path / "bad name")
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a HATS catalogue; refusing to delete"):
        to_hats(cat, tmp_path / "precious", overwrite=True)
    assert (tmp_path / "precious" / "notes.txt").exists()
    with pytest.raises(FileNotFoundError, match="no catalogue parts"):
        to_hats(tmp_path, tmp_path / "x")


def test_errors_pass_through_under_an_existing_client(tmp_path) -> None:
    """With a default client already running, a too-coarse export still says what to raise."""
    import distributed

    from pipeline.catalogue.hats import HatsExportError, to_hats

    cat = write_fake_catalogue(tmp_path / "catalogue", parts=3, rows=300, no_position=3)
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=1,
                            dashboard_address=":0"):
        with pytest.raises(HatsExportError, match="raise --highest-order"):
            to_hats(cat, tmp_path / "coarse", pixel_threshold=120, highest_order=5)
