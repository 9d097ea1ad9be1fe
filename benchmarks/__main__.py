"""Run every benchmark: ``python -m benchmarks [--quick] [--only NAME ...]``.

Each benchmark writes ``benchmarks/results/<name>.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import importlib
import sys

BENCHMARKS = ["ingest_cutouts", "classify_throughput"]


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks in turn; return the number that failed."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    parser.add_argument("--only", nargs="*", choices=BENCHMARKS, default=None)
    args = parser.parse_args(argv)
    failed = 0
    for name in args.only or BENCHMARKS:
        print(f"\n## {name}\n", flush=True)
        module = importlib.import_module(f"benchmarks.{name}")
        try:
            module.main(["--quick"] if args.quick else [])
        except Exception as exc:  # one broken benchmark must not hide the others
            failed += 1
            print(f"{name} failed: {exc!r}", file=sys.stderr)
    return failed


if __name__ == "__main__":
    sys.exit(main())
