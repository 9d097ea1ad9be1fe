"""``compare``: the zoo table, the distillation and pretraining studies, resuming (real runs)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

from pipeline.errors import CompareError, StoreError
from pipeline.training.compare import compare, parse_token, resolve_arch
from pipeline.training.statistics import paired_study, summarize
from _blob_stores import make_store as blob_store  # tests/ is on sys.path

ARCHS = ["lenet5", "smallcnn", "smallcnn+kd"]
SEEDS = 2


def make_store(path, *, n=120, size=32, n_exp=4, seed=0):
    """Blob classes over ``n_exp`` exposures: fainter, no residual background, PSF 2.35 px."""
    return blob_store(path, n=n, size=size, n_exp=n_exp, seed=seed, flux=(100.0, 1500.0),
                      offset=False, edge_nan=False, first_id=0, psf=2.35)


KW = {"archs": ARCHS, "seeds": SEEDS, "epochs": 1, "batch_size": 32, "teacher_arch": "lenet5",
      "blur_sweep": (0, 1), "progress": False}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    store = make_store(root / "small.zarr")
    pre = make_store(root / "pre.zarr", n=90, n_exp=3, seed=5)
    out = root / "out"
    result = compare(store, out=out, pretrain_store=pre, **KW)
    return {"store": store, "pre": pre, "out": out, "result": result}


def test_table_rows_columns_and_files(run):
    out, result = run["out"], run["result"]
    assert [r["token"] for r in result["rows"]] == ARCHS
    md = (out / "compare.md").read_text()
    for column in (("| arch | params | seeds | accuracy | balanced acc. | recall diffuse | recall "
                    "galaxy | recall star | ECE (calibrated) | ms/sample (batch 1) | cutouts/s "
                    "(batch 32) | speed measured at | train s (mean) | train load |"),
                   "| arch | +0 PSF | +1 PSF | drop at the last |"):
        assert column in md
    assert md.startswith("# skysieve compare\n\nCommand: `")
    assert "cores" in md and "torch 2." in md and result["machine"]["cores"] >= 1
    assert json.loads((out / "compare.json").read_text()) == result
    for token in ARCHS:
        assert f"| {token} | " in md
        for seed in range(SEEDS):
            assert (out / "models" / f"{token}_s{seed}.pt").is_file()
            assert (out / "eval" / f"{token}_s{seed}" / "evaluation.json").is_file()
    for png in ("blur_curves.png", "reliability.png"):
        assert (out / png).stat().st_size > 1000
    for row in result["rows"]:
        assert row["params"] > 0 and row["ms_per_sample_batch1"] > 0 and row["cutouts_per_s"] > 0
        # the threads and load beside every speed and every training time
        assert row["speed_conditions"]["torch_threads"] >= 1
        for s in row["per_seed"]:
            assert {"start", "end"} <= set(s["train_conditions"])
            assert s["train_conditions"]["start"]["torch_threads"] >= 1
    # every run held out the same validation exposures
    splits = {tuple(json.loads(p.read_text())["training"]["split"]["val_exposures"])
              for p in (out / "models").glob("*_s?.json") if not p.name.startswith("pretrain")}
    assert len(splits) == 1 and list(splits.pop()) == result["store"]["val_exposures"]


def test_statistics_recomputed_from_the_per_seed_numbers(run):
    out, result = run["out"], run["result"]
    for row in result["rows"]:
        seeds = row["per_seed"]
        assert [s["seed"] for s in seeds] == list(range(SEEDS))
        for s in seeds:  # the per-seed numbers are those of the evaluation files
            ev = json.loads((out / "eval" / f"{row['token']}_s{s['seed']}" /
                             "evaluation.json").read_text())
            assert s["accuracy"] == ev["metrics"]["accuracy"]
            assert s["balanced_accuracy"] == ev["metrics"]["balanced_accuracy"]
            assert s["ece_calibrated"] == ev["metrics"]["ece"]["calibrated"]
            assert s["blur_accuracy"] == next(c for c in ev["blur"]["curve"]
                                          if c["factor"] == 1.0)["accuracy"]
        for key in ("accuracy", "balanced_accuracy", "ece_calibrated", "blur_accuracy"):
            values = np.array([s[key] for s in seeds])
            assert row[key]["mean"] == pytest.approx(values.mean())
            assert row[key]["std"] == pytest.approx(values.std(ddof=1))
    (kd,) = result["distillation"]
    assert (kd["base"], kd["kd"]) == ("smallcnn", "smallcnn+kd")
    assert kd["teacher"]["arch"] == "lenet5" and 0 <= kd["teacher"]["accuracy"] <= 1
    teacher_card = json.loads((out / "models" / "teacher_lenet5_s0.json").read_text())
    for seed in range(SEEDS):
        card = json.loads((out / "models" / f"smallcnn+kd_s{seed}.json").read_text())
        assert card["training"]["teacher"]["sha256"] == teacher_card["sha256"]
    study = result["pretraining"]
    assert study["arch"] == "lenet5" and study["fractions"] == [1.0]  # the first plain token
    (pre,) = study["studies"]
    assert pre["scratch"]["per_seed"] == result["rows"][0]["per_seed"]  # reused, not retrained
    pre_card = json.loads((out / "models" / "pretrain_pre_lenet5_s0.json").read_text())
    for seed in range(SEEDS):
        card = json.loads((out / "models" / f"finetune_pre_f1_lenet5_s{seed}.json").read_text())
        assert card["training"]["init"]["sha256"] == pre_card["sha256"]
    for study, base, treated in ((kd, result["rows"][1], result["rows"][2]),
                                 (pre, pre["scratch"], pre["finetuned"])):
        for key in ("accuracy", "balanced_accuracy"):
            a = [s[key] for s in base["per_seed"]]
            b = [s[key] for s in treated["per_seed"]]
            st = study[key]
            assert st["differences"] == pytest.approx(np.subtract(b, a))
            assert st["mean_difference"] == pytest.approx(np.mean(np.subtract(b, a)))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                p_rel, p_welch = (stats.ttest_rel(b, a).pvalue,
                                  stats.ttest_ind(b, a, equal_var=False).pvalue)
            for got, want in ((st["paired_p"], p_rel), (st["welch_p"], p_welch)):
                if np.isfinite(want):
                    assert 0.0 <= got <= 1.0 and got == pytest.approx(want)
                else:  # zero variance: undefined, written as null
                    assert got is None
    md = (out / "compare.md").read_text()
    assert "## Distillation" in md and "## Pretraining" in md and "paired t-test p" in md


def test_resume_does_not_retrain(run):
    out = run["out"]
    pts = sorted((out / "models").glob("*.pt"))
    assert len(pts) == 1 + len(ARCHS) * SEEDS + 1 + SEEDS  # teacher, table, pretrain, fine-tune
    before = {p: p.stat().st_mtime_ns for p in pts}
    gone = out / "eval" / "lenet5_s1" / "evaluation.json"
    gone.unlink()  # a crash after training, before the evaluation was written
    again = compare(run["store"], out=out, pretrain_store=run["pre"], **KW)
    assert {p: p.stat().st_mtime_ns for p in pts} == before
    assert again["runs_trained"] == 0 and gone.is_file()
    assert [r["accuracy"] for r in again["rows"]] == [r["accuracy"]
                                                     for r in run["result"]["rows"]]
    with pytest.raises(CompareError, match=r"lenet5_s0\.pt: an earlier compare trained this "
                                           r"run with other settings: epochs=1 \(asked 2\)"):
        compare(run["store"], out=out, **{**KW, "epochs": 2})


def test_bad_tokens_are_refused_before_anything_is_written(run, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(CompareError, match=r"unknown architecture 'lenet6'; registered models: "
                                           r".*lenet5, .*smallcnn"):
        compare(run["store"], out=out, **{**KW, "archs": ["lenet5", "lenet6+kd"]})
    with pytest.raises(CompareError, match=r"token\(s\) \['lenet5'\] given twice"):
        compare(run["store"], out=out, **{**KW, "archs": ["lenet5", "lenet5"]})
    with pytest.raises(CompareError, match="compare: seeds must be a positive integer"):
        compare(run["store"], out=out, **{**KW, "seeds": 0})
    with pytest.raises(CompareError, match="compare: teacher_epochs must be a positive integer"):
        compare(run["store"], out=out, **{**KW, "teacher_epochs": -1})
    with pytest.raises(StoreError, match=r"gone\.zarr: no such cutout store"):
        compare(out.parent / "gone.zarr", out=out, **KW)
    with pytest.raises(StoreError, match=r"gone\.zarr: no such cutout store"):
        compare(run["store"], out=out, pretrain_store=out.parent / "gone.zarr", **KW)
    assert not out.exists()


def test_a_learning_rate_per_network(run, tmp_path):
    out = tmp_path / "lr"
    kw = {**KW, "archs": ["lenet5", "smallcnn"], "seeds": 1}
    result = compare(run["store"], out=out, arch_lr={"lenet5": 5e-4}, **kw)
    lrs = {name: json.loads((out / "models" / f"{name}_s0.json").read_text())["training"]["lr"]
           for name in ("lenet5", "smallcnn")}
    assert lrs == {"lenet5": 5e-4, "smallcnn": 3e-3}
    assert result["settings"]["arch_lr"] == {"lenet5": 5e-4}
    assert "learning rate lenet5 0.0005; every other network 0.003" in (out / "compare.md").read_text()
    with pytest.raises(CompareError, match=r"lenet5_s0\.pt: .*lr=0\.0005 \(asked 0\.003\)"):
        compare(run["store"], out=out, **kw)  # the same folder without it: refused, not mixed
    with pytest.raises(CompareError, match="arch_lr names 'vgg11', which is not among"):
        compare(run["store"], out=tmp_path / "never", arch_lr={"vgg11": 1e-3}, **kw)
    with pytest.raises(CompareError, match=r"arch_lr\['lenet5'\] must be a positive"):
        compare(run["store"], out=tmp_path / "never", arch_lr={"lenet5": -1}, **kw)


def test_cli_compare(run, tmp_path):
    from pipeline.cli import cli

    res = CliRunner().invoke(cli, ["compare", str(run["store"]), "--archs", "lenet5,nope+kd",
                                   "--out", str(tmp_path / "x")])
    assert res.exit_code == 1 and "unknown architecture 'nope'" in res.output
    assert "Traceback" not in res.output
    res = CliRunner().invoke(cli, ["compare", str(run["store"]), "--archs", "lenet5",
                                   "--arch-lr", "lenet5", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "give NAME=LR with a positive rate" in res.output
    # a finished compare again: nothing retrained, the table printed
    res = CliRunner().invoke(cli, ["compare", str(run["store"]), "--archs", ",".join(ARCHS),
                                   "--seeds", str(SEEDS), "--epochs", "1", "--batch-size", "32",
                                   "--teacher-arch", "lenet5", "--blur-sweep", "0,1",
                                   "--out", str(run["out"])])
    assert res.exit_code == 0, res.output
    assert "| smallcnn+kd | " in res.output


def test_tokens_and_statistics_helpers():
    assert parse_token("mobilenetv3_small+kd", image_size=64) == {
        "token": "mobilenetv3_small+kd", "name": "mobilenetv3_small",
        "arch": "mobilenetv3_small", "kd": True}
    assert resolve_arch("hr_celestialnet", image_size=64) == "hr_celestialnet_cutout"
    assert resolve_arch("hr_celestialnet", image_size=4096) == "hr_celestialnet"
    with pytest.raises(CompareError, match="unknown architecture 'resnet19'"):
        parse_token("resnet19+kd", image_size=64)
    s = summarize([0.5, 0.7, None])
    assert s["mean"] == pytest.approx(0.6) and s["std"] == pytest.approx(np.std([0.5, 0.7],
                                                                                ddof=1))
    assert summarize([0.5])["std"] is None
    a, b = [0.80, 0.82, 0.79], [0.84, 0.83, 0.85]
    st = paired_study(a, b)
    assert st["paired_p"] == pytest.approx(stats.ttest_rel(b, a).pvalue)
    assert st["welch_p"] == pytest.approx(stats.ttest_ind(b, a, equal_var=False).pvalue)
    assert 0 < st["paired_p"] < 1 and st["mean_difference"] == pytest.approx(0.11 / 3)
    assert paired_study([0.5, 0.5], [0.5, 0.5])["paired_p"] is None  # no variance: undefined
    with pytest.raises(ValueError, match="one value per seed"):
        paired_study([0.1, 0.2], [0.3])
