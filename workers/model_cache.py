"""One model per worker process: a process-level predictor cache and a Dask worker plugin.

Tasks never carry weights.  A task calls :func:`get_predictor` with the
checkpoint path and its sha256 (small strings); the first call in a process
loads the checkpoint (verifying the sha256) and later calls return the same
:class:`~workers.inference.Predictor`.  :class:`ModelPlugin` preloads it when a
worker starts (``client.register_plugin(ModelPlugin(path, sha256))``; ``skysieve
classify`` registers one per run on a distributed cluster) and drops it when the
plugin is removed or replaced.

Inside a Dask worker, torch runs one intra-op thread per task: a worker with
``T`` threads runs ``T`` tasks at once, so ``T x 1`` threads are its share of
the cores.  (Giving each task the worker's ``T`` threads ran ``T**2`` OpenMP
threads on ``T`` cores.)  The nanny starts workers with ``OMP_NUM_THREADS=1``
already; this holds it for every task thread.  Outside a worker torch's
threading is left alone.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import torch
from distributed.diagnostics.plugin import WorkerPlugin

from workers.checkpoint import load_card, load_checkpoint, load_ood_stats
from workers.inference import Predictor, pick_device

__all__ = ["get_predictor", "clear_cache", "cache_info", "ModelPlugin"]

_CACHE: dict[tuple[str, str, int, str], Predictor] = {}
_LOCK = threading.Lock()
_STATS = {"loads": 0, "hits": 0}


def _dask_worker() -> Any | None:
    try:
        from distributed import get_worker

        return get_worker()
    except ValueError:  # "No worker found": not inside a task or plugin
        return None


def _match_worker_threads(worker: Any | None = None) -> None:
    """Inside a Dask worker, give this task thread one torch intra-op thread."""
    worker = worker if worker is not None else _dask_worker()
    if worker is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def get_predictor(path: str | os.PathLike[str], *, sha256: str, batch_size: int = 256,
                  device: str | None = None) -> Predictor:
    """Return the process's predictor for a checkpoint, loading it on first use.

    Parameters
    ----------
    path : str or path-like
        ``MODEL.pt`` (or its card / stem), readable from this process.
    sha256 : str
        Expected sha256 of ``MODEL.pt``; the cache key (with the sha256 of the OOD
        statistics the card names, if any), checked on load.
    batch_size : int, default: 256
        Stamps per forward pass.
    device : str, optional
        See :func:`workers.inference.pick_device`; ``None`` picks CUDA when available.

    Returns
    -------
    workers.inference.Predictor
        Shared by every task of the process with the same (sha256, device, batch size,
        OOD statistics).

    Raises
    ------
    workers.checkpoint.CheckpointError
        From :func:`workers.checkpoint.load_checkpoint`.
    """
    if not isinstance(sha256, str) or len(sha256) != 64:
        raise ValueError(f"sha256 must be the 64-hex-digit digest of the .pt file, got {sha256!r}")
    dev = pick_device(device)
    # The same weights with or without (other) OOD statistics are different predictors.
    ood = load_card(path).ood
    key = (sha256.lower(), str(dev), int(batch_size), str(ood.get("sha256", "")))
    _match_worker_threads()  # OpenMP thread counts are per calling thread: check every time
    with _LOCK:
        predictor = _CACHE.get(key)
        if predictor is not None:
            _STATS["hits"] += 1
            return predictor
        model, card = load_checkpoint(path, sha256=key[0], device=dev)
        predictor = Predictor(model, card, device=dev, batch_size=batch_size,
                              ood=load_ood_stats(path, card))
        _CACHE[key] = predictor
        _STATS["loads"] += 1
        return predictor


def clear_cache(sha256: str | None = None) -> int:
    """Drop cached predictors (all, or those of one sha256); return how many were dropped."""
    with _LOCK:
        keys = [k for k in _CACHE if sha256 is None or k[0] == sha256.lower()]
        for k in keys:
            del _CACHE[k]
    if keys and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    return len(keys)


def cache_info() -> dict[str, Any]:
    """Return this process's cache state: pid, loads, hits, the cached keys and the model ids."""
    with _LOCK:
        return {"pid": os.getpid(), "loads": _STATS["loads"], "hits": _STATS["hits"],
                "keys": [list(k) for k in _CACHE],
                "model_ids": [id(p.model) for p in _CACHE.values()],
                "torch_threads": torch.get_num_threads()}


class ModelPlugin(WorkerPlugin):
    """Preload a checkpoint into every worker; carries the path and sha256, never weights.

    Registering another ``ModelPlugin`` replaces this one (same ``name``): the old
    model is dropped from the workers' caches in :meth:`teardown`.

    Parameters
    ----------
    path : str
        Checkpoint path as seen by the workers.
    sha256 : str
        Its sha256 (``ModelCard.sha256``).
    batch_size : int, default: 256
        Stamps per forward pass (part of the cache key: tasks must ask for the same).
    device : str, optional
        Device on the workers; ``None`` picks each worker's own GPU if it has one.
    """

    name = "skysieve-model"

    def __init__(self, path: str | os.PathLike[str], sha256: str, *, batch_size: int = 256,
                 device: str | None = None):
        self.path = os.fspath(path)
        self.sha256 = sha256
        self.batch_size = batch_size
        self.device = device

    def setup(self, worker: Any) -> None:
        """Load the model into this worker's cache."""
        _match_worker_threads(worker)
        get_predictor(self.path, sha256=self.sha256, batch_size=self.batch_size,
                      device=self.device)

    def teardown(self, worker: Any) -> None:
        """Drop the model from this worker's cache."""
        clear_cache(self.sha256)
