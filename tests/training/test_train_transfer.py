"""Fine-tuning from given weights (``init``) and knowledge distillation (``teacher``).

Real Zarr stores, real checkpoints written and read by ``workers.checkpoint``, real
torch files, small stamps and one-epoch trainings.
"""

from __future__ import annotations

import dataclasses
import os
import pty
import sys
import warnings

import numpy as np
import pytest
import torch
import xarray as xr
from click.testing import CliRunner
from test_train import make_store  # tests/ is on sys.path (pytest's rootdir import mode)

from pipeline.cli import cli
from pipeline.errors import TrainingError
from pipeline.training.distill import kd_loss
from pipeline.training.fit import train
from pipeline.training.loop import amp_settings
from pipeline.training.splits import split_validation
from pipeline.training.transfer import read_weights, transfer_weights
from workers.checkpoint import CheckpointError, file_sha256, load_checkpoint, save_checkpoint
from workers.models import create_model

FAST = dict(arch="smallcnn", epochs=1, batch_size=32, progress=False)
FIRST_CONV = "features.0.0.0.weight"  # smallcnn's stem
HEAD = ["head.weight", "head.bias"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two stores of the same stamps: three classes, and two classes with other names."""
    root = tmp_path_factory.mktemp("transfer")
    three = make_store(root / "three.zarr", n=120, n_exp=6, seed=4)
    ds = xr.open_zarr(three).load()
    two = np.where(ds["label"].values.astype(str) == "star", "point", "extended")
    ds = ds.assign_coords(label=("source", two.astype(str)))
    with warnings.catch_warnings():  # zarr: fixed-length strings have no v3 spec yet
        warnings.simplefilter("ignore")
        ds.to_zarr(root / "two.zarr", zarr_format=3, mode="w")
    base = train(three, out=root / "base.pt", seed=0, **FAST)
    return {"three": three, "two": root / "two.zarr", "base": root / "base.pt", "card": base,
            "root": root}


def _state(path):
    model, _ = load_checkpoint(path)
    return model.state_dict()


# --------------------------------------------------------------------------- fine-tuning
def test_fine_tune_other_classes_keeps_the_body_and_refreshes_the_head(data, tmp_path, capsys):
    card = train(data["two"], out=tmp_path / "ft.pt", seed=0, lr=1e-9,
                 **{**FAST, "progress": True}, init=data["base"])
    info = card.training["init"]
    assert card.classes == ["extended", "point"]
    assert info["path"] == str(data["base"].resolve()) and info["sha256"] == data["card"].sha256
    assert info["arch"] == "smallcnn" and info["adapted"] == []
    assert info["skipped"] == HEAD and info["loaded"] == len(_state(data["base"])) - 2
    # lr ~ 0: the body is the pretrained one, the 2-class head a fresh one
    base, tuned = _state(data["base"]), _state(tmp_path / "ft.pt")
    torch.testing.assert_close(tuned[FIRST_CONV], base[FIRST_CONV], atol=1e-6, rtol=0)
    assert tuned["head.weight"].shape == (2, base["head.weight"].shape[1])
    train(data["two"], out=tmp_path / "s.pt", seed=0, lr=1e-9, **FAST)  # from scratch
    scratch = _state(tmp_path / "s.pt")
    assert not torch.allclose(scratch[FIRST_CONV], base[FIRST_CONV])
    err = capsys.readouterr().err
    assert "init from" in err and f"{info['loaded']} tensors loaded" in err
    assert "left as initialised (head.weight, head.bias)" in err
    assert "\r" not in err  # no progress bar when stderr is not a terminal


def test_a_head_for_the_same_classes_in_another_order_is_reordered(data, tmp_path):
    state = _state(data["base"])
    classes = data["card"].classes
    flipped = {k: (v.flip(0) if k in HEAD else v) for k, v in state.items()}
    model = create_model("smallcnn", num_classes=3, in_chans=1, image_size=32)
    model.load_state_dict(flipped)
    card = dataclasses.replace(data["card"], classes=classes[::-1], sha256="")
    save_checkpoint(model, card, tmp_path / "flipped.pt")
    fresh = create_model("smallcnn", num_classes=3, in_chans=1, image_size=32)
    info = transfer_weights(fresh, read_weights(tmp_path / "flipped.pt"), arch="smallcnn",
                            classes=classes)
    assert info["skipped"] == [] and info["loaded"] == len(state)
    got = fresh.state_dict()
    assert all(torch.equal(got[k], state[k]) for k in state)


def test_a_bare_rgb_state_dict_is_adapted_to_one_band(data, tmp_path):
    rgb = create_model("smallcnn", num_classes=5, in_chans=3, image_size=32).state_dict()
    path = tmp_path / "imagenet_style.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in rgb.items()}, "epoch": 90}, path)
    sha = file_sha256(path)
    source = read_weights(path, sha256=sha.upper())
    assert source["arch"] is None and source["sha256"] == sha and set(source["state"]) == set(rgb)
    model = create_model("smallcnn", num_classes=3, in_chans=1, image_size=32)
    info = transfer_weights(model, source, arch="smallcnn", classes=["a", "b", "c"])
    assert info["adapted"] == [FIRST_CONV] and info["skipped"] == HEAD
    got = model.state_dict()
    torch.testing.assert_close(got[FIRST_CONV], rgb[FIRST_CONV].sum(dim=1, keepdim=True))
    assert torch.equal(got["features.1.0.0.weight"], rgb["features.1.0.0.weight"])
    four = create_model("smallcnn", num_classes=5, in_chans=4, image_size=32)
    transfer_weights(four, source, arch="smallcnn")  # RGB -> 4 bands: repeat, scale by 3/4
    torch.testing.assert_close(four.state_dict()[FIRST_CONV][:, 3], rgb[FIRST_CONV][:, 0] * 0.75)
    card = train(data["three"], out=tmp_path / "rgb.pt", seed=0, init=path, init_sha256=sha,
                 **FAST)
    assert card.training["init"]["adapted"] == [FIRST_CONV]
    assert card.training["init"]["sha256"] == sha and card.training["init"]["arch"] is None


def test_refused_init_files_name_the_file(data, tmp_path):
    bare = tmp_path / "w.pt"
    torch.save(create_model("smallcnn", num_classes=3).state_dict(), bare)
    with pytest.raises(CheckpointError, match=r"w\.pt: sha256 [0-9a-f]{64} does not match"):
        train(data["three"], out=tmp_path / "x.pt", init=bare, init_sha256="0" * 64, **FAST)
    with pytest.raises(CheckpointError, match=r"base\.pt: sha256 .* does not match"):
        train(data["three"], out=tmp_path / "x.pt", init=data["base"], init_sha256="ab" * 32,
              **FAST)
    vgg = tmp_path / "vgg11.pt"
    torch.save(create_model("vgg11", num_classes=3).state_dict(), vgg)
    with pytest.raises(CheckpointError, match=r"vgg11\.pt: only 0 of the \d+ tensors of arch "
                                              r"'resnet18'.*conv1\.weight.*Is it a checkpoint "
                                              r"of arch 'resnet18'\?"):
        train(data["three"], out=tmp_path / "x.pt", init=vgg, **{**FAST, "arch": "resnet18"})
    pickled = tmp_path / "module.pt"
    torch.save(create_model("smallcnn", num_classes=3), pickled)  # a whole pickled module
    with pytest.raises(CheckpointError, match=r"module\.pt: refused, .*pickled code"):
        train(data["three"], out=tmp_path / "x.pt", init=pickled, **FAST)
    with pytest.raises(CheckpointError, match=r"nope\.pth: weights file not found"):
        train(data["three"], out=tmp_path / "x.pt", init=tmp_path / "nope.pth", **FAST)
    with pytest.raises(TrainingError, match="init_sha256 given without init"):
        train(data["three"], out=tmp_path / "x.pt", init_sha256="0" * 64, **FAST)
    assert not (tmp_path / "x.pt").exists()


def test_same_seed_same_weights_with_init(data, tmp_path):
    kw = dict(seed=5, init=data["base"], **FAST)
    a = train(data["two"], out=tmp_path / "a.pt", **kw)
    b = train(data["two"], out=tmp_path / "b.pt", **kw)
    assert a.sha256 == b.sha256 and a.metrics == b.metrics


# --------------------------------------------------------------------------- distillation
def test_distillation_follows_the_teacher(data, tmp_path):
    teacher = tmp_path / "teacher.pt"  # another arch and input size: the teacher's own inputs
    tcard = train(data["three"], out=teacher, seed=1, image_size=28,
                  **{**FAST, "arch": "lenet5"})
    kw = dict(seed=3, split_seed=11, teacher=teacher, **FAST)
    none = train(data["three"], out=tmp_path / "none.pt", **{**kw, "teacher": None})
    zero = train(data["three"], out=tmp_path / "zero.pt", kd_alpha=0.0, **kw)
    one = train(data["three"], out=tmp_path / "one.pt", kd_alpha=1.0, kd_temperature=2.0, **kw)
    assert one.training["teacher"] == {"path": str(teacher.resolve()), "sha256": tcard.sha256,
                                       "arch": "lenet5", "alpha": 1.0, "temperature": 2.0}
    assert "KL(softmax(teacher/T) || softmax(student/T))" in one.training["loss"]
    assert "T = 2" in one.training["loss"] and "teacher" not in none.training
    assert zero.sha256 == none.sha256  # alpha 0: the labels only; the teacher draws no randomness
    assert one.sha256 != zero.sha256  # alpha 1: the teacher's soft targets only
    # split_seed fixes the held-out exposures whatever the seed
    ds = xr.open_zarr(data["three"])
    names = split_validation(ds["exposure"].values.astype(str), ds["label"].values.astype(str),
                             seed=11)[2]
    assert one.training["split"]["seed"] == 11 and one.training["split"]["val_exposures"] == names
    assert data["card"].training["split"]["seed"] == 0  # default: the seed


def test_a_teacher_with_classes_in_another_order_teaches_the_same(data, tmp_path):
    state = _state(data["base"])
    model = create_model("smallcnn", num_classes=3, in_chans=1, image_size=32)
    model.load_state_dict({k: (v.flip(0) if k in HEAD else v) for k, v in state.items()})
    save_checkpoint(model, dataclasses.replace(data["card"], classes=data["card"].classes[::-1],
                                               sha256=""), tmp_path / "flipped.pt")
    kw = dict(seed=2, kd_alpha=1.0, **FAST)
    a = train(data["three"], out=tmp_path / "a.pt", teacher=data["base"], **kw)
    b = train(data["three"], out=tmp_path / "b.pt", teacher=tmp_path / "flipped.pt", **kw)
    sa, sb = _state(tmp_path / "a.pt"), _state(tmp_path / "b.pt")
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], atol=1e-4, rtol=1e-4)
    assert b.training["teacher"]["sha256"] != a.training["teacher"]["sha256"]


def test_bad_teachers_and_settings_are_refused(data, tmp_path):
    with pytest.raises(CheckpointError, match=r"base\.pt: the teacher's classes \['diffuse', "
                                              r"'galaxy', 'star'\] are not the student's "
                                              r"\['extended', 'point'\]"):
        train(data["two"], out=tmp_path / "x.pt", teacher=data["base"], **FAST)
    for kw, match in (({"kd_alpha": 1.5}, "kd_alpha must be between 0 and 1, got 1.5"),
                      ({"kd_alpha": -0.1}, "kd_alpha must be between 0 and 1"),
                      ({"kd_temperature": 0.0}, "kd_temperature must be a positive number")):
        with pytest.raises(TrainingError, match=match):
            train(data["three"], out=tmp_path / "x.pt", teacher=data["base"], **kw, **FAST)
    assert not (tmp_path / "x.pt").exists()


def test_kd_loss_andamp_settings():
    torch.manual_seed(0)
    s, t = torch.randn(8, 3), torch.randn(8, 3)
    ce = torch.tensor(0.7)
    assert torch.equal(kd_loss(s, t, ce, alpha=0.0, temperature=4.0), ce)
    assert kd_loss(s, s, ce, alpha=0.5, temperature=4.0).item() == pytest.approx(0.35, abs=1e-6)
    p_t = torch.softmax(t / 2, 1)
    kl = (p_t * (p_t.log() - torch.log_softmax(s / 2, 1))).sum(1).mean()
    assert kd_loss(s, t, ce, alpha=1.0, temperature=2.0).item() == pytest.approx(
        4 * kl.item(), rel=1e-5)
    assert amp_settings(torch.device("cpu")) == (False, torch.float32)
    cuda = torch.device("cuda", 0)
    assert amp_settings(cuda, bf16_supported=True) == (True, torch.bfloat16)
    assert amp_settings(cuda, bf16_supported=False) == (True, torch.float16)


# --------------------------------------------------------------------------- progress, CLI
def test_progress_bar_on_a_terminal(data, tmp_path, monkeypatch):
    master, slave = pty.openpty()
    term = os.fdopen(slave, "w", buffering=1)
    monkeypatch.setattr(sys, "stderr", term)
    try:
        train(data["three"], out=tmp_path / "p.pt", seed=0, **{**FAST, "progress": True})
        term.flush()
        chunks = []
        os.set_blocking(master, False)
        while True:
            try:
                chunk = os.read(master, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        term.close()
        os.close(master)
    out = b"".join(chunks).decode()
    assert "\repoch 1/1 [" in out and "loss " in out
    done, total = out.split("] ")[-1].split(" ")[0].split("/")
    assert done == total and int(total) >= 2  # the last update shows every batch done
    assert "epoch 1/1 loss" in out and "val_bacc" in out  # the summary line still follows


def test_cli_train_with_init_and_teacher(data, tmp_path):
    runner = CliRunner()
    bad = runner.invoke(cli, ["train", str(data["two"]), "--out", str(tmp_path / "x.pt"),
                              "--epochs", "1", "--init", str(data["base"]),
                              "--init-sha256", "0" * 64])
    assert bad.exit_code == 1 and "skysieve: error: " in bad.output
    assert "does not match" in bad.output and "Traceback" not in bad.output
    ok = runner.invoke(cli, ["train", str(data["three"]), "--out", str(tmp_path / "kd.pt"),
                             "--epochs", "1", "--batch-size", "32", "--teacher",
                             str(data["base"]), "--kd-alpha", "0.7", "--kd-temperature", "3"])
    assert ok.exit_code == 0, ok.output
    teacher = load_checkpoint(tmp_path / "kd.pt")[1].training["teacher"]
    assert (teacher["alpha"], teacher["temperature"]) == (0.7, 3.0)


def test_cli_init_takes_a_bundled_model_by_name(data, tmp_path):
    """``train --init default`` is the documented path for a new survey's own labels."""
    from pipeline import bundled

    runner = CliRunner()
    ok = runner.invoke(cli, ["train", str(data["three"]), "--out", str(tmp_path / "ft.pt"),
                             "--epochs", "1", "--batch-size", "32", "--init", "default"])
    assert ok.exit_code == 0, ok.output
    init = load_checkpoint(tmp_path / "ft.pt")[1].training["init"]
    assert init["sha256"] == file_sha256(bundled.resolve("default"))
    typo = runner.invoke(cli, ["train", str(data["three"]), "--out", str(tmp_path / "t.pt"),
                               "--epochs", "1", "--init", "defualt"])
    assert typo.exit_code == 2 and "neither a bundled model" in typo.output
    assert "default" in typo.output.split("neither a bundled model")[1]
