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
    "augmentation; every run holds out the same validation sources (split seed 0) and is "
    "scored on the same sources. With {n} seeds the paired t-test has {df} degree(s) of "
    "freedom, so only a large and consistent difference reaches p < 0.05, and a large p means "
    "'not resolved with this many seeds', not 'no effect'. The p-values describe seed-to-seed "
    "variation on this one scored set; they do not include the sampling noise of that set "
    "itself or of the training data (another sample of the sky could rank the models "
    "differently), and no correction is made for testing several metrics or label fractions.")


def _load(conditions: dict[str, Any] | None) -> str:
    if not conditions:
        return "n/a"
    load = conditions.get("load_1min")
    return f"{conditions.get('torch_threads')} thr, load {'n/a' if load is None else load}"


def _zoo_table(result: dict[str, Any]) -> list[str]:
    s = result["settings"]
    bs = s["batch_size"]
    classes = sorted({c for r in result["rows"] for c in r.get("recall", {})})
    recall_heads = "".join(f" recall {c} |" for c in classes)
    lines = [(f"| arch | params | seeds | accuracy | balanced acc. |{recall_heads} "
              f"ECE (calibrated) | ms/sample (batch 1) | cutouts/s (batch {bs}) | speed measured at | "
              f"train s (mean) | train load |"),
             "|---|---|---|---|---|" + "---|" * len(classes) + "---|---|---|---|---|---|"]
    for r in result["rows"]:
        recall = "".join(f" {_pm(r.get('recall', {}).get(c, {}))} |" for c in classes)
        lines.append(
            f"| {r['token']} | {r['params']:,} | {r['accuracy'].get('n')} | {_pm(r['accuracy'])} | "
            f"{_pm(r['balanced_accuracy'])} |{recall} {_pm(r['ece_calibrated'])} | "
            f"{_num(r['ms_per_sample_batch1'], '.3f')} | {_num(r['cutouts_per_s'], ',.0f')} | "
            f"{_load(r.get('speed_conditions'))} | "
            f"{_num((r.get('train_seconds') or {}).get('mean'), ',.0f')} | "
            f"{_num((r.get('train_load') or {}).get('mean'), '.1f')} |")
    return lines


def _blur_table(result: dict[str, Any]) -> list[str]:
    rows = [r for r in result["rows"] if r.get("blur_curve")]
    if not rows:
        return []
    factors = [c["factor"] for c in rows[0]["blur_curve"]]
    lines = ["## Accuracy as blur is added", "",
             ("Balanced accuracy (mean ± sd over the seeds) with Gaussian blur of FWHM = factor x "
              "the store's PSF FWHM added (noise topped up to the original level)."), "",
             "| arch |" + "".join(f" +{f:g} PSF |" for f in factors) + " drop at the last |",
             "|---|" + "---|" * (len(factors) + 1)]
    for r in rows:
        cells = [c["balanced_accuracy"] for c in r["blur_curve"]]
        first, last = cells[0].get("mean"), cells[-1].get("mean")
        drop = None if first is None or last is None else first - last
        lines.append(f"| {r['token']} |" + "".join(f" {_pm(c)} |" for c in cells)
                     + f" {_num(drop, '+.3f')} |")
    return lines + [""]


def _pairwise_table(result: dict[str, Any]) -> list[str]:
    rows = [r for r in result["rows"] if r.get("pairwise")]
    pairs = list(rows[0]["pairwise"]) if rows else []
    if len(pairs) < 2:  # two classes: the balanced accuracy above already is the pair
        return []
    lines = ["## Two-class questions", "",
             ("Balanced accuracy over the sources of two classes, each called by the larger "
              "of the model's two scores (a third class cannot take the answer); mean ± sd."),
             "", "| arch |" + "".join(f" {p.replace('|', ' vs ')} |" for p in pairs),
             "|---|" + "---|" * len(pairs)]
    for r in rows:
        lines.append(f"| {r['token']} |" + "".join(f" {_pm(r['pairwise'].get(p, {}))} |"
                                                   for p in pairs))
    return lines + [""]


def _pretraining_md(p: dict[str, Any], seeds: int) -> list[str]:
    lines = ["## Pretraining", ""]
    for pre in p["pretrain"]:
        lines.append(f"- `{pre['name']}`: {p['arch']} pretrained once (seed 0, {pre['epochs']} "
                     f"epoch(s)) on `{pre['store']}` ({pre['n_train']} training sources, "
                     f"{len(pre['classes'])} classes; its own validation balanced accuracy "
                     f"{pre['balanced_accuracy']:.4f}).")
    names = [pre["name"] for pre in p["pretrain"]]
    lines += ["", ("Then fine-tuned on the store above (all layers, same epochs and seeds as "
                   "training from scratch) on the share of the training labels given; "
                   "baseline: scratch; treated: init from the pretrained checkpoint."), "",
              "### Learning curve (balanced accuracy, mean ± sd)", "",
              "| labels | scratch |" + "".join(f" {n} |" for n in names)
              + "".join(f" {n} − scratch (paired p) |" for n in names),
              "|---|---|" + "---|" * (2 * len(names))]
    for fraction in p["fractions"]:
        studies = {st["pretrain"]: st for st in p["studies"] if st["fraction"] == fraction}
        if not studies:
            continue
        scratch = next(iter(studies.values()))["scratch"]
        cells = "".join(f" {_pm(studies[n]['finetuned']['balanced_accuracy'])} |" for n in names)
        diffs = "".join(f" {_num(studies[n]['balanced_accuracy']['mean_difference'], '+.4f')} "
                        f"({_pval(studies[n]['balanced_accuracy']['paired_p'])}) |"
                        for n in names)
        lines.append(f"| {fraction:g} | {_pm(scratch['balanced_accuracy'])} |{cells}{diffs}")
    if p.get("time_to_target"):
        lines += ["", (f"### Compute to reach validation balanced accuracy "
                       f"{p['target_val_bacc']:.3f}"), "",
                  "| labels | condition | runs that reached it | epochs | seconds |",
                  "|---|---|---|---|---|"]
        for t in p["time_to_target"]:
            lines.append(f"| {t['fraction']:g} | {t['condition']} | {t['reached']}/{t['of']} | "
                         f"{_pm(t['epochs'], 1)} | {_pm(t['seconds'], 0)} |")
    lines.append("")
    for st in p["studies"]:
        lines += _study_md(f"{p['arch']}, {st['fraction']:g} of the labels: scratch vs "
                           f"{st['pretrain']} + fine-tuned", st, "scratch", st["pretrain"])
    return lines


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
        The document: the settings, the table (mean ± std over the seeds), the blur
        table, the notes, and a section per study with its per-seed values and tests.
    """
    s, mach = result["settings"], result["machine"]
    v = mach["versions"]
    bs = s["batch_size"]
    st = result["store"]
    test = st.get("test")
    scored = (f"Scored on `{test['path']}`: {test['n']} held-out sources, never trained on "
              f"nor used to stop." if test else "Scored on the validation sources.")
    held = (f": validation exposures {', '.join(st['val_exposures'])}"
            if st["val_exposures"] else "")
    lines = [
        "# skysieve compare", "",
        f"Command: `{result['command']}`", "",
        (f"Machine: {mach['cpu']}, {mach['cores']} cores, torch {mach['torch_threads']} "
         f"thread(s){', GPU ' + mach['gpu'] if mach['gpu'] else ', no GPU'}; python "
         f"{mach['python']}, skysieve {v.get('skysieve')}, torch {v.get('torch')}, numpy "
         f"{v.get('numpy')}, scipy {v.get('scipy')}. Written {result['created']}; wall time "
         f"{result['wall_s'] / 60:.1f} min ({result['runs_trained']} model(s) trained in this "
         f"invocation)."), "",
        (f"Store: `{st['path']}`: {st['n_train']} training and {st['n_val']} validation "
         f"sources (split by {s.get('split_by', 'exposure')}, split seed {s['split_seed']}, the "
         f"same for every model){held}. "
         f"{scored}"), "",
        (f"Settings: {s['seeds']} seed(s) (0-{s['seeds'] - 1}), up to {s['epochs']} epochs "
         f"(early stopping on validation balanced accuracy, patience {s.get('patience', 'n/a')}),"
         f" batch {bs}, lr {s.get('lr', 'n/a')}, augment {s.get('augment', 'n/a')}, input "
         f"{s['image_size']} px (stamps {s['stamp']} px), blur sweep {s['blur_sweep']} x PSF "
         f"FWHM."), "",
    ] + _zoo_table(result)
    lines += ["", "Notes: " + " ".join(result["notes"]), ""]
    if result.get("not_finished"):
        left = result["not_finished"]
        lines += [(f"**Not finished yet** ({len(left)} run(s); this is an interim report, "
                   f"rerun the command without `--report-only` to train them): "
                   + ", ".join(f"`{n}`" for n in left) + "."), ""]
    lines += _pairwise_table(result)
    lines += _blur_table(result)
    lines += [("Figures: `blur_curves.png` (accuracy against added blur, seed 0 of each "
               "architecture), `reliability.png` (reliability diagrams, seed 0)."), ""]
    if result.get("distillation"):
        lines += ["## Distillation", ""]
        for d in result["distillation"]:
            t = d["teacher"]
            lines += [(f"Teacher: {t['arch']} ({t['params']:,} parameters, {t['epochs']} "
                       f"epochs): accuracy {t['accuracy']:.4f}, balanced accuracy "
                       f"{t['balanced_accuracy']:.4f}; "
                       f"{_num(t.get('ms_per_sample_batch1'), '.3f')} ms/sample at batch 1, "
                       f"{_num(t.get('cutouts_per_s'), ',.0f')} cutouts/s batched "
                       f"({_load(t.get('speed_conditions'))}). "
                       f"Student: {d['base']} trained alone (baseline) against {d['kd']} "
                       f"(treated; loss {d['loss']})."), ""]
            lines += _study_md(f"{d['base']} vs {d['kd']}", d, d["base"], d["kd"])
    if result.get("pretraining"):
        lines += _pretraining_md(result["pretraining"], s["seeds"])
    if result.get("distillation") or result.get("pretraining"):
        lines += [_CAVEAT.format(n=s["seeds"], df=max(s["seeds"] - 1, 0)), ""]
    return "\n".join(lines)
