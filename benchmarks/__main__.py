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
              "memory", "gpu"]
EXTRA = ["profile_classify", "real_skies"]  # run only when named (real_skies: own options)


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
                             f"also, only when named: {', '.join(EXTRA)} (real_skies takes "
                             "options of its own: python -m benchmarks.real_skies --help)")
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    parser.add_argument("--only", nargs="*", default=None, help="same as NAME ...")
    args, extra = parser.parse_known_args(argv)  # the rest goes to the benchmarks named
    names = list(args.names) + list(args.only or [])
    unknown = [n for n in names if n not in BENCHMARKS + EXTRA]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown!r}; choose from "
                     f"{', '.join(BENCHMARKS + EXTRA)}")
    if extra and names != ["real_skies"]:  # only real_skies takes options of its own
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
