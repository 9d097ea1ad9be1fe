"""The one exception the cluster layer raises for a cluster that cannot be started as asked."""

from __future__ import annotations

__all__ = ["ClusterError"]


class ClusterError(ValueError):
    """A cluster that cannot be started as asked: a bad profile, a missing optional dependency.

    The message names the file or value and the fix; the CLI prints it as one line.
    """
