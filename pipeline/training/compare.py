"""Compare architectures of the model zoo over seeds: ``skysieve compare``.

For every architecture token and seed, :func:`compare` trains a model on one
cutout store (:func:`pipeline.training.fit.train`, the same validation exposures for
every run: ``split_seed=0``), evaluates it on those validation exposures
(:func:`pipeline.training.evaluate.evaluate`) and collects one table (Markdown and JSON)
of accuracy, balanced accuracy, calibrated ECE, speed and blur robustness, mean
± standard deviation over the seeds, plus two optional studies with paired
statistics:

* distillation, when both ``X`` and ``X+kd`` are among the tokens: ``X`` trained
  alone against ``X`` distilled from a teacher trained once (seed 0) on the same
  store and split;
* pretraining, when a ``pretrain_store`` is given: one architecture trained from
  scratch on the store against the same architecture initialised from a
  checkpoint pretrained on ``pretrain_store`` and fine-tuned on the store (same
  epochs, same seeds).

Every run writes ``out/models/<token>_s<seed>.pt`` (its card beside it) and
``out/eval/<token>_s<seed>/evaluation.json``; a run whose checkpoint and
evaluation already exist (and match the settings asked for) is reused, so an
interrupted compare resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import StoreError
from workers.checkpoint import CheckpointError, file_sha256, load_card
from workers.models import is_model, list_models

__all__ = [
    "JSON_NAME",
    "KD_SUFFIX",
    "MARKDOWN_NAME",
    "compare",
    "paired_study",
    "parse_token",
    "resolve_arch",
    "summarize",
]

KD_SUFFIX = "+kd"
JSON_NAME = "compare.json"
MARKDOWN_NAME = "compare.md"

#: Registered names that mean a different variant at cutout sizes (token -> variant).
_CUTOUT_VARIANTS = {"hr_celestialnet": "hr_celestialnet_cutout"}
_SPLIT_SEED = 0
_BLUR_REFERENCE = 1.0  # the table's blur column: accuracy at +1 PSF FWHM


# --------------------------------------------------------------------------- tokens
def resolve_arch(name: str, *, image_size: int) -> str:
    """Return the registered architecture a (non-kd) token name stands for.

    ``hr_celestialnet`` is the full-exposure network of the paper, which needs
    inputs far larger than a cutout; at inputs smaller than its minimum side it
    means the documented cutout variant ``hr_celestialnet_cutout``.

    Parameters
    ----------
    name : str
        A registered model name.
    image_size : int
        Model input side in pixels.

    Raises
    ------
    ValueError
        ``name`` is not registered (the message lists the registry).
    """
    if not isinstance(name, str) or not is_model(name):
        raise ValueError(f"compare: unknown architecture {name!r}; registered models: "
                         f"{', '.join(list_models())} (append {KD_SUFFIX!r} to distil one from "
                         "the teacher, e.g. 'mobilenetv3_small+kd')")
    if name in _CUTOUT_VARIANTS:
        from workers.models.hr_celestialnet import min_input_side

        if image_size < min_input_side():
            return _CUTOUT_VARIANTS[name]
    return name


def parse_token(token: str, *, image_size: int) -> dict[str, Any]:
    """Parse an architecture token: ``NAME`` or ``NAME+kd``.

    Parameters
    ----------
    token : str
        A registered model name, optionally followed by ``+kd`` (distilled from the teacher).
    image_size : int
        Model input side in pixels (see :func:`resolve_arch`).

    Returns
    -------
    dict
        ``token``, ``name`` (without ``+kd``), ``arch`` (the registered model trained),
        ``kd`` (bool).

    Raises
    ------
    ValueError
        Not a string, empty, or an unknown name (the registry is listed).

    Examples
    --------
    >>> parse_token("mobilenetv3_small+kd", image_size=64)["arch"]
    'mobilenetv3_small'
    >>> parse_token("hr_celestialnet", image_size=64)["arch"]
    'hr_celestialnet_cutout'
    """
    if not isinstance(token, str) or not token.strip():
        raise ValueError(f"compare: an architecture token must be a model name, got {token!r}")
    token = token.strip()
    kd = token.endswith(KD_SUFFIX)
    name = token[: -len(KD_SUFFIX)] if kd else token
    return {"token": token, "name": name, "arch": resolve_arch(name, image_size=image_size),
            "kd": kd}


# --------------------------------------------------------------------------- statistics
def _finite(values: Sequence[float | None]) -> np.ndarray:
    arr = np.asarray([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    return arr[np.isfinite(arr)]


def summarize(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation (``ddof=1``) of per-seed values.

    ``None``/NaN values are left out; ``std`` is ``None`` with fewer than two values,
    ``mean`` is ``None`` with none.
    """
    arr = _finite(values)
    return {"mean": float(arr.mean()) if arr.size else None,
            "std": float(arr.std(ddof=1)) if arr.size >= 2 else None,
            "n": int(arr.size), "values": [None if v is None else float(v) for v in values]}


def _p(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def paired_study(baseline: Sequence[float], treated: Sequence[float]) -> dict[str, Any]:
    """Compare per-seed results of two variants: mean difference, paired and Welch t-tests.

    Parameters
    ----------
    baseline, treated : sequence of float
        One value per seed, in the same seed order (seed ``i`` of both share the
        initialisation seed and the validation split).

    Returns
    -------
    dict
        ``baseline`` and ``treated`` (:func:`summarize`), ``differences``
        (treated - baseline, per seed), ``mean_difference``, ``std_difference``,
        ``paired_t`` / ``paired_p`` (``scipy.stats.ttest_rel``, two-sided) and
        ``welch_t`` / ``welch_p`` (``scipy.stats.ttest_ind(equal_var=False)``).
        A statistic that is undefined (fewer than two seeds, zero variance) is ``None``.

    Raises
    ------
    ValueError
        The two sequences differ in length.
    """
    from scipy import stats

    a = np.asarray(baseline, dtype=np.float64)
    b = np.asarray(treated, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_study: need one value per seed for both variants, got "
                         f"{a.size} and {b.size}")
    diff = b - a
    out: dict[str, Any] = {
        "baseline": summarize(a.tolist()), "treated": summarize(b.tolist()),
        "differences": diff.tolist(),
        "mean_difference": float(diff.mean()) if diff.size else None,
        "std_difference": float(diff.std(ddof=1)) if diff.size >= 2 else None,
        "n": int(diff.size), "paired_t": None, "paired_p": None, "welch_t": None,
        "welch_p": None,
    }
    if diff.size >= 2:
        import warnings

        with warnings.catch_warnings():  # zero variance: scipy warns and returns NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            rel = stats.ttest_rel(b, a)
            welch = stats.ttest_ind(b, a, equal_var=False)
        out.update({"paired_t": _p(rel.statistic), "paired_p": _p(rel.pvalue),
                    "welch_t": _p(welch.statistic), "welch_p": _p(welch.pvalue)})
    return out


# --------------------------------------------------------------------------- checks
def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"compare: {name} must be a positive integer, got {value!r}")
    return value


def _stamp_size(store: Path) -> int:
    import xarray as xr

    try:
        ds = xr.open_zarr(store)
        image = ds["image"]
    except Exception as exc:
        raise StoreError(f"{store}: not a readable cutout store with an 'image' variable "
                         f"({type(exc).__name__}: {exc}); write one with `skysieve ingest`"
                         ) from exc
    return int(image.shape[-1])


# --------------------------------------------------------------------------- runs
def _say(progress: bool, text: str) -> None:
    if progress:
        print(f"compare: {text}", file=sys.stderr, flush=True)


def _reusable(pt: Path, eval_dir: Path, want: dict[str, Any]) -> dict[str, Any] | None:
    """Return the evaluation of an existing run that matches ``want``, else None.

    A checkpoint with its card but no (matching) evaluation returns ``{}``: evaluate
    it again without retraining.  A checkpoint trained with other settings is refused.
    """
    if not (pt.is_file() and pt.with_suffix(".json").is_file()):
        return None
    try:
        card = load_card(pt)
    except (CheckpointError, ValueError, OSError):
        return None  # a half-written card: train again
    if file_sha256(pt) != card.sha256:
        return None
    t = card.training or {}
    have = {"arch": card.arch, "image_size": card.image_size, "epochs": t.get("epochs"),
            "seed": t.get("seed"), "split_seed": (t.get("split") or {}).get("seed"),
            "data_sha256": t.get("data_sha256"), "batch_size": t.get("batch_size"),
            "teacher": (t.get("teacher") or {}).get("sha256"),
            "init": (t.get("init") or {}).get("sha256")}
    diff = {k: (have[k], v) for k, v in want.items() if v is not None and have.get(k) != v}
    if diff:
        what = ", ".join(f"{k}={a!r} (asked {b!r})" for k, (a, b) in diff.items())
        raise ValueError(f"{pt}: an earlier compare trained this run with other settings: "
                         f"{what}; use a new --out folder or delete {pt.parent} to start over")
    ev_path = eval_dir / "evaluation.json"
    if not ev_path.is_file():
        return {}
    try:
        ev = json.loads(ev_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    if (ev.get("model") or {}).get("sha256") != card.sha256:
        return {}
    return ev


def _run(store: Path, *, arch: str, pt: Path, eval_dir: Path, seed: int, epochs: int,
         batch_size: int, image_size: int, data_sha: str | None, blur_sweep: Sequence[float],
         speed: bool, progress: bool, teacher: Path | None = None, init: Path | None = None,
         label: str) -> dict[str, Any]:
    """Train (unless reusable) and evaluate (unless reusable) one model; return its record."""
    from pipeline.training.evaluate import evaluate
    from pipeline.training.fit import train

    want = {"arch": arch, "image_size": image_size, "epochs": epochs, "seed": seed,
            "split_seed": _SPLIT_SEED, "data_sha256": data_sha, "batch_size": batch_size,
            "teacher": load_card(teacher).sha256 if teacher is not None else None,
            "init": file_sha256(init) if init is not None else None}
    ev = _reusable(pt, eval_dir, want)
    trained = ev is None
    if trained:
        _say(progress, f"{label}: training {arch} (seed {seed}, {epochs} epochs) -> {pt}")
        train(store, arch=arch, out=pt, epochs=epochs, batch_size=batch_size, seed=seed,
              split_seed=_SPLIT_SEED, image_size=image_size, teacher=teacher, init=init,
              progress=progress)
    else:
        _say(progress, f"{label}: reusing {pt}")
    if not ev:
        _say(progress, f"{label}: evaluating -> {eval_dir}")
        ev = evaluate(pt, store, out=eval_dir, blur_sweep=tuple(blur_sweep), subset="val",
                      batch_size=batch_size, speed=speed, progress=False, seed=seed)
    card = load_card(pt)
    return {"card": card, "evaluation": ev, "trained": trained, "checkpoint": str(pt),
            "evaluation_json": str(eval_dir / "evaluation.json")}


def _blur_at(ev: dict[str, Any], factor: float, key: str = "accuracy") -> float | None:
    for row in (ev.get("blur") or {}).get("curve", []):
        if math.isclose(float(row["factor"]), factor):
            return row.get(key)
    return None


def _seed_record(seed: int, rec: dict[str, Any]) -> dict[str, Any]:
    ev, card = rec["evaluation"], rec["card"]
    m = ev["metrics"]
    return {"seed": seed, "accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"],
            "ece_calibrated": (m.get("ece") or {}).get("calibrated"),
            "blur_accuracy": _blur_at(ev, _BLUR_REFERENCE),
            "blur_curve": (ev.get("blur") or {}).get("curve"),
            "n_val": ev.get("n"), "epochs_run": card.training.get("epochs_run"),
            "best_epoch": card.training.get("best_epoch"),
            "train_seconds": card.training.get("seconds"), "trained_now": rec["trained"],
            "sha256": card.sha256, "checkpoint": rec["checkpoint"],
            "evaluation": rec["evaluation_json"]}


def _row(parsed: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    per_seed = [_seed_record(r["seed"], r["rec"]) for r in records]
    first = records[0]["rec"]
    speed = first["evaluation"].get("speed") or {}
    return {
        "token": parsed["token"], "arch": parsed["arch"], "kd": parsed["kd"],
        "params": first["card"].params,
        "accuracy": summarize([s["accuracy"] for s in per_seed]),
        "balanced_accuracy": summarize([s["balanced_accuracy"] for s in per_seed]),
        "ece_calibrated": summarize([s["ece_calibrated"] for s in per_seed]),
        "blur_accuracy": summarize([s["blur_accuracy"] for s in per_seed]),
        "ms_per_sample_batch1": speed.get("batch1_ms_per_sample"),
        "cutouts_per_s": speed.get("batched_cutouts_per_s"),
        "speed_batch_size": speed.get("batch_size"),
        "per_seed": per_seed,
    }


def _study(base: list[dict[str, Any]], treated: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "seeds": [s["seed"] for s in base],
        "accuracy": paired_study([s["accuracy"] for s in base],
                                 [s["accuracy"] for s in treated]),
        "balanced_accuracy": paired_study([s["balanced_accuracy"] for s in base],
                                          [s["balanced_accuracy"] for s in treated]),
    }


# --------------------------------------------------------------------------- environment
def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    import torch

    versions = {}
    for pkg in ("skysieve", "torch", "numpy", "scipy", "xarray", "zarr"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": gpu, "python": platform.python_version(), "platform": platform.platform(),
            "versions": versions}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600: a table is for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _command_line(store: Path, out: Path, tokens: list[str], **kw: Any) -> str:
    """The command line that ran: ``sys.argv`` under ``skysieve compare``, else its equivalent."""
    argv = list(sys.argv)
    if len(argv) >= 2 and argv[1] == "compare":
        return shlex.join(["skysieve"] + argv[1:])
    args = ["skysieve", "compare", str(store), "--archs", ",".join(tokens), "--out", str(out)]
    for key, value in kw.items():
        if value is None:
            continue
        if key == "blur_sweep":
            value = ",".join(f"{v:g}" for v in value)
        args += [f"--{key.replace('_', '-')}", str(value)]
    return shlex.join(args) + "  # equivalent of the Python call compare(...)"


# --------------------------------------------------------------------------- markdown
def _pm(s: dict[str, Any], digits: int = 3) -> str:
    if s.get("mean") is None:
        return "n/a"
    if s.get("std") is None:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def _num(v: Any, fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def _pval(v: Any) -> str:
    return "n/a" if v is None else (f"{v:.3g}" if v >= 1e-3 else f"{v:.1e}")


def _study_md(title: str, study: dict[str, Any], base_name: str, treated_name: str) -> list[str]:
    lines = [(f"| seed | {base_name} acc. | {treated_name} acc. | {base_name} bal. acc. | "
             f"{treated_name} bal. acc. |"), "|---|---|---|---|---|"]
    acc, bacc = study["accuracy"], study["balanced_accuracy"]
    for i, seed in enumerate(study["seeds"]):
        lines.append(f"| {seed} | {acc['baseline']['values'][i]:.4f} | "
                     f"{acc['treated']['values'][i]:.4f} | {bacc['baseline']['values'][i]:.4f} | "
                     f"{bacc['treated']['values'][i]:.4f} |")
    lines += ["", ("| metric | mean difference (treated − baseline) | paired t-test p | "
                  "Welch t-test p |"), "|---|---|---|---|"]
    for key, label in (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy")):
        s = study[key]
        sd = "" if s["std_difference"] is None else f" (sd {s['std_difference']:.4f})"
        lines.append(f"| {label} | {_num(s['mean_difference'], '+.4f')}{sd} | "
                     f"{_pval(s['paired_p'])} | {_pval(s['welch_p'])} |")
    return [f"### {title}", ""] + lines + [""]


_CAVEAT = (
    "What these tests can and cannot show: the seeds vary only the initialisation and the "
    "augmentation; every run holds out the same validation exposures (split seed 0). With "
    "{n} seeds the paired t-test has {df} degree(s) of freedom, so only a large and "
    "consistent difference reaches p < 0.05, and a large p means 'not resolved with this "
    "many seeds', not 'no effect'. The p-values describe seed-to-seed variation on this one "
    "validation set; they do not include the sampling noise of the validation set itself or "
    "of the training data (a different survey could rank the models differently), and no "
    "correction is made for testing two metrics.")


def _markdown(result: dict[str, Any]) -> str:
    s, mach = result["settings"], result["machine"]
    v = mach["versions"]
    bs = s["batch_size"]
    lines = [
        "# skysieve compare", "",
        f"Command: `{result['command']}`", "",
        (f"Machine: {mach['cpu']}, {mach['cores']} cores, torch {mach['torch_threads']} "
        f"thread(s){', GPU ' + mach['gpu'] if mach['gpu'] else ', no GPU'}; python "
        f"{mach['python']}, skysieve {v.get('skysieve')}, torch {v.get('torch')}, numpy "
        f"{v.get('numpy')}, scipy {v.get('scipy')}. Written {result['created']}; wall time "
        f"{result['wall_s'] / 60:.1f} min ({result['runs_trained']} model(s) trained in this "
        f"invocation)."), "",
        (f"Store: `{result['store']['path']}`: {result['store']['n_train']} training and "
        f"{result['store']['n_val']} validation sources; validation exposures (split seed "
        f"{_SPLIT_SEED}, the same for every model): "
        f"{', '.join(result['store']['val_exposures']) or 'n/a'}."), "",
        (f"Settings: {s['seeds']} seed(s) (0-{s['seeds'] - 1}), {s['epochs']} epochs (early "
        f"stopping on validation balanced accuracy), batch {bs}, input {s['image_size']} px, "
        f"blur sweep {s['blur_sweep']} x PSF FWHM."), "",
        (f"| arch | params | accuracy | balanced acc. | ECE (calibrated) | ms/sample (batch 1) | "
        f"cutouts/s (batch {bs}) | acc. at +1 PSF FWHM blur |"),
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['token']} | {r['params']:,} | {_pm(r['accuracy'])} | "
            f"{_pm(r['balanced_accuracy'])} | {_pm(r['ece_calibrated'])} | "
            f"{_num(r['ms_per_sample_batch1'], '.3f')} | {_num(r['cutouts_per_s'], ',.0f')} | "
            f"{_pm(r['blur_accuracy'])} |")
    lines += ["", "Notes: " + " ".join(result["notes"]), ""]
    lines += [("Figures: `blur_curves.png` (accuracy against added blur, seed 0 of each "
              "architecture), `reliability.png` (reliability diagrams, seed 0)."), ""]
    if result.get("distillation"):
        lines += ["## Distillation", ""]
        for d in result["distillation"]:
            t = d["teacher"]
            lines += [(f"Teacher: {t['arch']} ({t['params']:,} parameters, seed 0, "
                      f"{t['epochs']} epochs, same store and validation split): accuracy "
                      f"{t['accuracy']:.4f}, balanced accuracy {t['balanced_accuracy']:.4f}. "
                      f"Student: {d['base']} trained alone (baseline) against {d['kd']} "
                      f"(treated; loss {d['loss']})."), ""]
            lines += _study_md(f"{d['base']} vs {d['kd']}", d, d["base"], d["kd"])
    if result.get("pretraining"):
        p = result["pretraining"]
        pre = p["pretrain"]
        lines += ["## Pretraining", "",
                  (f"{p['arch']} pretrained once (seed 0, {pre['epochs']} epoch(s)) on "
                  f"`{pre['store']}` ({pre['n_train']} training sources; its own validation "
                  f"accuracy {pre['accuracy']:.4f}), then fine-tuned on the store above with "
                  f"the same epochs and seeds as the models trained from scratch there "
                  f"(baseline: scratch; treated: init from the pretrained checkpoint)."), ""]
        lines += _study_md(f"{p['arch']}: scratch vs pretrained + fine-tuned", p, "scratch",
                           "pretrained")
    if result.get("distillation") or result.get("pretraining"):
        lines += [_CAVEAT.format(n=s["seeds"], df=max(s["seeds"] - 1, 0)), ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
def compare(store: Path, *, archs: Sequence[str], seeds: int = 3, out: Path, epochs: int = 15,
            batch_size: int = 128, image_size: int | None = None,
            teacher_arch: str = "wide_resnet16_4", teacher_epochs: int | None = None,
            pretrain_store: Path | None = None, pretrain_arch: str | None = None,
            pretrain_epochs: int | None = None, blur_sweep: Sequence[float] = (0, 0.5, 1, 2, 4),
            progress: bool = True) -> dict[str, Any]:
    """Train and evaluate architectures over seeds on one store; write the comparison table.

    Parameters
    ----------
    store : Path
        Labelled cutout store (with ``exposure``); every run holds out the same
        validation exposures (split seed 0) and is evaluated on them.
    archs : sequence of str
        Architecture tokens: a registered name (``workers.models.list_models()``), or
        ``NAME+kd``: ``NAME`` distilled from the teacher.  ``hr_celestialnet`` at cutout
        sizes means the cutout variant ``hr_celestialnet_cutout``.
    seeds : int, default: 3
        Seeds ``0 .. seeds-1`` (initialisation and augmentation) per token.
    out : Path
        Folder for ``models/``, ``eval/``, ``compare.md``, ``compare.json``,
        ``blur_curves.png`` and ``reliability.png``.
    epochs, batch_size : int
        Training settings of every run (``batch_size`` is also the batched speed test's).
    image_size : int, optional
        Model input side in pixels; default the store's stamp size.
    teacher_arch : str, default: "wide_resnet16_4"
        Teacher of the ``+kd`` tokens, trained once (seed 0) on ``store``.
    teacher_epochs : int, optional
        Default ``epochs``.
    pretrain_store : Path, optional
        Run the pretraining study: pretrain on this store (seed 0), fine-tune on ``store``.
    pretrain_arch : str, optional
        Architecture of the study; default the first token without ``+kd``.
    pretrain_epochs : int, optional
        Pretraining epochs; default ``epochs`` (fine-tuning always uses ``epochs``).
    blur_sweep : sequence of float, default: (0, 0.5, 1, 2, 4)
        Added blur in PSF FWHM (see :func:`pipeline.training.evaluate.evaluate`); the table's
        blur column is the factor 1.
    progress : bool, default: True
        Print what runs to stderr (and the training epochs).

    Returns
    -------
    dict
        What ``compare.json`` holds: ``command``, ``machine``, ``settings``, ``store``,
        ``rows`` (one per token, with the per-seed numbers), ``distillation`` (a list),
        ``pretraining`` (or None), ``notes``, ``files``, ``wall_s``.

    Raises
    ------
    ValueError
        An unknown architecture token (the registry is listed), a repeated token, bad
        numbers, or an ``out`` folder holding runs trained with other settings.
    pipeline.errors.StoreError
        A store that cannot be read or trained on.
    """
    t_start = time.perf_counter()
    from pipeline.training.evaluate import validate_blur_sweep

    store = Path(store)
    out = Path(out)
    seeds = _positive_int("seeds", seeds)
    epochs = _positive_int("epochs", epochs)
    batch_size = _positive_int("batch_size", batch_size)
    teacher_epochs = _positive_int("teacher_epochs",
                                   epochs if teacher_epochs is None else teacher_epochs)
    pretrain_epochs = _positive_int("pretrain_epochs",
                                    epochs if pretrain_epochs is None else pretrain_epochs)
    if image_size is not None:
        image_size = _positive_int("image_size", image_size)
    sweep = validate_blur_sweep(blur_sweep)
    if isinstance(archs, str) or not isinstance(archs, Sequence) or not archs:
        raise ValueError(f"compare: archs must be a non-empty list of tokens like "
                         f"['lenet5', 'mobilenetv3_small+kd'], got {archs!r}")
    stamp = _stamp_size(store)
    size = image_size or stamp
    parsed = [parse_token(a, image_size=size) for a in archs]
    tokens = [p["token"] for p in parsed]
    repeated = sorted({t for t in tokens if tokens.count(t) > 1})
    if repeated:
        raise ValueError(f"compare: token(s) {repeated!r} given twice in archs {tokens!r}")
    need_teacher = any(p["kd"] for p in parsed)
    teacher_resolved = resolve_arch(teacher_arch, image_size=size)
    study_arch = None
    if pretrain_store is not None:
        pretrain_store = Path(pretrain_store)
        _stamp_size(pretrain_store)
        if pretrain_arch is None:
            plain = [p for p in parsed if not p["kd"]]
            if not plain:
                raise ValueError("compare: the pretraining study needs pretrain_arch or a token "
                                 f"without {KD_SUFFIX!r} among archs {tokens!r}")
            study = plain[0]
        else:
            study = parse_token(pretrain_arch, image_size=size)
            if study["kd"]:
                raise ValueError(f"compare: pretrain_arch {pretrain_arch!r} cannot be a "
                                 f"{KD_SUFFIX!r} token; give a registered name")
        study_arch = study

    from pipeline.training.fit import load_labelled

    data_sha = load_labelled(store)["data_sha256"]
    (out / "models").mkdir(parents=True, exist_ok=True)
    (out / "eval").mkdir(parents=True, exist_ok=True)
    common = {"epochs": epochs, "batch_size": batch_size, "image_size": size,
              "blur_sweep": sweep, "progress": progress}
    n_runs = len(parsed) * seeds + (1 if need_teacher else 0) + (
        1 + seeds * (1 if study_arch and study_arch["token"] in tokens else 2)
        if study_arch else 0)
    counter = iter(range(1, n_runs + 1))

    def label(text: str) -> str:
        return f"[{next(counter)}/{n_runs}] {text}"

    teacher = None
    if need_teacher:
        tname = f"teacher_{teacher_arch}_s0"
        teacher = _run(store, arch=teacher_resolved, pt=out / "models" / f"{tname}.pt",
                       eval_dir=out / "eval" / tname, seed=0, data_sha=data_sha, speed=False,
                       label=label(f"teacher {teacher_arch}"),
                       **{**common, "epochs": teacher_epochs})

    runs: dict[str, list[dict[str, Any]]] = {}
    for p in parsed:
        runs[p["token"]] = []
        for seed in range(seeds):
            name = f"{p['token']}_s{seed}"
            rec = _run(store, arch=p["arch"], pt=out / "models" / f"{name}.pt",
                       eval_dir=out / "eval" / name, seed=seed, data_sha=data_sha,
                       speed=seed == 0, teacher=(Path(teacher["checkpoint"]) if p["kd"]
                                                 else None),
                       label=label(f"{p['token']} seed {seed}"), **common)
            runs[p["token"]].append({"seed": seed, "rec": rec})
    rows = [_row(p, runs[p["token"]]) for p in parsed]
    by_token = {r["token"]: r for r in rows}

    notes = [(f"accuracy, balanced accuracy, ECE and blur columns: mean ± sample standard "
             f"deviation (ddof=1) over {seeds} seed(s) on the validation exposures; ECE of the "
             f"temperature-calibrated probabilities (15 bins; the temperature was fitted on these "
              f"same validation sources, so it is an in-sample, optimistic figure)."),
             ("Speed: the seed-0 model's forward pass on prepared stamps "
             "(Predictor.predict_logits, torch.inference_mode), median of repeated runs, on "
             "this machine while other jobs may have shared it; batch 1 latency and batched "
             "throughput.")]
    if any(p["name"] in _CUTOUT_VARIANTS and p["arch"] != p["name"] for p in parsed):
        notes.append("hr_celestialnet is the documented cutout variant hr_celestialnet_cutout "
                     "(padded convolutions, 2x2 poolings, adaptive head): the full-exposure "
                     "network needs inputs of thousands of pixels.")
    if need_teacher:
        notes.append(f"NAME{KD_SUFFIX}: NAME distilled from {teacher_arch} (trained once, seed "
                     "0, same store and split).")
    if not any(math.isclose(f, _BLUR_REFERENCE) for f in sweep):
        notes.append("the blur sweep has no factor 1, so the blur column is empty.")

    distillation = []
    for p in parsed:
        if p["kd"] and p["name"] in by_token:
            base, kd = by_token[p["name"]], by_token[p["token"]]
            tcard, tev = teacher["card"], teacher["evaluation"]
            distillation.append({
                "base": p["name"], "kd": p["token"],
                "teacher": {"arch": teacher_arch, "resolved_arch": tcard.arch,
                            "params": tcard.params, "epochs": teacher_epochs,
                            "checkpoint": teacher["checkpoint"], "sha256": tcard.sha256,
                            "accuracy": tev["metrics"]["accuracy"],
                            "balanced_accuracy": tev["metrics"]["balanced_accuracy"],
                            "blur_accuracy": _blur_at(tev, _BLUR_REFERENCE)},
                "loss": runs[p["token"]][0]["rec"]["card"].training.get("loss"),
                **_study(base["per_seed"], kd["per_seed"]),
            })

    pretraining = None
    if study_arch is not None:
        pname = f"pretrain_{study_arch['token']}_s0"
        pre = _run(pretrain_store, arch=study_arch["arch"], pt=out / "models" / f"{pname}.pt",
                   eval_dir=out / "eval" / pname, seed=0, data_sha=None, speed=False,
                   label=label(f"pretrain {study_arch['token']} on {pretrain_store}"),
                   **{**common, "epochs": pretrain_epochs, "blur_sweep": [0.0]})
        pre_pt = Path(pre["checkpoint"])
        token = study_arch["token"]

        def seed_runs(prefix: str, what: str, **extra: Any) -> list[dict[str, Any]]:
            """One run of the study architecture per seed on ``store``."""
            return [{"seed": seed, "rec": _run(
                store, arch=study_arch["arch"], pt=out / "models" / f"{prefix}_{token}_s{seed}.pt",
                eval_dir=out / "eval" / f"{prefix}_{token}_s{seed}", seed=seed,
                data_sha=data_sha, speed=False, label=label(f"{what} {token} seed {seed}"),
                **extra, **common)} for seed in range(seeds)]

        scratch = by_token.get(token)
        if scratch is None:
            scratch = _row(study_arch, seed_runs("scratch", "scratch"))
        tuned = seed_runs("finetune", "fine-tune", init=pre_pt)
        tuned_row = _row(study_arch, tuned)
        pcard = pre["card"]
        pretraining = {
            "arch": study_arch["token"], "resolved_arch": study_arch["arch"],
            "pretrain": {"store": str(pretrain_store), "epochs": pretrain_epochs,
                         "checkpoint": pre["checkpoint"], "sha256": pcard.sha256,
                         "n_train": pcard.metrics.get("n_train"),
                         "accuracy": pre["evaluation"]["metrics"]["accuracy"],
                         "balanced_accuracy": pre["evaluation"]["metrics"]["balanced_accuracy"]},
            "scratch": scratch, "finetuned": tuned_row,
            **_study(scratch["per_seed"], tuned_row["per_seed"]),
        }

    # figures: seed 0 of every token
    from pipeline.training import plots

    seed0 = []
    for p in parsed:
        ev = dict(runs[p["token"]][0]["rec"]["evaluation"])
        ev["model"] = {**ev["model"], "name": p["token"]}
        seed0.append(ev)
    plots.plot_blur_curves(seed0, out / "blur_curves.png",
                                title="Blur robustness (seed 0 of each architecture)")
    plots.plot_reliability(seed0, out / "reliability.png",
                                title="Reliability (seed 0 of each architecture)")

    card0 = runs[parsed[0]["token"]][0]["rec"]["card"]
    split = card0.training.get("split") or {}
    all_recs = [r["rec"] for rs in runs.values() for r in rs]
    if teacher:
        all_recs.append(teacher)
    if pretraining:
        all_recs += [pre]
    result = _jsonable({
        "command": _command_line(store, out, tokens, seeds=seeds, epochs=epochs,
                                 batch_size=batch_size, image_size=image_size,
                                 teacher_arch=teacher_arch, teacher_epochs=teacher_epochs,
                                 pretrain_store=pretrain_store, pretrain_arch=pretrain_arch,
                                 pretrain_epochs=pretrain_epochs, blur_sweep=sweep),
        "call": {"store": str(store), "archs": tokens, "seeds": seeds, "out": str(out),
                 "epochs": epochs, "batch_size": batch_size, "image_size": image_size,
                 "teacher_arch": teacher_arch, "teacher_epochs": teacher_epochs,
                 "pretrain_store": None if pretrain_store is None else str(pretrain_store),
                 "pretrain_arch": pretrain_arch, "pretrain_epochs": pretrain_epochs,
                 "blur_sweep": sweep},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(),
        "settings": {"seeds": seeds, "epochs": epochs, "batch_size": batch_size,
                     "image_size": size, "stamp": stamp, "blur_sweep": sweep,
                     "split_seed": _SPLIT_SEED, "blur_reference_factor": _BLUR_REFERENCE,
                     "teacher_arch": teacher_arch if need_teacher else None},
        "store": {"path": str(store.resolve()), "data_sha256": data_sha,
                  "val_exposures": split.get("val_exposures", []),
                  "n_train": split.get("n_train"), "n_val": split.get("n_val")},
        "rows": rows,
        "distillation": distillation,
        "pretraining": pretraining,
        "notes": notes,
        "runs_trained": sum(bool(r["trained"]) for r in all_recs),
        "files": {"markdown": MARKDOWN_NAME, "json": JSON_NAME,
                  "figures": ["blur_curves.png", "reliability.png"]},
    })
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    _write_text(out / MARKDOWN_NAME, _markdown(result))
    _write_text(out / JSON_NAME, json.dumps(result, indent=2, allow_nan=False) + "\n")
    _say(progress, f"wrote {out / MARKDOWN_NAME} and {out / JSON_NAME} "
                   f"({result['wall_s'] / 60:.1f} min)")
    return result
