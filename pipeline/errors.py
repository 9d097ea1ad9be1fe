"""The exceptions skysieve raises for bad input: each names the file or value and the fix."""

from __future__ import annotations

__all__ = ["SkysieveError", "BadExposure", "StoreError", "SourceTableError"]


class SkysieveError(Exception):
    """Base of the errors the CLI reports as one line, without a traceback."""


class BadExposure(SkysieveError, ValueError):
    """An exposure (or one of its CCDs) that cannot be ingested; it goes to the rejects table."""


class StoreError(SkysieveError, ValueError):
    """A cutout store that does not follow the contract in DESIGN.md."""


class SourceTableError(SkysieveError, ValueError):
    """A source table (forced cutouts, truth) that cannot be used."""
