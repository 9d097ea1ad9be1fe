"""The naive way vs skysieve classify, side by side on one store.

    python -m benchmarks naive [--quick]

The naive way is the loop a first script would be: for each cutout, read its
stamp from the Zarr store (``image[i]``), preprocess it, run the model on a
batch of one, collect the probabilities; write a CSV at the end.  Same model,
same preprocessing code (``pipeline.imaging.preprocess.prepare``), 2 torch threads.
A second row reads each Zarr chunk once and loops over its cutouts (the
batch-of-one cost alone), so the two costs of the naive way are visible.
``skysieve classify`` runs on a LocalCluster 1x2 on the same store in the
same run. Writes ``benchmarks/results/naive.json``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from benchmarks._common import make_store, parse_args, report, scratch

__all__ = ["naive_rate", "main"]


def naive_rate(store: Path, model: str, n: int, *, csv: Path, chunk_cached: bool = False,
               threads: int = 2) -> float:
    """Cutouts/s of the naive loop over the first ``n`` cutouts of ``store``; writes ``csv``."""
    import pandas as pd
    import torch
    import zarr

    from pipeline import bundled
    from pipeline.imaging.preprocess import prepare
    from workers.checkpoint import load_checkpoint

    torch.set_num_threads(threads)
    net, card = load_checkpoint(bundled.resolve(model))
    net.eval()
    arr = zarr.open_group(str(store), mode="r")["image"]
    ids = zarr.open_group(str(store), mode="r")["source_id"][:n]
    chunk = arr.chunks[0]
    t0 = time.perf_counter()
    rows = []
    block, block_start = None, -1
    for i in range(n):
        if chunk_cached:
            if i // chunk != block_start:
                block_start = i // chunk
                block = np.asarray(arr[block_start * chunk:(block_start + 1) * chunk])
            stamp = block[i - block_start * chunk]
        else:
            stamp = np.asarray(arr[i])
        with torch.inference_mode():
            x = prepare(stamp[None].astype(np.float32), stretch=card.stretch,
                        image_size=card.image_size)
            p = torch.softmax(net(x) / card.temperature, dim=1)[0].numpy()
        rows.append(p)
    probs = np.stack(rows)
    df = pd.DataFrame(probs, columns=[f"p_{c}" for c in card.classes])
    df.insert(0, "source_id", ids)
    df["label"] = np.asarray(card.classes)[probs.argmax(axis=1)]
    df.to_csv(csv, index=False)
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and write its JSON; return the payload."""
    from benchmarks.classify_throughput import end_to_end

    args = parse_args(__doc__, argv, quick_help="small store, one repeat")
    n_store, chunk = (4096, 1024) if args.quick else (8192, 2048)
    n_naive = 64 if args.quick else 400
    n_cached = 512 if args.quick else 4096
    with scratch("skysieve-bench-naive-") as tmp:
        store = make_store(tmp / "bench.zarr", n_store, 64, chunk)
        naive = naive_rate(store, args.model, n_naive, csv=tmp / "naive.csv")
        cached = naive_rate(store, args.model, n_cached, csv=tmp / "cached.csv", chunk_cached=True)
        ours = end_to_end(store, args.model, 256, 1, 2, repeats=1 if args.quick else 3)
    rows = [
        {"method": "skysieve classify, LocalCluster 1x2 (Parquet)", "cutouts": n_store,
         "cutouts_per_s": ours, "skysieve_speedup": 1.0},
        {"method": "naive: per cutout read from Zarr + preprocess + model batch 1, CSV",
         "cutouts": n_naive, "cutouts_per_s": naive, "skysieve_speedup": ours / naive},
        {"method": "naive, chunk read once (batch-1 model cost alone), CSV",
         "cutouts": n_cached, "cutouts_per_s": cached, "skysieve_speedup": ours / cached},
    ]
    payload = {"settings": {"quick": args.quick, "model": args.model, "store_cutouts": n_store,
                            "chunk": chunk, "stamp": 64, "threads": 2},
               "rows": rows, "goal": "skysieve >= 20x the naive way",
               "speedup": ours / naive, "goal_met": ours / naive >= 20}
    return report("naive", payload, rows, f"skysieve / naive = {ours / naive:.0f}x (goal >= 20x)")


if __name__ == "__main__":
    main()
