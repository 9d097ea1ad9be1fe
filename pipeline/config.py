"""Configuration: shipped defaults in ``skysieve.yaml``, read through ``dask.config``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.config
import yaml

__all__ = ["get", "resolve"]

_DEFAULTS = Path(__file__).with_name("skysieve.yaml")
dask.config.update_defaults(yaml.safe_load(_DEFAULTS.read_text()))


def get(key: str) -> Any:
    """Return the configured value of ``skysieve.<key>``.

    Parameters
    ----------
    key : str
        Dotted key below ``skysieve``, e.g. ``"ingest.stamp"``.
    """
    return dask.config.get(f"skysieve.{key}")


def resolve(key: str, value: Any = None) -> Any:
    """Return ``value`` unless it is ``None``, else the configured ``skysieve.<key>``."""
    return get(key) if value is None else value
