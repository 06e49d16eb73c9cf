"""All-pairs loss, forward + backward: this implementation vs a dense cdist vs pytorch-metric-learning.

    python bench/bench_pair_loss.py                       # B in 128, 1024, 4096; D = 80
    python bench/bench_pair_loss.py --device cuda         # on a GPU (peak = max_memory_allocated)

Methods, on the same embeddings (B x D, float32) and age labels:
  chunked   agejobs.losses.revised_contrastive_loss(..., chunk_rows=256, kernel="compiled"): row
            chunks recomputed in backward (custom autograd), each block one torch.compile'd loop
            nest; peak O(chunk_rows x B). The kernels are compiled on a small batch before the
            measurement: compiling is a once-per-process cost (~2 s with inductor's disk cache),
            not the loss's time or memory.
  chunked-cdist  the same with kernel="cdist" (aten cdist + its p=1 backward per block)
  dense     the same loss with chunk_rows=0: autograd through one (B, B) cdist and its terms
  pml       pytorch-metric-learning ContrastiveLoss(distance=LpDistance(p=1,
            normalize_embeddings=False)): all-pairs indices, per-pair losses, mean reducer
Each (method, B) runs in a fresh process. Time: median of --repeats runs after a warm-up.
Peak memory of the first forward + backward: on CPU the peak RSS above the process's level just
before it (sampled every millisecond); on CUDA torch.cuda.max_memory_allocated above the inputs.
Prints a table and writes bench/results/pair_loss.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from common import PeakRss, write_results

HERE = os.path.dirname(os.path.abspath(__file__))
METHODS = ("chunked", "chunked-cdist", "dense", "pml")


def make_loss(method: str):

    from agejobs.losses import revised_contrastive_loss

    if method == "chunked":
        return lambda embeddings, ages: revised_contrastive_loss(embeddings, ages, 3, 100.0, 256, "compiled")
    if method == "chunked-cdist":
        return lambda embeddings, ages: revised_contrastive_loss(embeddings, ages, 3, 100.0, 256, "cdist")
    if method == "dense":
        return lambda embeddings, ages: revised_contrastive_loss(embeddings, ages, 3, 100.0, chunk_rows=0)
    if method == "pml":
        from pytorch_metric_learning.distances import LpDistance
        from pytorch_metric_learning.losses import ContrastiveLoss

        loss = ContrastiveLoss(pos_margin=0.0, neg_margin=100.0, distance=LpDistance(p=1, normalize_embeddings=False))
        return lambda embeddings, ages: loss(embeddings, ages)
    raise ValueError(method)


def measure(method: str, batch: int, dim: int, repeats: int, device: str) -> dict:
    """In this process: median seconds and peak bytes of forward + backward."""
    import torch

    torch.manual_seed(0)
    embeddings = (torch.randn(batch, dim, device=device) * 10).requires_grad_(True)
    ages = torch.randint(0, 80, (batch,), device=device)
    loss_fn = make_loss(method)
    if method == "chunked":  # compile first (dynamic shapes: the same kernels serve every B)
        warm = torch.randn(300, dim, device=device, requires_grad=True)
        loss_fn(warm, torch.randint(0, 80, (300,), device=device)).backward()

    def step():
        embeddings.grad = None
        loss_fn(embeddings, ages).backward()
        if device == "cuda":
            torch.cuda.synchronize()

    # Peak of the FIRST step, from the level before it: later steps reuse memory the allocator
    # kept from the first one, so RSS would no longer rise.
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        with PeakRss(interval_s=0.001) as rss:
            step()
        peak = rss.peak - rss.base
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return {"method": method, "batch": batch, "seconds": statistics.median(times), "peak_bytes": peak}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="128,1024,4096")
    parser.add_argument("--dim", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "pair_loss.json"))
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, batch = args.child.split(":")
        print(json.dumps(measure(method, int(batch), args.dim, args.repeats, args.device)))
        return 0

    import torch

    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        for method in METHODS:
            command = [
                sys.executable,
                __file__,
                "--child",
                f"{method}:{batch}",
                "--dim",
                str(args.dim),
                "--repeats",
                str(args.repeats),
                "--device",
                args.device,
            ]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{method} at B={batch} failed:\n{done.stderr[-2000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    by_key = {(row["method"], row["batch"]): row for row in rows}
    device_name = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    )
    results = {
        "device": device_name,
        "torch_threads": torch.get_num_threads(),
        "dim": args.dim,
        "rows": rows,
        "vs_pml": {},
    }
    print(f"\npair loss forward+backward, D={args.dim}, {args.device} ({device_name})")
    print(f"{'B':>5} {'method':<14} {'ms':>9} {'peak MiB':>9} {'speed vs pml':>13} {'memory vs pml':>14}")
    for batch in sorted({row["batch"] for row in rows}):
        pml = by_key[("pml", batch)]
        for method in METHODS:
            row = by_key[(method, batch)]
            speed = pml["seconds"] / row["seconds"]
            memory = pml["peak_bytes"] / max(row["peak_bytes"], 1)
            results["vs_pml"][f"{method}@{batch}"] = {"speedup": speed, "memory_ratio": memory}
            print(
                f"{batch:>5} {method:<14} {row['seconds'] * 1e3:>9.1f} {row['peak_bytes'] / 2**20:>9.1f} "
                f"{speed:>12.1f}x {memory:>13.1f}x"
            )
    write_results(args.out, results)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
