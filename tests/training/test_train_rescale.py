"""A model that resamples stamps to its PSF width: trained, carded, served the same way."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from click.testing import CliRunner

from cluster import connect
from pipeline.catalogue import read_catalogue
from pipeline.classify.graph import classify
from pipeline.cli import cli
from pipeline.imaging.preprocess import prepare
from pipeline.imaging.rescale import scale_for_model
from pipeline.training.fit import train
from pipeline.training.metrics import classification_metrics
from workers.checkpoint import load_checkpoint
from workers.inference import Predictor
from _blob_stores import make_store  # tests/ on sys.path

pytestmark = pytest.mark.filterwarnings("ignore")
SCALE = {"mode": "psf", "fwhm_px": 4.0}


@pytest.fixture(scope="module")
def scaled(tmp_path_factory):
    """Blobs whose exposures claim PSFs of 2.4, 3.0 and 4.0 px; a model resampling to 4 px."""
    root = tmp_path_factory.mktemp("rescale")
    store = make_store(root / "blobs.zarr", n=240, size=32, n_exp=3, seed=4)
    group = zarr.open_group(store, mode="r+")
    exposure = np.asarray(group["exposure"][:]).astype(str)
    group["psf_fwhm"][:] = np.select([exposure == "exp0", exposure == "exp1"], [2.4, 3.0],
                                     4.0).astype(np.float32)
    card = train(store, arch="smallcnn", out=root / "m.pt", epochs=6, batch_size=32, seed=0,
                 progress=False, input_scale=SCALE)
    return store, root / "m.pt", card


def _served(store, path, card):
    """Probabilities of every stamp through scale_for_model -> prepare -> the model."""
    ds = xr.open_zarr(store)
    pixels, bg, noise = scale_for_model(ds["image"].values, card.input_scale,
                                        ds["psf_fwhm"].values)
    model, _ = load_checkpoint(path, sha256=card.sha256)
    x = prepare(pixels, stretch=card.stretch, image_size=card.image_size, background=bg,
                noise=noise)
    return ds, Predictor(model, card, batch_size=64).predict_proba(x)


def test_the_card_records_the_scale_and_inference_reproduces_validation(scaled):
    store, path, card = scaled
    assert card.input_scale == SCALE
    _, again = load_checkpoint(path, sha256=card.sha256)
    assert again.input_scale == SCALE                      # written and read back
    ds, proba = _served(store, path, card)
    val = np.isin(ds["exposure"].values.astype(str), card.training["split"]["val_exposures"])
    y = np.searchsorted(card.classes, ds["label"].values.astype(str)[val])
    m = classification_metrics(y, proba[val].argmax(1), card.classes)
    assert m["confusion"] == card.metrics["confusion"]     # the same pixels as in training
    assert card.metrics["balanced_accuracy"] >= 0.6


def test_classify_serves_the_scaled_model_as_trained(scaled, tmp_path):
    store, path, card = scaled
    with connect("local", n_workers=1, threads_per_worker=1):
        classify(store, tmp_path / "cat", model=path, batch_size=64, progress=False)
    cat = read_catalogue(tmp_path / "cat").sort_values("source_id").reset_index(drop=True)
    ds, proba = _served(store, path, card)
    order = np.argsort(ds["source_id"].values)
    expected = pd.DataFrame(proba[order], columns=[f"p_{c}" for c in card.classes])
    np.testing.assert_allclose(cat[expected.columns].to_numpy(), expected.to_numpy(), atol=2e-4)


def test_the_cli_option_and_its_errors(tmp_path):
    store = make_store(tmp_path / "b.zarr", n=60, size=32, n_exp=3, seed=1, psf=3.0)
    runner = CliRunner()
    bad = runner.invoke(cli, ["train", str(store), "--out", str(tmp_path / "x.pt"),
                              "--epochs", "1", "--psf-pixels", "40"])
    assert bad.exit_code != 0 and "fwhm_px" in bad.output and "[1, 16]" in bad.output
    ok = runner.invoke(cli, ["train", str(store), "--out", str(tmp_path / "y.pt"),
                             "--epochs", "1", "--psf-pixels", "2.5"])
    assert ok.exit_code == 0, ok.output
    _, card = load_checkpoint(tmp_path / "y.pt")
    assert card.input_scale == {"mode": "psf", "fwhm_px": 2.5}
    lone = runner.invoke(cli, ["train", str(store), "--out", str(tmp_path / "z.pt"),
                               "--epochs", "1", "--psf-min-zoom", "1"])
    assert lone.exit_code != 0 and "--psf-pixels" in lone.output
    up = runner.invoke(cli, ["train", str(store), "--out", str(tmp_path / "u.pt"),
                             "--epochs", "1", "--psf-pixels", "2.5", "--psf-min-zoom", "1"])
    assert up.exit_code == 0, up.output
    assert load_checkpoint(tmp_path / "u.pt")[1].input_scale == {
        "mode": "psf", "fwhm_px": 2.5, "min_zoom": 1.0}
