"""``skysieve plan``: nodes and node-hours for a whole release, from this installation's benchmarks.

The benchmarks (``python -m benchmarks``) store throughputs as JSON; this module
reads them (it never imports ``benchmarks``):

- ``raw_model.json``: each model alone, batched, in memory (cutouts/s with
  ``settings.threads`` torch threads on ``machine.cores`` cores);
- ``classify_throughput.json``: where one classification task spends its time
  (``stages.seconds_per_cutout``: ``read``, ``preprocess``, ``blur``, ``model``,
  ``other`` with ``stages.threads`` threads) and the measured end-to-end rates;
- ``gpu.json`` (optional): raw model throughput on a GPU.

The arithmetic, per cutout, in core-seconds (seconds x threads used):

- stages: I/O read = ``read``; preprocessing+blur = ``preprocess + blur``;
  catalogue write = ``other``; model = the profiled model's stage time x (its raw
  rate / the requested model's raw rate), so every stage comes from the same run
  (the machine's load drifts between runs); ``threads / raw rate`` without a profile;
- CPU node rate = ``cores_per_node / sum(stages) x efficiency``, where
  ``efficiency`` = measured end-to-end rate / the rate the stage sum predicts for
  the profiled model (Dask overhead, idle cores; capped at 1, 1 when not measured);
- GPU node rate = ``min(CPU stages without the model, gpus x GPU model rate)``;
  without a GPU measurement the model stage is assumed never to bound (an upper
  bound on the rate, said so in the result);
- node-hours = ``sources / rate / 3600``; nodes = ``ceil(sources / (rate x hours x 3600))``.

The stage that bounds the night is the one with the largest time per cutout on a node.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from pipeline.checks import positive_int, positive_number
from pipeline.errors import PlanError

__all__ = ["plan", "describe", "measurements_dir", "PlanError"]

_STAGES = ("I/O read", "preprocessing+blur", "model", "catalogue write")
_ALIASES = {"hr_celestialnet": "hr_celestialnet_cutout"}
_RUN_RAW = "run `python -m benchmarks raw_model` first"
_SOURCE_ROOT = Path(__file__).resolve().parents[2]  # pipeline/hpc/plan.py -> the source tree


def measurements_dir(measurements: Path | None = None) -> Path:
    """Return the folder of benchmark results to read.

    Order: ``measurements`` if given; else ``$SKYSIEVE_BENCHMARKS``; else
    ``benchmarks/results`` of the source tree this package was loaded from.

    Raises
    ------
    PlanError
        The folder does not exist.
    """
    if measurements is not None:
        where, how = Path(measurements), "--measurements"
    elif os.environ.get("SKYSIEVE_BENCHMARKS"):
        where, how = Path(os.environ["SKYSIEVE_BENCHMARKS"]), "$SKYSIEVE_BENCHMARKS"
    else:
        where, how = _SOURCE_ROOT / "benchmarks" / "results", "default"
    if not where.is_dir():
        raise PlanError(f"{where}: no benchmark results folder ({how}); {_RUN_RAW} in the source "
                        "tree, or pass --measurements DIR / set $SKYSIEVE_BENCHMARKS")
    return where


def _load(folder: Path, name: str, *, required: bool) -> dict[str, Any] | None:
    path = folder / f"{name}.json"
    if not path.is_file():
        if required:
            raise PlanError(f"{path}: not found; {_RUN_RAW}")
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PlanError(f"{path}: unreadable benchmark result ({exc}); rerun "
                        f"`python -m benchmarks {name}`") from exc


def _check(sources: float, gpus_per_node: int, cores_per_node: int | None, hours: float) -> None:
    positive_number("sources", sources, error=PlanError, hint=" (e.g. 1e9)")
    if isinstance(gpus_per_node, bool) or not isinstance(gpus_per_node, int) or gpus_per_node < 0:
        raise PlanError(f"gpus_per_node must be an integer >= 0, got {gpus_per_node!r}")
    if cores_per_node is not None:
        positive_int("cores_per_node", cores_per_node, error=PlanError)
    positive_number("hours", hours, error=PlanError, hint=" (e.g. 8)")


def _model_row(raw: dict[str, Any], model: str, path: Path) -> dict[str, Any]:
    """The raw-model row of ``model`` (64 px when measured, else its smallest size)."""
    want = _ALIASES.get(model, model)
    rows = [r for r in raw.get("rows", []) if r.get("model") == want and r.get("cutouts_per_s")]
    if not rows:
        known = sorted({str(r.get("model")) for r in raw.get("rows", [])})
        raise PlanError(f"no measurement of model {model!r} in {path} (measured: "
                        f"{', '.join(known) or 'none'}); {_RUN_RAW}")
    at64 = [r for r in rows if r.get("image_size") == 64]
    return at64[0] if at64 else min(rows, key=lambda r: r.get("image_size", 0))


def plan(*, sources: float, model: str = "default", gpus_per_node: int = 0,
         cores_per_node: int | None = None, hours: float = 8.0,
         measurements: Path | None = None) -> dict[str, Any]:
    """Estimate the node-hours and nodes needed to classify a whole release in one night.

    Parameters
    ----------
    sources : float
        Sources in the release (e.g. ``1e9``).
    model : str, default: "default"
        Model name as measured by ``python -m benchmarks raw_model`` (the bundled
        ``default`` or a zoo name; ``hr_celestialnet`` means its cutout variant).
    gpus_per_node : int, default: 0
        GPUs per node; 0 plans CPU-only nodes.
    cores_per_node : int, optional
        CPU cores per node; default: the cores of the machine that measured.
    hours : float, default: 8.0
        Length of the night.
    measurements : Path, optional
        Benchmark results folder; see :func:`measurements_dir`.

    Returns
    -------
    dict
        ``rate_per_node`` (cutouts/s), ``node_hours``, ``nodes``, ``bound`` (the
        stage bounding the night), ``stages`` (seconds per cutout on one node and
        share), ``efficiency``, ``gpu`` (how the GPU figure was obtained, or None),
        ``notes``, ``markdown`` (:func:`describe`), and the inputs.

    Raises
    ------
    PlanError
        No measurement for the model (run ``python -m benchmarks raw_model``), a
        missing folder, or a bad parameter.
    """
    _check(sources, gpus_per_node, cores_per_node, hours)
    folder = measurements_dir(measurements)
    raw = _load(folder, "raw_model", required=True)
    row = _model_row(raw, model, folder / "raw_model.json")
    measured_cores = int(raw.get("machine", {}).get("cores") or 1)
    cores = cores_per_node or measured_cores
    raw_threads = int(raw.get("settings", {}).get("threads") or measured_cores)
    model_cs = raw_threads / float(row["cutouts_per_s"])  # core-seconds per cutout
    notes: list[str] = []

    ct = _load(folder, "classify_throughput", required=False)
    efficiency = 1.0
    if ct and ct.get("stages", {}).get("seconds_per_cutout"):
        st = ct["stages"]
        sp, th = st["seconds_per_cutout"], float(st.get("threads") or 1)
        stage_cs = {"I/O read": th * sp["read"],
                    "preprocessing+blur": th * (sp["preprocess"] + sp["blur"]),
                    "catalogue write": th * sp.get("other", 0.0)}
        profiled_cs = sum(stage_cs.values()) + th * sp["model"]
        ct_cores = int(ct.get("machine", {}).get("cores") or measured_cores)
        ref = str(ct.get("settings", {}).get("model", ""))
        ref_rows = [r for r in raw.get("rows", []) if r.get("model") == ref
                    and r.get("cutouts_per_s")]
        if ref_rows and sp.get("model"):
            # Anchor the model stage in the profile's own run (same load as the other stages),
            # scaled by the raw-rate ratio of the requested model to the profiled one.
            model_cs = th * sp["model"] * float(ref_rows[0]["cutouts_per_s"]) / float(
                row["cutouts_per_s"])
        e2e = [r["cutouts_per_s"] for r in ct.get("rows", [])[1:] if r.get("cutouts_per_s")]
        if e2e:
            efficiency = min(1.0, max(e2e) / (ct_cores / profiled_cs))
    else:
        stage_cs = {"I/O read": 0.0, "preprocessing+blur": 0.0, "catalogue write": 0.0}
        notes.append("no stage timings (classify_throughput.json): the model alone is counted, "
                     "an optimistic estimate; run `python -m benchmarks classify_throughput`")

    gpu_info = None
    if gpus_per_node == 0:
        per_cutout = {**stage_cs, "model": model_cs}  # core-seconds; stages share the cores
        seconds = {k: v / cores / efficiency for k, v in per_cutout.items()}
        rate = 1.0 / sum(seconds.values())
    else:
        cpu_seconds = {k: v / cores / efficiency for k, v in stage_cs.items()}
        gpu = _load(folder, "gpu", required=False)
        grows = [r for r in (gpu or {}).get("rows", [])
                 if r.get("model") == _ALIASES.get(model, model) and r.get("what") == "raw GPU model"]
        if gpu and gpu.get("status") == "measured" and grows:
            gpu_rate = gpus_per_node * float(grows[0]["cutouts_per_s"])
            gpu_info = (f"measured: {grows[0]['cutouts_per_s']:,.0f} cutouts/s per GPU "
                        f"({gpu.get('machine', {}).get('gpu')}) x {gpus_per_node}")
            model_seconds = 1.0 / gpu_rate
        else:
            model_seconds = 0.0
            gpu_info = ("extrapolated: no GPU measurement of this model "
                        f"({'gpu.json says ' + repr(gpu.get('status')) if gpu else 'no gpu.json'}); "
                        "the model stage is assumed never to bound on "
                        f"{gpus_per_node} GPU(s), so the node rate is that of the CPU stages "
                        f"(read, preprocessing+blur, write) on {cores} cores: an upper bound. "
                        "Run `python -m benchmarks gpu` on a GPU node to measure it")
            notes.append(gpu_info)
        # The GPU runs beside the CPU stages: the slower of the two sets the pace.
        cpu_total = sum(cpu_seconds.values())
        seconds = {**cpu_seconds, "model": model_seconds}
        pace = max(cpu_total, model_seconds)
        if pace <= 0:
            raise PlanError(f"no stage timings to plan a GPU node with in {folder}; run "
                            "`python -m benchmarks classify_throughput` (and `gpu` on a GPU node)")
        rate = 1.0 / pace
        bound = ("model" if model_seconds > cpu_total
                 else max(cpu_seconds, key=cpu_seconds.get))
    if gpus_per_node == 0:
        bound = max(seconds, key=seconds.get)
    total = sum(seconds.values())
    node_hours = sources / rate / 3600.0
    nodes = math.ceil(sources / (rate * hours * 3600.0))
    if cores != measured_cores:
        notes.append(f"scaled linearly from {measured_cores} measured cores to {cores} cores "
                     "per node (assumes I/O keeps up)")
    result: dict[str, Any] = {
        "sources": float(sources), "model": model, "model_arch": row.get("arch"),
        "image_size": row.get("image_size"), "hours": float(hours),
        "gpus_per_node": gpus_per_node, "cores_per_node": cores,
        "rate_per_node": rate, "node_hours": node_hours, "nodes": nodes, "bound": bound,
        "stages": {k: {"seconds_per_cutout": seconds.get(k, 0.0),
                       "share": seconds.get(k, 0.0) / total if total else 0.0}
                   for k in _STAGES},
        "efficiency": efficiency, "gpu": gpu_info, "notes": notes,
        "measurements": str(folder),
        "measured_on": {k: raw.get("machine", {}).get(k) for k in ("cpu", "cores", "gpu", "when",
                                                                   "load_average_1_5_15")},
    }
    result["markdown"] = describe(result)
    return result


def describe(result: dict[str, Any]) -> str:
    """Markdown summary of a :func:`plan` result."""
    node = (f"{result['gpus_per_node']} GPU(s) + {result['cores_per_node']} cores"
            if result["gpus_per_node"] else f"{result['cores_per_node']} CPU cores")
    lines = [
        f"## skysieve plan: {result['sources']:.3g} sources, model {result['model']} "
        f"({result['model_arch']}, {result['image_size']} px)",
        "",
        f"- node: {node}; rate **{result['rate_per_node']:,.0f} cutouts/s per node**",
        f"- **{result['node_hours']:,.1f} node-hours**; **{result['nodes']:,} node(s)** to finish "
        f"in {result['hours']:g} h",
        f"- bound by **{result['bound']}**",
        f"- efficiency (measured end to end / stage sum): {result['efficiency']:.2f}",
        "",
        "| stage | s per 1M cutouts on one node | share |",
        "|---|---|---|",
    ]
    for name, s in result["stages"].items():
        lines.append(f"| {name} | {s['seconds_per_cutout'] * 1e6:,.1f} | {s['share']:.0%} |")
    m = result["measured_on"]
    lines += ["", f"Measured on {m.get('cpu')} ({m.get('cores')} cores, GPU: {m.get('gpu') or 'none'}) "
              f"at {m.get('when')}, from {result['measurements']}."]
    lines += [f"- note: {n}" for n in result["notes"]]
    return "\n".join(lines)
