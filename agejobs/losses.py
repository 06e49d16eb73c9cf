"""Losses: the paper's revised contrastive loss (eq. 2-4) and the baselines' losses.

The pair loss is three pure pieces (pytorch-metric-learning's split):
  distance      `pairwise_l1_distance`   D_ij = ||x_i - y_j||_1                     (eq. 1)
  pair targets  `tolerance_pair_targets` Z_ij = |l_i - l_j| <= tolerance             (eq. 3)
  terms         `revised_contrastive_terms`
                 Z=1: L+(D) = 2/Q * D^2      Z=0: L-(D) = 2Q * exp(-2.77 D / Q)      (eq. 2, 4)
  reduction     mean over ordered pairs i != j of the batch.

The margin. The paper says "if three years is allowed as a margin, the loss function considers
classes between N - 3 and N + 3 years old to be the same class", and for its experiments "the
margin ... was set to 4. This means that, if the difference between age was less than 4, the two
ages were considered to be in the same class". Both readings agree on integer ages when positives
are |a_i - a_j| <= tolerance with tolerance = margin - 1 for the "less than" wording: the paper's
setting is tolerance 3 (gaps 0..3 positive, a gap of exactly 4 negative). A gap exactly at the
tolerance is positive. The gender task is the same loss with tolerance 0 on gender labels.

Unlabelled faces. A label < 0 means "not labelled" (datasets without gender labels import gender
as -1). Pairs touching such a face contribute nothing; the mean keeps the count of all ordered
pairs as its denominator so that it is the same number on every worker without a collective.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# L-(D) = 2Q e^{-2.77 D / Q}: 2.77 ~ ln 16, so L- falls to 1/16 of its peak when D reaches Q.
NEGATIVE_DECAY = 2.77


def pairwise_l1_distance(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(b, D) x (B, D) -> (b, B) L1 distances."""
    return torch.cdist(rows, cols, p=1.0)


def tolerance_pair_targets(row_labels: torch.Tensor, col_labels: torch.Tensor, tolerance: float) -> torch.Tensor:
    """Z_ij: True where |row_i - col_j| <= tolerance (inclusive, see module docstring)."""
    gap = (row_labels.reshape(-1, 1).to(torch.float64) - col_labels.reshape(1, -1).to(torch.float64)).abs()
    return gap <= tolerance


def revised_contrastive_terms(distances: torch.Tensor, positive: torch.Tensor, q: float = 100.0) -> torch.Tensor:
    """Per-pair loss of eq. 2 with the L+ / L- of eq. 4."""
    attract = (2.0 / q) * distances.square()
    repel = (2.0 * q) * torch.exp(-NEGATIVE_DECAY / q * distances)
    return torch.where(positive, attract, repel)


def off_diagonal_mask(num_rows: int, num_cols: int, row_offset: int, device=None) -> torch.Tensor:
    """True for pairs (i, j) with j != row_offset + i: a face is never its own pair.

    `row_offset` places local rows inside the global columns when rows are one worker's slice.
    """
    rows = torch.arange(num_rows, device=device).reshape(-1, 1) + row_offset
    cols = torch.arange(num_cols, device=device).reshape(1, -1)
    return rows != cols


def _pair_sum_dense(
    row_embeddings: torch.Tensor,
    row_labels: torch.Tensor,
    col_embeddings: torch.Tensor,
    col_labels: torch.Tensor,
    tolerance: float,
    q: float,
    row_offset: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pair sum with the whole (b, B) distance matrix at once (autograd through cdist)."""
    distances = pairwise_l1_distance(row_embeddings, col_embeddings)
    positive = tolerance_pair_targets(row_labels, col_labels, tolerance)
    valid = off_diagonal_mask(len(row_embeddings), len(col_embeddings), row_offset, distances.device)
    valid &= (row_labels.reshape(-1, 1) >= 0) & (col_labels.reshape(1, -1) >= 0)  # unlabelled faces
    terms = revised_contrastive_terms(distances, positive, q)
    pair_sum = torch.where(valid, terms, torch.zeros_like(terms)).sum()
    positives = (positive & valid).sum()
    return pair_sum, positives


def _chunk_weights(
    distances, row_labels, col_labels, tolerance: float, q: float, diagonal_offset: int, slopes_only: bool = False
):
    """(terms or, with slopes_only, d terms / d distance; positive) of one (c, B) block whose row i is column
    diagonal_offset + i. Self-pairs and pairs touching an unlabelled face are zeroed; the
    self-pairs by index (c entries), not with a (c, B) mask."""
    positive = tolerance_pair_targets(row_labels, col_labels, tolerance)
    repel = (2.0 * q) * torch.exp(-NEGATIVE_DECAY / q * distances)
    if slopes_only:  # backward: dL/dD only
        values = torch.where(positive, (4.0 / q) * distances, (-NEGATIVE_DECAY / q) * repel)
    else:  # forward: the terms only
        values = torch.where(positive, (2.0 / q) * distances.square(), repel)
    if bool((row_labels < 0).any()) or bool((col_labels < 0).any()):
        labelled = (row_labels.reshape(-1, 1) >= 0) & (col_labels.reshape(1, -1) >= 0)
        values = values * labelled
        positive = positive & labelled
    self_rows = torch.arange(len(distances), device=distances.device)
    self_cols = self_rows + diagonal_offset
    inside = (self_cols >= 0) & (self_cols < distances.shape[1])
    values[self_rows[inside], self_cols[inside]] = 0.0
    positive[self_rows[inside], self_cols[inside]] = False
    return values, positive


class _ChunkedPairSum(torch.autograd.Function):
    """The pair sum over row chunks with an analytic backward.

    Forward keeps nothing but the inputs; backward recomputes each (chunk_rows, B) block of
    distances, forms dL/dD from eq. 4 (L+' = 4D/Q, L-' = -2.77/Q * L-) and hands it to cdist's
    own p=1 backward kernel. Peak memory is O(chunk_rows * B) beyond inputs and gradients; no
    (b, B, D) tensor exists in either pass. When rows and columns are the same batch (one
    process), dL/dD is symmetric and one kernel call with 2 * dL/dD gives the whole gradient.
    """

    @staticmethod
    def forward(ctx, rows, cols, row_labels, col_labels, tolerance, q, row_offset, chunk_rows, symmetric):
        total = torch.zeros((), dtype=rows.dtype, device=rows.device)
        positives = torch.zeros((), dtype=torch.long, device=rows.device)
        for start in range(0, len(rows), chunk_rows):
            stop = min(start + chunk_rows, len(rows))
            distances = pairwise_l1_distance(rows[start:stop], cols)
            terms, positive = _chunk_weights(distances, row_labels[start:stop], col_labels, tolerance, q, row_offset + start)
            total += terms.sum()
            positives += positive.sum()
        ctx.save_for_backward(rows, cols, row_labels, col_labels)
        ctx.settings = (tolerance, q, row_offset, chunk_rows, symmetric)
        ctx.mark_non_differentiable(positives)
        return total, positives

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total, _grad_positives):
        rows, cols, row_labels, col_labels = ctx.saved_tensors
        tolerance, q, row_offset, chunk_rows, symmetric = ctx.settings
        grad_rows = torch.zeros_like(rows)
        grad_cols = None if symmetric else torch.zeros_like(cols)
        for start in range(0, len(rows), chunk_rows):
            stop = min(start + chunk_rows, len(rows))
            chunk = rows[start:stop]
            distances = pairwise_l1_distance(chunk, cols)
            slopes, _ = _chunk_weights(
                distances, row_labels[start:stop], col_labels, tolerance, q, row_offset + start, slopes_only=True
            )
            slopes = slopes * (2.0 * grad_total if symmetric else grad_total)
            grad_rows[start:stop] = torch.ops.aten._cdist_backward(slopes.contiguous(), chunk, cols, 1.0, distances)
            if not symmetric:
                grad_cols += torch.ops.aten._cdist_backward(
                    slopes.T.contiguous(), cols, chunk.contiguous(), 1.0, distances.T.contiguous()
                )
        return grad_rows, grad_cols, None, None, None, None, None, None, None


def revised_contrastive_pair_sum(
    row_embeddings: torch.Tensor,
    row_labels: torch.Tensor,
    col_embeddings: torch.Tensor,
    col_labels: torch.Tensor,
    tolerance: float,
    q: float = 100.0,
    row_offset: int = 0,
    chunk_rows: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of eq. 2 over pairs (row i, col j), j != row_offset + i; also the positive-pair count.

    The building block for both the single-process loss (rows = cols) and the distributed one
    (rows = this worker's slice, cols = the gathered global batch). `chunk_rows` > 0 computes it
    `chunk_rows` rows at a time with an analytic backward (`_ChunkedPairSum`): the same value and
    gradients as the dense autograd version (chunk_rows=0, the reference), peak memory
    O(chunk_rows * B) instead of several (b, B) matrices.
    """
    if chunk_rows:
        # One tensor as rows and columns (the single-process batch): a symmetric dL/dD.
        symmetric = row_embeddings is col_embeddings and row_labels is col_labels and row_offset == 0
        return _ChunkedPairSum.apply(
            row_embeddings, col_embeddings, row_labels, col_labels, tolerance, q, row_offset, chunk_rows, symmetric
        )
    return _pair_sum_dense(row_embeddings, row_labels, col_embeddings, col_labels, tolerance, q, row_offset)


def ordered_pair_count(batch_size: int) -> int:
    return batch_size * (batch_size - 1)


def revised_contrastive_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, tolerance: float, q: float = 100.0, chunk_rows: int = 0
) -> torch.Tensor:
    """Mean of eq. 2 over all ordered pairs i != j; positive iff |labels_i - labels_j| <= tolerance."""
    if embeddings.ndim != 2 or len(embeddings) != len(labels):
        raise ValueError(f"embeddings {tuple(embeddings.shape)} and labels {tuple(labels.shape)} do not match")
    if len(embeddings) < 2:
        raise ValueError("the pair loss needs a batch of at least 2 faces")
    pair_sum, _ = revised_contrastive_pair_sum(embeddings, labels, embeddings, labels, tolerance, q, chunk_rows=chunk_rows)
    return pair_sum / ordered_pair_count(len(embeddings))


# Baselines (same backbone and budget, to test the paper's claim against direct estimation).


def l1_regression_loss(predicted_age: torch.Tensor, age: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(predicted_age.reshape(-1), age.to(predicted_age.dtype))


def dex_loss(age_logits: torch.Tensor, age: torch.Tensor) -> torch.Tensor:
    """DEX (Rothe et al.): classify the age in 0..max_age; the estimate is the softmax expectation."""
    return F.cross_entropy(age_logits, age.long().clamp(0, age_logits.shape[1] - 1))


def dex_expectation(age_logits: torch.Tensor) -> torch.Tensor:
    ages = torch.arange(age_logits.shape[1], dtype=age_logits.dtype, device=age_logits.device)
    return (age_logits.softmax(dim=1) * ages).sum(dim=1)


def gender_classification_loss(gender_logits: torch.Tensor, gender: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over labelled faces; unlabelled ones (-1) are ignored, an all-unlabelled
    batch gives 0 (not NaN)."""
    labelled = gender >= 0
    if not bool(labelled.any()):
        return gender_logits.sum() * 0.0
    return F.cross_entropy(gender_logits, gender.long(), ignore_index=-1)
