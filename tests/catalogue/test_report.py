"""`skysieve report`: a static HTML page with readable plots, checked in headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline import catalogue
from pipeline.catalogue.layout import healpix_order_doc, part_path
from pipeline.catalogue.part_files import write_part
from pipeline.catalogue.report import REPORT_PLOTS, write_report
from test_catalogue_readers import write_fake_catalogue

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A small real cutout store: synthetic FITS exposures -> ingest (no model needed)."""
    from pipeline.ingest.exposures import ingest
    from pipeline.simulation.survey import synthesize

    root = tmp_path_factory.mktemp("survey")
    survey = synthesize(root / "fits", exposures=2, size=768, seed=11)
    ingest(survey.files, root / "cutouts.zarr", truth=survey.truth)
    return root / "cutouts.zarr"


def _catalogue_for_store(store: Path, out: Path, *, seed: int = 0) -> Path:
    """A catalogue with the store's rows and positions and random (Dirichlet) probabilities."""
    import zarr

    from pipeline.simulation.survey import CLASSES

    g = zarr.open_group(str(store), mode="r")
    rng = np.random.default_rng(seed)
    n = g["source_id"].shape[0]
    probs = rng.dirichlet(np.full(len(CLASSES), 0.5), n).astype(np.float32)
    probs /= probs.sum(axis=1, keepdims=True)
    ra, dec = np.asarray(g["ra"][:]), np.asarray(g["dec"][:])
    from astropy_healpix import lonlat_to_healpix
    import astropy.units as u

    data = {"source_id": pa.array(np.asarray(g["source_id"][:], np.int64)),
            "exposure": pa.array([str(v) for v in np.asarray(g["exposure"][:], dtype=object)]),
            "ccd": pa.array(np.asarray(g["ccd"][:], np.int16)), "ra": pa.array(ra),
            "dec": pa.array(dec), "x": pa.array(np.asarray(g["x"][:], np.float64)),
            "y": pa.array(np.asarray(g["y"][:], np.float64)),
            "label": pa.array(np.asarray(CLASSES, dtype=object)[probs.argmax(1)], pa.string())}
    for k, name in enumerate(CLASSES):
        data[f"p_{name}"] = pa.array(probs[:, k])
    data.update({"confidence": pa.array(probs.max(1)),
                 "blur_score": pa.array(rng.lognormal(0, 0.2, n).astype(np.float32)),
                 "psf_fwhm": pa.array(np.asarray(g["psf_fwhm"][:], np.float32)),
                 "healpix": pa.array(lonlat_to_healpix(ra * u.deg, dec * u.deg, 1024,
                                                       order="nested").astype(np.int64)),
                 "flags": pa.array(np.asarray(g["flags"][:], np.int32)),
                 "true_label": pa.array([str(v) for v in np.asarray(g["label"][:], dtype=object)])})
    meta = {"classes": list(CLASSES), "model": "random", "model_sha256": "0" * 64,
            "skysieve_version": "0.1.0", "healpix_order": healpix_order_doc(10),
            "store": str(store.resolve()), "run_config": {}, "blur_reference_fwhm": 3.0}
    out.mkdir(parents=True)
    write_part(pa.table(data), part_path(out, 0), metadata=meta)
    return out


def _images(index: Path) -> list[str]:
    return re.findall(r"<img src='([^']+)'", index.read_text())


def test_report_without_store(tmp_path: Path) -> None:
    cat = write_fake_catalogue(tmp_path / "catalogue")
    index = write_report(cat, tmp_path / "report")
    text = index.read_text()
    for name in (*REPORT_PLOTS, "confusion.png"):
        assert name in _images(index), name
        with Image.open(index.parent / name) as im:
            assert im.width >= 400 and im.height >= 250
            assert np.asarray(im.convert("L")).std() > 5  # not a blank canvas
    assert "gallery.png" not in text and "--store STORE.zarr" in text
    # provenance, summary and rejects come from the metadata and the _ files
    assert "f" * 64 in text and "bad.fits: unreadable FITS (truncated)" in text
    assert "cutouts_per_s" in text and "exp_0002" in text
    assert "900" in text and "accuracy vs truth" in text
    # the accuracy card equals the catalogue's own
    df = catalogue.read_catalogue(cat)
    acc = float((df["label"] == df["true_label"]).mean())
    assert f"{acc:.3f}" in text


def test_report_cli_with_gallery(store: Path, tmp_path: Path) -> None:
    from pipeline.cli.catalogue import report

    cat = _catalogue_for_store(store, tmp_path / "catalogue")
    result = CliRunner().invoke(report, [str(cat), "--out", str(tmp_path / "rep"),
                                         "--per-class", "4"])
    assert result.exit_code == 0, result.output
    index = tmp_path / "rep" / "index.html"
    assert "gallery.png" in _images(index)  # the store recorded in the metadata was found
    text = index.read_text()
    n = len(catalogue.read_catalogue(cat))
    shown = int(re.search(r"(\d+) cutouts from", text).group(1))
    assert 4 <= shown <= 7 * 4  # six classes and the least-confident row, 4 each
    assert f"{n:,}" in text
    bad = CliRunner().invoke(report, [str(cat), "--out", str(tmp_path / "rep2"),
                                      "--per-class", "0"])
    assert bad.exit_code == 1 and "per_class=0 must be an integer in 1..32" in bad.output


def _chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found or os.environ.get("CI") != "true":
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    return shutil.which("chromium")


def test_report_renders_in_headless_chromium(store: Path, tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium); CI=true installs it")
    cat = _catalogue_for_store(store, tmp_path / "catalogue", seed=3)
    index = write_report(cat, tmp_path / "report", store=store, per_class=6)
    shot = tmp_path / "report.png"
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", f"--user-data-dir={profile}", f"--screenshot={shot}",
                        "--window-size=1280,2400", index.resolve().as_uri()],
                       check=True, timeout=120, capture_output=True)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    with Image.open(shot) as im:
        assert im.size == (1280, 2400)
        grey = np.asarray(im.convert("L"), dtype=np.float64)
    # the page drew images and text: many dark pixels, and rows that are not blank
    assert (grey < 128).mean() > 0.01
    assert (grey.std(axis=1) > 10).mean() > 0.3
    keep = os.environ.get("SKYSIEVE_REPORT_SCREENSHOT")
    if keep:  # for looking at it by eye
        shutil.copy(shot, keep)


def test_report_on_a_real_night(store: Path, tmp_path: Path) -> None:
    """The whole pipeline: synth -> ingest -> classify with the configured model -> report."""
    from pipeline import config, bundled
    from pipeline.classify.graph import classify

    try:
        bundled.resolve(config.get("classify.model"))
    except FileNotFoundError as exc:
        pytest.skip(f"the configured model is missing (the bundled default.pt not trained "
                    f"yet?): {exc}")
    cat = tmp_path / "catalogue"
    summary = classify(store, cat, progress=False)
    index = write_report(cat, tmp_path / "report")
    text = index.read_text()
    assert f"{summary.rows:,}" in text and summary.model_sha256 in text
    assert "gallery.png" in _images(index) and "confusion.png" in _images(index)
