"""Every exception skysieve raises for bad input, each narrow, each naming the file or value and the fix.

The CLI turns these (and :class:`OSError` for missing files, permissions and full
disks, plus the worker and cluster layers' own ``CheckpointError`` and
``ClusterError``) into one-line messages.  Anything else is a bug and keeps its
traceback.  Each subclasses the built-in a caller would expect (``ValueError`` for
a bad value, ``FileExistsError`` for a locked output), so code that catches the
built-in still works.
"""

from __future__ import annotations

__all__ = [
    "SkysieveError", "BadExposure", "StoreError", "SourceTableError", "ImageFolderError",
    "SynthError", "TrainingError", "TrainingStopped", "EvaluationError", "CompareError", "PlanError",
    "HatsExportError", "CatalogueError", "OutputLocked", "OutputNotWritable", "ConfigError",
]


class SkysieveError(Exception):
    """Base of the errors the CLI reports as one line, without a traceback."""


class ConfigError(SkysieveError, ValueError):
    """A configuration value (``skysieve.yaml``, ``SKYSIEVE_*``) that cannot be used."""


class BadExposure(SkysieveError, ValueError):
    """An exposure (or one of its CCDs) that cannot be ingested; it goes to the rejects table."""


class StoreError(SkysieveError, ValueError):
    """A cutout store that does not follow the contract in ``docs/architecture.md``."""


class SourceTableError(SkysieveError, ValueError):
    """A source table (forced cutouts, truth, a labels CSV) that cannot be used."""


class ImageFolderError(SkysieveError, ValueError):
    """A folder of labelled PNG/JPEG cutouts that ``import-images`` cannot turn into a store."""


class SynthError(SkysieveError, ValueError):
    """Settings the synthetic survey cannot render."""


class TrainingError(SkysieveError, ValueError):
    """Training settings or data that ``train`` cannot use."""


class TrainingStopped(SkysieveError):
    """``train`` stopped at its time limit with its state saved; the same command goes on."""


class EvaluationError(SkysieveError, ValueError):
    """Evaluation settings (subset, blur sweep, batch size) that ``evaluate`` cannot use."""


class CompareError(SkysieveError, ValueError):
    """Comparison settings that ``compare`` cannot use, or a rerun into another study's folder."""


class PlanError(SkysieveError, ValueError):
    """A ``plan`` question that cannot be answered (bad numbers, no measurements)."""


class CatalogueError(SkysieveError, ValueError):
    """A catalogue query, cross-match or export that cannot be done as asked."""


class HatsExportError(CatalogueError):
    """A catalogue that cannot be written as HATS (or settings the export cannot use)."""


class OutputLocked(SkysieveError, FileExistsError):
    """Another live run is writing the same output."""


class OutputNotWritable(SkysieveError, PermissionError):
    """The output's directory cannot be written (permissions, a read-only or full disk)."""
