"""Run the benchmarks: ``python -m benchmarks [--quick] [NAME ...]``.

Each benchmark writes ``benchmarks/results/<name>.json`` (machine, load average,
versions, settings, medians) and prints a Markdown table; at the end a table of
the goals, read back from the JSON files, is printed.  Nothing passes or fails
on a time: the exit status counts benchmarks that crashed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import traceback

from benchmarks._common import markdown_table, results_dir

__all__ = ["BENCHMARKS", "EXTRA", "main", "goals"]

BENCHMARKS = ["raw_model", "classify_throughput", "naive", "dataloader", "ingest_cutouts",
              "ingest_vs_sextractor", "memory", "gpu"]
# run only when named (release_scale: ~20 min at full size; --quick for a small one)
EXTRA = ["profile_classify", "real_skies", "ood_real", "release_scale"]
OWN_OPTIONS = ("real_skies", "ood_real")  # take options of their own (--data DIR, ...)


def goals() -> list[dict]:
    """One row per goal of issue #6, from the result files present."""

    def load(name: str) -> dict | None:
        path = results_dir() / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    rows = []
    ct = load("classify_throughput")
    if ct:
        rows.append({"goal": "classify end to end >= 0.90 x raw model",
                     "measured": f"{ct.get('best_ratio', max(r['ratio_to_raw'] for r in ct['rows'][1:])):.2f}x",
                     "holds": ct.get("goal_met", "?")})
        if ct.get("scaling"):
            rows.append({"goal": "scaling: 2 workers vs 1 (2 cores)",
                         "measured": f"{ct['scaling']['speedup']:.2f}x", "holds": "(no goal)"})
    for name, label, key, fmt in (("naive", "classify >= 20x the naive way", "speedup", "{:.0f}x"),
                                  ("dataloader", "classify >= 2x the DataLoader way", "speedup",
                                   "{:.1f}x"),
                                  ("ingest_cutouts", "stamp cutting >= 10x Cutout2D",
                                   "cutting_speedup", "{:.1f}x"),
                                  ("memory", "peak RSS per worker 10N <= 1.10 x N",
                                   "ratio_10n_to_n", "{:.3f}")):
        res = load(name)
        if res and key in res:
            holds = res.get("goal_met")
            if name == "ingest_cutouts":
                holds = res[key] >= 10
            rows.append({"goal": label, "measured": fmt.format(res[key]), "holds": holds})
    ivs = load("ingest_vs_sextractor")
    if ivs:
        rows.append({"goal": "ingest end to end >= 0.8 x sep alone",
                     "measured": f"{ivs['ratio_to_sep_alone']:.2f}x",
                     "holds": ivs["ratio_to_sep_alone"] >= 0.8})
        sex = ivs.get("sextractor", {})
        rows.append({"goal": "ingest >= 5x SExtractor + Cutout2D + FITS per cutout",
                     "measured": (f"{sex['speedup']:.1f}x, matched "
                                  f"{sex['matched_fraction_of_sextractor']:.3f}"
                                  if sex.get("status") == "measured" else "skipped"),
                     "holds": sex["speedup"] >= 5 if sex.get("status") == "measured" else "?"})
    release = load("release_scale")
    if release:
        st = release["stages"]
        rows.append({"goal": "release scale: >= 2e6 cutouts classified, >= 500 exposures "
                             "ingested, worker memory bounded",
                     "measured": (f"{st['classify_full']['cutouts']:,} at "
                                  f"{st['classify_full']['cutouts_per_s']:,.0f}/s; "
                                  f"{release['settings']['exposures']} exposures at "
                                  f"{st['ingest_full']['cutouts_per_s']:,.0f}/s; peak RSS full/tenth "
                                  + ", ".join(f"{v:.2f}" for v in
                                              release["worker_peak_growth_full_over_tenth"].values())),
                     "holds": (st["classify_full"]["cutouts"] >= 2e6
                               and release["settings"]["exposures"] >= 500
                               and max(release["worker_peak_growth_full_over_tenth"].values()) <= 1.10)})
    gpu = load("gpu")
    if gpu:
        rows.append({"goal": "GPU end to end vs raw GPU model",
                     "measured": (f"{gpu['ratio_e2e_to_raw']:.2f}x" if gpu.get("status") == "measured"
                                  else gpu.get("status", "?")), "holds": "(no goal)"})
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks in turn; return the number that failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}; "
                             f"also, only when named: {', '.join(EXTRA)} ({', '.join(OWN_OPTIONS)} "
                             "take options of their own: python -m benchmarks.NAME --help)")
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    parser.add_argument("--only", nargs="*", default=None, help="same as NAME ...")
    args, extra = parser.parse_known_args(argv)  # the rest goes to the benchmarks named
    names = list(args.names) + list(args.only or [])
    unknown = [n for n in names if n not in BENCHMARKS + EXTRA]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown!r}; choose from "
                     f"{', '.join(BENCHMARKS + EXTRA)}")
    if extra and not (len(names) == 1 and names[0] in OWN_OPTIONS):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    failed = 0
    for name in names or BENCHMARKS:
        print(f"\n## {name}\n", flush=True)
        module = importlib.import_module(f"benchmarks.{name}")
        try:
            module.main((["--quick"] if args.quick else []) + extra)
        except Exception as exc:  # one broken benchmark must not hide the others
            failed += 1
            traceback.print_exc()
            print(f"{name} failed: {exc!r}", file=sys.stderr)
    print("\n## goals (issue #6)\n")
    print(markdown_table(goals()))
    return failed


if __name__ == "__main__":
    sys.exit(main())
