"""The training losses as module objects, built from the loss config by `make_loss`.

    loss_fn = make_loss(cfg.loss, cfg.train.method)
    loss, log = loss_fn(outputs, ages, genders)   # loss to backpropagate, log values for the batch

`SiameseLoss` is the paper's revised contrastive loss (losses.py) with data parallelism: this
worker's rows against the whole batch's columns, gathered from every worker (loss.pairs=global),
or against its own rows only (local). Like open_clip's ClipLoss it owns its gather, the place of
its rows among the gathered ones, the pair count and the factor that cancels DDP's gradient
averaging, so the training loop just calls it. `BaselineLoss` is the baselines' direct age loss
(L1 regression or DEX) + gender cross-entropy, averaged by DDP like any loss.

Both return logging values that are the same on every worker: they describe the global batch.

Import order: config -> storage / data -> model -> losses -> distributed -> pair_loss -> train.
This module imports losses and distributed (and config, for the factory's argument type).
"""

from __future__ import annotations

import time

import torch

from agejobs import distributed, losses
from agejobs.config import LossConfig


class SiameseLoss(torch.nn.Module):
    """Age (+ gender) revised contrastive loss over local rows x (global or local) columns.

    Rank and world are read at each call, not at construction: the object can be built before
    the process group exists (and is the same object on one process, where both are trivial).
    """

    def __init__(
        self,
        age_tolerance: float,
        q: float = 100.0,
        gender_weight: float = 1.0,
        pairs: str = "global",
        chunk_rows: int = 256,
        kernel: str = "compiled",
    ):
        super().__init__()
        if pairs not in ("global", "local"):
            raise ValueError(f"pairs must be 'global' or 'local', not {pairs!r}")
        self.age_tolerance, self.q, self.gender_weight = age_tolerance, q, gender_weight
        self.pairs, self.chunk_rows, self.kernel = pairs, chunk_rows, kernel

    def forward(self, outputs: dict, ages: torch.Tensor, genders: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The loss to backpropagate (already scaled for DDP averaging) and logging values that are
        the same on every worker: the loss of the whole global batch and its positive-pair ratio."""
        rank, world = distributed.rank_and_world()
        use_global = self.pairs == "global" and world > 1
        local_batch = len(ages)
        offset = rank * local_batch if use_global else 0
        pair_count = losses.ordered_pair_count(world * local_batch if use_global else local_batch)
        # Pairs span workers only when asked; DDP averaging over workers is cancelled only then.
        scale = distributed.global_pair_loss_scale() if use_global else 1

        age_loss, age_positives, gather_seconds = self._task_loss(
            outputs["age"], ages, self.age_tolerance, use_global, offset, pair_count
        )
        loss = age_loss
        gender_loss = torch.zeros((), device=age_loss.device)
        if self.gender_weight > 0:
            gender_loss, _, gender_gather_seconds = self._task_loss(
                outputs["gender"], genders, 0, use_global, offset, pair_count
            )
            gather_seconds += gender_gather_seconds
            loss = age_loss + self.gender_weight * gender_loss
        log = self._batch_log(age_loss, gender_loss, age_positives, use_global, world, pair_count)
        log["gather_s"] = gather_seconds  # this worker's forward gathers (the backward all-reduce is in DDP's time)
        return loss * scale, log

    def _task_loss(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        tolerance: float,
        use_global: bool,
        offset: int,
        pair_count: int,
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(this worker's share of one task's mean pair loss, its positive pairs, seconds gathering)."""
        # The pair loss runs in at least fp32 under autocast (exp and squares overflow in bf16).
        embeddings = embeddings.to(torch.promote_types(embeddings.dtype, torch.float32))
        gather_started = time.perf_counter()
        cols = distributed.gather_with_grad(embeddings) if use_global else embeddings
        col_labels = distributed.gather_no_grad(labels) if use_global else labels
        gather_seconds = time.perf_counter() - gather_started
        pair_sum, positives = losses.revised_contrastive_pair_sum(
            embeddings, labels, cols, col_labels, tolerance, self.q, offset, self.chunk_rows, self.kernel
        )
        return pair_sum / pair_count, positives, gather_seconds

    @staticmethod
    def _batch_log(age_loss, gender_loss, age_positives, use_global: bool, world: int, pair_count: int) -> dict:
        """Logged values describe the global batch: sums of the per-worker pieces (global pairs),
        or the mean of per-worker losses (local pairs)."""
        divisor = 1 if use_global else world
        summed = distributed.all_reduce_sum(
            torch.stack([age_loss.detach(), gender_loss.detach(), age_positives.float()])
        )
        total_pairs = pair_count * (1 if use_global else world)
        return {
            "age_loss": summed[0].item() / divisor,
            "gender_loss": summed[1].item() / divisor,
            "positive_pair_ratio": summed[2].item() / total_pairs,
        }


class BaselineLoss(torch.nn.Module):
    """Regression (L1) or DEX (softmax expectation) age loss + gender cross-entropy; DDP averages."""

    def __init__(self, method: str):
        super().__init__()
        if method not in ("regression", "dex"):
            raise ValueError(f"a baseline's method is 'regression' or 'dex', not {method!r}")
        self.method = method

    def forward(self, outputs: dict, ages: torch.Tensor, genders: torch.Tensor) -> tuple[torch.Tensor, dict]:
        if self.method == "regression":
            age_loss = losses.l1_regression_loss(outputs["age"].float(), ages)
        else:
            age_loss = losses.dex_loss(outputs["age"].float(), ages)
        gender_loss = losses.gender_classification_loss(outputs["gender"].float(), genders)
        _, world = distributed.rank_and_world()
        summed = distributed.all_reduce_sum(torch.stack([age_loss.detach(), gender_loss.detach()])) / world
        return age_loss + gender_loss, {"age_loss": summed[0].item(), "gender_loss": summed[1].item()}


def make_loss(loss_cfg: LossConfig, method: str) -> torch.nn.Module:
    """The loss a run trains with: the pair loss for train.method=siamese, else the baseline's."""
    if method == "siamese":
        return SiameseLoss(
            loss_cfg.age_tolerance,
            loss_cfg.q,
            loss_cfg.gender_weight,
            loss_cfg.pairs,
            loss_cfg.chunk_rows,
            loss_cfg.kernel,
        )
    return BaselineLoss(method)
