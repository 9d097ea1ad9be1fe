"""Pieces every ``skysieve`` command module shares: help options and one-line user errors."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import click

__all__ = ["CONTEXT", "one_line_errors"]

CONTEXT = {"help_option_names": ["-h", "--help"]}


def one_line_errors(*extra: type[BaseException]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: report bad input as one line on stderr and exit 1, without a traceback.

    Parameters
    ----------
    *extra : exception types
        Caught as user errors too (e.g. ``ValueError`` for commands whose library raises
        it for bad arguments), beyond skysieve's own, the checkpoint and cluster errors
        and ``OSError`` (missing files, permissions, a full or read-only disk).
    """

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            from cluster import ClusterError
            from pipeline.errors import SkysieveError
            from workers.checkpoint import CheckpointError

            try:
                return func(*args, **kwargs)
            except (SkysieveError, CheckpointError, ClusterError, OSError, *extra) as exc:
                click.echo(f"skysieve: error: {exc}", err=True)
                sys.exit(1)

        return wrapper

    return decorate
