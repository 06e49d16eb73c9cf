"""Training on Ray Train: the per-worker loop, TrainState, checkpoints, and the TorchTrainer launch.

    agejobs train -c configs/paper.yaml dataset.source=/data/utkface train.epochs=30

Each worker streams its shard of the Ray Dataset, computes its local rows of the all-pairs loss
against the gathered global batch (distributed.py), and DDP averages gradients. A checkpoint is
model + optimizer + TrainState; `restore_state` is the only place a run resumes from one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from agejobs import distributed, metrics, progress
from agejobs.checkpoint import read_checkpoint, save_checkpoint
from agejobs.config import Config, config_from_dict, config_to_dict
from agejobs.data import random_flip, to_model_input
from agejobs.model import build_model_from_config
from agejobs.pair_loss import make_loss

# Ray Train sends a worker's root logger to the driver's console and to its app log file. A bare
# print() in a Ray 2.60 worker is written twice (the print patch tees to the worker's replaced
# sys.stdout and also logs it), so worker lines go through this logger.
logger = logging.getLogger(__name__)


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    samples_seen: int = 0  # faces, summed over workers
    elapsed_s: float = 0.0  # training time, summed over restarts
    restarts: int = 0  # times this run resumed from a checkpoint (after a failure or a resubmit)
    # Every worker's RNG state (python, numpy, torch), indexed by rank: each worker's dropout
    # and augmentation streams continue where they were, not rank 0's stream everywhere.
    rng_per_rank: list = field(default_factory=list)


def capture_rng() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def apply_rng(rng: dict) -> None:
    if rng:
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])


def make_optimizer(parameters, optim_cfg) -> torch.optim.Optimizer:
    if optim_cfg.name == "adadelta":
        return torch.optim.Adadelta(parameters, lr=optim_cfg.lr, weight_decay=optim_cfg.weight_decay)
    if optim_cfg.name == "adam":
        return torch.optim.Adam(parameters, lr=optim_cfg.lr, weight_decay=optim_cfg.weight_decay)
    if optim_cfg.name == "sgd":
        return torch.optim.SGD(parameters, lr=optim_cfg.lr, momentum=0.9, weight_decay=optim_cfg.weight_decay)
    raise ValueError(f"optim.name: unknown optimizer {optim_cfg.name!r}")


def steps_per_epoch(train_rows: int, cfg: Config) -> int:
    """Optimizer steps in one epoch: Ray Train splits the rows equally over the workers and each
    drops its last partial batch."""
    local_batch = cfg.train.batch_size // cfg.train.num_workers
    return max(train_rows // cfg.train.num_workers // local_batch, 1)


def budget_steps(train_rows: int, cfg: Config) -> int:
    """Steps the budget allows (a time budget may end training sooner)."""
    steps = cfg.train.epochs * steps_per_epoch(train_rows, cfg)
    return min(steps, cfg.train.max_steps) if cfg.train.max_steps else steps


def budget_progress(state: TrainState, elapsed_s: float, cfg: Config, epoch_length: int) -> float:
    """Fraction of the training budget used: the largest of epochs, steps and time."""
    fractions = [state.step / max(cfg.train.epochs * epoch_length, 1)]
    if cfg.train.max_steps:
        fractions.append(state.step / cfg.train.max_steps)
    if cfg.train.max_time_s:
        fractions.append(elapsed_s / cfg.train.max_time_s)
    return min(1.0, max(fractions))


def scheduled_lr(base_lr: float, progress: float, schedule: str) -> float:
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return base_lr


def write_initial_checkpoint(directory: str, cfg: Config) -> str:
    """A checkpoint of the model as initialised (seed train.seed), before any step: what a pipeline
    smoke test or a throughput benchmark needs, where the weights' values do not matter."""
    torch.manual_seed(cfg.train.seed)
    model = build_model_from_config(cfg.model, cfg.train.method, cfg.train.max_age)
    os.makedirs(directory, exist_ok=True)
    save_checkpoint(directory, model, make_optimizer(model.parameters(), cfg.optim), TrainState(), cfg)
    return directory


def restore_state(model: torch.nn.Module, optimizer) -> TrainState:
    """The ONE place a run resumes: Ray Train's latest checkpoint, if any, else a fresh state."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return TrainState()
    with checkpoint.as_directory() as directory:
        payload = read_checkpoint(directory)
    unwrapped = model.module if hasattr(model, "module") else model
    unwrapped.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    state = TrainState(**payload["train_state"])
    state.restarts += 1
    rank, world = distributed.rank_and_world()
    if len(state.rng_per_rank) == world:
        apply_rng(state.rng_per_rank[rank])
    else:  # a different number of workers than when saved: fresh, distinct streams per rank
        seed_worker_rng(state.step, rank)
    return state


def seed_worker_rng(seed: int, rank: int) -> None:
    torch.manual_seed(seed + 1000 * (rank + 1))
    np.random.seed((seed + 1000 * (rank + 1)) % 2**32)
    random.seed(seed + 1000 * (rank + 1))


def record_step_metrics(log: dict, images: int, images_per_s: float, since_checkpoint: float) -> None:
    """Prometheus view of one step (rank 0 only: the values describe the global batch)."""
    metrics.inc("train_steps")
    metrics.inc("train_images", images)
    metrics.inc("train_gather_seconds", log.get("gather_s", 0.0))
    metrics.set_gauge("train_images_per_second", images_per_s)
    metrics.set_gauge("train_seconds_since_checkpoint", since_checkpoint)
    for name in ("age_loss", "gender_loss", "positive_pair_ratio"):
        if name in log:
            metrics.set_gauge(f"train_{name}", log[name])


def train_loop_per_worker(loop_config: dict) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import ray.train.torch

    cfg = config_from_dict(loop_config["config"])
    torch.set_num_threads(cfg.train.torch_threads_per_worker)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every worker
    device = ray.train.torch.get_device()
    model = build_model_from_config(cfg.model, cfg.train.method, cfg.train.max_age)
    if cfg.train.method == "regression":
        # Start at the training mean, as any regression baseline should: from 0, a small-LR
        # optimizer spends its whole budget walking the bias to the age scale.
        with torch.no_grad():
            model.age_head.bias.fill_(loop_config.get("train_age_mean", 0.0))
    unused = cfg.train.method == "siamese" and cfg.loss.gender_weight == 0
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": unused})
    optimizer = make_optimizer(model.parameters(), cfg.optim)
    resumed = ray.train.get_checkpoint() is not None
    state = restore_state(model, optimizer)
    if not resumed:
        seed_worker_rng(cfg.train.seed, rank)  # a different dropout stream per worker

    shard = ray.train.get_dataset_shard("train")
    local_batch = cfg.train.batch_size // world
    epoch_length = steps_per_epoch(loop_config["train_rows"], cfg)
    board = loop_config.get("progress") if rank == 0 else None
    compute_loss = make_loss(cfg.loss, cfg.train.method)
    started = time.monotonic() - state.elapsed_s
    last_checkpoint = time.monotonic()
    # A run restored after its budget was spent (a rerun of a finished run) takes no more steps.
    stop = budget_progress(state, state.elapsed_s, cfg, epoch_length) >= 1.0
    while state.epoch < cfg.train.epochs and not stop:
        model.train()
        epoch_log: dict[str, float] = {}
        epoch_steps, epoch_started, epoch_samples = 0, time.monotonic(), 0
        for batch in epoch_batches(shard, local_batch, loop_config["shuffle_buffer_rows"], cfg, state.epoch, rank):
            faces = random_flip(batch["image"].to(device, non_blocking=True))
            images = to_model_input(faces, channels_last=cfg.model.channels_last)
            # int64: gloo's collectives reject the manifest's int16/int8 label types.
            ages, genders = batch["age"].to(device).long(), batch["gender"].to(device).long()
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.train.amp):
                outputs = model(images)
            loss, log = compute_loss(outputs, ages, genders)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            state.step += 1
            if cfg.train.fail_at_step and state.step == cfg.train.fail_at_step and not resumed and rank == world - 1:
                logger.warning(f"[train] fault drill: worker {rank} exits at step {state.step}")
                os._exit(1)
            epoch_steps += 1
            epoch_samples += local_batch * world
            state.samples_seen += local_batch * world
            for key, value in log.items():
                epoch_log[key] = epoch_log.get(key, 0.0) + value
            rate = epoch_samples / max(time.monotonic() - epoch_started, 1e-9)
            if rank == 0:
                record_step_metrics(log, local_batch * world, rate, time.monotonic() - last_checkpoint)
            if rank == 0 and cfg.train.log_every_steps and state.step % cfg.train.log_every_steps == 0:
                parts = " ".join(f"{k}={v:.4g}" for k, v in log.items())
                logger.info(f"[train] epoch {state.epoch + 1} step {state.step} {parts} images/s={rate:.1f}")
            # Workers' clocks differ: with a time budget the slowest one's elapsed time drives the
            # LR and the stop, so every worker takes the same decision at the same step. Without
            # one, progress is step-based and identical everywhere: no collective needed.
            elapsed = 0.0
            if cfg.train.max_time_s:
                elapsed = distributed.all_reduce_max(torch.tensor([time.monotonic() - started], device=device)).item()
            progress.post_step(board, state.step)
            used = budget_progress(state, elapsed, cfg, epoch_length)
            for group in optimizer.param_groups:
                group["lr"] = scheduled_lr(cfg.optim.lr, used, cfg.train.lr_schedule)
            if used >= 1.0 and (cfg.train.max_steps or cfg.train.max_time_s):
                stop = True
                break
        # The global rate uses the slowest worker's clock: a worker that started its epoch early
        # (and then waited for rank 0 to write the last checkpoint) counts that wait.
        epoch_seconds = distributed.all_reduce_max(
            torch.tensor([time.monotonic() - epoch_started], dtype=torch.float64, device=device)).item()
        state.epoch += 1
        state.elapsed_s = time.monotonic() - started
        state.rng_per_rank = distributed.gather_objects(capture_rng())
        report = {key: value / max(epoch_steps, 1) for key, value in epoch_log.items()}
        report.update(
            epoch=state.epoch,
            epoch_steps=epoch_steps,
            step=state.step,
            samples_seen=state.samples_seen,
            images_per_s=epoch_samples / max(epoch_seconds, 1e-9),
            stopped_early=bool(stop),
        )
        progress.post_epoch(board, report)
        with tempfile.TemporaryDirectory() as directory:
            checkpoint = None
            if rank == 0:
                save_checkpoint(directory, model, optimizer, state, cfg)
                checkpoint = ray.train.Checkpoint.from_directory(directory)
                logger.info(f"[train] epoch {state.epoch} done: " + ", ".join(f"{k}={v:.4g}" for k, v in report.items() if isinstance(v, float)))
            ray.train.report(report, checkpoint=checkpoint)
        last_checkpoint = time.monotonic()
        if rank == 0:
            metrics.set_gauge("train_epoch", state.epoch)


def epoch_batches(shard, local_batch: int, shuffle_buffer_rows: int, cfg: Config, epoch: int, rank: int):
    """One epoch of this worker's batches: the training loop's only view of the data (the
    batch-mixing test walks exactly this). The rows arrive shuffled (`data.shuffled_rows`); a
    local buffer is kept only for packs, whose row groups are read whole."""
    return shard.iter_torch_batches(
        batch_size=local_batch,
        drop_last=True,
        local_shuffle_buffer_size=shuffle_buffer_rows or None,
        local_shuffle_seed=int(np.random.SeedSequence([cfg.train.seed, epoch, rank]).generate_state(1)[0]) if shuffle_buffer_rows else None,
        pin_memory=cfg.train.use_gpu,
    )


def training_dataset(cfg: Config, source_uri: str):
    """The training split as the trainer streams it: shuffled every epoch, decoded, labels only."""
    from agejobs.data import face_dataset
    from agejobs.images import Preprocessing

    return face_dataset(
        source_uri,
        "train",
        Preprocessing.of(cfg.data),
        train=True,
        resources=cfg.resources,
        seed=cfg.train.seed,
    ).select_columns(["image", "age", "gender"])


def shuffle_buffer_rows(cfg: Config, source_uri: str) -> int:
    """Rows of each worker's local shuffle buffer: a manifest arrives fully shuffled, a pack
    needs its row groups mixed (data.py)."""
    from agejobs import pack

    return cfg.data.shuffle_buffer_size if source_uri and pack.is_pack(source_uri) else 0


def make_trainer(loop, loop_config: dict, cfg: Config, train_ds, run_name: str, storage_path: str):
    """The TorchTrainer every training run uses (and the batch-mixing test, with its own loop)."""
    import ray.train
    from ray.data import DataContext, ExecutionOptions
    from ray.train.torch import TorchTrainer

    from agejobs import storage

    # One filesystem object for Ray Train's checkpoint uploads (same endpoint/retries as ours);
    # pyarrow wants the path without its scheme when given a filesystem.
    storage_filesystem, storage_inner_path = storage.arrow_filesystem(storage_path)
    # Blocks reach the workers in the order the seeded shuffle made: same seed, same batches.
    # (Ray Train's default ingest options, built without the deprecated exclude_resources.)
    current = DataContext.get_current().execution_options
    ingest = ExecutionOptions(resource_limits=current.resource_limits, preserve_order=True,
                              verbose_progress=current.verbose_progress)
    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.train.num_workers,
            use_gpu=cfg.train.use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage_inner_path,
            storage_filesystem=storage_filesystem,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
        ),
        datasets={"train": train_ds},
        dataset_config=ray.train.DataConfig(execution_options=ingest),
    )


@dataclass
class TrainOutcome:
    checkpoint_path: str
    metrics: dict


def split_age_stats(source_uri: str, split: str) -> tuple[int, float]:
    """(rows, mean age) of one split of a manifest or pack, from the label columns only."""
    import pyarrow.compute as pc

    from agejobs.data import label_table

    table = label_table(source_uri, ("split", "age"))
    ages = table.filter(pc.equal(table["split"], split))["age"]
    return len(ages), float(pc.mean(ages).as_py() or 0.0)


def run_training(
    cfg: Config, manifest_uri: str, run_name: str, storage_path: str, train_ds=None, train_stats=None,
    progress_label: str = "",
) -> TrainOutcome:
    """Launch TorchTrainer on the connected Ray cluster and wait for it.

    `train_ds` (a Ray Dataset of "image", "age", "gender") and `train_stats` ((rows, mean age))
    replace the manifest's training split, e.g. for benchmarks on pre-decoded tensors.
    `progress_label`: draw a step bar and one line per epoch on this console, under that label.
    """
    from agejobs import storage

    storage_path = storage.absolute(storage_path)
    train_rows, train_age_mean = train_stats or split_age_stats(manifest_uri, "train")
    if train_ds is None:
        train_ds = training_dataset(cfg, manifest_uri)
    loop_config = {
        "config": config_to_dict(cfg),
        "train_rows": train_rows,
        "train_age_mean": train_age_mean,
        "shuffle_buffer_rows": shuffle_buffer_rows(cfg, manifest_uri),
    }
    console = contextlib.nullcontext()
    if progress_label:
        epochs = None if cfg.train.max_steps or cfg.train.max_time_s else cfg.train.epochs  # else the budget ends first
        console = progress.TrainingProgress(progress_label, budget_steps(train_rows, cfg), epochs)
    with console:
        loop_config["progress"] = console.board if progress_label else None
        result = make_trainer(train_loop_per_worker, loop_config, cfg, train_ds, run_name, storage_path).fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training run {run_name} finished without a checkpoint: {result.error}")
    return TrainOutcome(storage.uri_of(storage_path, result.checkpoint.path), dict(result.metrics or {}))
