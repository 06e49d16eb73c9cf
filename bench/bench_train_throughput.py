"""Training throughput: Ray Data -> Ray Train with N CPU workers vs a plain single-process loop.

    python bench/bench_train_throughput.py            # 2 workers x 1 thread vs 1 process x 2 threads

Both train the same model (MobileNetV2 at --size px, random init) with the same siamese loss,
optimizer and global batch on the SAME pre-decoded uint8 tensors (synthetic faces, decoded once
up front), so the comparison is the cost of the distributed machinery: Ray Data streaming the
tensors into the workers (get_dataset_shard / iter_torch_batches), the embedding gather and DDP.
Equal total cores: the plain loop gets as many torch threads as the workers together. A third
row runs the same DDP step in plain processes (torch.multiprocessing, gloo, no Ray), which splits
the gap into what data parallelism costs and what Ray adds.
Throughput = images/s of the last epoch (the first includes start-up). Prints a table, writes
bench/results/train_throughput.json.
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

    return np.stack(images[:count]), np.asarray(ages[:count], dtype=np.int64), np.asarray(genders[:count], dtype=np.int64)


def bench_config(args, workers: int):
    from agejobs.config import load_config

    return load_config(None, [
        "model.backbone=mobilenet_v2", "model.weights=", f"data.image_size={args.size}", "model.dropout=0",
        "optim.name=adam", "optim.lr=0.001", f"train.batch_size={args.batch}", f"train.epochs={args.epochs}",
        f"train.num_workers={workers}", "train.torch_threads_per_worker=1", "train.cpus_per_worker=0.5",
        "train.max_time_s=0", "train.log_every_steps=0", "data.shuffle_buffer_size=0",
    ])


def epochs_of_steps(args, images, ages, genders, rank: int = 0, world: int = 1) -> float:
    """The same model, loss, optimizer and epochs of steps over the tensors; DDP-wrapped when a
    process group is up. Every rank walks the same per-epoch order and takes its slice of each
    global batch. Returns the last epoch's images/s (global)."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from agejobs.data import to_model_input
    from agejobs.model import build_model_from_config
    from agejobs.train import make_optimizer, siamese_loss

    cfg = bench_config(args, world)
    torch.manual_seed(0)
    model = build_model_from_config(cfg.model, "siamese", cfg.train.max_age)
    if dist.is_initialized():
        model = DistributedDataParallel(model)
    optimizer = make_optimizer(model.parameters(), cfg.optim)
    images_t, ages_t, genders_t = torch.from_numpy(images), torch.from_numpy(ages), torch.from_numpy(genders)
    local = args.batch // world
    rate = 0.0
    for epoch in range(args.epochs):
        order = torch.randperm(len(images_t), generator=torch.Generator().manual_seed(epoch))
        started, seen = time.perf_counter(), 0
        for start in range(0, len(order) - args.batch + 1, args.batch):
            index = order[start + rank * local : start + (rank + 1) * local]
            outputs = model(to_model_input(images_t[index]))
            loss, _ = siamese_loss(outputs, ages_t[index], genders_t[index], cfg)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += args.batch
        rate = seen / (time.perf_counter() - started)
    return rate


def plain_loop(args, images, ages, genders) -> float:
    """One process, `workers` torch threads: the reference."""
    import torch

    torch.set_num_threads(args.workers)
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
        mp.start_processes(_ddp_worker, args=(args, port, images, ages, genders, out_path), nprocs=args.workers,
                           start_method="spawn")
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
        train_ds = ray.data.from_items([{"block": index} for index in range(len(blocks))]).map_batches(
            lambda batch: {key: np.concatenate([blocks[int(i)][key] for i in batch["block"]]) for key in ("image", "age", "gender")},
            batch_size=1,
        ).materialize()  # decoded once, held in the object store: only the streaming into Train is measured
        with tempfile.TemporaryDirectory() as storage:
            outcome = run_training(cfg, "", "throughput", storage, train_ds=train_ds, train_stats=(len(images), float(ages.mean())))
    return float(outcome.metrics["images_per_s"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1536)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32, help="global batch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--num-cpus", type=int, default=4, help="logical CPUs of the local Ray instance")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "train_throughput.json"))
    args = parser.parse_args()
    images, ages, genders = decoded_faces(args.images, args.size)
    plain = plain_loop(args, images, ages, genders)
    ddp = plain_ddp(args, images, ages, genders)
    distributed = ray_train(args, images, ages, genders)
    results = {
        "machine": f"{platform.node()} ({os.cpu_count()} cores)",
        "settings": settings(args),
        "plain_images_per_s": plain,
        "ddp_images_per_s": ddp,
        "ray_images_per_s": distributed,
        "ddp_ratio": ddp / plain,
        "ratio": distributed / plain,
    }
    write_results(args.out, results)
    print(f"\ntraining throughput, MobileNetV2 {args.size}px, global batch {args.batch}, last of {args.epochs} epochs ({results['machine']})")
    print(f"{'setup':<44} {'images/s':>9}")
    print(f"{'plain torch loop, 1 process x ' + str(args.workers) + ' threads':<44} {plain:>9.1f}")
    print(f"{'torch DDP, ' + str(args.workers) + ' processes x 1 thread (gloo), no Ray':<44} {ddp:>9.1f}")
    print(f"{'Ray Data -> Ray Train, ' + str(args.workers) + ' workers x 1 thread (gloo)':<44} {distributed:>9.1f}")
    print(f"ratio DDP without Ray / plain: {results['ddp_ratio']:.2f}")
    print(f"ratio Ray / plain: {results['ratio']:.2f} (goal >= 0.9)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
