"""Join a scheduler that is already running: an address or a scheduler file."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from distributed import Client

__all__ = ["is_address", "client_for"]

_PROTOCOLS = ("tcp://", "tls://", "inproc://", "ucx://", "ws://", "wss://")


def is_address(kind: str) -> bool:
    """Whether ``kind`` names a scheduler address or a scheduler file."""
    return kind.startswith(_PROTOCOLS) or kind.endswith(".json")


@contextmanager
def client_for(kind: str, *, timeout: str = "30s") -> Iterator[Client]:
    """Yield a client connected to the scheduler at ``kind`` (an address or a ``.json`` file)."""
    if kind.endswith(".json"):
        path = Path(kind)
        if not path.is_file():
            raise FileNotFoundError(f"scheduler file {str(path)!r} does not exist; start the "
                                    "scheduler with `dask scheduler --scheduler-file PATH` first")
        client = Client(scheduler_file=str(path), timeout=timeout)
    else:
        client = Client(kind, timeout=timeout)
    try:
        yield client
    finally:
        client.close()
