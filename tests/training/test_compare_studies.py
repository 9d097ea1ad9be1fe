"""``compare`` for the seed studies: a held-out test store, learning curves over label
fractions, several pretraining stores, compute to a target, runs resumed from their records
(real training runs on small blob stores)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.errors import CompareError, TrainingError
from pipeline.training.compare import compare, time_to
from pipeline.training.compare_runs import reusable
from pipeline.training.splits import label_subset
from _blob_stores import make_store as blob_store  # tests/ is on sys.path

SEEDS = 2
KW = {"archs": ["lenet5"], "seeds": SEEDS, "epochs": 2, "batch_size": 32, "blur_sweep": (0, 1),
      "split_by": "source", "label_fractions": (0.5, 1), "progress": False}


def make_store(path, *, n=120, seed=0):
    return blob_store(path, n=n, size=32, n_exp=4, seed=seed, flux=(100.0, 1500.0),
                      offset=False, edge_nan=False, first_id=seed * 10_000, psf=2.35)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("studies")
    store, test = make_store(root / "train.zarr"), make_store(root / "test.zarr", n=90, seed=3)
    pre_a, pre_b = (make_store(root / "pre_a.zarr", n=90, seed=5),
                    make_store(root / "pre_b.zarr", n=90, seed=7))
    out = root / "out"
    result = compare(store, out=out, test_store=test, pretrain_store=[pre_a, pre_b], **KW)
    return {"store": store, "test": test, "pre": [pre_a, pre_b], "out": out, "result": result}


def test_label_subset_is_stratified_nested_and_checked():
    labels = np.asarray(["a"] * 60 + ["b"] * 30 + ["c"] * 3)
    train = np.arange(0, 93, 1)[::1]
    small, large = (label_subset(train, labels, f, seed=4) for f in (0.2, 0.5))
    for subset, f in ((small, 0.2), (large, 0.5)):
        counts = {c: int((labels[subset] == c).sum()) for c in "abc"}
        assert counts == {"a": round(60 * f), "b": round(30 * f), "c": max(1, round(3 * f))}
        assert np.all(np.diff(subset) > 0) and set(subset) <= set(train)
    assert set(small) <= set(large)  # a learning curve adds labels, it does not redraw them
    assert np.array_equal(label_subset(train, labels, 1.0), train)
    assert not np.array_equal(label_subset(train, labels, 0.5, seed=5), large)
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(TrainingError, match=f"train_fraction must be in \\(0, 1\\], got "
                                                f"{bad}"):
            label_subset(train, labels, bad)


def test_time_to_a_target():
    history = [{"epoch": 1, "val_bacc": 0.5, "seconds": 2.0},
               {"epoch": 2, "val_bacc": 0.7, "seconds": 3.0},
               {"epoch": 3, "val_bacc": 0.9, "seconds": 4.0}]
    assert time_to(history, 0.7) == {"epoch": 2, "seconds": 5.0}
    assert time_to(history, 0.2) == {"epoch": 1, "seconds": 2.0}
    assert time_to(history, 0.95) is None


def test_every_run_is_scored_on_the_test_store(study):
    out, result = study["out"], study["result"]
    test_sha = result["store"]["test"]["data_sha256"]
    assert result["store"]["test"]["n"] == 90 and result["settings"]["scored_on"] == "test"
    evals = sorted((out / "eval").glob("*/evaluation.json"))
    assert len(evals) == 2 + 2 + 2 + 2 * 2 * 2  # zoo, pretrain, scratch at 0.5, fine-tunes
    for path in evals:
        ev = json.loads(path.read_text())
        if path.parent.name.startswith("pretrain_"):  # scored on its own validation split
            assert ev["subset"]["used"] == "val"
            continue
        assert ev["store"]["data_sha256"] == test_sha and ev["n"] == 90
    md = (out / "compare.md").read_text()
    assert "Scored on `" in md and "90 held-out sources, never trained on nor used to stop" in md
    row = result["rows"][0]
    assert list(row["pairwise"]) == ["diffuse|galaxy", "diffuse|star", "galaxy|star"]
    for pair, summary in row["pairwise"].items():
        per_seed = [json.loads((out / "eval" / f"lenet5_s{s}" / "evaluation.json").read_text())
                    ["metrics"]["pairwise"][pair] for s in range(SEEDS)]
        assert summary["values"] == per_seed
    assert "## Two-class questions" in md and "| arch | diffuse vs galaxy |" in md


def test_learning_curve_and_pretraining_studies(study):
    out, result = study["out"], study["result"]
    p = result["pretraining"]
    assert p["fractions"] == [0.5, 1.0] and [x["name"] for x in p["pretrain"]] == ["pre_a",
                                                                                  "pre_b"]
    assert [(s["pretrain"], s["fraction"]) for s in p["studies"]] == [
        ("pre_a", 0.5), ("pre_b", 0.5), ("pre_a", 1.0), ("pre_b", 1.0)]
    zoo = result["rows"][0]
    for st in p["studies"]:
        if st["fraction"] == 1.0:  # the zoo's own runs are the scratch baseline
            assert st["scratch"]["per_seed"] == zoo["per_seed"]
        pre = next(x for x in p["pretrain"] if x["name"] == st["pretrain"])
        tag = f"f{st['fraction']:g}"
        for seed in range(SEEDS):
            card = json.loads((out / "models" /
                               f"finetune_{st['pretrain']}_{tag}_lenet5_s{seed}.json").read_text())
            assert card["training"]["init"]["sha256"] == pre["sha256"]
            assert card["training"]["split"]["train_fraction"] == st["fraction"]
        diffs = np.subtract([s["balanced_accuracy"] for s in st["finetuned"]["per_seed"]],
                            [s["balanced_accuracy"] for s in st["scratch"]["per_seed"]])
        assert st["balanced_accuracy"]["differences"] == pytest.approx(diffs)
    half = json.loads((out / "models" / "scratch_f0.5_lenet5_s0.json").read_text())
    split = half["training"]["split"]
    assert split["n_train_split"] == zoo["per_seed"][0]["n_train"]
    assert split["n_train"] == sum(round(0.5 * split["n_train_split"] / 3) for _ in range(3))
    # the compute to reach the target, recomputed from the runs' histories
    full = zoo["per_seed"]
    target = round(0.95 * np.mean([max(r["val_bacc"] for r in s["history"]) for s in full]), 3)
    assert p["target_val_bacc"] == target
    entry = next(t for t in p["time_to_target"]
                 if t["fraction"] == 1.0 and t["condition"] == "scratch")
    hits = [time_to(s["history"], target) for s in full]
    assert entry["reached"] == sum(h is not None for h in hits) >= 1
    assert entry["epochs"]["values"] == [h["epoch"] for h in hits if h is not None]
    md = (out / "compare.md").read_text()
    for text in ("### Learning curve (balanced accuracy, mean ± sd)",
                 "| labels | scratch | pre_a | pre_b | pre_a − scratch (paired p) |",
                 f"### Compute to reach validation balanced accuracy {target:.3f}",
                 "### lenet5, 0.5 of the labels: scratch vs pre_b + fine-tuned"):
        assert text in md


def test_a_study_resumes_from_its_records_without_the_weights(study):
    out = study["out"]
    for name in ("lenet5_s0", "scratch_f0.5_lenet5_s1", "finetune_pre_a_f1_lenet5_s0"):
        (out / "models" / f"{name}.pt").unlink()  # what a clone of the results holds
    again = compare(study["store"], out=out, test_store=study["test"],
                    pretrain_store=study["pre"], **KW)
    assert again["runs_trained"] == 0

    def numbers(rows):  # everything but whether this invocation trained the run
        return json.loads(json.dumps(rows).replace('"trained_now": true', '"trained_now": false'))

    assert numbers(again["rows"]) == numbers(study["result"]["rows"])
    assert (numbers(again["pretraining"]["studies"])
            == numbers(study["result"]["pretraining"]["studies"]))
    assert not (out / "models" / "lenet5_s0.pt").exists()
    # a run others start from needs its weights: its record alone is not reused
    pt = out / "models" / "pretrain_pre_a_lenet5_s0.pt"
    eval_dir = out / "eval" / "pretrain_pre_a_lenet5_s0"
    assert reusable(pt, eval_dir, {}, None, need_weights=True) is not None
    pt.unlink()
    assert reusable(pt, eval_dir, {}, None, need_weights=True) is None


def test_bad_study_settings_are_refused(study, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(CompareError, match=r"test_store .*train\.zarr holds the same sources as "
                                           r"the training store"):
        compare(study["store"], out=out, **{**KW, "test_store": study["store"]})
    with pytest.raises(CompareError, match=r"label_fractions must be numbers in \(0, 1\], like "
                                           r"0.05,0.2,1; got \(0, 1\)"):
        compare(study["store"], out=out, **{**KW, "label_fractions": (0, 1)})
    with pytest.raises(CompareError, match="unknown split_by 'sky'"):
        compare(study["store"], out=out, **{**KW, "split_by": "sky"})
    with pytest.raises(CompareError, match=r"distinct folder names"):
        compare(study["store"], out=out, **{**KW, "pretrain_store": [study["pre"][0]] * 2})
    assert not out.exists()


def test_cli_compare_with_the_study_options(study, tmp_path):
    from pipeline.cli import cli

    out = tmp_path / "cli"
    args = ["compare", str(study["store"]), "--archs", "lenet5", "--seeds", str(SEEDS),
            "--epochs", "2", "--batch-size", "32", "--blur-sweep", "0,1", "--split-by", "source",
            "--test-store", str(study["test"]), "--label-fractions", "0.5,1",
            "--pretrain-store", str(study["pre"][1]), "--out", str(out)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "### Learning curve" in res.output and "| 0.5 | " in res.output
    saved = json.loads((out / "compare.json").read_text())
    assert saved["runs_trained"] == 2 + 1 + 2 + 2 * 2
    assert saved["call"]["test_store"] == str(study["test"])
    for part in ("--label-fractions 0.5,1", "--split-by source", "--pretrain-store"):
        assert part in saved["command"]
    # the same runs as the Python call: the fine-tuned numbers agree
    py = next(st for st in study["result"]["pretraining"]["studies"]
              if st["pretrain"] == "pre_b" and st["fraction"] == 0.5)
    cli_run = next(st for st in saved["pretraining"]["studies"] if st["fraction"] == 0.5)
    assert (cli_run["finetuned"]["balanced_accuracy"]["values"]
            == py["finetuned"]["balanced_accuracy"]["values"])
    res = CliRunner().invoke(cli, args[:-2] + ["--label-fractions", "0,x", "--out",
                                               str(tmp_path / "y")])
    assert res.exit_code != 0 and "--label-fractions" in res.output


def test_cli_train_on_a_share_of_the_labels(study, tmp_path):
    from pipeline.cli import cli

    base = ["train", str(study["store"]), "--arch", "lenet5", "--epochs", "1",
            "--batch-size", "32", "--split-by", "source"]
    res = CliRunner().invoke(cli, base + ["--train-fraction", "0.25",
                                          "--out", str(tmp_path / "q.pt")])
    assert res.exit_code == 0, res.output
    split = json.loads((tmp_path / "q.json").read_text())["training"]["split"]
    assert split["train_fraction"] == 0.25
    assert split["n_train"] == 3 * round(0.25 * split["n_train_split"] / 3) < split["n_train_split"]
    res = CliRunner().invoke(cli, base + ["--train-fraction", "0", "--out",
                                          str(tmp_path / "z.pt")])
    assert res.exit_code == 1 and "train_fraction must be in (0, 1], got 0.0" in res.output
    assert not (tmp_path / "z.pt").exists()


def test_an_interim_report_trains_nothing_and_lists_what_is_left(study, tmp_path):
    out = tmp_path / "interim"
    with pytest.raises(CompareError, match="no run of \\['lenet5'\\] has finished"):
        compare(study["store"], out=out, report_only=True, **{**KW, "label_fractions": (1,)})
    # seed 0 of lenet5 finished (copied from the study), seed 1 and the smallcnn runs not
    for path in (study["out"] / "models").glob("lenet5_s0.*"):
        (out / "models" / path.name).write_bytes(path.read_bytes())
    (out / "eval" / "lenet5_s0").mkdir(parents=True, exist_ok=True)
    (out / "eval" / "lenet5_s0" / "evaluation.json").write_bytes(
        (study["out"] / "eval" / "lenet5_s0" / "evaluation.json").read_bytes())
    kw = {**KW, "archs": ["lenet5", "smallcnn", "smallcnn+kd"], "label_fractions": (0.5, 1),
          "teacher_arch": "lenet5"}
    result = compare(study["store"], out=out, test_store=study["test"],
                     pretrain_store=[study["pre"][0]], report_only=True, **kw)
    assert result["runs_trained"] == 0 and not list((out / "models").glob("smallcnn*"))
    assert [r["token"] for r in result["rows"]] == ["lenet5"]
    assert result["rows"][0]["accuracy"]["n"] == 1
    assert result["rows"][0]["per_seed"][0]["accuracy"] == (
        study["result"]["rows"][0]["per_seed"][0]["accuracy"])
    assert set(result["not_finished"]) == {
        "teacher_lenet5_s0", "lenet5_s1", "smallcnn_s0", "smallcnn_s1", "smallcnn+kd_s0",
        "smallcnn+kd_s1", "pretrain_pre_a_lenet5_s0", "scratch_f0.5_lenet5_s0",
        "scratch_f0.5_lenet5_s1", *(f"finetune_pre_a_f{f}_lenet5_s{s}" for f in ("0.5", "1")
                                    for s in range(SEEDS))}
    assert result["distillation"] == [] and result["pretraining"]["studies"] == []
    md = (out / "compare.md").read_text()
    assert "**Not finished yet** (13 run(s); this is an interim report" in md
    assert "`smallcnn+kd_s1`" in md and "| lenet5 | 61,111 | 1 | " in md
