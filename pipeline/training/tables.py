"""The Markdown table of ``skysieve compare`` (``compare.md``), from its result dict."""

from __future__ import annotations

from typing import Any

__all__ = ["compare_markdown"]


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


def compare_markdown(result: dict[str, Any]) -> str:
    """Render a :func:`pipeline.training.compare.compare` result as Markdown.

    Parameters
    ----------
    result : dict
        What ``compare.json`` holds (``command``, ``machine``, ``settings``, ``store``,
        ``rows``, ``distillation``, ``pretraining``, ``notes``, ...).

    Returns
    -------
    str
        The document: the settings, the table (mean ± std over the seeds), the notes,
        and a section per study with its per-seed values and tests.
    """
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
        f"{s['split_seed']}, the same for every model): "
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
