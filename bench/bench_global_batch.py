"""The all-pairs loss over a very large GLOBAL batch: 8 gloo ranks on CPU, embeddings only.

    python bench/bench_global_batch.py                            # B = 16,384, 32,768, 65,536
    python bench/bench_global_batch.py --batches 4096 --world 4

Each rank holds B / world faces: an age embedding (70) and a gender embedding (10), float32, as
leaf tensors (no backbone), with seeded ages and genders. One training step's loss,
`agejobs.pair_loss.SiameseLoss` with loss.pairs=global, chunk_rows and the compiled kernel: gather
the columns with gradient, local rows x global columns in chunks of chunk_rows, backward through
the all-reduce of the gathered columns' gradient. Per rank: seconds of forward + backward (the
slowest rank is the step's time) and the peak RSS above the rank's level just before the step
(sampled every 2 ms, and the kernel's high-water mark VmHWM, reset before the step). Beside it,
what a dense (b, B) float32 slice of the distance matrix alone would take, and the chunk's own
(chunk_rows, B) block: the measured peak must follow the chunk,
O(chunk_rows x B) per rank, never B x B (nor b x B).

All ranks share this machine's cores (torch threads 1 each), so the time is the time of 8 ranks
on 2 cores, not of 8 nodes. Writes bench/results/global_batch.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import time

from common import PeakRss, settings, write_results

HERE = os.path.dirname(os.path.abspath(__file__))
AGE_DIM, GENDER_DIM = 70, 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The kernel's high-water mark of this process (VmHWM), reset just before the step: it catches
# what 2 ms sampling misses (a chunk's blocks live for less). Linux >= 4.0.
def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def peak_rss_since_reset() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def rank_step(rank: int, world: int, port: int, local: int, chunk_rows: int, out_dir: str) -> None:
    import torch
    import torch.distributed as dist

    from agejobs.config import Config
    from agejobs.pair_loss import make_loss

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    cfg = Config()
    cfg.loss.pairs, cfg.loss.chunk_rows, cfg.loss.kernel = "global", chunk_rows, "compiled"
    loss_fn = make_loss(cfg.loss, "siamese")
    generator = torch.Generator().manual_seed(rank)

    def step_inputs(rows: int):
        embeddings = {
            "age": (torch.randn(rows, AGE_DIM, generator=generator) * 10).requires_grad_(True),
            "gender": (torch.randn(rows, GENDER_DIM, generator=generator) * 10).requires_grad_(True),
        }
        return (
            embeddings,
            torch.randint(1, 90, (rows,), generator=generator),
            torch.randint(0, 2, (rows,), generator=generator),
        )

    # Compile the block kernels outside the measurement (a once-per-process cost): two sizes, so
    # the second compile is the dynamic-shape kernel every later size reuses.
    for rows in (2 * chunk_rows, 3 * chunk_rows):
        loss_fn(*step_inputs(rows))[0].backward()
    embeddings, ages, genders = step_inputs(local)
    dist.barrier()
    reset_peak_rss()
    with PeakRss(interval_s=0.002) as rss:
        started = time.perf_counter()
        loss, log = loss_fn(embeddings, ages, genders)
        loss.backward()
        seconds = time.perf_counter() - started
    dist.barrier()
    high_water = peak_rss_since_reset() - rss.base
    row = {
        "rank": rank,
        "seconds": seconds,
        "peak_bytes": max(rss.peak - rss.base, high_water),
        "age_loss": log["age_loss"],
        "finite_grads": all(bool(torch.isfinite(e.grad).all()) for e in embeddings.values()),
    }
    with open(os.path.join(out_dir, f"rank-{rank}.json"), "w") as handle:
        json.dump(row, handle)
    dist.destroy_process_group()


def measure(batch: int, world: int, chunk_rows: int, out_dir: str) -> dict:
    import torch.multiprocessing as mp

    if batch % world:
        raise ValueError(f"batch {batch} is not a multiple of {world} ranks")
    local = batch // world
    step_dir = os.path.join(out_dir, f"B{batch}")
    os.makedirs(step_dir, exist_ok=True)
    started = time.perf_counter()
    mp.start_processes(
        rank_step, args=(world, free_port(), local, chunk_rows, step_dir), nprocs=world, start_method="spawn"
    )
    ranks = [json.load(open(os.path.join(step_dir, f"rank-{rank}.json"))) for rank in range(world)]
    return {
        "batch": batch,
        "world": world,
        "local": local,
        "chunk_rows": chunk_rows,
        "seconds_slowest_rank": max(r["seconds"] for r in ranks),
        "peak_bytes_max_rank": max(r["peak_bytes"] for r in ranks),
        "chunk_block_bytes": 4 * chunk_rows * batch,  # one (chunk_rows, B) float32 block
        "dense_slice_bytes": 4 * local * batch,  # a (b, B) float32 distance slice, nothing else
        "age_loss": ranks[0]["age_loss"],
        "finite_grads": all(r["finite_grads"] for r in ranks),
        "wall_seconds_with_startup": time.perf_counter() - started,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="16384,32768,65536")
    parser.add_argument("--world", type=int, default=8)
    parser.add_argument("--chunk-rows", type=int, default=256)
    parser.add_argument("--workdir", default="runs/bench-global-batch")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "global_batch.json"))
    args = parser.parse_args()
    rows = []
    print(
        f"{'B':>7} {'ranks':>5} {'b/rank':>7} {'s (slowest rank)':>17} {'peak MiB/rank':>14} "
        f"{'chunk block MiB':>16} {'dense b x B MiB':>16}"
    )
    for batch in (int(b) for b in args.batches.split(",")):
        row = measure(batch, args.world, args.chunk_rows, os.path.abspath(args.workdir))
        rows.append(row)
        print(
            f"{batch:>7} {args.world:>5} {row['local']:>7} {row['seconds_slowest_rank']:>17.1f} "
            f"{row['peak_bytes_max_rank'] / 2**20:>14.1f} "
            f"{row['chunk_block_bytes'] / 2**20:>16.1f} {row['dense_slice_bytes'] / 2**20:>16.1f}",
            flush=True,
        )
        if not row["finite_grads"]:
            raise RuntimeError(f"B={batch}: non-finite gradients")
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "settings": settings(args), "rows": rows}
    write_results(args.out, results)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
