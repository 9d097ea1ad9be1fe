"""The DataLoader way vs skysieve classify, side by side on the same cutouts.

    python -m benchmarks dataloader [--quick]

How galaxy-morphology tools usually run inference: one image file per cutout
(here ``.npy``, float32 ADU: the cheapest file to read, so this baseline is
generous; PNG/JPEG decoding costs more), a ``torch.utils.data.Dataset`` that
loads and preprocesses one cutout per ``__getitem__`` (same
``pipeline.imaging.preprocess.prepare`` code), a ``DataLoader`` with worker processes
(``num_workers`` = cores) batching them, the model in the main process (2
threads), probabilities collected and written to a CSV at the end.  Writing the
files is not timed.  ``skysieve classify`` (LocalCluster 1x2) runs on a store of
the same cutouts in the same run.  Writes ``benchmarks/results/dataloader.json``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from benchmarks._common import make_store, parse_args, report, scratch

__all__ = ["StampFiles", "write_files", "dataloader_rate", "main"]


class StampFiles(Dataset):
    """One ``.npy`` stamp ``(C, y, x)`` per file; ``__getitem__`` returns it prepared."""

    def __init__(self, paths: list[Path], stretch: dict, image_size: int):
        self.paths, self.stretch, self.image_size = paths, stretch, image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        from pipeline.imaging.preprocess import prepare

        stamp = np.load(self.paths[i])
        return prepare(stamp[None], stretch=self.stretch, image_size=self.image_size)[0]


def write_files(store: Path, folder: Path) -> list[Path]:
    """Write every stamp of ``store`` as ``folder/<source_id>.npy``; return the paths in order."""
    import zarr

    group = zarr.open_group(str(store), mode="r")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    arr, ids = group["image"], group["source_id"][:]
    chunk = arr.chunks[0]
    for start in range(0, arr.shape[0], chunk):
        block = np.asarray(arr[start:start + chunk], dtype=np.float32)
        for k, stamp in enumerate(block):
            path = folder / f"{int(ids[start + k])}.npy"
            np.save(path, stamp)
            paths.append(path)
    return paths


def dataloader_rate(paths: list[Path], model: str, *, csv: Path, batch_size: int = 256,
                    num_workers: int | None = None, threads: int = 2) -> float:
    """Cutouts/s of the DataLoader pipeline over ``paths`` (worker start-up included); writes ``csv``."""
    import pandas as pd

    from pipeline import bundled
    from workers.checkpoint import load_checkpoint
    from workers.inference import Predictor

    torch.set_num_threads(threads)
    net, card = load_checkpoint(bundled.resolve(model))
    predictor = Predictor(net, card, device="cpu", batch_size=batch_size)
    workers = len(os.sched_getaffinity(0)) if num_workers is None else num_workers
    t0 = time.perf_counter()
    loader = DataLoader(StampFiles(paths, card.stretch, card.image_size), batch_size=batch_size,
                        num_workers=workers, shuffle=False)
    probs = np.concatenate([predictor.predict_proba(batch) for batch in loader])
    df = pd.DataFrame(probs, columns=[f"p_{c}" for c in card.classes])
    df.insert(0, "source_id", [int(p.stem) for p in paths])
    df["label"] = np.asarray(card.classes)[probs.argmax(axis=1)]
    df.to_csv(csv, index=False)
    return len(paths) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and write its JSON; return the payload."""
    from benchmarks.classify_throughput import end_to_end

    args = parse_args(__doc__, argv, quick_help="small store, one repeat")
    n, chunk = (2048, 512) if args.quick else (8192, 2048)
    repeats = 1 if args.quick else 3
    cores = len(os.sched_getaffinity(0))
    with scratch("skysieve-bench-dl-") as tmp:
        store = make_store(tmp / "bench.zarr", n, 64, chunk)
        paths = write_files(store, tmp / "stamps")
        dataloader_rate(paths[:512], args.model, csv=tmp / "warm.csv")  # page cache, imports
        dl = float(np.median([dataloader_rate(paths, args.model, csv=tmp / f"dl{i}.csv")
                              for i in range(repeats)]))
        ours = end_to_end(store, args.model, 256, 1, 2, repeats=repeats)
    rows = [
        {"method": "skysieve classify, LocalCluster 1x2 (Zarr -> Parquet)", "cutouts": n,
         "cutouts_per_s": ours, "skysieve_speedup": 1.0},
        {"method": f"torch DataLoader, {cores} worker processes, one .npy per cutout, CSV",
         "cutouts": n, "cutouts_per_s": dl, "skysieve_speedup": ours / dl},
    ]
    payload = {"settings": {"quick": args.quick, "model": args.model, "cutouts": n, "chunk": chunk,
                            "stamp": 64, "batch_size": 256, "num_workers": cores,
                            "file_format": "npy (float32)", "repeats": repeats},
               "rows": rows, "goal": "skysieve >= 2x the DataLoader way",
               "speedup": ours / dl, "goal_met": ours / dl >= 2}
    return report("dataloader", payload, rows,
                  f"skysieve / DataLoader = {ours / dl:.1f}x (goal >= 2x)")


if __name__ == "__main__":
    main()
