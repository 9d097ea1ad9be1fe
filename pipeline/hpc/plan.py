"""``skysieve plan``: nodes and node-hours of a release, ingest and classify, from the benchmarks.

The benchmarks (``python -m benchmarks``) store throughputs as JSON; this module
reads them (it never imports ``benchmarks``):

- ``raw_model.json``: each model alone, batched, in memory (cutouts/s with
  ``settings.threads`` torch threads on ``machine.cores`` cores);
- ``classify_throughput.json``: where one classification task spends its time
  (``stages.seconds_per_cutout``: ``read``, ``preprocess``, ``blur``, ``model``,
  ``other`` with ``stages.threads`` threads) and the measured end-to-end rates;
- the ingest rate, the first found of ``ingest_vs_sextractor.json`` (the ingest row,
  on ``settings.cores`` cores), ``release_scale.json`` (``stages.ingest_full``, on
  ``settings.workers`` cores) and ``ingest_cutouts.json`` (the whole-ingest row, on the
  machine's cores);
- ``gpu.json`` (optional): raw model throughput on a GPU, and classify end to end on a
  GPU node (rows with a ``cluster``).

The night is two stages, one after the other on the same nodes: **ingest** (CPU only)
and **classify**.  Per cutout, in core-seconds (seconds x cores used):

- ingest = its cores / its measured rate;
- classify stages: I/O read = ``read``; preprocessing+blur = ``preprocess + blur``;
  catalogue write = ``other``; model = the profiled model's stage time x (its raw
  rate / the requested model's raw rate), so every stage comes from the same run
  (the machine's load drifts between runs); ``threads / raw rate`` without a profile;
  all scaled by ``overhead`` = the stage sum's predicted rate / the measured end-to-end
  rate (Dask, idle cores, overlap; not capped), so the profiled model plans at its
  measured end-to-end rate;
- CPU node: every stage on ``cores_per_node`` cores;
- GPU node: ingest on the cores; classify at ``min(CPU stages without the model, gpus x
  GPU model rate)``, the CPU stages taken from ``gpu.json``'s measured end-to-end runs
  where it has them (scaled to the node's cores: they bound there), else from the CPU
  profile; without a GPU measurement the model stage is assumed never to bound (an upper
  bound on the rate, said so in the result);
- node-hours = ``sources x (ingest + classify seconds per cutout on a node) / 3600``;
  nodes = ``ceil(node-hours / hours)``.

``bound`` names the stage with more node-hours (``"ingest"`` or ``"classify"``; classify
alone when no ingest rate is measured), ``classify_bound`` classify's slowest sub-stage,
and ``bound_on`` both for a CPU node and a GPU node.  ``efficiency`` is the measured
end-to-end classify rate over the raw model's rate (same machine, same model), not capped.
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


def _ingest_rate(folder: Path) -> dict[str, Any] | None:
    """The measured ingest rate: ``{"cutouts_per_s", "cores", "source"}``, or None."""
    ivs = _load(folder, "ingest_vs_sextractor", required=False)
    rows = [r for r in (ivs or {}).get("rows", [])
            if str(r.get("method", "")).startswith("skysieve ingest") and r.get("cutouts_per_s")]
    if rows:
        s = ivs.get("settings", {})
        return {"cutouts_per_s": float(rows[0]["cutouts_per_s"]),
                "cores": int(s.get("cores") or ivs.get("machine", {}).get("cores") or 1),
                "source": f"ingest_vs_sextractor.json ({s.get('exposures')} exposures of "
                          f"{s.get('exposure_size')}² px)"}
    release = _load(folder, "release_scale", required=False)
    full = (release or {}).get("stages", {}).get("ingest_full")
    if full and full.get("cutouts_per_s"):
        s = release.get("settings", {})
        return {"cutouts_per_s": float(full["cutouts_per_s"]),
                "cores": int(s.get("workers") or 1) * int(s.get("threads_per_worker") or 1),
                "source": f"release_scale.json ({s.get('exposures')} exposures of "
                          f"{s.get('exposure_size')}² px)"}
    ic = _load(folder, "ingest_cutouts", required=False)
    rows = [r for r in (ic or {}).get("results", [])
            if str(r.get("method", "")).startswith("whole skysieve ingest")]
    if rows:
        return {"cutouts_per_s": float(rows[0]["cutouts/s"]),
                "cores": int(ic.get("machine", {}).get("cores") or 1),
                "source": "ingest_cutouts.json (Dask threads)"}
    return None


def _classify_core_seconds(folder: Path, raw: dict[str, Any], row: dict[str, Any],
                           measured_cores: int, notes: list[str]
                           ) -> tuple[dict[str, float], float, float, float | None]:
    """Classify's stages in core-seconds per cutout, the model's, the overhead, the efficiency."""
    raw_threads = int(raw.get("settings", {}).get("threads") or measured_cores)
    model_cs = raw_threads / float(row["cutouts_per_s"])  # core-seconds per cutout
    ct = _load(folder, "classify_throughput", required=False)
    if not (ct and ct.get("stages", {}).get("seconds_per_cutout")):
        notes.append("no stage timings (classify_throughput.json): the model alone is counted, "
                     "an optimistic estimate; run `python -m benchmarks classify_throughput`")
        return {"I/O read": 0.0, "preprocessing+blur": 0.0, "catalogue write": 0.0}, \
            model_cs, 1.0, None
    st = ct["stages"]
    sp, th = st["seconds_per_cutout"], float(st.get("threads") or 1)
    stage_cs = {"I/O read": th * sp["read"],
                "preprocessing+blur": th * (sp["preprocess"] + sp["blur"]),
                "catalogue write": th * sp.get("other", 0.0)}
    profiled_cs = sum(stage_cs.values()) + th * sp["model"]
    ct_cores = int(ct.get("machine", {}).get("cores") or measured_cores)
    ref = str(ct.get("settings", {}).get("model", ""))
    ref_rows = [r for r in raw.get("rows", []) if r.get("model") == ref and r.get("cutouts_per_s")]
    if ref_rows and sp.get("model"):
        # Anchor the model stage in the profile's own run (same load as the other stages),
        # scaled by the raw-rate ratio of the requested model to the profiled one.
        model_cs = th * sp["model"] * float(ref_rows[0]["cutouts_per_s"]) / float(
            row["cutouts_per_s"])
    e2e = [r["cutouts_per_s"] for r in ct.get("rows", [])[1:] if r.get("cutouts_per_s")]
    overhead, efficiency = 1.0, None
    if e2e:
        overhead = (ct_cores / profiled_cs) / max(e2e)
        raw_ref = (ct.get("rows") or [{}])[0].get("cutouts_per_s")
        if raw_ref:
            efficiency = max(e2e) / float(raw_ref)
    return stage_cs, model_cs, overhead, efficiency


def _classify_node(stage_cs: dict[str, float], model_cs: float, overhead: float, cores: int,
                   gpus: int, model: str, folder: Path, notes: list[str]
                   ) -> tuple[dict[str, float], float, str, str | None]:
    """Seconds per cutout of classify's stages on one node, the pace, the bound, the GPU note."""
    cpu_seconds = {k: v * overhead / cores for k, v in stage_cs.items()}
    if gpus == 0:
        seconds = {**cpu_seconds, "model": model_cs * overhead / cores}
        return seconds, sum(seconds.values()), max(seconds, key=seconds.get), None
    gpu = _load(folder, "gpu", required=False)
    grows = [r for r in (gpu or {}).get("rows", [])
             if r.get("model") == _ALIASES.get(model, model) and r.get("what") == "raw GPU model"]
    if gpu and gpu.get("status") == "measured" and grows:
        model_seconds = 1.0 / (gpus * float(grows[0]["cutouts_per_s"]))
        info = (f"measured: {grows[0]['cutouts_per_s']:,.0f} cutouts/s per GPU "
                f"({gpu.get('machine', {}).get('gpu')}) x {gpus}")
    else:
        model_seconds = 0.0
        info = ("extrapolated: no GPU measurement of this model "
                f"({'gpu.json says ' + repr(gpu.get('status')) if gpu else 'no gpu.json'}); "
                f"the model stage is assumed never to bound on {gpus} GPU(s), so classify runs "
                f"at the rate of its CPU stages (read, preprocessing+blur, write) on {cores} "
                "cores: an upper bound. Run `python -m benchmarks gpu` on a GPU node to measure it")
        notes.append(info)
    measured = _gpu_end_to_end(gpu, model, cores) if gpu and gpu.get("status") == "measured" \
        else None
    if measured:
        # classify measured end to end on a GPU node: its CPU stages, as they ran there
        # (Dask, processes sharing the GPU), set the pace; scale the profiled split to it.
        rate, what = measured
        scale = (1.0 / rate) / max(sum(cpu_seconds.values()), 1e-30)
        cpu_seconds = {k: v * scale for k, v in cpu_seconds.items()}
        info += f"; classify end to end there: {what}"
    # The GPU runs beside the CPU stages: the slower of the two sets the pace.
    cpu_total = sum(cpu_seconds.values())
    pace = max(cpu_total, model_seconds)
    if pace <= 0:
        raise PlanError(f"no stage timings to plan a GPU node with in {folder}; run "
                        "`python -m benchmarks classify_throughput` (and `gpu` on a GPU node)")
    bound = "model" if model_seconds > cpu_total else max(cpu_seconds, key=cpu_seconds.get)
    return {**cpu_seconds, "model": model_seconds}, pace, bound, info


def _gpu_end_to_end(gpu: dict[str, Any], model: str, cores: int) -> tuple[float, str] | None:
    """The best measured end-to-end classify rate of ``model`` on a GPU node, scaled to ``cores``.

    Rows of ``gpu.json`` with a ``cluster`` (``benchmarks gpu``'s end-to-end runs); their
    CPU stages bound them (the GPU idles most of the time), so the rate scales with the
    node's cores over the measuring machine's.  ``None`` when not measured.
    """
    want = _ALIASES.get(model, model)
    rows = [r for r in gpu.get("rows", []) if r.get("model") == want and r.get("cluster")
            and r.get("cutouts_per_s")]
    if not rows:
        return None
    best = max(rows, key=lambda r: float(r["cutouts_per_s"]))
    measured_cores = int(gpu.get("machine", {}).get("cores") or cores)
    rate = float(best["cutouts_per_s"]) * cores / measured_cores
    ratio = best.get("ratio_to_raw")
    return rate, (f"{float(best['cutouts_per_s']):,.0f} cutouts/s measured on {measured_cores} "
                  f"cores ({best.get('what', '?')}"
                  + (f", {float(ratio):.2f} x the raw GPU model" if ratio else "")
                  + f"), scaled to {cores} cores: {rate:,.0f}/s")


def plan(*, sources: float, model: str = "default", gpus_per_node: int = 0,
         cores_per_node: int | None = None, hours: float = 8.0,
         measurements: Path | None = None) -> dict[str, Any]:
    """Estimate the node-hours and nodes a whole release needs in one night: ingest + classify.

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
        ``rate_per_node`` (cutouts/s through both stages), ``node_hours``, ``nodes``,
        ``bound`` (``"ingest"`` or ``"classify"``), ``classify_bound`` (its slowest
        sub-stage), ``bound_on`` (the bound on a CPU node and on a GPU node), ``steps``
        (``ingest`` and ``classify``: rate per node, node-hours, share; ``ingest`` None
        when unmeasured), ``stages`` (seconds per cutout on one node and share),
        ``efficiency`` (measured end-to-end classify / raw model, not capped),
        ``overhead``, ``gpu``, ``notes``, ``markdown`` (:func:`describe`), and the inputs.

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
    notes: list[str] = []
    stage_cs, model_cs, overhead, efficiency = _classify_core_seconds(folder, raw, row,
                                                                      measured_cores, notes)
    seconds, classify_pace, classify_bound, gpu_info = _classify_node(
        stage_cs, model_cs, overhead, cores, gpus_per_node, model, folder, notes)
    ingest = _ingest_rate(folder)
    ingest_pace = ingest["cores"] / ingest["cutouts_per_s"] / cores if ingest else 0.0
    if ingest is None:
        notes.append("no ingest measurement: classify alone is counted; run `python -m "
                     "benchmarks ingest_vs_sextractor`")
    bound_on = {}
    for kind, gpus in (("cpu", 0), ("gpu", max(1, gpus_per_node))):
        try:
            pace_c = classify_pace if gpus == gpus_per_node else _classify_node(
                stage_cs, model_cs, overhead, cores, gpus, model, folder, [])[1]
        except PlanError:  # a GPU node cannot be planned without stage timings
            bound_on[f"{kind} node"] = "unknown"
            continue
        bound_on[f"{kind} node"] = "ingest" if ingest_pace > pace_c else "classify"
    per_cutout = ingest_pace + classify_pace
    rate = 1.0 / per_cutout
    node_hours = sources * per_cutout / 3600.0
    steps = {"ingest": None if ingest is None else {
                 "rate_per_node": 1.0 / ingest_pace,
                 "node_hours": sources * ingest_pace / 3600.0,
                 "share": ingest_pace / per_cutout, "measured": ingest["source"]},
             "classify": {"rate_per_node": 1.0 / classify_pace,
                          "node_hours": sources * classify_pace / 3600.0,
                          "share": classify_pace / per_cutout, "bound": classify_bound}}
    if cores != measured_cores:
        notes.append(f"scaled linearly from {measured_cores} measured cores to {cores} cores "
                     "per node (assumes I/O keeps up)")
    total = sum(seconds.values()) + ingest_pace
    stage_seconds = {"ingest": ingest_pace, **{k: seconds.get(k, 0.0) for k in _STAGES}}
    result: dict[str, Any] = {
        "sources": float(sources), "model": model, "model_arch": row.get("arch"),
        "image_size": row.get("image_size"), "hours": float(hours),
        "gpus_per_node": gpus_per_node, "cores_per_node": cores,
        "rate_per_node": rate, "node_hours": node_hours,
        "nodes": math.ceil(node_hours / hours - 1e-9),
        "bound": "ingest" if ingest_pace > classify_pace else "classify",
        "classify_bound": classify_bound, "bound_on": bound_on, "steps": steps,
        "stages": {k: {"seconds_per_cutout": v, "share": v / total if total else 0.0}
                   for k, v in stage_seconds.items()},
        "efficiency": efficiency, "overhead": overhead, "gpu": gpu_info, "notes": notes,
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
    eff = result["efficiency"]
    steps = result["steps"]
    lines = [
        f"## skysieve plan: {result['sources']:.3g} sources, model {result['model']} "
        f"({result['model_arch']}, {result['image_size']} px)",
        "",
        f"- node: {node}; the night (ingest + classify) at **{result['rate_per_node']:,.0f} "
        "cutouts/s per node**",
        f"- **{result['node_hours']:,.1f} node-hours**; **{result['nodes']:,} node(s)** to finish "
        f"in {result['hours']:g} h",
        f"- bound by **{result['bound']}** (classify by **{result['classify_bound']}**); on a "
        f"CPU node: {result['bound_on']['cpu node']}, on a GPU node: "
        f"{result['bound_on']['gpu node']}",
        "- efficiency (measured classify end to end / raw model): "
        + (f"{eff:.2f}" if eff is not None else "not measured"),
        *([f"- GPU: {result['gpu']}"] if result["gpus_per_node"] and result["gpu"] else []),
        "",
        "| step | cutouts/s per node | node-hours | share |",
        "|---|---|---|---|",
    ]
    for name, step in steps.items():
        lines.append(f"| {name} | not measured | - | - |" if step is None else
                     f"| {name} | {step['rate_per_node']:,.0f} | {step['node_hours']:,.1f} | "
                     f"{step['share']:.0%} |")
    lines += ["", "| stage | s per 1M cutouts on one node | share |", "|---|---|---|"]
    for name, s in result["stages"].items():
        lines.append(f"| {name} | {s['seconds_per_cutout'] * 1e6:,.1f} | {s['share']:.0%} |")
    m = result["measured_on"]
    lines += ["", f"Measured on {m.get('cpu')} ({m.get('cores')} cores, GPU: {m.get('gpu') or 'none'}) "
              f"at {m.get('when')}, from {result['measurements']}"
              + (f"; ingest from {steps['ingest']['measured']}." if steps["ingest"] else ".")]
    lines += [f"- note: {n}" for n in result["notes"]]
    return "\n".join(lines)
