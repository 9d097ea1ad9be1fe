"""Fitting OOD statistics (pipeline.training.ood): ``ood-fit`` and ``train`` write the kNN bank
of the training split's features and rank the combined score on the validation split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from _blob_stores import CLASSES, make_store
from pipeline.training.ood import fit_checkpoint_ood, split_features
from workers.checkpoint import ModelCard, file_sha256, load_ood_stats, save_checkpoint
from workers.models import create_model
from workers.ood import COMBINED, l2_normalise

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("ood_fit") / "s.zarr", n=150, size=32, n_exp=3,
                      seed=0)


def test_ood_fit_writes_the_bank_of_the_training_split(store, tmp_path):
    torch.manual_seed(0)
    model = create_model("smallcnn", num_classes=3, image_size=32).eval()
    card = ModelCard(arch="smallcnn", classes=list(CLASSES), image_size=32,
                     training={"split": {"by": "exposure", "val_fraction": 0.34, "seed": 0}})
    src = tmp_path / "m.pt"
    save_checkpoint(model, card, src)
    weights = src.read_bytes()
    new = fit_checkpoint_ood(src, store, tmp_path / "out" / "n.pt", progress=False)
    out = tmp_path / "out" / "n.pt"
    assert out.read_bytes() == weights and new.sha256 == file_sha256(src)
    assert new.ood["score"] == COMBINED and new.ood["sha256"] == file_sha256(
        tmp_path / "out" / "n.ood.npz")
    feats = split_features(src, store, progress=False)
    n_train, n_val = feats.train.shape[0], feats.val.shape[0]
    assert n_train + n_val == 150 and n_val == new.ood["n_val"] > 0
    assert new.ood["bank_size"] == n_train and new.ood["knn_k"] == 10
    stats = load_ood_stats(out)
    np.testing.assert_allclose(stats.bank, l2_normalise(feats.train), atol=2e-3)
    scores = stats.quantile(stats.distance(torch.tensor(feats.val),
                                           torch.tensor(feats.logits_val)).numpy())
    assert (scores > 0.99).sum() <= 2  # the reference: only its top kNN and 1 - confidence at 1
    assert stats.val_combined.size == n_val


def test_train_fits_the_same_score(store, tmp_path):
    from pipeline.training.fit import train

    card = train(store, arch="smallcnn", out=tmp_path / "t.pt", epochs=1, batch_size=32,
                 progress=False, augment="geometric")
    assert card.ood["score"] == COMBINED
    assert card.ood["bank_size"] == card.training["split"]["n_train"]
    # Where they were fitted, as ood-fit records it: this run's training data.
    assert card.ood["fitted_on"]["data_sha256"] == card.training["data_sha256"]
    assert card.ood["fitted_on"]["store"] == str(Path(store).resolve())
    stats = load_ood_stats(tmp_path / "t.pt")
    assert stats.bank.shape == (card.training["split"]["n_train"], stats.dim)
    assert stats.val_combined.size == card.training["split"]["n_val"]
