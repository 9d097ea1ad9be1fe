"""A corpus of bad inputs, generated here: FITS, source tables, stores, checkpoints, profiles, job scripts.

Each bad input must give a one-line error naming the file and the reason; given
together with a good exposure in one ingest, the rest of the run goes on and the
rejects table lists the bad one.  Nothing in the corpus is ever executed.
"""

from __future__ import annotations

import gzip
import json
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from astropy.io import fits
from click.testing import CliRunner

from _reliability import record
from pipeline.classify.graph import classify
from pipeline.errors import SourceTableError, StoreError
from pipeline.ingest.exposures import ingest
from pipeline.store import open_store, read_rejects

pytestmark = pytest.mark.filterwarnings("ignore")

# name -> (what it is, regex of the reason; None: a valid exposure that must be ingested)
FITS_CASES = {
    "empty": ("empty file (0 bytes)", r"empty file"),
    "truncated": ("truncated in the data", r"truncated or corrupt"),
    "notfits": ("text, not FITS", r"not a readable FITS"),
    "table_only": ("no image HDU (a binary table)", r"no image data"),
    "one_d": ("a 1-D array", r"1-D array"),
    "cube": ("a 3-D array", r"3-D array"),
    "all_nan": ("every pixel NaN", r"every pixel is NaN"),
    "all_zero": ("every pixel 0", r"constant image"),
    "huge_header": ("header claims 100000x100000 px, one block of data", r"truncated or corrupt"),
    "int_bscale": ("int16 with BZERO/BSCALE", None),
    "no_wcs": ("no WCS", None),
    "broken_wcs": ("singular CD matrix (broken WCS)", None),
    "tile_compressed": ("tile-compressed (.fits.fz)", None),
    "gzipped": ("gzip (.fits.gz)", None),
}


def _make_fits_corpus(root: Path, good: Path) -> dict[str, Path]:
    """Write one file per FITS case, derived from the good exposure ``good``."""
    root.mkdir(parents=True, exist_ok=True)
    with fits.open(good) as hdul:
        data = hdul[0].data.astype(np.float32)
        header = hdul[0].header.copy()
    paths: dict[str, Path] = {}

    def put(name: str, suffix: str = ".fits") -> Path:
        paths[name] = root / f"{name}{suffix}"
        return paths[name]

    put("empty").write_bytes(b"")
    full = good.read_bytes()
    put("truncated").write_bytes(full[: len(full) // 3])
    put("notfits").write_text("SIMPLE? no: an observing log\n" * 200)
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
        [fits.Column("a", "E", array=np.ones(4))])]).writeto(put("table_only"))
    fits.PrimaryHDU(data[0]).writeto(put("one_d"))
    fits.PrimaryHDU(np.stack([data, data])).writeto(put("cube"))
    fits.PrimaryHDU(np.full_like(data, np.nan), header=header).writeto(put("all_nan"))
    fits.PrimaryHDU(np.zeros_like(data), header=header).writeto(put("all_zero"))
    h = fits.Header()
    h["SIMPLE"], h["BITPIX"], h["NAXIS"], h["NAXIS1"], h["NAXIS2"] = True, -32, 2, 100000, 100000
    put("huge_header").write_bytes(h.tostring().encode() + bytes(2880))
    scaled = fits.PrimaryHDU(data.copy(), header=header)
    scaled.scale("int16", bscale=0.5, bzero=float(np.nanmedian(data)))
    scaled.writeto(put("int_bscale"))
    bare = fits.Header()
    fits.PrimaryHDU(data, header=bare).writeto(put("no_wcs"))
    broken = header.copy()
    for key in ("CD1_1", "CD1_2", "CD2_1", "CD2_2", "PC1_1", "PC1_2", "PC2_1", "PC2_2"):
        broken.remove(key, ignore_missing=True)
    broken["CD1_1"], broken["CD1_2"], broken["CD2_1"], broken["CD2_2"] = 0.0, 0.0, 0.0, 0.0
    fits.PrimaryHDU(data, header=broken).writeto(put("broken_wcs"))
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, header=header)]).writeto(
        put("tile_compressed", ".fits.fz"))
    with gzip.open(put("gzipped", ".fits.gz"), "wb") as fh:
        fh.write(full)
    return paths


@pytest.fixture(scope="module")
def corpus(survey, client, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every FITS case plus one good exposure, ingested together once."""
    root = tmp_path_factory.mktemp("corpus")
    good = Path(survey.files[0])
    paths = _make_fits_corpus(root / "fits", good)
    out = root / "corpus.zarr"
    summary = ingest([good, *paths.values()], out, stamp=32, chunk_sources=16)
    return {"paths": paths, "good": good, "out": out, "summary": summary}


def test_fits_corpus_one_ingest(corpus, survey) -> None:
    summary, paths = corpus["summary"], corpus["paths"]
    rejects = read_rejects(corpus["out"])
    assert len(rejects) == len(summary.rejects)
    ds = open_store(corpus["out"])
    exposures = pd.Series(np.asarray(ds["exposure"].values).astype(str))
    for name, (what, reason) in FITS_CASES.items():
        path = str(paths[name])
        rows = rejects[rejects["file"] == path]
        if reason is None:  # valid: ingested, not rejected
            assert rows.empty, rows["reason"].tolist()
            stem = paths[name].name.split(".")[0]
            n = int((exposures == stem).sum())
            assert n > 0, f"{name}: no sources ingested"
            outcome = f"ingested ({n} sources)"
        else:
            assert len(rows) == 1, f"{name}: {len(rows)} rejects rows"
            text = rows["reason"].iloc[0]
            assert "\n" not in text and text.startswith(path), text
            assert pd.Series([text]).str.contains(reason).all(), text
            outcome = "rejected: " + text[len(path):].lstrip("[0]: ")[:70]
        record(f"FITS: {what}", "bad input", outcome, lost=None, doubled=None)
    # the good exposure went through whole: same sources as when ingested alone
    alone = ingest([corpus["good"]], corpus["out"].with_name("alone.zarr"), stamp=32)
    n_good = int((exposures == corpus["good"].name.split(".")[0]).sum())
    assert n_good == alone.n_sources > 0
    # physical values of BZERO/BSCALE data: the scaled copy sees the same sources
    n_scaled = int((exposures == "int_bscale").sum())
    assert abs(n_scaled - n_good) <= max(2, n_good // 10), (n_scaled, n_good)
    # no (or a broken) WCS: detected, without sky coordinates
    for stem in ("no_wcs", "broken_wcs"):
        ra = np.asarray(ds["ra"].values)[(exposures == stem).to_numpy()]
        assert np.isnan(ra).all()
    record("good exposure beside 9 bad files", "bad input",
           "every source of the good exposure ingested", lost=alone.n_sources - n_good,
           doubled=0)


def test_ingest_cli_lists_the_rejects(corpus, client, tmp_path: Path) -> None:
    from pipeline.cli import cli

    paths = corpus["paths"]
    result = CliRunner().invoke(cli, ["ingest", str(corpus["good"]), str(paths["empty"]),
                                      str(paths["cube"]), "--out", str(tmp_path / "s.zarr"),
                                      "--stamp", "32", "--cluster",
                                      client.cluster.scheduler_address])
    assert result.exit_code == 0, result.output
    assert "rejects: 2" in result.output
    assert f"{paths['empty']}[-1]: {paths['empty']}: empty file" in result.output


# ---------------------------------------------------------------------------- source tables
def test_source_tables(survey, client, tmp_path: Path) -> None:
    good = Path(survey.files[0])
    table = pd.DataFrame({"x": [40.0, np.nan, 5000.0, 100.0], "y": [50.0, 60.0, 70.0, -900.0],
                          "source_id": [1, 2, 3, 4]})
    path = tmp_path / "src.csv"
    table.to_csv(path, index=False)
    summary = ingest([good], tmp_path / "f.zarr", sources=path, stamp=16)
    reasons = [r["reason"] for r in summary.rejects]
    assert summary.n_sources == 1
    assert any(r.startswith("row 1: NaN") for r in reasons)
    assert sum("is not on any input CCD" in r for r in reasons) == 2
    assert all(r["file"] == str(path) for r in summary.rejects)
    record("source table: NaN coordinates", "bad input", "row rejected, others ingested",
           lost=0, doubled=0)
    record("source table: positions off the image", "bad input",
           "rows rejected ('not on any input CCD'), others ingested", lost=0, doubled=0)
    dup = tmp_path / "dup.csv"
    pd.DataFrame({"x": [40.0, 50.0], "y": [50.0, 60.0], "source_id": [7, 7]}).to_csv(dup, index=False)
    with pytest.raises(SourceTableError, match=rf"^{dup}: duplicate source_id values \[7\]$"):
        ingest([good], tmp_path / "d.zarr", sources=dup)
    record("source table: duplicate ids", "bad input", "refused: one line naming file and ids",
           lost=None, doubled=None)
    missing = tmp_path / "missing.parquet"
    pd.DataFrame({"ra": [1.0]}).to_parquet(missing)
    with pytest.raises(SourceTableError, match=rf"^{missing}: missing columns \['dec'\]"):
        ingest([good], tmp_path / "m.zarr", sources=missing)
    assert not (tmp_path / "d.zarr").exists() and not (tmp_path / "m.zarr").exists()
    record("source table: missing columns", "bad input", "refused: one line naming the columns",
           lost=None, doubled=None)


# ---------------------------------------------------------------------------- stores
def _rewrite(store: Path, out: Path, change) -> Path:
    import xarray as xr

    ds = xr.open_zarr(store, zarr_format=3)
    ds = change(ds)
    for v in ds.variables.values():
        v.encoding.pop("chunks", None)
        v.encoding.pop("preferred_chunks", None)
    ds.to_zarr(out, zarr_format=3, mode="w-")
    return out


STORE_CASES = {
    "missing variable": (lambda ds: ds.drop_vars("flux"), r"missing coordinates \['flux'\]"),
    "wrong dtype": (lambda ds: ds.assign_coords(ccd=ds["ccd"].astype("float64")),
                    r"coordinate 'ccd' has dtype 'float64', expected 'int16'"),
    "chunked besides source": (lambda ds: ds.chunk({"source": 8, "y": 16}),
                               r"chunked along .* besides 'source'"),
    "not a store": (None, r"not a readable Zarr v3 cutout store"),
}


@pytest.mark.parametrize("case", list(STORE_CASES))
def test_bad_stores(case: str, store, tmp_path: Path) -> None:
    from pipeline.cli import cli

    change, reason = STORE_CASES[case]
    bad = tmp_path / "bad.zarr"
    if change is None:
        bad.mkdir()
        (bad / "zarr.json").write_text("{ not json")
    else:
        _rewrite(store, bad, change)
    with pytest.raises(StoreError, match=reason) as info:
        classify(bad, tmp_path / "cat", progress=False)
    message = str(info.value)
    assert message.startswith(str(bad)) and "\n" not in message
    assert not (tmp_path / "cat").exists()
    result = CliRunner().invoke(cli, ["info", str(bad)])
    assert result.exit_code == 1 and result.output.startswith("skysieve: error: ")
    record(f"store: {case}", "bad input", "refused: " + message[len(str(bad)) + 2:][:70],
           lost=None, doubled=None)


# ---------------------------------------------------------------------------- checkpoints
class _Touch:
    """Pickles into a call that creates a marker file (it must never run)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _checkpoint(tmp_path: Path, case: str, marker: Path) -> Path:
    import torch

    from pipeline import bundled
    from workers.checkpoint import file_sha256

    src = bundled.resolve("default")
    pt = tmp_path / f"{case}.pt"
    shutil.copy(src, pt)
    card = json.loads(src.with_suffix(".json").read_text())
    if case == "truncated":
        pt.write_bytes(pt.read_bytes()[: pt.stat().st_size // 2])
    elif case == "wrong class count":
        card["classes"] = card["classes"][:3]
    elif case == "wrong architecture":
        card["arch"] = "lenet5"
    elif case == "wrong sha256":
        card["sha256"] = "0" * 64
    elif case == "pickled code":
        torch.save({"weights": _Touch(marker)}, pt)
        card["sha256"] = file_sha256(pt)  # the card agrees: only weights_only stops it
    pt.with_suffix(".json").write_text(json.dumps(card))
    return pt


@pytest.mark.parametrize("case", ["truncated", "wrong class count", "wrong architecture",
                                  "wrong sha256", "pickled code"])
def test_bad_checkpoints(case: str, store, client, tmp_path: Path) -> None:
    from workers.checkpoint import CheckpointError, load_checkpoint

    marker = tmp_path / "pwned"
    pt = _checkpoint(tmp_path, case, marker)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(pt)
    message = str(info.value)
    assert str(pt) in message and "\n" not in message
    out = tmp_path / "cat"
    with pytest.raises(CheckpointError) as refused:  # once, on the client, before any task
        classify(store, out, model=str(pt), progress=False)
    assert str(pt) in str(refused.value)
    outcome = "refused before any task: one CheckpointError naming the file"
    assert not list(out.glob("part-*.parquet"))
    assert not marker.exists(), "the pickled payload ran"
    record(f"checkpoint: {case}", "bad input",
           f"{outcome.split(':')[0]}; load_checkpoint: {message[len(str(pt)) + 2:][:60]}",
           lost=None, doubled=None)


# ---------------------------------------------------------------------------- profiles
def test_profiles_python_tag_and_unknown_keys(store, tmp_path: Path) -> None:
    from pipeline.cli import cli

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.yaml"
    evil.write_text("cores: !!python/object/apply:pathlib.Path.touch "
                    f"[!!python/object/apply:pathlib.Path [{json.dumps(str(marker))}]]\n"
                    "memory: 1GB\n")
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({"cores": 2, "memory": "1GB", "qeueu": "night"}))
    for path, reason, case in ((evil, "refused YAML tag", "python tag"),
                               (typo, "'qeueu' (did you mean 'queue'?)", "unknown key")):
        result = CliRunner().invoke(cli, ["classify", str(store), "--out", str(tmp_path / "c"),
                                          "--cluster", "slurm", "--profile", str(path)])
        assert result.exit_code == 1, result.output
        line = result.output.strip().splitlines()[-1]
        assert line.startswith("skysieve: error: ") and str(path) in line and reason in line
        assert not marker.exists() and not (tmp_path / "c").exists()
        record(f"cluster profile: {case}", "bad input", f"refused: {reason}", lost=None,
               doubled=None)


# ---------------------------------------------------------------------------- job scripts
def test_hostile_names_in_job_scripts_never_run(tmp_path: Path, monkeypatch) -> None:
    """Render real scripts with hostile paths and names, then run them with bash.

    The final command line is turned into ``printf`` of its arguments: bash
    expands everything exactly as the job would, and the marker of the
    ``$(touch ...)`` must never appear.
    """
    from cluster import jobqueue
    from pipeline.hpc.submit import driver_script

    marker = tmp_path / "pwned"
    hostile = f"night one; $(touch {marker}) `touch {marker}` 'q' \"dq\""
    workdir = tmp_path / hostile.replace("/", "_")
    workdir.mkdir()
    profile = tmp_path / "p.yaml"
    profile.write_text(yaml.safe_dump({"cores": 2, "memory": "2GB", "name": hostile,
                                       "log-directory": str(workdir / "logs"),
                                       "local-directory": str(workdir / "scratch"),
                                       "env": {"SKY_NOTE": hostile}}))
    monkeypatch.chdir(workdir)
    args = ["run", f"{workdir}/a b.fits", f"$(touch {marker}).fits", "--out", "x; touch " + str(marker)]
    scripts = {"driver": driver_script(args, profile=profile)[0],
               "worker": jobqueue.job_script("slurm", profile=profile)}
    for who, script in scripts.items():
        lines = script.splitlines()
        expected = shlex.split(lines[-1])
        lines[-1] = "printf '%s\\0' " + lines[-1]
        path = tmp_path / f"{who}.sh"
        path.write_text("\n".join(lines) + "\n")
        proc = subprocess.run(["bash", str(path)], capture_output=True, timeout=60, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr.decode()
        argv = proc.stdout.decode().split("\0")[:-1]
        assert argv == expected
        assert not marker.exists(), f"{who} script executed a substitution"
        if who == "driver":
            assert argv[3:3 + len(args)] == args
        else:
            assert hostile in " ".join(script.splitlines()[:10]) or any(
                hostile in a for line in script.splitlines() if line.startswith("#SBATCH")
                for a in shlex.split(line))
    record("job names/paths with spaces, quotes, $(), `` and ;", "bad input",
           "quoted: bash ran the rendered scripts, arguments intact, marker never created",
           lost=None, doubled=None)
