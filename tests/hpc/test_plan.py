"""skysieve plan: the arithmetic on a hand-written measurements folder, the bound stage, the errors."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.hpc.plan import PlanError, describe, measurements_dir, plan

MACHINE = {"cpu": "test CPU", "cores": 2, "gpu": None, "when": "2026-01-01T00:00:00Z"}
# Per cutout with 2 threads: read 10 us, preprocess 20 us, blur 10 us, model 250 us, other 10 us.
STAGES = {"read": 1e-5, "preprocess": 2e-5, "blur": 1e-5, "model": 2.5e-4, "other": 1e-5}
# Stage sum predicts 2 cores / (2 x 300 us) = 3333/s; classify measured 3000/s: the stage sum
# is 0.9 of the way there (the plan's overhead is 1 / 0.9), and 3000 / 4000 raw = efficiency 0.75.
EFFICIENCY = 0.9


def _write(folder: Path, name: str, payload: dict) -> None:
    (folder / f"{name}.json").write_text(json.dumps({"benchmark": name, "machine": MACHINE,
                                                     **payload}))


@pytest.fixture
def meas(tmp_path: Path) -> Path:
    folder = tmp_path / "results"
    folder.mkdir()
    _write(folder, "raw_model", {"settings": {"threads": 2}, "rows": [
        {"model": "default", "arch": "smallcnn", "image_size": 64, "cutouts_per_s": 4000.0},
        {"model": "lenet5", "arch": "lenet5", "image_size": 64, "cutouts_per_s": 40000.0},
        {"model": "resnet18", "arch": "resnet18", "image_size": 128, "cutouts_per_s": 80.0},
        {"model": "resnet18", "arch": "resnet18", "image_size": 64, "cutouts_per_s": 250.0},
        {"model": "hr_celestialnet_cutout", "arch": "hr_celestialnet_cutout", "image_size": 64,
         "cutouts_per_s": 100.0},
    ]})
    _write(folder, "classify_throughput", {
        "settings": {"model": "default"},
        "rows": [{"what": "raw", "cutouts_per_s": 4000.0},
                 {"what": "skysieve classify, LocalCluster 1x2", "cutouts_per_s": 2500.0},
                 {"what": "skysieve classify, LocalCluster 2x1", "cutouts_per_s": 3000.0}],
        "stages": {"threads": 2, "seconds_per_cutout": STAGES}})
    return folder


def _cpu_rate(model_rate: float, cores: int) -> float:
    """The documented arithmetic, by hand: core-seconds per cutout summed over the stages."""
    core_seconds = 2 * (STAGES["read"] + STAGES["preprocess"] + STAGES["blur"] + STAGES["other"])
    core_seconds += 2 / model_rate
    return cores / core_seconds * EFFICIENCY


def test_cpu_node_count_and_node_hours(meas: Path) -> None:
    r = plan(sources=1e9, model="default", hours=8.0, measurements=meas)
    rate = _cpu_rate(4000.0, 2)
    assert r["efficiency"] == pytest.approx(3000.0 / 4000.0)  # end to end / raw model
    assert r["overhead"] == pytest.approx(1 / EFFICIENCY)
    assert r["rate_per_node"] == pytest.approx(rate)
    assert r["nodes"] == math.ceil(1e9 / (rate * 8 * 3600)) == 12
    assert r["node_hours"] == pytest.approx(1e9 / rate / 3600)
    assert r["cores_per_node"] == 2 and r["gpus_per_node"] == 0
    assert r["bound"] == "classify" and r["classify_bound"] == "model"  # no ingest measured
    assert r["steps"]["ingest"] is None and any("no ingest measurement" in n for n in r["notes"])
    shares = [s["share"] for s in r["stages"].values()]
    assert sum(shares) == pytest.approx(1.0)


def test_more_cores_scale_linearly_and_hours_matter(meas: Path) -> None:
    r = plan(sources=1e9, model="default", cores_per_node=32, hours=2.0, measurements=meas)
    rate = _cpu_rate(4000.0, 32)
    assert r["rate_per_node"] == pytest.approx(rate)
    assert r["nodes"] == math.ceil(1e9 / (rate * 2 * 3600))
    assert any("scaled linearly" in n for n in r["notes"])


def test_fast_model_is_bound_by_preprocessing(meas: Path) -> None:
    r = plan(sources=1e6, model="lenet5", measurements=meas)
    assert r["classify_bound"] == "preprocessing+blur"
    assert r["rate_per_node"] == pytest.approx(_cpu_rate(40000.0, 2))


def test_model_size_64_preferred_and_alias(meas: Path) -> None:
    assert plan(sources=1e6, model="resnet18", measurements=meas)["image_size"] == 64
    r = plan(sources=1e6, model="hr_celestialnet", measurements=meas)
    assert r["model_arch"] == "hr_celestialnet_cutout"
    assert r["rate_per_node"] == pytest.approx(_cpu_rate(100.0, 2))


def test_gpu_without_measurement_is_extrapolated(meas: Path) -> None:
    r = plan(sources=1e9, model="default", gpus_per_node=4, measurements=meas)
    cpu_seconds = 2 * (1e-5 + 2e-5 + 1e-5 + 1e-5) / 2 / EFFICIENCY
    assert r["rate_per_node"] == pytest.approx(1 / cpu_seconds)
    assert r["gpu"].startswith("extrapolated")
    assert r["classify_bound"] == "preprocessing+blur"


def test_gpu_with_measurement(meas: Path) -> None:
    _write(meas, "gpu", {"status": "measured", "rows": [
        {"model": "default", "what": "raw GPU model", "cutouts_per_s": 50000.0}]})
    slow_gpu = plan(sources=1e9, model="default", gpus_per_node=1, cores_per_node=64,
                    measurements=meas)
    assert slow_gpu["gpu"].startswith("measured")
    assert slow_gpu["classify_bound"] == "model"  # 64 cores outpace one GPU at 50k/s
    assert slow_gpu["rate_per_node"] == pytest.approx(50000.0)
    four = plan(sources=1e9, model="default", gpus_per_node=4, cores_per_node=64,
                measurements=meas)
    assert four["rate_per_node"] == pytest.approx(200000.0)
    cpu_bound = plan(sources=1e9, model="default", gpus_per_node=4, measurements=meas)
    assert cpu_bound["classify_bound"] == "preprocessing+blur"  # 2 cores cannot feed 4 GPUs
    assert cpu_bound["rate_per_node"] < 200000.0


def test_gpu_node_end_to_end_measured_there_sets_the_pace(meas: Path) -> None:
    gpu_machine = {**MACHINE, "cores": 16, "gpu": "test GPU"}
    (meas / "gpu.json").write_text(json.dumps({"benchmark": "gpu", "machine": gpu_machine,
                                               "status": "measured", "rows": [
        {"model": "default", "what": "raw GPU model", "cutouts_per_s": 1e6},
        {"model": "default", "what": "e2e cuda 1x4", "cluster": "cuda", "cutouts_per_s": 6e4},
        {"model": "default", "what": "e2e local 8x2", "cluster": "local", "cutouts_per_s": 2e5,
         "ratio_to_raw": 0.2},
        {"model": "lenet5", "what": "e2e local 8x2", "cluster": "local", "cutouts_per_s": 9e5}]}))
    r = plan(sources=1e9, model="default", gpus_per_node=1, cores_per_node=32,
             measurements=meas)
    assert r["steps"]["classify"]["rate_per_node"] == pytest.approx(2e5 * 32 / 16)  # the best
    assert r["classify_bound"] == "preprocessing+blur"  # the CPU stages, not the GPU
    assert "local 8x2" in r["gpu"] and "0.20 x the raw GPU model" in r["gpu"]
    assert "GPU: measured" in r["markdown"]
    # a CPU node ignores the GPU runs
    cpu = plan(sources=1e9, model="default", cores_per_node=32, measurements=meas)
    assert cpu["steps"]["classify"]["rate_per_node"] == pytest.approx(_cpu_rate(4000.0, 32))


def test_model_stage_is_anchored_in_the_profile_run(meas: Path) -> None:
    raw = json.loads((meas / "raw_model.json").read_text())
    for row in raw["rows"]:  # a busier machine while raw_model ran: every raw rate halved
        row["cutouts_per_s"] /= 2
    (meas / "raw_model.json").write_text(json.dumps(raw))
    assert plan(sources=1e6, model="lenet5", measurements=meas)["rate_per_node"] == \
        pytest.approx(_cpu_rate(40000.0, 2))


def test_without_stage_timings_the_model_alone_counts(meas: Path) -> None:
    (meas / "classify_throughput.json").unlink()
    r = plan(sources=1e6, model="default", measurements=meas)
    assert r["rate_per_node"] == pytest.approx(4000.0)
    assert r["classify_bound"] == "model" and r["efficiency"] is None
    assert any("classify_throughput" in n for n in r["notes"])


def test_describe_is_markdown(meas: Path) -> None:
    r = plan(sources=1e9, model="default", measurements=meas)
    text = describe(r)
    assert text == r["markdown"]
    assert "| stage |" in text and f"{r['nodes']:,} node(s)" in text and "bound by **classify** (classify by **model**)" in text


def test_unknown_model_says_what_to_run(meas: Path) -> None:
    with pytest.raises(PlanError, match=r"no measurement of model 'vgg99'.*python -m benchmarks "
                                        r"raw_model` first"):
        plan(sources=1e9, model="vgg99", measurements=meas)


def test_missing_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PlanError, match="raw_model.json: not found; run `python -m benchmarks"):
        plan(sources=1e9, measurements=tmp_path)
    with pytest.raises(PlanError, match="no benchmark results folder"):
        plan(sources=1e9, measurements=tmp_path / "nope")
    monkeypatch.setenv("SKYSIEVE_BENCHMARKS", str(tmp_path))
    assert measurements_dir() == tmp_path
    assert measurements_dir(tmp_path / "..") == tmp_path / ".."  # explicit beats the env
    (tmp_path / "raw_model.json").write_text("{not json")
    with pytest.raises(PlanError, match="unreadable benchmark result"):
        plan(sources=1e9)


@pytest.mark.parametrize("kw, match", [
    ({"sources": 0}, "sources must be a positive number"),
    ({"sources": float("nan")}, "sources must be a positive number"),
    ({"sources": 1e9, "hours": -1}, "hours must be a positive number"),
    ({"sources": 1e9, "gpus_per_node": -2}, "gpus_per_node must be an integer"),
    ({"sources": 1e9, "cores_per_node": 0}, "cores_per_node must be a positive integer"),
    ({"sources": "1e9"}, r"sources must be a positive number \(e.g. 1e9\), got '1e9'"),
])
def test_bad_parameters(meas: Path, kw: dict, match: str) -> None:
    with pytest.raises(PlanError, match=match):
        plan(measurements=meas, **kw)
    assert issubclass(PlanError, ValueError)


def test_default_measurements_are_the_source_trees(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SKYSIEVE_BENCHMARKS", raising=False)
    results = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    if results.is_dir():
        assert measurements_dir() == results
    else:
        with pytest.raises(PlanError, match=re.escape(f"{results}: no benchmark results folder")):
            measurements_dir()


def test_cli_plan(meas: Path) -> None:
    from pipeline.cli import cli

    res = CliRunner().invoke(cli, ["plan", "--sources", "1e9", "--model", "default",
                                   "--hours", "8", "--measurements", str(meas)])
    assert res.exit_code == 0, res.output
    assert "12 node(s)" in res.output and "bound by **classify**" in res.output
    bad = CliRunner().invoke(cli, ["plan", "--sources", "1e9", "--model", "nope",
                                   "--measurements", str(meas)])
    assert bad.exit_code == 1
    assert "python -m benchmarks raw_model" in bad.output


def _ingest(folder: Path, rate: float, cores: int = 2) -> None:
    _write(folder, "ingest_vs_sextractor", {
        "settings": {"cores": cores, "exposures": 8, "exposure_size": 4096},
        "rows": [{"method": "sep alone: background + extraction", "cutouts_per_s": 3 * rate},
                 {"method": "skysieve ingest (detect + measure + stamps + Zarr)",
                  "cutouts_per_s": rate}]})


def test_ingest_and_classify_are_counted_stage_by_stage(meas: Path) -> None:
    _ingest(meas, 1500.0)
    r = plan(sources=1e9, model="default", hours=8.0, measurements=meas)
    classify_rate = _cpu_rate(4000.0, 2)
    ingest, classify = r["steps"]["ingest"], r["steps"]["classify"]
    assert ingest["rate_per_node"] == pytest.approx(1500.0)
    assert classify["rate_per_node"] == pytest.approx(classify_rate)
    assert ingest["node_hours"] == pytest.approx(1e9 / 1500.0 / 3600)
    assert classify["node_hours"] == pytest.approx(1e9 / classify_rate / 3600)
    assert r["node_hours"] == pytest.approx(ingest["node_hours"] + classify["node_hours"])
    assert r["rate_per_node"] == pytest.approx(1 / (1 / 1500.0 + 1 / classify_rate))
    assert r["nodes"] == math.ceil(r["node_hours"] / 8.0)
    assert r["bound"] == "ingest" and r["classify_bound"] == "model"
    assert r["bound_on"] == {"cpu node": "ingest", "gpu node": "ingest"}
    assert sum(s["share"] for s in r["stages"].values()) == pytest.approx(1.0)
    assert "| ingest | 1,500 |" in r["markdown"] and "bound by **ingest**" in r["markdown"]
    # 64 cores per node: ingest scales from its own 2 measured cores
    wide = plan(sources=1e9, model="default", cores_per_node=64, measurements=meas)
    assert wide["steps"]["ingest"]["rate_per_node"] == pytest.approx(1500.0 * 32)


def test_fast_ingest_leaves_classify_the_bound_on_cpu_not_on_gpu(meas: Path) -> None:
    _ingest(meas, 1e4)  # 100 us a cutout: slower than the CPU stages, faster than the CPU model
    _write(meas, "gpu", {"status": "measured", "rows": [
        {"model": "resnet18", "what": "raw GPU model", "cutouts_per_s": 4e5}]})
    r = plan(sources=1e9, model="resnet18", measurements=meas)
    assert r["bound"] == "classify" and r["classify_bound"] == "model"
    assert r["bound_on"] == {"cpu node": "classify", "gpu node": "ingest"}


def test_efficiency_is_end_to_end_over_raw_and_not_capped(meas: Path) -> None:
    ct = json.loads((meas / "classify_throughput.json").read_text())
    ct["rows"][-1]["cutouts_per_s"] = 5000.0  # faster than the raw model's 4000/s
    (meas / "classify_throughput.json").write_text(json.dumps(ct))
    r = plan(sources=1e9, model="default", measurements=meas)
    assert r["efficiency"] == pytest.approx(5000.0 / 4000.0)
    assert r["rate_per_node"] == pytest.approx(5000.0)  # the measured rate, not capped
    assert "efficiency (measured classify end to end / raw model): 1.25" in r["markdown"]
