"""Raw model throughput: each zoo model alone, one process, batched, ``inference_mode``.

    python -m benchmarks raw_model [--quick]

The physical limit of classification on this machine: prepared float32 tensors
already in memory, ``channels_last``, ``torch.inference_mode()``, batch norms
folded into the convolutions (``workers.fuse``, as ``Predictor`` runs models), the bundled
default model (its trained weights) and every zoo model (fresh weights; the
speed does not depend on the values) at 64x64 and 128x128, batch 64 and 256
(the slow models at batch 64 only).  ``hr_celestialnet`` is measured as its
cutout variant ``hr_celestialnet_cutout`` (the exposure variant takes whole
2048x4096 frames).  Medians over repeats; each repeat runs about a second.
Writes ``benchmarks/results/raw_model.json``; ``pipeline.hpc.plan`` reads it.
"""

from __future__ import annotations

import time

from benchmarks._common import median_time, parse_args, report

__all__ = ["model_rate", "main"]

_SLOW = 400.0  # cutouts/s: below this, batch 256 is not measured (it only costs minutes)


def model_rate(net, image_size: int, *, batch_size: int, threads: int, in_chans: int = 1,
               target_s: float = 1.0, repeats: int = 3, device: str = "cpu") -> float:
    """Cutouts/s of ``net`` on random ``(batch, in_chans, size, size)`` tensors in memory.

    Each repeat runs ``k`` batches, ``k`` chosen so a repeat lasts about ``target_s``.
    """
    import torch

    from workers.fuse import fuse_conv_bn

    torch.set_num_threads(threads)
    fmt = torch.channels_last
    fuse_conv_bn(net)  # as workers.inference.Predictor runs it
    net = net.to(device, memory_format=fmt).eval()
    x = torch.randn(batch_size, in_chans, image_size, image_size, device=device)
    x = x.contiguous(memory_format=fmt)
    cuda = device.startswith("cuda")

    def run(k: int) -> None:
        with torch.inference_mode():
            for _ in range(k):
                if cuda:
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        net(x)
                else:
                    net(x)
        if cuda:
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    run(1)  # warm-up (allocator, oneDNN primitives)
    first = time.perf_counter() - t0
    k = max(1, round(target_s / max(first, 1e-4)))
    return k * batch_size / median_time(lambda: run(k), repeats=repeats, warmup=0)


def _cases(quick: bool) -> list[tuple[str, str, int]]:
    """(row name, zoo name or "default", image size)."""
    from workers.models import list_models

    if quick:
        return [("default", "default", 64), ("lenet5", "lenet5", 64)]
    names = [n for n in list_models() if n != "hr_celestialnet"]
    cases = [("default", "default", 64)]
    cases += [(n, n, s) for n in names for s in (64, 128)]
    return cases


def _build(name: str, size: int):
    if name == "default":
        from pipeline import bundled
        from workers.checkpoint import load_checkpoint

        net, card = load_checkpoint(bundled.resolve("default"))
        return net, card.arch, card.in_chans
    from workers.models import create_model

    return create_model(name, num_classes=6, in_chans=1, image_size=size), name, 1


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and write its JSON; return the payload."""
    args = parse_args(__doc__, argv, quick_help="two small models, short repeats", model=False,
                      options={"--threads": {"type": int, "default": 2}})
    target_s, repeats = (0.2, 1) if args.quick else (0.5, 3)
    rows = []
    for row_name, name, size in _cases(args.quick):
        net, arch, in_chans = _build(name, size)
        params = sum(p.numel() for p in net.parameters())
        rates = {}
        for batch in (64, 256):
            if batch == 256 and rates and rates[64] < _SLOW:
                continue
            rates[batch] = model_rate(net, size, batch_size=batch, threads=args.threads,
                                      in_chans=in_chans, target_s=target_s, repeats=repeats)
        best = max(rates, key=rates.get)
        rows.append({"model": row_name, "arch": arch, "image_size": size, "params": params,
                     "batch_64": rates.get(64, float("nan")),
                     "batch_256": rates.get(256, float("nan")),
                     "cutouts_per_s": rates[best], "best_batch": best})
        print(f"  {row_name} {size}px: {rates[best]:,.0f}/s (batch {best})", flush=True)
    payload = {"settings": {"quick": args.quick, "threads": args.threads, "device": "cpu",
                            "dtype": "float32", "memory_format": "channels_last",
                            "batch_norm": "folded into the convolutions",
                            "mode": "torch.inference_mode", "target_seconds_per_repeat": target_s,
                            "repeats": repeats,
                            "note": "hr_celestialnet = its cutout variant at these sizes"},
               "rows": rows}
    return report("raw_model", payload, rows)


if __name__ == "__main__":
    main()
