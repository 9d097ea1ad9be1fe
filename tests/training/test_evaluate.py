"""Metrics (hand-computed cases) and ``evaluate`` on a small synthetic store (real Zarr, real training)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import xarray as xr
from PIL import Image

from pipeline.imaging.blur_score import apparent_fwhm
from pipeline.errors import EvaluationError, StoreError
from pipeline.training.plots import load_evaluation, plot_blur_curves, plot_reliability
from pipeline.training.evaluate import FIGURES, JSON_NAME, _blur, evaluate, validate_blur_sweep
from pipeline.training.metrics import (classification_metrics, expected_calibration_error,
                              fit_temperature, nll, pairwise_balanced_accuracy,
                              reliability_bins, roc_auc_ovr, softmax)
from pipeline.imaging.preprocess import background_noise, prepare
from pipeline.training.fit import train
from workers.blur import fwhm_to_sigma
from workers.checkpoint import load_checkpoint
from workers.inference import Predictor
from _blob_stores import CLASSES, make_store as blob_store  # tests/ is on sys.path

STAR_FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0))  # the stars below: Gaussian, sigma = 1 px


# --------------------------------------------------------------------------- metrics
def test_classification_metrics_by_hand():
    # confusion [true][pred]: a: 2 right, 1 -> b; b: 1 right, 1 -> a; c: none true, 1 predicted
    y_true = np.array([0, 0, 0, 1, 1, 1])
    y_pred = np.array([0, 0, 1, 1, 0, 2])
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m["confusion"] == [[2, 1, 0], [1, 1, 1], [0, 0, 0]]
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["precision"] == pytest.approx({"a": 2 / 3, "b": 1 / 2, "c": 0.0})
    assert m["recall"]["a"] == pytest.approx(2 / 3) and m["recall"]["b"] == pytest.approx(1 / 3)
    assert m["recall"]["c"] is None  # no true source of c
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    f1a, f1b = 2 * 2 / (2 * 2 + 1 + 1), 2 * 1 / (2 * 1 + 1 + 2)
    assert m["f1"] == pytest.approx({"a": f1a, "b": f1b, "c": 0.0})
    assert m["macro_f1"] == pytest.approx((f1a + f1b + 0.0) / 3)  # c was predicted: counts
    assert m["support"] == {"a": 3, "b": 3, "c": 0}
    never = classification_metrics(np.array([0, 1]), np.array([0, 0]), ["a", "b", "c"])
    assert never["precision"]["b"] is None and never["f1"]["c"] is None
    assert never["macro_f1"] == pytest.approx((2 / 3 + 0.0) / 2)  # c neither true nor predicted
    with pytest.raises(ValueError, match=r"class indices in \[0, 1\]"):
        classification_metrics(np.array([0, 2]), np.array([0, 1]), ["a", "b"])


def test_roc_auc_by_rank_statistic():
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    y = np.array([0, 0, 1, 1])
    proba = np.stack([1 - scores, scores], axis=1)
    auc = roc_auc_ovr(proba, y, ["neg", "pos"])
    # pairs (pos, neg): (0.35>0.1) (0.35<0.4) (0.8>0.1) (0.8>0.4) -> 3 of 4
    assert auc["per_class"] == pytest.approx({"neg": 0.75, "pos": 0.75})
    assert auc["macro"] == pytest.approx(0.75)
    tied = roc_auc_ovr(np.full((4, 2), 0.5), y, ["neg", "pos"])
    assert tied["per_class"]["pos"] == pytest.approx(0.5)  # a tie counts one half
    three = roc_auc_ovr(np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]]),
                        np.array([0, 1, 0]), ["a", "b", "c"])
    assert three["per_class"]["c"] is None  # no positives: left out of the macro mean
    assert three["per_class"]["a"] == pytest.approx(1.0)
    assert three["per_class"]["b"] == pytest.approx(1.0)
    assert three["macro"] == pytest.approx(1.0)


def test_reliability_bins_and_ece_by_hand():
    proba = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.45, 0.55]])
    y = np.array([0, 1, 0, 1])  # the two confident ones: one right; the two unsure: both right
    rel = reliability_bins(proba, y, bins=10)
    assert rel["count"] == [0, 0, 0, 0, 0, 2, 0, 0, 0, 2]
    assert rel["confidence"][9] == pytest.approx(0.95) and rel["accuracy"][9] == pytest.approx(0.5)
    assert rel["confidence"][5] == pytest.approx(0.55) and rel["accuracy"][5] == pytest.approx(1.0)
    assert rel["accuracy"][0] is None and len(rel["edges"]) == 11
    ece = 0.5 * abs(0.5 - 0.95) + 0.5 * abs(1.0 - 0.55)
    assert rel["ece"] == pytest.approx(ece)
    assert expected_calibration_error(proba, y, bins=10) == pytest.approx(ece)
    with pytest.raises(ValueError, match="bins must be a positive integer"):
        reliability_bins(proba, y, bins=0)


def test_softmax_nll_and_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (4000, 3))
    p = softmax(logits)
    assert np.allclose(p.sum(axis=1), 1.0)
    y = np.array([rng.choice(3, p=row) for row in p])
    assert nll(logits, y, 1.0) == pytest.approx(-np.log(p[np.arange(y.size), y]).mean())
    # labels drawn from softmax(L): logits 3 L are over-confident by a factor 3
    assert fit_temperature(3.0 * logits, y) == pytest.approx(3.0, rel=0.1)
    assert fit_temperature(logits, np.array([], dtype=np.int64)) == 1.0


def test_against_scikit_learn():
    skm = pytest.importorskip("sklearn.metrics", reason="scikit-learn is not installed")
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 300)
    proba = softmax(rng.normal(0, 1, (300, 4)) + 2.0 * np.eye(4)[y])
    pred = proba.argmax(axis=1)
    m = classification_metrics(y, pred, list("abcd"))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert list(m["precision"].values()) == pytest.approx(
        skm.precision_score(y, pred, average=None).tolist())
    auc = roc_auc_ovr(proba, y, list("abcd"))
    assert auc["macro"] == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr"))


# --------------------------------------------------------------------------- data and model
def make_store(path, *, n=150, size=32, n_exp=3, seed=0, psf=STAR_FWHM, labels=None):
    """Three clearly different blob classes; ``psf_fwhm`` per source (``None``: NaN)."""
    return blob_store(path, n=n, size=size, n_exp=n_exp, seed=seed, labels=labels,
                      psf=math.nan if psf is None else psf)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    store = make_store(root / "train.zarr")
    card = train(store, arch="smallcnn", out=root / "small.pt", epochs=2, batch_size=32,
                 seed=0, progress=False)
    return store, root / "small.pt", card


SWEEP = (0, 1, 3)


@pytest.fixture(scope="module")
def evaluated(trained, tmp_path_factory):
    store, model, _ = trained
    out = tmp_path_factory.mktemp("eval_out")
    return evaluate(model, store, out=out, blur_sweep=SWEEP, batch_size=16), out


# --------------------------------------------------------------------------- evaluate
def test_evaluation_is_consistent_and_written(evaluated, trained):
    ev, out = evaluated
    _, _, card = trained
    assert json.loads((out / JSON_NAME).read_text()) == ev  # strict JSON, same as returned
    for key in ("model", "store", "subset", "n", "metrics", "temperature", "blur", "speed",
                "versions"):
        assert key in ev
    assert ev["model"]["sha256"] == card.sha256 and ev["model"]["arch"] == "smallcnn"
    assert ev["model"]["params"] == card.params > 0 and ev["temperature"] == card.temperature
    m, n = ev["metrics"], ev["n"]
    cm = np.asarray(m["confusion"])
    assert cm.shape == (3, 3) and cm.sum() == n
    assert m["accuracy"] == pytest.approx(np.trace(cm) / n)
    assert 0.0 <= m["balanced_accuracy"] <= 1.0
    assert set(m["precision"]) == set(m["recall"]) == set(m["f1"]) == set(CLASSES)
    assert sum(m["support"].values()) == n
    assert m["macro_f1"] is None or 0.0 <= m["macro_f1"] <= 1.0
    assert set(m["ece"]) == {"raw", "calibrated"} and set(m["nll"]) == {"raw", "calibrated"}
    for kind in ("raw", "calibrated"):
        assert sum(m["reliability"][kind]["count"]) == n
        assert m["reliability"][kind]["ece"] == pytest.approx(m["ece"][kind])
    assert 0.0 <= m["roc_auc"]["macro"] <= 1.0
    curve = ev["blur"]["curve"]
    assert [r["factor"] for r in curve] == list(map(float, SWEEP))
    assert curve[0]["accuracy"] == m["accuracy"]
    assert curve[0]["balanced_accuracy"] == m["balanced_accuracy"]
    assert ev["blur"]["psf"]["source"] == "store"
    assert ev["blur"]["psf"]["median_fwhm_px"] == pytest.approx(STAR_FWHM, rel=1e-6)
    assert curve[1]["added_fwhm_px_median"] == pytest.approx(STAR_FWHM, rel=1e-6)
    s = ev["speed"]
    assert s["device"] == "cpu" and s["torch_threads"] >= 1 and s["batch_size"] == 16
    assert s["batch1_ms_per_sample"] > 0 and s["batch1_runs"] >= 20
    assert s["batched_cutouts_per_s"] > 0 and s["batched_runs"] >= 3
    assert s["conditions"]["torch_threads"] == s["torch_threads"]
    assert s["conditions"]["load_1min"] is None or s["conditions"]["load_1min"] >= 0
    pairs = m["pairwise"]
    assert sorted(pairs) == [f"{a}|{b}" for i, a in enumerate(sorted(CLASSES))
                             for b in sorted(CLASSES)[i + 1:]]
    assert all(0.0 <= v <= 1.0 for v in pairs.values())


def test_pairwise_balanced_accuracy_by_hand():
    classes = ["elliptical", "merger", "spiral"]
    scores = np.array([[3, 1, 0], [0, 3, 1], [1, 0, 3], [0, 1, 3], [2, 2, 0]])
    y = np.array([0, 1, 2, 0, 0])
    got = pairwise_balanced_accuracy(scores, y, classes)
    # elliptical|merger: ellipticals 0, 3, 4 called right 1, 0, 1/2 (a tie) -> 1/2; merger 1/1
    assert got["elliptical|merger"] == pytest.approx((1.5 / 3 + 1.0) / 2)
    # elliptical|spiral: the merger column cannot take the answer: ellipticals 1, 0, 1
    assert got["elliptical|spiral"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert got["merger|spiral"] == pytest.approx(1.0)
    assert pairwise_balanced_accuracy(scores[:1], y[:1], classes)["merger|spiral"] is None
    # class names are sorted in the key whatever the column order
    assert set(pairwise_balanced_accuracy(scores[:, ::-1], 2 - y, classes[::-1])) == set(got)


def test_auto_subset_is_the_validation_split_as_inference_sees_it(evaluated, trained):
    ev, _ = evaluated
    store, model, card = trained
    val = card.training["split"]["val_exposures"]
    assert ev["subset"]["used"] == "val" and ev["store"]["is_training_store"]
    assert ev["n"] == card.metrics["n_val"] and all(e in ev["subset"]["reason"] for e in val)
    # independently: the validation stamps through prepare + Predictor (the classify path)
    ds = xr.open_zarr(store)
    keep = np.isin(ds["exposure"].values.astype(str), val)
    y = np.searchsorted(card.classes, ds["label"].values.astype(str)[keep])
    net, card2 = load_checkpoint(model)
    proba = Predictor(net, card2, batch_size=64).predict_proba(
        prepare(ds["image"].values[keep], stretch=card2.stretch, image_size=card2.image_size))
    assert ev["metrics"]["confusion"] == classification_metrics(
        y, proba.argmax(1), card.classes)["confusion"]
    assert ev["metrics"]["confusion"] == card.metrics["confusion"]  # training's own val metrics


def test_pngs_are_valid_and_not_blank(evaluated):
    _, out = evaluated
    for name in FIGURES:
        path = out / name
        with Image.open(path) as im:
            assert im.format == "PNG"
            w, h = im.size
            assert 300 <= w <= 3000 and 250 <= h <= 3000, (name, im.size)
            im.load()
            colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
            assert colours is not None and len(colours) > 20, name  # more than a blank canvas
    # several models on one figure (what `compare` and the models notebook do), from files
    plot_blur_curves([out, out / JSON_NAME], out / "both_blur.png")
    plot_reliability([load_evaluation(out)] * 2, out / "both_rel.png")
    for name in ("both_blur.png", "both_rel.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size[0] >= 300
    with pytest.raises(EvaluationError, match="evaluation.json"):
        load_evaluation(out / "nothing_here.json")


def test_fallback_psf_and_subset_all_on_another_store(trained, tmp_path):
    _, model, _ = trained
    other = make_store(tmp_path / "other.zarr", n=60, seed=5, psf=None)  # import-images-like
    ev = evaluate(model, other, out=tmp_path / "out", blur_sweep=(0, 2), speed=False)
    assert ev["subset"]["used"] == "all" and ev["n"] == 60
    assert not ev["store"]["is_training_store"] and "not the model's training" in ev["subset"]["reason"]
    psf = ev["blur"]["psf"]
    assert psf["source"] == "estimated" and psf["n_estimated"] == 60 and "compact" in psf["estimate"]
    assert psf["estimated_fwhm_px"] == pytest.approx(STAR_FWHM, rel=0.15)  # the stars' FWHM
    assert ev["speed"] is None and len(ev["blur"]["curve"]) == 2
    assert all((tmp_path / "out" / f).is_file() for f in FIGURES)
    with pytest.raises(StoreError, match="subset 'val' needs the store the model was trained on"):
        evaluate(model, other, out=tmp_path / "out2", subset="val", speed=False)


def test_blur_widens_sources_and_keeps_the_noise_level():
    rng = np.random.default_rng(3)
    size, n = 48, 64
    yy, xx = np.mgrid[0:size, 0:size]
    star = 3000.0 * np.exp(-((xx - 24) ** 2 + (yy - 24) ** 2) / 2.0) / (2 * np.pi)
    images = (star + 5.0 + rng.normal(0, 2.0, (n, 1, size, size))).astype(np.float32)
    images[:, :, :3, :] = np.nan  # off the exposure edge
    bg0, noise0 = background_noise(images)
    out = _blur(images, np.full(n, fwhm_to_sigma(STAR_FWHM)), torch.Generator().manual_seed(0))
    assert torch.isnan(out[:, :, :3, :]).all() and not torch.isnan(out[:, :, 3:, :]).any()
    bg1, noise1 = background_noise(out)
    assert float(noise1.median()) == pytest.approx(float(noise0.median()), rel=0.1)
    assert float(bg1.median()) == pytest.approx(float(bg0.median()), abs=0.3)
    before = np.median(apparent_fwhm(np.nan_to_num(images - 5.0)))
    after = np.median(apparent_fwhm(np.nan_to_num(out.numpy() - 5.0)))
    assert before == pytest.approx(STAR_FWHM, rel=0.1)
    assert after == pytest.approx(math.sqrt(2.0) * STAR_FWHM, rel=0.1)  # FWHMs add in quadrature


@pytest.mark.parametrize("sweep, match", [
    ((0, -1), "finite numbers >= 0"), ((0, float("nan")), "finite numbers >= 0"),
    ((), "empty"), ((0, 1, 1), "repeats"), ("0,a", "comma-separated"), ((True,), ">= 0"),
])
def test_bad_sweep_is_refused(trained, tmp_path, sweep, match):
    store, model, _ = trained
    with pytest.raises(EvaluationError, match=match):
        evaluate(model, store, out=tmp_path, blur_sweep=sweep)
    assert not (tmp_path / JSON_NAME).exists()


def test_validate_sweep_parses_text():
    assert validate_blur_sweep("0, 0.5,1,2,4") == [0.0, 0.5, 1.0, 2.0, 4.0]


def test_bad_arguments_and_unknown_labels(trained, tmp_path):
    store, model, _ = trained
    with pytest.raises(EvaluationError, match="unknown subset 'some'; valid: auto, val, all"):
        evaluate(model, store, out=tmp_path, subset="some")
    with pytest.raises(EvaluationError, match="batch_size must be a positive integer"):
        evaluate(model, store, out=tmp_path, batch_size=0)
    with pytest.raises(EvaluationError, match="unknown device 'tpu'"):
        evaluate(model, store, out=tmp_path, device="tpu")
    with pytest.raises(StoreError, match=r"gone\.zarr: no such cutout store"):
        evaluate(model, tmp_path / "gone.zarr", out=tmp_path, speed=False)
    labels = ["quasar" if i == 4 else CLASSES[i % 3] for i in range(30)]
    odd = make_store(tmp_path / "odd.zarr", n=30, labels=labels)
    with pytest.raises(StoreError, match=r"labels \['quasar'\] are not classes of the model"):
        evaluate(model, odd, out=tmp_path / "o", speed=False)


def test_auto_subset_recomputes_a_by_source_split(tmp_path):
    store = make_store(tmp_path / "s.zarr", n=60, n_exp=1)  # one exposure: split by source
    card = train(store, arch="smallcnn", out=tmp_path / "m.pt", epochs=1, batch_size=16,
                 split_by="source", seed=3, progress=False)
    ev = evaluate(tmp_path / "m.pt", store, out=tmp_path / "out", blur_sweep=(0,), speed=False)
    assert ev["subset"]["used"] == "val" and "split by source" in ev["subset"]["reason"]
    assert ev["n"] == card.metrics["n_val"]
    assert ev["metrics"]["confusion"] == card.metrics["confusion"]


def test_cli_evaluate(trained, tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import cli

    store, model, _ = trained
    runner = CliRunner()
    res = runner.invoke(cli, ["evaluate", str(model), str(store), "--out", str(tmp_path / "o"),
                              "--blur-sweep", "0,2", "--subset", "all", "--no-speed"])
    assert res.exit_code == 0, res.output
    ev = json.loads((tmp_path / "o" / JSON_NAME).read_text())
    assert ev["subset"]["used"] == "all" and ev["n"] == 150 and ev["speed"] is None
    assert [r["factor"] for r in ev["blur"]["curve"]] == [0.0, 2.0]
    bad = runner.invoke(cli, ["evaluate", str(model), str(store), "--out", str(tmp_path / "b"),
                              "--blur-sweep", "0,-1"])
    assert bad.exit_code == 1 and "finite numbers >= 0" in bad.output
    assert "Traceback" not in bad.output and not (tmp_path / "b" / JSON_NAME).exists()
