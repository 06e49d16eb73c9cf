"""Training on Ray Train: TrainState, budgets, the per-worker loop in named phases, and the TorchTrainer launch.

    agejobs train -c configs/paper.yaml --manifest data/utkface/manifest.parquet train.epochs=30

Each worker streams its shard of the Ray Dataset, computes its local rows of the all-pairs loss
against the gathered global batch (pair_loss.py, distributed.py), and DDP averages gradients.
The loop on every worker, `train_loop_per_worker`, is four phases over a `WorkerContext`:
    setup_worker   config, the seeded model (the same initial weights on every worker), optimizer,
                   the restored or fresh TrainState and RNG streams, the data shard, the loss
    train_step     flip, forward (bf16 autocast with train.amp), loss, backward, optimizer step
    after_step     the fault drill, counts, rank 0's metrics and log line, the budget (a collective
                   only with a time budget) and the LR it schedules
    end_epoch      every rank's RNG state into the TrainState, the epoch's report, rank 0's checkpoint
A checkpoint is model + optimizer + TrainState (its file and readers: checkpoint.py);
`restore_state` is the only place a run resumes from one.
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
from typing import Any

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


@dataclass
class WorkerContext:
    """One worker's training, as every phase of the loop reads it; built once by `setup_worker`."""

    cfg: Config
    rank: int
    world: int
    device: torch.device
    model: torch.nn.Module  # as Ray Train prepared it (DDP with several workers)
    optimizer: torch.optim.Optimizer
    state: TrainState
    shard: Any  # this worker's shard of the training split (a Ray Data iterator)
    local_batch: int
    epoch_length: int  # steps per epoch, for the budget
    board: Any  # the driver's progress console on rank 0, else None
    loss_fn: torch.nn.Module
    resumed: bool  # a restart from a checkpoint: the fault drill fires in the first attempt only
    shuffle_buffer_rows: int
    started: float  # monotonic clock at the start of training, less earlier attempts' time
    last_checkpoint: float  # monotonic clock at the last checkpoint

    @property
    def global_batch(self) -> int:
        return self.local_batch * self.world


@dataclass
class EpochTally:
    """One epoch so far on this worker: the sum of the steps' logs, steps, faces (all workers')."""

    started: float = field(default_factory=time.monotonic)
    log: dict = field(default_factory=dict)
    steps: int = 0
    samples: int = 0


def train_loop_per_worker(loop_config: dict) -> None:
    """Runs on every Ray Train worker: set up, then per epoch the steps and the epoch's end.

    Every rank runs the same collectives in the same order (the loss's, the time budget's, the
    epoch's); only rank 0 records metrics, logs and writes the checkpoint.
    """
    ctx = setup_worker(loop_config)
    # A run restored after its budget was spent (a rerun of a finished run) takes no more steps.
    stop = budget_progress(ctx.state, ctx.state.elapsed_s, ctx.cfg, ctx.epoch_length) >= 1.0
    while ctx.state.epoch < ctx.cfg.train.epochs and not stop:
        ctx.model.train()
        tally = EpochTally()
        for batch in epoch_batches(
            ctx.shard, ctx.local_batch, ctx.shuffle_buffer_rows, ctx.cfg, ctx.state.epoch, ctx.rank
        ):
            log = train_step(ctx, batch)
            stop = after_step(ctx, tally, log)
            if stop:
                break
        end_epoch(ctx, tally, stop)


def setup_worker(loop_config: dict) -> WorkerContext:
    """Config, model, optimizer, the restored (or fresh) TrainState and RNG streams, the data shard."""
    import ray.train
    import ray.train.torch

    cfg = config_from_dict(loop_config["config"])
    torch.set_num_threads(cfg.train.torch_threads_per_worker)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every worker
    device = ray.train.torch.get_device()
    model = build_worker_model(cfg, loop_config)
    optimizer = make_optimizer(model.parameters(), cfg.optim)
    resumed = ray.train.get_checkpoint() is not None
    state = restore_state(model, optimizer)
    if not resumed:
        seed_worker_rng(cfg.train.seed, rank)  # a different dropout stream per worker
    return WorkerContext(
        cfg=cfg,
        rank=rank,
        world=world,
        device=device,
        model=model,
        optimizer=optimizer,
        state=state,
        shard=ray.train.get_dataset_shard("train"),
        local_batch=cfg.train.batch_size // world,
        epoch_length=steps_per_epoch(loop_config["train_rows"], cfg),
        board=loop_config.get("progress") if rank == 0 else None,
        loss_fn=make_loss(cfg.loss, cfg.train.method),
        resumed=resumed,
        shuffle_buffer_rows=loop_config["shuffle_buffer_rows"],
        started=time.monotonic() - state.elapsed_s,
        last_checkpoint=time.monotonic(),
    )


def build_worker_model(cfg: Config, loop_config: dict) -> torch.nn.Module:
    """The model as initialised from the seed the caller set, prepared by Ray Train (device, DDP)."""
    import ray.train.torch

    model = build_model_from_config(cfg.model, cfg.train.method, cfg.train.max_age)
    if cfg.train.method == "regression":
        # Start at the training mean, as any regression baseline should: from 0, a small-LR
        # optimizer spends its whole budget walking the bias to the age scale.
        with torch.no_grad():
            model.age_head.bias.fill_(loop_config.get("train_age_mean", 0.0))
    # The age-only model never uses its gender head: DDP must not wait for that head's gradients.
    unused = cfg.train.method == "siamese" and cfg.loss.gender_weight == 0
    return ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": unused})


def train_step(ctx: WorkerContext, batch: dict) -> dict:
    """One optimizer step on this worker's batch; returns the loss's log (global-batch values)."""
    faces = random_flip(batch["image"].to(ctx.device, non_blocking=True))
    images = to_model_input(faces, channels_last=ctx.cfg.model.channels_last)
    # int64: gloo's collectives reject the manifest's int16/int8 label types.
    ages, genders = batch["age"].to(ctx.device).long(), batch["gender"].to(ctx.device).long()
    with torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16, enabled=ctx.cfg.train.amp):
        outputs = ctx.model(images)
    loss, log = ctx.loss_fn(outputs, ages, genders)
    ctx.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    ctx.optimizer.step()
    ctx.state.step += 1
    return log


def after_step(ctx: WorkerContext, tally: EpochTally, log: dict) -> bool:
    """The bookkeeping of a step taken: the fault drill, counts, rank 0's metrics and log line, the
    budget and the LR it schedules. True when the budget (steps or time) is spent."""
    fault_drill(ctx)
    tally.steps += 1
    tally.samples += ctx.global_batch
    ctx.state.samples_seen += ctx.global_batch
    for key, value in log.items():
        tally.log[key] = tally.log.get(key, 0.0) + value
    if ctx.rank == 0:
        record_step(ctx, tally, log)
    elapsed = shared_elapsed_s(ctx)
    progress.post_step(ctx.board, ctx.state.step)
    used = budget_progress(ctx.state, elapsed, ctx.cfg, ctx.epoch_length)
    for group in ctx.optimizer.param_groups:
        group["lr"] = scheduled_lr(ctx.cfg.optim.lr, used, ctx.cfg.train.lr_schedule)
    return used >= 1.0 and bool(ctx.cfg.train.max_steps or ctx.cfg.train.max_time_s)


def fault_drill(ctx: WorkerContext) -> None:
    """train.fail_at_step: the last worker dies at that step of the first attempt, so that Ray Train
    restarts the group from the last checkpoint (tests/test_fault_tolerance.py)."""
    at = ctx.cfg.train.fail_at_step
    if at and ctx.state.step == at and not ctx.resumed and ctx.rank == ctx.world - 1:
        logger.warning(f"[train] fault drill: worker {ctx.rank} exits at step {ctx.state.step}")
        os._exit(1)


def record_step(ctx: WorkerContext, tally: EpochTally, log: dict) -> None:
    """Rank 0's view of a step: the Prometheus metrics, and every train.log_every_steps a log line."""
    rate = tally.samples / max(time.monotonic() - tally.started, 1e-9)
    record_step_metrics(log, ctx.global_batch, rate, time.monotonic() - ctx.last_checkpoint)
    every = ctx.cfg.train.log_every_steps
    if every and ctx.state.step % every == 0:
        parts = " ".join(f"{k}={v:.4g}" for k, v in log.items())
        logger.info(f"[train] epoch {ctx.state.epoch + 1} step {ctx.state.step} {parts} images/s={rate:.1f}")


def shared_elapsed_s(ctx: WorkerContext) -> float:
    """Training seconds for the budget: the slowest worker's, with a time budget; else 0.

    Workers' clocks differ: with a time budget the slowest one's elapsed time drives the LR and
    the stop, so every worker takes the same decision at the same step. Without one, progress is
    step-based and identical everywhere: no collective needed.
    """
    if not ctx.cfg.train.max_time_s:
        return 0.0
    return distributed.all_reduce_max(torch.tensor([time.monotonic() - ctx.started], device=ctx.device)).item()


def end_epoch(ctx: WorkerContext, tally: EpochTally, stopped_early: bool) -> None:
    """An epoch's end on every worker: the TrainState (with every rank's RNG streams), the report,
    rank 0's checkpoint."""
    # The global rate uses the slowest worker's clock: a worker that started its epoch early
    # (and then waited for rank 0 to write the last checkpoint) counts that wait.
    epoch_seconds = distributed.all_reduce_max(
        torch.tensor([time.monotonic() - tally.started], dtype=torch.float64, device=ctx.device)
    ).item()
    ctx.state.epoch += 1
    ctx.state.elapsed_s = time.monotonic() - ctx.started
    ctx.state.rng_per_rank = distributed.gather_objects(capture_rng())
    report = epoch_report(ctx.state, tally, epoch_seconds, stopped_early)
    progress.post_epoch(ctx.board, report)
    save_and_report(ctx, report)
    ctx.last_checkpoint = time.monotonic()
    if ctx.rank == 0:
        metrics.set_gauge("train_epoch", ctx.state.epoch)


def epoch_report(state: TrainState, tally: EpochTally, epoch_seconds: float, stopped_early: bool) -> dict:
    """Ray Train's metrics for an epoch: the mean of the steps' logs, counts and the global rate."""
    report = {key: value / max(tally.steps, 1) for key, value in tally.log.items()}
    report.update(
        epoch=state.epoch,
        epoch_steps=tally.steps,
        step=state.step,
        samples_seen=state.samples_seen,
        images_per_s=tally.samples / max(epoch_seconds, 1e-9),
        stopped_early=bool(stopped_early),
    )
    return report


def save_and_report(ctx: WorkerContext, report: dict) -> None:
    """Rank 0 writes the checkpoint; every rank reports, since Ray Train waits for all of them."""
    import ray.train

    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if ctx.rank == 0:
            save_checkpoint(directory, ctx.model, ctx.optimizer, ctx.state, ctx.cfg)
            checkpoint = ray.train.Checkpoint.from_directory(directory)
            summary = ", ".join(f"{k}={v:.4g}" for k, v in report.items() if isinstance(v, float))
            logger.info(f"[train] epoch {ctx.state.epoch} done: " + summary)
        ray.train.report(report, checkpoint=checkpoint)


def epoch_batches(shard, local_batch: int, shuffle_buffer_rows: int, cfg: Config, epoch: int, rank: int):
    """One epoch of this worker's batches: the training loop's only view of the data (the
    batch-mixing test walks exactly this). The rows arrive shuffled (`data.shuffled_rows`); a
    local buffer is kept only for packs, whose row groups are read whole."""
    return shard.iter_torch_batches(
        batch_size=local_batch,
        drop_last=True,
        local_shuffle_buffer_size=shuffle_buffer_rows or None,
        local_shuffle_seed=(
            int(np.random.SeedSequence([cfg.train.seed, epoch, rank]).generate_state(1)[0])
            if shuffle_buffer_rows
            else None
        ),
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
    ingest = ExecutionOptions(
        resource_limits=current.resource_limits, preserve_order=True, verbose_progress=current.verbose_progress
    )
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
    cfg: Config,
    manifest_uri: str,
    run_name: str,
    storage_path: str,
    train_ds=None,
    train_stats=None,
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
