"""Checks of user-given numbers, each raising an error that names the value and what is valid."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["positive_int", "positive_number", "fraction"]


def positive_int(name: str, value: Any, *, where: str = "", error: type[Exception] = ValueError) -> int:
    """Return ``value`` if it is an integer >= 1 (not a bool), else raise ``error``.

    Parameters
    ----------
    name : str
        The option as the user spells it (``"epochs"``), named in the message.
    value : Any
        What was given.
    where : str, default: ""
        The command or function, prefixed to the message (``"train"``).
    error : type of Exception, default: ValueError
        The exception class to raise (one of :mod:`pipeline.errors`).
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        prefix = f"{where}: " if where else ""
        raise error(f"{prefix}{name} must be a positive integer, got {value!r}")
    return value


def positive_number(name: str, value: Any, *, where: str = "", error: type[Exception] = ValueError,
                    hint: str = "") -> float:
    """Return ``value`` as a float if it is a finite number > 0, else raise ``error``.

    ``hint`` is appended to the message (``" (e.g. 1e9)"``).
    """
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or value <= 0):
        prefix = f"{where}: " if where else ""
        raise error(f"{prefix}{name} must be a positive number{hint}, got {value!r}")
    return float(value)


def fraction(name: str, value: Any, *, where: str = "", error: type[Exception] = ValueError) -> float:
    """Return ``value`` as a float if it is a number in [0, 1], else raise ``error``."""
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or not 0.0 <= value <= 1.0):
        prefix = f"{where}: " if where else ""
        raise error(f"{prefix}{name} must be between 0 and 1, got {value!r}")
    return float(value)
