"""The training loop: epochs of augmented batches, validation, early stopping, and resuming.

:func:`fit_epochs` is the loop ``train`` runs (AdamW with a one-epoch warm-up and a cosine
decay, class-weighted cross-entropy, optional distillation, early stopping on validation
balanced accuracy keeping the best weights).  With a :class:`ResumeFile` it saves its whole
state after every epoch (weights, optimiser, schedule, every random generator, the best
weights so far and the history) to ``MODEL.resume.pt``, atomically, and starts from it when
it is there: a run killed or stopped at a time limit goes on where it stopped, and ends
with the weights an uninterrupted run would have (tests/training/test_train_resume.py).
The state is read back with ``torch.load(weights_only=True)``, and only when the settings
and data it was made with (its ``key``) are those of the run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import TrainingError
from pipeline.imaging.preprocess import apply_stretch, resize
from pipeline.training.augment import augment as augment_stamps
from pipeline.training.distill import kd_loss
from pipeline.training.metrics import classification_metrics

__all__ = ["amp_settings", "logits_of", "fit_epochs", "ResumeFile", "RESUME_SUFFIX"]

#: The loop's saved state beside the checkpoint: ``MODEL.resume.pt``.
RESUME_SUFFIX = ".resume.pt"


class ResumeFile:
    """The saved state of one training run, ``MODEL.resume.pt`` beside ``MODEL.pt``.

    Parameters
    ----------
    out : Path
        The checkpoint the run writes (``MODEL.pt``).
    settings : dict
        Everything the run's result depends on (JSON-able): its sha256 is the state's
        ``key``, and a state made with another key is refused.
    time_limit_s : float, optional
        Stop after the first epoch that ends this many seconds after ``started``.
    started : float, optional
        ``time.perf_counter()`` at the start of the run (default: now).
    """

    def __init__(self, out: Path, settings: dict[str, Any], *, time_limit_s: float | None = None,
                 started: float | None = None):
        self.path = Path(out).with_name(Path(out).stem + RESUME_SUFFIX)
        self.key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str)
                                  .encode()).hexdigest()
        self.time_limit_s = time_limit_s
        self.started = time.perf_counter() if started is None else started

    def load(self) -> dict[str, Any] | None:
        """The saved state, or ``None`` when there is none.

        Raises
        ------
        pipeline.errors.TrainingError
            The file is unreadable, or was made by a run with other settings or data.
        """
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or foreign file
            raise TrainingError(f"{self.path}: cannot read the saved training state ({exc}); "
                                "delete it to start over") from exc
        if not isinstance(state, dict) or state.get("key") != self.key:
            raise TrainingError(f"{self.path}: saved by a run with other settings or data; "
                                "rerun with the same ones, or delete it to start over")
        return state

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` (with the key) atomically: a crash leaves the previous epoch's."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        torch.save({**state, "key": self.key}, tmp)
        os.replace(tmp, self.path)

    def out_of_time(self) -> bool:
        """Whether the time limit has passed."""
        return (self.time_limit_s is not None
                and time.perf_counter() - self.started >= self.time_limit_s)

    def remove(self) -> None:
        """Delete the state (the run has written its checkpoint)."""
        self.path.unlink(missing_ok=True)

def amp_settings(device: torch.device, *,
                  bf16_supported: bool | None = None) -> tuple[bool, torch.dtype]:
    """Mixed precision for training on ``device``: ``(enabled, dtype)``.

    CUDA: autocast to bfloat16 where the GPU supports it (``bf16_supported``,
    default ``torch.cuda.is_bf16_supported()``), else float16 (with a gradient
    scaler).  CPU: disabled (bf16 autocast was 4-50x slower on AVX2 CPUs, see
    docs/architecture.md), ``(False, torch.float32)``.
    """
    if torch.device(device).type != "cuda":
        return False, torch.float32
    if bf16_supported is None:
        bf16_supported = bool(torch.cuda.is_bf16_supported())
    return True, (torch.bfloat16 if bf16_supported else torch.float16)


class _EpochBar:
    """An in-place progress bar for one epoch on a terminal (carriage returns); else silent."""

    def __init__(self, stream: TextIO, *, epoch: int, epochs: int, total: int, enabled: bool):
        self.stream, self.epoch, self.epochs, self.total = stream, epoch, epochs, total
        self.enabled, self.last, self.width = enabled, -math.inf, 0

    def update(self, done: int, loss: float) -> None:
        """Show ``done`` of ``total`` batches and the running loss (at most 10 times a second)."""
        now = time.perf_counter()
        if not self.enabled or (now - self.last < 0.1 and done < self.total):
            return
        self.last = now
        filled = int(20 * done / max(self.total, 1))
        text = (f"epoch {self.epoch}/{self.epochs} [{'#' * filled}{'.' * (20 - filled)}] "
                f"{done}/{self.total} loss {loss:.4f}")
        self.stream.write("\r" + text.ljust(self.width))
        self.stream.flush()
        self.width = len(text)

    def close(self) -> None:
        """Erase the bar, so that the epoch summary line takes its place."""
        if self.enabled and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def logits_of(model: torch.nn.Module, x: torch.Tensor, device: torch.device,
              batch_size: int) -> np.ndarray:
    """Logits ``(N, K)`` of prepared stamps ``x``, in eval mode, ``batch_size`` at a time."""
    model.eval()
    outs = []
    with torch.inference_mode():
        for start in range(0, x.shape[0], batch_size):
            xb = x[start:start + batch_size].to(device)
            outs.append(model(xb.contiguous(memory_format=torch.channels_last)).float().cpu())
    return torch.cat(outs).numpy() if outs else np.zeros((0, 0), np.float32)


def fit_epochs(model: torch.nn.Module, z_train: torch.Tensor, y_train: torch.Tensor,
               x_val: torch.Tensor, y_val: np.ndarray, weights: torch.Tensor,
               dev: torch.device, *, classes: list[str], stretch: dict[str, Any],
               image_size: int, epochs: int, batch_size: int, lr: float, weight_decay: float,
               patience: int, seed: int, progress: bool, kd: dict[str, Any] | None = None,
               augment: dict[str, float] | None = None,
               resume: ResumeFile | None = None) -> dict[str, Any] | None:
    """The epoch loop; leaves the best weights in ``model``.

    Parameters
    ----------
    model, z_train, y_train, x_val, y_val, weights, dev
        The model (on ``dev``), training stamps in S/N units with their class indices,
        prepared validation stamps with theirs, and the class weights of the loss.
    classes, stretch, image_size, epochs, batch_size, lr, weight_decay, patience, seed
        As ``train`` takes them.
    progress, kd, augment
        Progress on stderr; a bound teacher (:mod:`pipeline.training.distill`); the
        augmentation keywords.
    resume : ResumeFile, optional
        Where the loop's whole state is saved after every epoch, and read back at the start
        when it is there (the run goes on where it stopped, with the same result).

    Returns
    -------
    dict or None
        ``epochs_run``, ``best_epoch``, the per-epoch ``epochs`` history and ``resumed_after``
        (the epochs a saved state had done, 0 for none); ``None`` when
        ``resume``'s time limit stopped the loop (its state saved) before the end.
    """
    n = z_train.shape[0]
    model.to(memory_format=torch.channels_last)  # 1.3-1.7x faster on the CPU; saved contiguous
    if kd is not None:
        kd["model"].to(memory_format=torch.channels_last)
    amp, amp_dtype = amp_settings(dev)
    scaler = torch.amp.GradScaler(dev.type) if amp and amp_dtype == torch.float16 else None

    def autocast() -> contextlib.AbstractContextManager[Any]:
        return (torch.autocast(dev.type, dtype=amp_dtype) if amp
                else contextlib.nullcontext())

    bar_on = progress and _isatty(sys.stderr)
    steps_per_epoch = max(1, n // batch_size + (1 if n % batch_size >= 2 else 0))
    total = epochs * steps_per_epoch
    warm = min(steps_per_epoch, max(total // 10, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1.0 + math.cos(math.pi * s / total)))
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    best: dict[str, Any] = {"bacc": -1.0, "loss": math.inf, "epoch": 0, "state": None}
    history: list[dict[str, Any]] = []
    first = 1
    saved = resume.load() if resume is not None else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
        if scaler is not None and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        rng.bit_generator.state = saved["np_rng"]
        gen.set_state(saved["gen"])
        torch.set_rng_state(saved["torch_rng"])
        best, history, first = saved["best"], saved["history"], len(saved["history"]) + 1
        if progress:
            print(f"resumed from {resume.path} after epoch {first - 1}", file=sys.stderr,
                  flush=True)
    stopped = saved is not None and saved.get("finished", False)
    for epoch in range(first, epochs + 1):
        if stopped:
            break
        t0 = time.perf_counter()
        model.train()
        perm = torch.as_tensor(rng.permutation(n))
        loss_sum, seen = 0.0, 0
        bar = _EpochBar(sys.stderr, epoch=epoch, epochs=epochs, total=steps_per_epoch,
                        enabled=bar_on)
        for step, start in enumerate(range(0, n, batch_size), 1):
            idx = perm[start:start + batch_size]
            if idx.numel() < 2:  # BatchNorm needs two samples
                continue
            za = augment_stamps(z_train[idx], gen, **(augment or {}))
            xb = resize(apply_stretch(za, stretch), image_size)
            xb = xb.to(dev).contiguous(memory_format=torch.channels_last)
            with autocast():
                logits_b = model(xb).float()
            loss = F.cross_entropy(logits_b, y_train[idx].to(dev), weight=weights)
            if kd is not None:
                xt = resize(apply_stretch(za, kd["stretch"]), kd["image_size"])
                xt = xt.to(dev).contiguous(memory_format=torch.channels_last)
                with torch.no_grad(), autocast():
                    t_logits = kd["model"](xt).float()[:, kd["order"]]
                loss = kd_loss(logits_b, t_logits, loss, alpha=kd["alpha"],
                               temperature=kd["temperature"])
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * idx.numel()
            seen += idx.numel()
            bar.update(step, loss_sum / seen)
        bar.close()
        logits = logits_of(model, x_val, dev, 4 * batch_size)
        m = classification_metrics(y_val, logits.argmax(axis=1), classes)
        val_loss = float(F.cross_entropy(torch.as_tensor(logits), torch.as_tensor(y_val),
                                         weight=weights.cpu()))
        row = {"epoch": epoch, "loss": round(loss_sum / max(seen, 1), 5),
               "val_loss": round(val_loss, 5), "val_acc": round(m["accuracy"], 5),
               "val_bacc": round(m["balanced_accuracy"], 5),
               "seconds": round(time.perf_counter() - t0, 2)}
        history.append(row)
        if progress:
            print(f"epoch {epoch}/{epochs} loss {row['loss']:.4f} val_loss {val_loss:.4f} "
                  f"val_acc {m['accuracy']:.4f} val_bacc {m['balanced_accuracy']:.4f} "
                  f"{row['seconds']:.1f}s", file=sys.stderr, flush=True)
        bacc = m["balanced_accuracy"]
        if bacc > best["bacc"] + 1e-9 or (abs(bacc - best["bacc"]) <= 1e-9
                                          and val_loss < best["loss"]):
            best = {"bacc": bacc, "loss": val_loss, "epoch": epoch,
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
        elif epoch - best["epoch"] >= patience:
            stopped = True
        if resume is not None:
            resume.save({"model": model.state_dict(), "opt": opt.state_dict(),
                         "sched": sched.state_dict(),
                         "scaler": scaler.state_dict() if scaler is not None else {},
                         "np_rng": rng.bit_generator.state, "gen": gen.get_state(),
                         "torch_rng": torch.get_rng_state(), "best": best,
                         "history": history, "finished": stopped or epoch == epochs})
            if not (stopped or epoch == epochs) and resume.out_of_time():
                return None
    model.load_state_dict(best["state"])
    model.eval()
    return {"epochs_run": len(history), "best_epoch": best["epoch"], "epochs": history,
            "resumed_after": first - 1}
