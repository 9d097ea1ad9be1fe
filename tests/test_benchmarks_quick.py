"""Smoke tests of the benchmark harnesses on tiny inputs (never a timing assertion)."""

from __future__ import annotations

import gc
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ is not an installed package: run it from the tree
    sys.path.insert(0, str(ROOT))

from benchmarks import _common  # noqa: E402


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _common.make_store(tmp_path_factory.mktemp("bench") / "s.zarr", 40, 64, 16)


@pytest.fixture
def results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    out = tmp_path / "results"
    monkeypatch.setenv("SKYSIEVE_BENCHMARKS_OUT", str(out))
    return out


def test_make_store_follows_the_contract(tiny_store: Path) -> None:
    from pipeline.store import open_store

    ds = open_store(tiny_store)
    assert ds["image"].shape == (40, 1, 64, 64)
    assert ds["image"].chunks[0] == (16, 16, 8)
    img = ds["image"].values
    assert np.isfinite(img).all() and img.std() > 1  # noise + sources, not a constant
    assert not np.array_equal(img[0], img[16])  # chunks differ


def test_model_rate_and_stage_profile(tiny_store: Path) -> None:
    from benchmarks.classify_throughput import stage_profile
    from benchmarks.raw_model import model_rate
    from workers.models import create_model

    rate = model_rate(create_model("lenet5", num_classes=6), 64, batch_size=8, threads=1,
                      target_s=0.01, repeats=1)
    assert isinstance(rate, float) and np.isfinite(rate) and rate > 0
    stages = stage_profile(tiny_store, "default", 16, threads=1)
    assert set(stages) == {"read", "preprocess", "blur", "model", "other", "task",
                           "write_behind"}  # write_behind: the part's write, off the task
    assert all(isinstance(v, float) and np.isfinite(v) and v >= 0 for v in stages.values())
    # structure, not speed: "other" is what the task spends outside the four measured stages
    parts = sum(stages[k] for k in ("read", "preprocess", "blur", "model"))
    assert stages["other"] == pytest.approx(max(0.0, stages["task"] - parts), abs=1e-12)


def test_naive_and_dataloader_write_the_same_catalogue(tiny_store: Path, tmp_path: Path) -> None:
    from benchmarks.dataloader import dataloader_rate, write_files
    from benchmarks.naive import naive_rate

    naive_rate(tiny_store, "default", 12, csv=tmp_path / "naive.csv", threads=1)
    paths = write_files(tiny_store, tmp_path / "stamps")
    assert len(paths) == 40 and paths[0].suffix == ".npy"
    dataloader_rate(paths[:12], "default", csv=tmp_path / "dl.csv", batch_size=8, num_workers=1,
                    threads=1)
    a, b = pd.read_csv(tmp_path / "naive.csv"), pd.read_csv(tmp_path / "dl.csv")
    p_cols = [c for c in a if c.startswith("p_")]
    assert len(a) == len(b) == 12 and list(a.source_id) == list(b.source_id)
    np.testing.assert_allclose(a[p_cols].sum(axis=1), 1.0, atol=1e-4)
    # Same stamps, same preprocessing, same model: the same answers.
    np.testing.assert_allclose(a[p_cols].to_numpy(), b[p_cols].to_numpy(), atol=1e-4)
    assert (a.label == b.label).all()


def test_peak_rss_sampler_counts_the_rss_at_stop() -> None:
    """The last sample is taken by ``stop``: an allocation alive then counts, with no thread sample."""
    import mmap

    sampler = _common.PeakRSS(interval=3600)  # the thread never samples within the test
    before = sampler.reset()
    # 64 MiB of fresh anonymous pages, every page touched: malloc could hand back memory
    # already resident from earlier tests, which would not raise the RSS
    block = mmap.mmap(-1, 64 * 2**20)
    np.frombuffer(block, dtype=np.uint8)[::4096] = 1
    peak = sampler.stop()
    assert peak - before > 48 * 2**20
    block.close()


def test_peak_rss_sampler_thread_keeps_a_freed_peak() -> None:
    """A block freed before ``stop`` still counts once the thread has sampled it."""
    import mmap

    sampler = _common.PeakRSS(interval=0.001)
    before = sampler.reset()
    # 64 MiB of fresh anonymous pages, every page touched (as above: malloc could reuse
    # resident memory; a fresh-clone CI run once saw the RSS not rise for np.ones)
    block = mmap.mmap(-1, 64 * 2**20)
    np.frombuffer(block, dtype=np.uint8)[::4096] = 1
    seen = sampler.samples
    deadline = time.monotonic() + 30
    while sampler.samples < seen + 2:  # one whole thread sample after the allocation
        assert time.monotonic() < deadline, "the sampler thread took no sample in 30 s"
        time.sleep(0.001)
    block.close()  # the pages go back to the system: only the sampled peak remembers them
    gc.collect()
    peak = sampler.stop()
    assert peak - before > 48 * 2**20


def test_gpu_harness_says_no_gpu_lent(results: Path) -> None:
    import torch

    from benchmarks import gpu

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the no-GPU path is not taken")
    payload = gpu.main([])
    saved = json.loads((results / "gpu.json").read_text())
    assert payload["status"] == saved["status"] == "no GPU lent"
    assert saved["machine"]["cores"] >= 1 and len(saved["machine"]["load_average_1_5_15"]) == 3


def test_goals_table_reads_the_results(results: Path) -> None:
    from benchmarks.__main__ import goals

    results.mkdir(parents=True)
    (results / "naive.json").write_text(json.dumps({"speedup": 31.0, "goal_met": True}))
    (results / "memory.json").write_text(json.dumps({"ratio_10n_to_n": 1.2, "goal_met": False}))
    rows = {r["goal"]: r for r in goals()}
    assert rows["classify >= 20x the naive way"]["measured"] == "31x"
    assert rows["peak RSS per worker 10N <= 1.10 x N"]["holds"] is False
    assert not any("DataLoader" in g for g in rows)


def test_worker_peaks_come_from_the_workers(tiny_store: Path) -> None:
    from benchmarks.memory import peak_rss

    r = peak_rss(tiny_store, "default", n_workers=1, threads_per_worker=1)
    assert r["rows"] == 40 and r["workers"] == 1
    (addr, peak), = r["peak_mib"].items()
    assert peak >= r["start_mib"][addr] > 50  # a worker with torch loaded, not an empty number


def test_fractal_pretraining_set_imports_as_a_labelled_store(tmp_path):
    """The formula-driven set: one system per class, seeded, and import-images takes it."""
    import csv

    import xarray as xr
    from PIL import Image

    from benchmarks.fractal_images import write_set
    from pipeline.ingest.images import import_images

    assert write_set(tmp_path / "a", classes=3, per_class=4, size=32, seed=5) == 12
    assert write_set(tmp_path / "b", classes=3, per_class=4, size=32, seed=5) == 12
    rows = list(csv.DictReader(open(tmp_path / "a" / "labels.csv")))
    assert [r["label"] for r in rows] == [f"fractal{c:02d}" for c in range(3) for _ in range(4)]
    pix = {r["path"]: np.asarray(Image.open(tmp_path / "a" / r["path"])) for r in rows}
    again = {r["path"]: np.asarray(Image.open(tmp_path / "b" / r["path"])) for r in rows}
    assert all(np.array_equal(pix[k], again[k]) for k in pix)  # the seed fixes every image
    first = [pix[r["path"]].astype(float).mean(axis=2) for r in rows[::4]]
    assert all(im.shape == (32, 32) and im.max() > 4 * np.median(im) for im in first)
    assert not np.allclose(first[0], first[1])  # classes are different systems
    systems = json.loads((tmp_path / "a" / "systems.json").read_text())["systems"]
    assert sorted(systems) == ["fractal00", "fractal01", "fractal02"]
    import_images(tmp_path / "a", tmp_path / "a" / "labels.csv", tmp_path / "f.zarr",
                  bands="g:B,r:G,i:R", stamp=32)
    ds = xr.open_zarr(tmp_path / "f.zarr")
    assert ds["image"].shape == (12, 3, 32, 32)
    assert sorted(set(ds["label"].values.tolist())) == sorted(systems)
    with pytest.raises(ValueError, match="need classes >= 2"):
        write_set(tmp_path / "c", classes=1)


def test_release_scale_kill_and_resume_loses_and_doubles_nothing(tmp_path: Path) -> None:
    from benchmarks.release_scale import killed_then_resumed

    store = _common.make_store(tmp_path / "s.zarr", 4000, 64, 16)  # 250 parts of 16 rows
    check = killed_then_resumed([store], tmp_path / "cat", model="default", kill_at=0.3,
                                n_workers=2)
    assert check["parts"] == 250 and check["rows"] == 4000
    assert check["rows_lost"] == 0 and check["rows_doubled"] == 0
    if check["parts_at_kill"] is not None:  # killed mid-run: the rerun wrote only the rest
        assert 0 < check["parts_resumed"] <= check["parts"] - check["parts_at_kill"]
    assert check["summary"]["parts_skipped"] + check["parts_resumed"] == 250


@pytest.mark.parametrize("full", [2_000_000, 400_000, 40_000])
def test_release_scale_tenth_gets_the_full_runs_part_size(full: int) -> None:
    from benchmarks.release_scale import _same_parts
    from pipeline import config
    from pipeline.classify.graph import chunks_per_part

    min_parts, per_part = _same_parts(full // 10, [full], [])
    default = chunks_per_part([-(-full // 10240)], 1024,
                              part_rows=int(config.get("classify.part-rows")),
                              min_parts=int(config.get("classify.min-parts")))
    same = chunks_per_part([-(-full // 10240)], 1024,
                           part_rows=int(config.get("classify.part-rows")), min_parts=min_parts)
    assert same == per_part == chunks_per_part([-(-full // 1024)], 1024,
                                               part_rows=int(config.get("classify.part-rows")),
                                               min_parts=int(config.get("classify.min-parts")))
    if full == 2_000_000:  # the release: the tenth's own parts are smaller
        assert default < per_part


def test_gz1_errors_counts_shared_errors(tmp_path: Path, results: Path) -> None:
    from _blob_stores import make_store as blob_store  # tests/ is on sys.path

    from benchmarks.gz1_errors import main as gz1_errors
    from pipeline.training.fit import train

    names = {"star": "elliptical", "galaxy": "spiral", "diffuse": "merger"}
    labels = [names[c] for c in ("diffuse", "galaxy", "star") * 40]
    store = blob_store(tmp_path / "g.zarr", n=120, labels=labels)
    train(store, arch="smallcnn", out=tmp_path / "m.pt", epochs=1, batch_size=32, seed=0,
          progress=False)
    run = f"{tmp_path / 'm.pt'}:{store}"
    out = gz1_errors([f"a={run}", f"b={run}"])
    pair = out["pairs"]["a|b"]
    assert pair["n"] == 80  # the elliptical and spiral sources
    assert pair["wrong_both"] == pair["wrong_a"] == pair["wrong_b"]  # one model twice
    assert pair["average_elliptical_vs_spiral"] == pytest.approx(
        out["runs"]["a"]["plain"]["elliptical_vs_spiral"])
    assert all(0 <= r["E vs S, dihedral8"] <= 1 for r in out["rows"])
    assert json.loads((results / "gz1_errors.json").read_text())["pairs"]["a|b"] == pair


def test_seed_studies_call_a_network_ahead_or_behind_only_where_p_is_small(tmp_path, monkeypatch):
    from benchmarks import seed_studies

    monkeypatch.setattr(seed_studies, "RESULTS", tmp_path)
    folder = tmp_path / seed_studies.PARTS["zoo"]
    folder.mkdir()
    seeds = {"behind": [0.50, 0.51, 0.49], "close": [0.65, 0.75, 0.70], "ahead": [0.90, 0.91, 0.92]}
    (folder / "compare.json").write_text(json.dumps({
        "settings": {"image_size": 32},
        "rows": [{"token": k, "per_seed": [{"balanced_accuracy": v} for v in vals]}
                 for k, vals in seeds.items()]}))
    (folder / "baseline.json").write_text(json.dumps({"rows": [
        {"input_px": 64, "balanced_accuracy": 0.2}, {"input_px": 32, "balanced_accuracy": 0.7}]}))
    verdicts = {r["arch"]: r["verdict"] for r in seed_studies.against_baseline("zoo")["rows"]}
    assert verdicts == {"behind": "behind the baseline", "close": "not resolved",
                        "ahead": "ahead of the baseline"}
    assert "| ahead | 3 | 0.910 | +0.210 |" in (folder / "against_baseline.md").read_text()
