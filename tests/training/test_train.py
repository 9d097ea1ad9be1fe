"""Training on a small synthetic cutout store (real Zarr through xarray)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import xarray as xr
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.errors import StoreError, TrainingError
from pipeline.imaging.preprocess import prepare
from pipeline.training.augment import augment
from pipeline.training.data import load_labelled
from pipeline.training.fit import train
from pipeline.training.metrics import classification_metrics, expected_calibration_error, fit_temperature
from pipeline.training.splits import group_fields, split_validation
from workers.checkpoint import file_sha256, load_checkpoint
from workers.inference import Predictor
from _blob_stores import CLASSES, image_encoding, make_store as blob_store  # tests/ on sys.path



def make_store(path, *, n=300, size=32, n_exp=3, seed=0, unlabelled=0):
    """The blob store of ``tests/_blob_stores.py`` with test_train's defaults."""
    return blob_store(path, n=n, size=size, n_exp=n_exp, seed=seed, unlabelled=unlabelled)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("data") / "train.zarr", unlabelled=6)


@pytest.fixture(scope="module")
def smallcnn(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "small.pt"
    return train(store, arch="smallcnn", out=out, epochs=12, batch_size=64, seed=0,
                 progress=False), out


def _val_stamps(store, card):
    ds = xr.open_zarr(store)
    keep = np.isin(ds["exposure"].values.astype(str), card.training["split"]["val_exposures"])
    keep &= ds["label"].values.astype(str) != ""
    y = np.searchsorted(card.classes, ds["label"].values.astype(str)[keep])
    return ds["image"].values[keep], y


def test_smallcnn_learns_and_the_checkpoint_reproduces_it(smallcnn, store, capsys):
    card, out = smallcnn
    assert card.arch == "smallcnn" and card.classes == sorted(CLASSES)
    assert (card.in_chans, card.image_size, card.bands) == (1, 32, ["r"])
    assert card.stretch == {"name": "asinh", "softening": 3.0, "scale": 1.0}
    assert card.metrics["accuracy"] >= 0.8 and card.metrics["balanced_accuracy"] >= 0.8
    assert card.metrics["n_train"] + card.metrics["n_val"] == 294
    assert card.metrics["n_unlabelled_skipped"] == 6
    assert sum(map(sum, card.metrics["confusion"])) == card.metrics["n_val"]
    assert card.temperature > 0 and card.metrics["ece_calibrated"] <= card.metrics["ece"] + 0.05
    t = card.training
    assert t["seed"] == 0 and 1 <= t["best_epoch"] <= t["epochs_run"] <= 12
    assert len(t["history"]) == t["epochs_run"] and t["command"]
    assert len(t["data_sha256"]) == 64 and t["store"].endswith("train.zarr")
    assert json.loads(out.with_suffix(".json").read_text())["sha256"] == file_sha256(out)
    # the written checkpoint, through the inference path, gives the validation predictions
    model, card2 = load_checkpoint(out, sha256=card.sha256)
    assert card2 == card
    images, y = _val_stamps(store, card)
    proba = Predictor(model, card2, batch_size=50).predict_proba(
        prepare(images, stretch=card2.stretch, image_size=card2.image_size))
    again = classification_metrics(y, proba.argmax(1), card.classes)
    assert again["confusion"] == card.metrics["confusion"]
    assert capsys.readouterr().err == ""  # progress=False is quiet


def test_lenet5_trains_with_a_resize(store, tmp_path, capsys):
    card = train(store, arch="lenet5", out=tmp_path / "lenet", epochs=12, batch_size=64,
                 image_size=28, seed=1)
    assert (tmp_path / "lenet.pt").is_file() and card.image_size == 28
    assert card.metrics["accuracy"] >= 0.8
    err = capsys.readouterr().err
    assert "epoch 1/12 loss" in err and "val_bacc" in err
    model, _ = load_checkpoint(tmp_path / "lenet.pt")
    assert model.image_size == 28


def test_same_seed_same_weights(tmp_path):
    store = make_store(tmp_path / "small.zarr", n=120, seed=2)
    kw = dict(arch="smallcnn", epochs=2, batch_size=32, seed=7, progress=False)
    a = train(store, out=tmp_path / "a.pt", **kw)
    b = train(store, out=tmp_path / "b.pt", **kw)
    assert a.sha256 == b.sha256  # byte-identical weights
    assert a.metrics == b.metrics and a.temperature == b.temperature
    c = train(store, out=tmp_path / "c.pt", **{**kw, "seed": 8, "epochs": 1})
    assert c.sha256 != a.sha256


def test_the_split_holds_out_whole_exposures(smallcnn, store):
    card, _ = smallcnn
    ds = xr.open_zarr(store)
    val = set(card.training["split"]["val_exposures"])
    assert val and val < set(ds["exposure"].values.astype(str))
    groups = np.repeat([f"e{i}" for i in range(10)], 30)
    labels = np.tile(np.array(["a", "b", "c"], dtype="<U4"), 100)
    labels[:30] = "rare"  # only in exposure e0
    tr, va, names = split_validation(groups, labels, val_fraction=0.3, seed=3)
    assert set(groups[tr]).isdisjoint(groups[va]) and sorted(set(groups[va])) == names
    assert np.array_equal(np.sort(np.concatenate([tr, va])), np.arange(300))
    assert "rare" in set(labels[tr])  # the only exposure of a class stays in training
    assert {"a", "b", "c"} <= set(labels[va]) and 0.2 <= va.size / 300 <= 0.4
    again = split_validation(groups, labels, val_fraction=0.3, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(again, (tr, va, names)))
    others = {tuple(split_validation(groups, labels, val_fraction=0.3, seed=s)[2])
              for s in range(4, 10)}
    assert len(others | {tuple(names)}) > 1  # the seed chooses the exposures
    tr_s, va_s, none = split_validation(groups, labels, by="source", val_fraction=0.2, seed=0)
    assert none == [] and set(labels[va_s]) == set(labels) and va_s.size == 60
    with pytest.raises(TrainingError, match="split_by='source'"):
        split_validation(np.zeros(10), np.tile(["a", "b"], 5))
    with pytest.raises(TrainingError, match="unknown split_by 'frames'; valid: exposure, "
                                            "frame, field, source"):
        split_validation(groups, labels, by="frames")
    assert all(np.array_equal(x, y) for x, y in
               zip(split_validation(groups, labels, by="frame", val_fraction=0.3, seed=3),
                   (tr, va, names)))


def test_split_by_source(store, tmp_path):
    card = train(store, arch="lenet5", out=tmp_path / "s.pt", epochs=1, split_by="source",
                 progress=False)
    assert card.training["split"]["val_exposures"] == []
    assert card.training["split"]["by"] == "source" and card.metrics["n_val"] > 0


def test_unknown_arch_lists_the_models(store, tmp_path):
    with pytest.raises(TrainingError, match=r"unknown model 'smallcn'.*'smallcnn'.*registered "
                                            r"models: .*lenet5, .*smallcnn"):
        train(store, arch="smallcn", out=tmp_path / "x.pt")
    assert not any(tmp_path.iterdir())


def test_load_labelled_reads_the_labelled_sources_and_fingerprints_them(store, smallcnn,
                                                                        tmp_path):
    data = load_labelled(store)
    assert data["images"].shape == (294, 1, 32, 32) and data["images"].dtype == np.float32
    assert set(data["labels"]) == set(CLASSES) and data["exposures"].shape == (294,)
    assert data["bands"] == ["r"] and data["n_unlabelled"] == 6
    assert data["data_sha256"] == smallcnn[0].training["data_sha256"]  # what the card records
    ds = xr.open_zarr(store).load()
    labels = ds["label"].values.astype(str).copy()
    labels[10] = "star" if labels[10] != "star" else "galaxy"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.assign_coords(label=("source", labels)).to_zarr(tmp_path / "relabelled.zarr",
                                                           zarr_format=3, mode="w")
    assert load_labelled(tmp_path / "relabelled.zarr")["data_sha256"] != data["data_sha256"]
    assert data["pixels_sha256"] == smallcnn[0].training["pixels_sha256"]
    images = ds["image"].values.copy()
    images[5, 0, 16, 16] += 1.0  # one pixel of one labelled stamp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.assign(image=(ds["image"].dims, images)).to_zarr(
            tmp_path / "repainted.zarr", zarr_format=3, mode="w", encoding=image_encoding(ds))
    repainted = load_labelled(tmp_path / "repainted.zarr")
    assert repainted["data_sha256"] == data["data_sha256"]  # labels, exposures, ids: the same
    assert repainted["pixels_sha256"] != data["pixels_sha256"]


def test_bad_stores(tmp_path):
    with pytest.raises(StoreError, match="missing.zarr: no such cutout store"):
        train(tmp_path / "missing.zarr", arch="smallcnn", out=tmp_path / "x.pt")
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(StoreError, match="empty.zarr: not a readable Zarr v3 cutout store"):
        train(tmp_path / "empty.zarr", arch="smallcnn", out=tmp_path / "x.pt")
    one = make_store(tmp_path / "one.zarr", n=30, n_exp=1)
    with pytest.raises(StoreError, match=r"one\.zarr: .*use split_by='source'"):
        train(one, arch="smallcnn", out=tmp_path / "x.pt")
    ds = xr.open_zarr(one).drop_vars("label")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.to_zarr(tmp_path / "nolabel.zarr", zarr_format=3, mode="w")
    with pytest.raises(StoreError, match=r"no per-source 'label'"):
        train(tmp_path / "nolabel.zarr", arch="smallcnn", out=tmp_path / "x.pt")
    ds = xr.open_zarr(one)
    ds.attrs = {k: v for k, v in ds.attrs.items() if k != "kind"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.to_zarr(tmp_path / "nokind.zarr", zarr_format=3, mode="w")
    with pytest.raises(StoreError, match=r"nokind\.zarr: attribute 'kind' is None, not 'cutouts'"):
        load_labelled(tmp_path / "nokind.zarr")  # the store contract is checked
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize("kw, match", [
    ({"epochs": 0}, "train: epochs must be a positive integer, got 0"),
    ({"batch_size": True}, "train: batch_size must be a positive integer, got True"),
    ({"batch_size": 1}, r"train: batch_size must be >= 2 \(BatchNorm\), got 1"),
    ({"patience": 2.5}, "train: patience must be a positive integer, got 2.5"),
    ({"lr": 0.0}, "train: lr must be a positive number, got 0.0"),
    ({"image_size": 0}, "train: image_size must be a positive integer, got 0"),
    ({"split_by": "pixel"}, "train: unknown split_by 'pixel'"),
    ({"val_fraction": 1.0}, r"train: val_fraction must be between 0 and 1 \(both excluded\)"),
    ({"device": "tpu"}, "unknown device 'tpu'"),
    ({"stretch": {"name": "log"}}, "unknown stretch 'log'"),
])
def test_bad_settings_are_training_errors(tmp_path, kw, match):
    # refused before the store is read: the store need not exist
    with pytest.raises(TrainingError, match=match):
        train(tmp_path / "never.zarr", arch="smallcnn", out=tmp_path / "x.pt", **kw)
    assert not (tmp_path / "x.pt").exists()


def test_an_arch_that_cannot_take_the_input_size_is_a_training_error(tmp_path):
    store = make_store(tmp_path / "s.zarr", n=60)
    with pytest.raises(TrainingError, match="LeNet5 needs image_size >= 16, got 8"):
        train(store, arch="lenet5", out=tmp_path / "x.pt", image_size=8, progress=False)
    assert not (tmp_path / "x.pt").exists()


def test_cli_train_reports_bad_settings_in_one_line_but_bugs_with_a_traceback(tmp_path,
                                                                             monkeypatch):
    store = make_store(tmp_path / "s.zarr", n=60)
    runner = CliRunner()
    res = runner.invoke(cli, ["train", str(store), "--out", str(tmp_path / "x.pt"),
                              "--epochs", "0"])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit)
    assert res.output == "skysieve: error: train: epochs must be a positive integer, got 0\n"
    res = runner.invoke(cli, ["train", str(store), "--out", str(tmp_path / "x.pt"),
                              "--softening", "-1"])
    assert res.exit_code == 1 and "skysieve: error: stretch 'softening'" in res.output

    def broken(*args, **kwargs):
        raise ValueError("a bug, not bad input")

    monkeypatch.setattr("pipeline.training.fit.load_labelled", broken)
    res = runner.invoke(cli, ["train", str(store), "--out", str(tmp_path / "x.pt")])
    assert isinstance(res.exception, ValueError)  # not turned into a one-line user error
    assert "skysieve: error" not in res.output
    assert not (tmp_path / "x.pt").exists()


def test_metrics_helpers():
    m = classification_metrics(np.array([0, 0, 1, 1, 1, 1]), np.array([0, 1, 1, 1, 1, 0]),
                               ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 0.75) / 2)
    assert m["recall"] == {"a": 0.5, "b": 0.75, "c": None}
    assert m["confusion"] == [[1, 1, 0], [1, 3, 0], [0, 0, 0]]
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3.0, (4000, 3))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = (rng.random((4000, 1)) > p.cumsum(1)).sum(1)  # labels drawn from softmax(logits)
    assert fit_temperature(logits, y) == pytest.approx(1.0, abs=0.15)
    assert fit_temperature(logits * 4.0, y) == pytest.approx(4.0, rel=0.15)  # over-confident
    p = np.full((4, 2), 0.5)
    assert expected_calibration_error(p, np.array([0, 1, 0, 1])) == pytest.approx(0.0)


# --------------------------------------------------------------------------- augment, stretch, field split
def test_geometric_augmentation_only_moves_pixels():
    z = torch.randn(64, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    geo = augment(z, torch.Generator().manual_seed(1), p_blur=0.0, p_dim=0.0)
    full = augment(z, torch.Generator().manual_seed(1))
    # flips, rotations and wrapped shifts permute the pixels of each stamp ...
    assert torch.equal(geo.flatten(1).sort(dim=1).values, z.flatten(1).sort(dim=1).values)
    assert not torch.equal(geo, z)
    # ... blur and dimming change them, for some stamps
    same = (full.flatten(1).sort(dim=1).values == z.flatten(1).sort(dim=1).values).all(dim=1)
    assert 0 < int((~same).sum()) < 64


def test_augment_and_stretch_are_recorded_and_applied(store, tmp_path):
    out = tmp_path / "lin.pt"
    card = train(store, arch="smallcnn", out=out, epochs=2, batch_size=64, seed=0,
                 augment="geometric", stretch={"name": "linear", "softening": 5},
                 progress=False)
    assert card.stretch == {"name": "linear", "softening": 5.0, "scale": 1.0}
    assert card.training["augment"] == "geometric"
    assert card.training["augment_detail"] == "dihedral8, shift<=2px"
    model, card2 = load_checkpoint(out, sha256=card.sha256)
    images, y = _val_stamps(store, card)
    proba = Predictor(model, card2, batch_size=50).predict_proba(
        prepare(images, stretch=card2.stretch, image_size=card2.image_size))
    assert classification_metrics(y, proba.argmax(1), card.classes)["confusion"] == \
        card.metrics["confusion"]
    with pytest.raises(TrainingError, match="unknown augment 'blur'; valid: full, geometric"):
        train(store, arch="smallcnn", out=tmp_path / "x.pt", augment="blur")
    with pytest.raises(TrainingError, match="stretch 'softening' must be a finite number > 0"):
        train(store, arch="smallcnn", out=tmp_path / "x.pt", stretch={"softening": -1})
    assert not (tmp_path / "x.pt").exists()


def _frames(seed=0):
    """Five frames of a 2000 px CCD: b re-images a's field shifted, e re-images d on the sky."""
    rng = np.random.default_rng(seed)
    pos = {f: rng.uniform(0, 2000, (40, 2)) for f in "acd"}
    keep = rng.permutation(40)[:30]  # 75% of a's sources, on another pointing, + 10 others
    pos["b"] = np.concatenate([pos["a"][keep] + [137.4, -52.1] + rng.normal(0, 0.5, (30, 2)),
                               rng.uniform(0, 2000, (10, 2))])
    pos["e"] = rng.uniform(0, 2000, (40, 2))  # other pixels, but the same stars as d
    names = np.repeat(list("abcde"), 40)
    xy = np.concatenate([pos[f] for f in "abcde"])
    sky = rng.uniform([150.0, 20.0], [150.5, 20.5], (40, 2))
    radec = np.full((200, 2), np.nan)
    radec[120:160] = sky
    radec[160:] = sky + rng.normal(0, 0.2 / 3600, (40, 2))  # within 1"
    return names, xy, radec


def test_group_fields_joins_frames_of_one_field():
    names, xy, radec = _frames()
    no_sky = group_fields(names, xy[:, 0], xy[:, 1])
    assert no_sky == {"a": "a+b", "b": "a+b", "c": "c", "d": "d", "e": "e"}
    both = group_fields(names, xy[:, 0], xy[:, 1], radec[:, 0], radec[:, 1])
    assert both == {"a": "a+b", "b": "a+b", "c": "c", "d": "d+e", "e": "d+e"}
    # unrelated frames stay apart: shuffle b's positions
    xy2 = xy.copy()
    xy2[40:80] = np.random.default_rng(1).uniform(0, 2000, (40, 2))
    assert set(group_fields(names, xy2[:, 0], xy2[:, 1]).values()) == set("abcde")
    with pytest.raises(ValueError, match="one value per source"):
        group_fields(names, xy[:10, 0], xy[:, 1])


def test_split_by_field_never_splits_a_field(tmp_path):
    _, xy, _ = _frames()
    path = make_store(tmp_path / "fields.zarr", n=200, n_exp=5, size=16, seed=3)
    ds = xr.open_zarr(path).load()
    order = np.argsort(ds["exposure"].values.astype(str), kind="stable")  # exp0..exp4 = a..e
    x, y = np.empty(200), np.empty(200)
    x[order], y[order] = xy[:, 0], xy[:, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.assign_coords(x=("source", x), y=("source", y)).to_zarr(
            tmp_path / "xy.zarr", zarr_format=3, mode="w")
    seen = set()
    for split_seed in range(4):
        card = train(tmp_path / "xy.zarr", arch="lenet5", out=tmp_path / f"f{split_seed}.pt",
                     epochs=1, batch_size=64, split_by="field", split_seed=split_seed,
                     progress=False)
        split = card.training["split"]
        assert split["by"] == "field" and split["groups"] == ["exp0+exp1"]
        val = set(split["val_exposures"])
        assert {"exp0", "exp1"} <= val or not {"exp0", "exp1"} & val
        assert val == {e for f in split["val_fields"] for e in f.split("+")}
        seen.add(tuple(split["val_fields"]))
    assert any("exp0+exp1" in v for v in seen)  # the joined field does get held out

    runner = CliRunner()
    result = runner.invoke(cli, ["train", str(tmp_path / "xy.zarr"), "--arch", "lenet5",
                                 "--out", str(tmp_path / "cli.pt"), "--epochs", "1",
                                 "--split-by", "frame", "--augment", "geometric",
                                 "--stretch", "linear", "--softening", "2"])
    assert result.exit_code == 0, result.output
    card = load_checkpoint(tmp_path / "cli.pt")[1]
    assert card.training["split"]["by"] == "frame" and "groups" not in card.training["split"]
    assert card.training["augment"] == "geometric"
    assert card.stretch == {"name": "linear", "softening": 2.0, "scale": 1.0}


def test_excluded_classes_are_left_out_of_training_and_evaluation(tmp_path):
    """--exclude-class: a label treated as unknown (Galaxy Zoo's 'uncertain'), recorded in the card."""
    from pipeline.training.data import load_labelled
    from pipeline.training.evaluate import evaluate

    names = [("uncertain" if i % 7 == 0 else CLASSES[i % 3]) for i in range(300)]
    path = blob_store(tmp_path / "u.zarr", n=300, size=32, n_exp=3, labels=names)
    data = load_labelled(path, exclude=["uncertain"])
    assert data["n_excluded"] == names.count("uncertain") and "uncertain" not in data["labels"]
    assert len(data["labels"]) == 300 - names.count("uncertain")
    card = train(path, arch="smallcnn", out=tmp_path / "m.pt", epochs=1, seed=0,
                 split_by="source", progress=False, exclude_classes=["uncertain"])
    assert card.classes == sorted(CLASSES)
    assert card.training["excluded_classes"] == ["uncertain"]
    assert card.training["n_excluded"] == names.count("uncertain")
    # evaluate leaves the card's excluded label out instead of refusing the store
    result = evaluate(tmp_path / "m.pt", path, out=tmp_path / "ev", subset="all", speed=False,
                      blur_sweep=(0,))
    assert result["n"] == 300 - names.count("uncertain")
    # without the exclusion the store has four classes
    four = train(path, arch="smallcnn", out=tmp_path / "m4.pt", epochs=1, seed=0,
                 split_by="source", progress=False)
    assert "uncertain" in four.classes
