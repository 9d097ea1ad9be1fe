"""``skysieve catalogue to-fits``: FITS and VOTable exports read back by astropy equal the catalogue."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline import catalogue
from pipeline.catalogue.export import SUFFIXES, to_table_file
from pipeline.errors import CatalogueError
from test_catalogue_readers import CLASSES, write_fake_catalogue


@pytest.fixture(scope="module")
def cat(tmp_path_factory) -> Path:
    return write_fake_catalogue(tmp_path_factory.mktemp("export") / "catalogue", parts=2,
                                rows=60, seed=3)


def _values(column) -> np.ndarray:
    """An astropy column as plain values: masked floats -> NaN, masked strings -> "", bytes -> str."""
    data = column.filled(np.nan if column.dtype.kind == "f" else "") \
        if hasattr(column, "mask") and np.any(column.mask) else np.asarray(column)
    data = np.asarray(data)
    if data.dtype.kind == "S":
        data = np.char.decode(data, "ascii")
    return data


def _assert_same_rows(table, expected) -> None:
    assert table.colnames == list(expected.columns)
    assert len(table) == len(expected)
    for name in expected.columns:
        want = expected[name].to_numpy()
        got = _values(table[name])
        if want.dtype.kind in "fiu":  # same kind and width (FITS is big-endian)
            assert (got.dtype.kind, got.dtype.itemsize) == (want.dtype.kind, want.dtype.itemsize), name
            np.testing.assert_array_equal(got, want, err_msg=name)
        else:
            assert got.astype(str).tolist() == [str(v) for v in want], name


def test_fits_round_trip(cat: Path, tmp_path: Path) -> None:
    from astropy.io import fits
    from astropy.table import Table

    out = tmp_path / "night" / "catalogue.fits"  # the folder is created
    summary = to_table_file(cat, out)
    expected = catalogue.read_catalogue(cat)
    assert summary.rows == len(expected) == 120 and summary.format == "fits"
    assert summary.columns == len(expected.columns) and str(out) in summary.describe()
    table = Table.read(out)
    _assert_same_rows(table, expected)
    assert np.isnan(_values(table["ra"])[:3]).all()  # rows without a position stay NaN
    assert str(table["ra"].unit) == "deg" and str(table["dec"].unit) == "deg"
    assert str(table["x"].unit) == "pix" and str(table["psf_fwhm"].unit) == "pix"
    assert table["p_star"].description == "calibrated probability of class 'star'"
    meta = catalogue.read_metadata(cat)
    assert table.meta["CLASSES"] == ",".join(CLASSES) and table.meta["NCLASSES"] == 3
    assert table.meta["MODEL"] == "fake" and table.meta["MODELSHA"] == "f" * 64
    assert table.meta["HPXORDER"] == 10 and table.meta["HPXNSIDE"] == 1024
    assert json.loads(table.meta["SKYSIEVE"]) == meta  # the whole provenance, losslessly
    header = fits.getheader(out, "CATALOGUE")
    ra = table.colnames.index("ra") + 1
    assert header[f"TUCD{ra}"] == "pos.eq.ra;meta.main"  # what TOPCAT uses to find positions
    assert header[f"TUCD{ra + 1}"] == "pos.eq.dec;meta.main"
    assert header[f"TCOMM{ra}"].startswith("ICRS right ascension")
    assert not [p.name for p in out.parent.iterdir() if p.name != out.name]  # no temporaries


def test_votable_round_trip(cat: Path, tmp_path: Path) -> None:
    from astropy.io.votable import parse
    from astropy.table import Table

    out = tmp_path / "catalogue.vot"
    summary = to_table_file(cat, out)
    assert summary.format == "votable" and "VOTable" in summary.describe()
    expected = catalogue.read_catalogue(cat)
    table = Table.read(out, format="votable")
    _assert_same_rows(table, expected)
    assert str(table["ra"].unit) == "deg" and table["ra"].meta["ucd"] == "pos.eq.ra;meta.main"
    assert table["dec"].meta["ucd"] == "pos.eq.dec;meta.main"
    description = " ".join(table.meta["description"].split())
    assert "model fake" in description and ", ".join(CLASSES) in description
    params = {p.name: p.value for p in parse(str(out)).get_first_table().params}
    assert params["model_sha256"] == "f" * 64 and params["classes"] == ",".join(CLASSES)
    assert params["healpix_order"] == 10
    assert json.loads(params["skysieve"]) == catalogue.read_metadata(cat)
    assert "where" not in params


def test_where_through_the_cli(cat: Path, tmp_path: Path) -> None:
    from astropy.table import Table

    from pipeline.cli import cli

    out = tmp_path / "stars.xml"
    where = "label = 'star' AND confidence > 0.5"
    args = ["catalogue", "to-fits", str(cat), str(out), "--where", where]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    want = catalogue.query(cat, f"SELECT * FROM catalogue WHERE {where}")
    assert 0 < len(want) < 120
    table = Table.read(out, format="votable")
    _assert_same_rows(table, want)
    assert set(table["label"]) == {"star"} and (np.asarray(table["confidence"]) > 0.5).all()
    assert f"rows           {len(want):,} x" in result.output
    again = CliRunner().invoke(cli, args)  # the file exists: refused, in one line
    assert again.exit_code == 1 and "already exists" in again.output
    assert again.output.strip().count("\n") == 0 and again.output.startswith("skysieve: error:")
    everything = CliRunner().invoke(cli, ["catalogue", "to-fits", str(cat), str(out),
                                          "--overwrite"])
    assert everything.exit_code == 0, everything.output
    assert len(Table.read(out, format="votable")) == 120


def test_bad_suffix_names_the_file_and_the_valid_suffixes(cat: Path, tmp_path: Path) -> None:
    from pipeline.cli import cli

    out = tmp_path / "catalogue.csv"
    with pytest.raises(CatalogueError) as info:
        to_table_file(cat, out)
    message = str(info.value)
    assert str(out) in message and "'.csv'" in message
    assert all(suffix in message for suffix in SUFFIXES)
    assert isinstance(info.value, ValueError)  # callers catching ValueError still do
    with pytest.raises(CatalogueError, match=re.escape("(none)")):
        to_table_file(cat, tmp_path / "catalogue")
    result = CliRunner().invoke(cli, ["catalogue", "to-fits", str(cat), str(out)])
    assert result.exit_code == 1 and result.output.startswith("skysieve: error: ")
    assert str(out) in result.output and ".fits" in result.output and ".vot" in result.output
    assert not out.exists()


def test_bad_where_is_one_clear_error(cat: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.fits"
    with pytest.raises(CatalogueError, match=r"--where 'nope > 1'.*catalogue's columns"):
        to_table_file(cat, out, where="nope > 1")
    assert not out.exists() and not list(tmp_path.iterdir())
    with pytest.raises(FileNotFoundError, match="no catalogue parts"):
        to_table_file(tmp_path, out)
