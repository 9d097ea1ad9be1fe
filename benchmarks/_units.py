"""A resumable results file: named units of work, each saved atomically as soon as it finishes.

A unit (e.g. one model on one fold) is recorded with the settings it ran under; a rerun
skips a unit whose recorded settings equal the new ones and redoes one whose settings
changed.  Every save rewrites the whole JSON file atomically
(:func:`pipeline.files.write_json`), so a run killed at any moment leaves the units
finished before it, whole.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from pipeline.files import to_jsonable, write_json

__all__ = ["UnitLog", "load"]


def load() -> dict[str, Any]:
    """This machine's load average now (recorded with every unit)."""
    return {"load_average_1_5_15": [round(v, 2) for v in os.getloadavg()]}


class UnitLog:
    """The units of one results file.

    Parameters
    ----------
    path : Path
        The JSON file (read if present).
    header : dict
        Top-level fields written with every save (benchmark name, notes...).
    run : dict
        This invocation (command, machine, load...): appended to ``runs``.
    """

    def __init__(self, path: Path, header: dict[str, Any], run: dict[str, Any]):
        self.path = Path(path)
        old: dict[str, Any] = {}
        if self.path.is_file():
            try:
                old = json.loads(self.path.read_text())
            except (OSError, ValueError):
                old = {}
        self.units: dict[str, dict[str, Any]] = dict(old.get("units") or {})
        self.runs: list[dict[str, Any]] = list(old.get("runs") or []) + [run]
        self.header = header
        self.summary: dict[str, Any] = dict(old.get("summary") or {})
        self.skipped: dict[str, str] = {}
        self.ran: list[str] = []
        self.reused: list[str] = []

    def done(self, unit: str, settings: dict[str, Any]) -> dict[str, Any] | None:
        """The recorded result of ``unit`` if it finished under exactly ``settings``."""
        rec = self.units.get(unit)
        if rec and rec.get("status") == "done" and rec.get("settings") == to_jsonable(settings):
            return rec
        return None

    def run(self, unit: str, settings: dict[str, Any], work: Callable[[], dict[str, Any]], *,
            machine: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
        """Return ``unit``'s result: the recorded one, or ``work()``'s, saved at once."""
        rec = self.done(unit, settings)
        if rec is not None:
            self.reused.append(unit)
            return rec["result"]
        print(f"[real_skies] {unit} ...", flush=True)
        t0 = time.perf_counter()
        result = work()
        self.units[unit] = {"status": "done", "settings": to_jsonable(settings),
                            "result": to_jsonable(result),
                            "seconds": round(time.perf_counter() - t0, 2),
                            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            **({"machine": machine()} if machine else {})}
        self.ran.append(unit)
        self.save()
        print(f"[real_skies] {unit} done in {time.perf_counter() - t0:.1f} s", flush=True)
        return self.units[unit]["result"]

    def save(self) -> Path:
        """Write the file (header, runs, units, summary, skipped) atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return write_json(self.path, {**self.header, "runs": self.runs, "summary": self.summary,
                                      "skipped": self.skipped, "units": self.units})
