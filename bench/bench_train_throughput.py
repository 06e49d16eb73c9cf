"""Training throughput: Ray Data -> Ray Train with N CPU workers vs a plain single-process loop.

    python bench/bench_train_throughput.py            # 2 workers x 1 thread vs 1 process x 2 threads
    python bench/bench_train_throughput.py --workloads 128:64 --repeats 3

Both train the same model (MobileNetV2 at each workload's size, random init) with the same siamese loss,
optimizer and global batch on the SAME pre-decoded uint8 tensors (synthetic faces, decoded once
up front), so the comparison is the cost of the distributed machinery: Ray Data streaming the
tensors into the workers (get_dataset_shard / iter_torch_batches), the embedding gather and DDP.
Equal total cores: the plain loop gets as many torch threads as the workers together. A third
row runs the same DDP step in plain processes (torch.multiprocessing, gloo, no Ray), which splits
the gap into what data parallelism costs and what Ray adds.
Throughput = images/s of the last epoch (the first includes start-up and compilation).
Workloads are `image size:global batch` pairs: 128:64 is configs/utkface.yaml's training step,
64:32 a small step where per-step fixed costs (each worker's own optimizer step, the gradient
all-reduce, Python dispatch) weigh most. A shared VM's speed drifts by tens of percent within
minutes, so each workload runs its setups back to back `--repeats` times and a ratio is the
median of the per-repeat (paired) ratios; the table's images/s are medians too. A one-thread
plain row shows how well one process uses the second core (intra-op threads); `--setups
plain_contiguous` adds the plain loop with model.channels_last off.
Prints a table, writes bench/results/train_throughput.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

from common import settings, write_results

HERE = os.path.dirname(os.path.abspath(__file__))


def decoded_faces(count: int, size: int):
    from agejobs.datasets.synthetic import SynthSpec, generate_subject
    from agejobs.images import resize_square

    spec = SynthSpec(num_subjects=count // 4 + 1, images_per_subject=4, image_size=max(size, 64))
    images, ages, genders = [], [], []
    for subject in range(spec.num_subjects):
        for _, age, gender, pixels in generate_subject(subject, spec):
            images.append(resize_square(pixels, size))
            ages.append(age)
            genders.append(gender)
    import numpy as np

    return (
        np.stack(images[:count]),
        np.asarray(ages[:count], dtype=np.int64),
        np.asarray(genders[:count], dtype=np.int64),
    )


def bench_config(args, workers: int):
    from agejobs.config import load_config

    return load_config(
        None,
        [
            "model.backbone=mobilenet_v2",
            "model.weights=",
            f"data.image_size={args.size}",
            "model.dropout=0",
            "optim.name=adam",
            "optim.lr=0.001",
            f"train.batch_size={args.batch}",
            f"train.epochs={args.epochs}",
            f"train.num_workers={workers}",
            "train.torch_threads_per_worker=1",
            "train.cpus_per_worker=0.5",
            "train.max_time_s=0",
            "train.log_every_steps=0",
            "data.shuffle_buffer_size=0",
            f"model.channels_last={str(args.channels_last).lower()}",
        ],
    )


def epochs_of_steps(args, images, ages, genders, rank: int = 0, world: int = 1) -> float:
    """The same model, loss, optimizer and epochs of steps over the tensors; DDP-wrapped when a
    process group is up. Every rank walks the same per-epoch order and takes its slice of each
    global batch. Returns the last epoch's images/s (global)."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from agejobs.data import to_model_input
    from agejobs.model import build_model_from_config
    from agejobs.pair_loss import make_loss
    from agejobs.train import make_optimizer

    cfg = bench_config(args, world)
    torch.manual_seed(0)
    model = build_model_from_config(cfg.model, "siamese", cfg.train.max_age)
    if dist.is_initialized():
        model = DistributedDataParallel(model)
    optimizer = make_optimizer(model.parameters(), cfg.optim)
    loss_fn = make_loss(cfg.loss, "siamese")
    images_t, ages_t, genders_t = torch.from_numpy(images), torch.from_numpy(ages), torch.from_numpy(genders)
    local = args.batch // world
    rate = 0.0
    for epoch in range(args.epochs):
        order = torch.randperm(len(images_t), generator=torch.Generator().manual_seed(epoch))
        started, seen = time.perf_counter(), 0
        for start in range(0, len(order) - args.batch + 1, args.batch):
            index = order[start + rank * local : start + (rank + 1) * local]
            outputs = model(to_model_input(images_t[index], channels_last=cfg.model.channels_last))
            loss, _ = loss_fn(outputs, ages_t[index], genders_t[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += args.batch
        elapsed = torch.tensor([time.perf_counter() - started], dtype=torch.float64)
        if dist.is_initialized():  # the slowest rank's clock, as the training loop reports it
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        rate = seen / elapsed.item()
    return rate


def plain_loop(args, images, ages, genders, threads: int = 0) -> float:
    """One process, `workers` torch threads (or `threads`): the reference."""
    import torch

    torch.set_num_threads(threads or args.workers)
    return epochs_of_steps(args, images, ages, genders)


def _ddp_worker(rank, args, port, images, ages, genders, out_path):
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=args.workers)
    torch.set_num_threads(1)
    rate = epochs_of_steps(args, images, ages, genders, rank, args.workers)
    if rank == 0:
        with open(out_path, "w") as handle:
            handle.write(str(rate))
    dist.destroy_process_group()


def plain_ddp(args, images, ages, genders) -> float:
    """The same data-parallel step (DDP over gloo, the global-batch pair loss) in `workers` plain
    processes, without Ray: separates the cost of data parallelism from the cost of Ray."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as directory:
        out_path = os.path.join(directory, "rate")
        mp.start_processes(
            _ddp_worker, args=(args, port, images, ages, genders, out_path), nprocs=args.workers, start_method="spawn"
        )
        with open(out_path) as handle:
            return float(handle.read())


def ray_train(args, images, ages, genders) -> float:
    import numpy as np
    import ray

    from agejobs.ray_runtime import quiet_ray_data, ray_session
    from agejobs.train import run_training

    cfg = bench_config(args, args.workers)
    with ray_session(num_cpus=args.num_cpus):
        quiet_ray_data()
        blocks = [
            {"image": images[i : i + 256], "age": ages[i : i + 256], "gender": genders[i : i + 256]}
            for i in range(0, len(images), 256)
        ]
        train_ds = (
            ray.data.from_items([{"block": index} for index in range(len(blocks))])
            .map_batches(
                lambda batch: {
                    key: np.concatenate([blocks[int(i)][key] for i in batch["block"]])
                    for key in ("image", "age", "gender")
                },
                batch_size=1,
            )
            .materialize()
        )  # decoded once, held in the object store: only the streaming into Train is measured
        with tempfile.TemporaryDirectory() as storage:
            outcome = run_training(
                cfg, "", "throughput", storage, train_ds=train_ds, train_stats=(len(images), float(ages.mean()))
            )
    return float(outcome.metrics["images_per_s"])


SETUPS = (
    ("plain", "plain torch loop, 1 process x {workers} threads"),
    ("plain_1_thread", "plain torch loop, 1 process x 1 thread"),
    ("plain_contiguous", "plain torch loop, 1 process x {workers} threads, NCHW"),
    ("ddp", "torch DDP, {workers} processes x 1 thread (gloo), no Ray"),
    ("ray", "Ray Data -> Ray Train, {workers} workers x 1 thread (gloo)"),
)


def in_fresh_process(function, *args):
    """Run in a spawned process: thread pools and compiled kernels of one setup never leak into
    the next one's measurement."""
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def with_settings(args, **changes) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), **changes})


def run_setup(name: str, args, images, ages, genders) -> float:
    if name == "plain":
        return in_fresh_process(plain_loop, args, images, ages, genders)
    if name == "plain_1_thread":
        return in_fresh_process(plain_loop, args, images, ages, genders, 1)
    if name == "plain_contiguous":  # model.channels_last off: what NHWC buys on this CPU
        return in_fresh_process(plain_loop, with_settings(args, channels_last=False), images, ages, genders)
    if name == "ddp":
        return plain_ddp(args, images, ages, genders)
    return ray_train(args, images, ages, genders)


def measure_workload(args, size: int, batch: int, setups: list[str]) -> dict:
    import statistics

    workload = with_settings(args, size=size, batch=batch, channels_last=True)
    images, ages, genders = decoded_faces(args.images, size)
    runs: dict[str, list[float]] = {name: [] for name in setups}
    for repeat in range(args.repeats):
        for name in setups:
            runs[name].append(run_setup(name, workload, images, ages, genders))
            print(
                f"[bench] {size} px, batch {batch}, repeat {repeat + 1}: {name} {runs[name][-1]:.1f} images/s",
                flush=True,
            )
    measured = {
        "size": size,
        "global_batch": batch,
        "runs_images_per_s": runs,
        "median_images_per_s": {name: statistics.median(rates) for name, rates in runs.items()},
    }
    for name in setups:
        if name != "plain":
            paired = [rate / plain for rate, plain in zip(runs[name], runs["plain"])]
            measured[f"{name}_vs_plain"] = {"paired": paired, "median": statistics.median(paired)}
    return measured


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1536)
    parser.add_argument("--workloads", default="128:64,64:32", help="comma-separated image_size:global_batch")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--setups",
        default="plain_1_thread,ddp,ray",
        help="comma-separated, from: " + ", ".join(name for name, _ in SETUPS) + " (plain always runs)",
    )
    parser.add_argument("--num-cpus", type=int, default=4, help="logical CPUs of the local Ray instance")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "train_throughput.json"))
    args = parser.parse_args()
    try:
        workloads = [tuple(int(part) for part in item.split(":")) for item in args.workloads.split(",")]
        if any(len(pair) != 2 or pair[1] % args.workers for pair in workloads):
            raise ValueError
    except ValueError:
        parser.error(f"--workloads {args.workloads!r}: want size:batch pairs, each batch divisible by --workers")
    chosen = set(args.setups.split(",")) | {"plain"}
    unknown = chosen - {name for name, _ in SETUPS}
    if unknown:
        parser.error(f"--setups: unknown {', '.join(sorted(unknown))}")
    setups = [name for name, _ in SETUPS if name in chosen]
    measured = [measure_workload(args, size, batch, setups) for size, batch in workloads]
    results = {
        "machine": f"{platform.node()} ({os.cpu_count()} cores)",
        "settings": settings(args),
        "workloads": measured,
    }
    write_results(args.out, results)
    print(
        f"\ntraining throughput, MobileNetV2, {args.repeats} repeats, last of {args.epochs} epochs "
        f"({results['machine']})"
    )
    print(
        f"{'median images/s':<58} "
        + " ".join(f"{str(w['size']) + ' px b' + str(w['global_batch']):>12}" for w in measured)
    )
    labels = dict(SETUPS)
    for name in setups:
        row = " ".join(f"{w['median_images_per_s'][name]:>12.1f}" for w in measured)
        print(f"{labels[name].format(workers=args.workers):<58} {row}")
    for name in setups[1:]:
        label = f"median paired ratio {name} / plain" + (" (goal >= 0.9)" if name == "ray" else "")
        print(f"{label:<58} " + " ".join(f"{w[name + '_vs_plain']['median']:>12.2f}" for w in measured))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
