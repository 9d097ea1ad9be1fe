"""What a catalogue directory holds: its file names, the metadata key, the flag bits.

The contract ``skysieve classify`` writes and every reader (the analyst API, the
report, the exports) relies on; ``docs/schema.md`` describes it column by column.

* ``part-NNNNN.parquet``: the rows, one part per cutout-store chunk;
* :data:`RUN_FILE` ``_run.json``: the run's fingerprint a rerun must match;
* :data:`SUMMARY_FILE` ``_summary.json``: the last run's summary;
* :data:`REJECTS_FILE` ``_rejects.parquet``: the inputs rejected at ingest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["PART_GLOB", "METADATA_KEY", "RUN_FILE", "SUMMARY_FILE", "REJECTS_FILE",
           "FLAG_EDGE", "FLAG_SATURATED", "FLAG_BLENDED", "FLAG_SEP", "FLAG_EMPTY", "FLAG_OOD",
           "OOD_COUNT_KEY", "part_path", "healpix_order_doc"]

PART_GLOB = "part-*.parquet"
#: Key of the run metadata (JSON) in every part's Parquet file metadata.
METADATA_KEY = b"skysieve"
RUN_FILE = "_run.json"
SUMMARY_FILE = "_summary.json"
REJECTS_FILE = "_rejects.parquet"

# Flag bits: 1-8 come from ingest (the cutout store's `flags`), 16+ from classify.
FLAG_EDGE = 1        # the stamp touches the image edge (padded with NaN)
FLAG_SATURATED = 2   # saturated pixels in the source
FLAG_BLENDED = 4     # the detection was deblended from a neighbour
FLAG_SEP = 8         # sep raised one of its own flags
FLAG_EMPTY = 16      # no positive flux at the centre: blur score undefined
FLAG_OOD = 32        # outside the model's domain: ood_score above the card's threshold

#: Per-part entry of the run metadata: how many of the part's rows have ``FLAG_OOD``
#: (``None`` when the model has no OOD statistics); the run summary adds them up.
OOD_COUNT_KEY = "ood_flagged"


def part_path(out: Path, index: int) -> Path:
    """Path of catalogue part ``index`` in directory ``out``."""
    return Path(out) / f"part-{index:05d}.parquet"


def healpix_order_doc(order: int) -> dict[str, Any]:
    """The ``healpix_order`` metadata entry describing the ``healpix`` column at ``order``."""
    return {"order": order, "nside": 2**order, "scheme": "nested",
            "frame": "ICRS (ra, dec)", "missing": -1}
