"""Checkpoints: MODEL.pt + MODEL.json, sha256-checked, weights_only, refused clearly when wrong."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from workers.checkpoint import (CheckpointError, ModelCard, checkpoint_paths, file_sha256,
                                load_card, load_checkpoint, load_ood_stats, save_checkpoint)
from workers.models import create_model

CLASSES = ["galaxy", "star", "qso"]


def _card(arch: str = "smallcnn", classes: list[str] | None = None, **kw) -> ModelCard:
    return ModelCard(arch=arch, classes=list(classes or CLASSES), in_chans=1, image_size=32,
                     bands=["r"], stretch={"name": "asinh", "softening": 3.0, "scale": 1.0},
                     **kw)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = create_model("smallcnn", num_classes=3, image_size=32).eval()
    card = save_checkpoint(model, _card(metrics={"accuracy": 0.9}), tmp_path / "m.pt")
    return model, card, tmp_path / "m.pt"


def test_round_trip(saved):
    model, card, pt = saved
    assert pt.is_file() and pt.with_suffix(".json").is_file()
    assert card.sha256 == file_sha256(pt) and len(card.sha256) == 64
    assert card.params == sum(p.numel() for p in model.parameters())
    assert card.created.endswith("+00:00") and card.skysieve_version
    loaded, card2 = load_checkpoint(pt, sha256=card.sha256)
    assert card2 == card and not loaded.training
    x = torch.randn(5, 1, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    # the card or the stem name the same checkpoint; no temporary files are left behind
    assert load_checkpoint(pt.with_suffix(".json"))[1] == card
    assert load_checkpoint(pt.with_suffix(""))[1] == card
    assert sorted(p.name for p in pt.parent.iterdir()) == ["m.json", "m.pt"]


def test_same_weights_same_bytes(saved, tmp_path):
    model, card, pt = saved
    card2 = save_checkpoint(model, _card(), tmp_path / "other" / "copy.pt")
    assert card2.sha256 == card.sha256


def test_card_is_forward_compatible(saved):
    _, card, pt = saved
    data = json.loads(pt.with_suffix(".json").read_text())
    data["future_field"] = {"a": 1}
    data["extra"] = {"note": "kept"}
    pt.with_suffix(".json").write_text(json.dumps(data))
    card2 = load_card(pt)
    assert card2.extra == {"note": "kept", "future_field": {"a": 1}}
    again = ModelCard.from_json(card2.to_json())
    assert again == card2 and json.loads(again.to_json())["future_field"] == {"a": 1}
    assert again.num_classes == 3


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {shlex.quote(str(marker))}",))

    pt = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, pt)
    card = _card(sha256=file_sha256(pt))
    pt.with_suffix(".json").write_text(card.to_json())
    with pytest.raises(CheckpointError, match=r"evil\.pt: refused.*(system|posix)") as info:
        load_checkpoint(pt, sha256=card.sha256)
    assert "weights_only=False" not in str(info.value)
    assert not marker.exists()


def test_truncated_file_is_refused(saved):
    _, card, pt = saved
    data = pt.read_bytes()
    pt.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="sha256 .* does not match"):
        load_checkpoint(pt)
    # even with a card that agrees with the truncated bytes, it does not load
    card.sha256 = file_sha256(pt)
    pt.with_suffix(".json").write_text(card.to_json())
    with pytest.raises(CheckpointError, match=r"m\.pt: truncated or corrupt"):
        load_checkpoint(pt)


def test_wrong_sha_names_both_hashes(saved):
    _, card, pt = saved
    wrong = "0" * 64
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(pt, sha256=wrong)
    msg = str(info.value)
    assert str(pt) in msg and card.sha256 in msg and wrong in msg


def test_modified_weights_fail_the_card_sha(saved):
    model, card, pt = saved
    torch.save({k: v + 1 for k, v in model.state_dict().items()}, pt)
    with pytest.raises(CheckpointError, match=f"does not match '{card.sha256}' given by its card"):
        load_checkpoint(pt)


@pytest.mark.parametrize("change,match", [
    ({"classes": ["a", "b"]}, r"do not fit arch='smallcnn' with 2 classes"),
    ({"arch": "lenet5"}, r"do not fit arch='lenet5'"),
    ({"arch": "resnet9000"}, r"cannot be built .*unknown model 'resnet9000'"),
])
def test_weights_that_do_not_fit_the_card(saved, change, match):
    _, card, pt = saved
    data = json.loads(card.to_json()) | change
    pt.with_suffix(".json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(pt)


def test_save_refuses_a_card_that_does_not_describe_the_model(tmp_path):
    model = create_model("lenet5", num_classes=3, image_size=32)
    with pytest.raises(CheckpointError, match="do not fit arch='smallcnn'"):
        save_checkpoint(model, _card(), tmp_path / "x.pt")
    assert not any(tmp_path.iterdir())


def test_missing_or_broken_card(saved):
    _, _, pt = saved
    card_path = pt.with_suffix(".json")
    card_path.write_text("{not json")
    with pytest.raises(CheckpointError, match=r"m\.json: invalid model card"):
        load_checkpoint(pt)
    card_path.write_text(json.dumps({"classes": ["a"]}))
    with pytest.raises(CheckpointError, match="lacks arch"):
        load_checkpoint(pt)
    card_path.unlink()
    with pytest.raises(CheckpointError, match=r"m\.json: model card not found"):
        load_checkpoint(pt)


def test_missing_weights(saved):
    _, _, pt = saved
    pt.unlink()
    with pytest.raises(CheckpointError, match="weights not found"):
        load_checkpoint(pt)


def test_not_a_state_dict(tmp_path):
    pt = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], pt)
    pt.with_suffix(".json").write_text(_card(sha256=file_sha256(pt)).to_json())
    with pytest.raises(CheckpointError, match="expected a state_dict"):
        load_checkpoint(pt)


def test_card_validation():
    with pytest.raises(ValueError, match="duplicates"):
        ModelCard.from_dict({"arch": "smallcnn", "classes": ["a", "a"]})
    with pytest.raises(ValueError, match="temperature"):
        ModelCard.from_dict({"arch": "smallcnn", "classes": ["a"], "temperature": 0})
    assert checkpoint_paths("dir/model.v2")[0].name == "model.v2.pt"
    assert CheckpointError.__mro__[1] is ValueError


def test_checkpoint_files_are_readable_by_others(tmp_path):
    """mkstemp makes files private; a written checkpoint follows the umask like any file."""
    import os
    import stat

    from workers.checkpoint import ModelCard, save_checkpoint
    from workers.models import create_model

    old = os.umask(0o022)
    try:
        save_checkpoint(create_model("lenet5", num_classes=2, image_size=32),
                        ModelCard(arch="lenet5", classes=["a", "b"], image_size=32), tmp_path / "m.pt")
    finally:
        os.umask(old)
    for name in ("m.pt", "m.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644


BUNDLED = Path(__file__).resolve().parents[2] / "pipeline" / "bundled"


@pytest.mark.parametrize("name", ["default", "star-galaxy"])
def test_bundled_models_carry_checked_ood_statistics(name):
    """The shipped models score out-of-distribution stamps: statistics beside them, sha256 in
    the card, fitted on this model's features and ranked on held-out stamps."""
    pt = BUNDLED / f"{name}.pt"
    card = load_card(pt)
    assert card.sha256 == file_sha256(pt)
    assert card.ood["file"] == f"{name}.ood.npz"
    assert card.ood["sha256"] == file_sha256(BUNDLED / card.ood["file"])
    stats = load_ood_stats(pt, card)
    assert stats.num_classes == card.num_classes and stats.dim == card.ood["dim"]
    assert card.ood["n_val"] >= 500 and stats.val_mahalanobis.size == card.ood["n_val"]
    assert card.ood_threshold == 0.99 and card.ood["fitted_on"]["data_sha256"]
    model, _ = load_checkpoint(pt)  # checks the statistics fit the head
    assert model.head.in_features == stats.dim


def test_ood_sidecar_is_readable_by_others(tmp_path):
    import stat

    from workers.ood import OODStats

    stats = OODStats(center=np.zeros(84), transform=np.eye(84, 3), means=np.zeros((2, 3)),
                     val_mahalanobis=[1.0], val_energy=[0.0])
    old = os.umask(0o022)
    try:
        save_checkpoint(create_model("lenet5", num_classes=2, image_size=32),
                        ModelCard(arch="lenet5", classes=["a", "b"], image_size=32),
                        tmp_path / "m.pt", ood=stats)
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.ood.npz", "m.pt"]
    assert stat.S_IMODE((tmp_path / "m.ood.npz").stat().st_mode) == 0o644
