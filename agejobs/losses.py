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

import functools

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


def revised_contrastive_slopes(distances: torch.Tensor, positive: torch.Tensor, q: float = 100.0) -> torch.Tensor:
    """d(eq. 2)/dD for the analytic backward: L+' = 4D/Q, L-' = -2.77/Q * L-."""
    repel = (2.0 * q) * torch.exp(-NEGATIVE_DECAY / q * distances)
    return torch.where(positive, (4.0 / q) * distances, (-NEGATIVE_DECAY / q) * repel)


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
    terms, positive = _block_weights(distances, row_labels, col_labels, tolerance, q, row_offset)
    return terms.sum(), positive.sum()


def _block_weights(
    distances, row_labels, col_labels, tolerance: float, q: float, diagonal_offset, slopes_only: bool = False
):
    """(terms or, with slopes_only, d terms / d distance; positive) of one (c, B) block whose row i is
    column diagonal_offset + i. Self-pairs and pairs touching an unlabelled face are zeroed. Only
    (c, B) tensors and no data-dependent branches, so torch.compile fuses it into the distance loop."""
    positive = tolerance_pair_targets(row_labels, col_labels, tolerance)
    valid = off_diagonal_mask(distances.shape[0], distances.shape[1], diagonal_offset, distances.device)
    valid = valid & (row_labels.reshape(-1, 1) >= 0) & (col_labels.reshape(1, -1) >= 0)
    per_pair = revised_contrastive_slopes if slopes_only else revised_contrastive_terms
    values = per_pair(distances, positive, q)
    return torch.where(valid, values, torch.zeros_like(values)), positive & valid


def _broadcast_l1(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(c, D) x (B, D) -> (c, B) L1 distances, written as a broadcast so that torch.compile emits one
    loop nest; run eagerly it would materialise (c, B, D), so it is only ever called compiled."""
    return (rows[:, None, :] - cols[None, :, :]).abs().sum(-1)


def _block_forward(rows, cols, row_labels, col_labels, tolerance, q, diagonal_offset, compiled: bool):
    distances = _broadcast_l1(rows, cols) if compiled else pairwise_l1_distance(rows, cols)
    terms, positive = _block_weights(distances, row_labels, col_labels, tolerance, q, diagonal_offset)
    return terms.sum(), positive.sum()


def _block_backward(
    rows, cols, row_labels, col_labels, tolerance, q, diagonal_offset, scale, want_cols, compiled: bool
):
    """Gradients of scale * (block's pair sum) w.r.t. the block's rows and, if want_cols, its columns.

    dD_ij/dx_i = sign(x_i - y_j) = -dD_ij/dy_j, so both are slope-weighted sums of one sign tensor."""
    distances = _broadcast_l1(rows, cols) if compiled else pairwise_l1_distance(rows, cols)
    slopes, _ = _block_weights(distances, row_labels, col_labels, tolerance, q, diagonal_offset, slopes_only=True)
    slopes = slopes * scale
    if compiled:
        signs = torch.sign(rows[:, None, :] - cols[None, :, :])
        grad_rows = (slopes[:, :, None] * signs).sum(1)
        grad_cols = -(slopes[:, :, None] * signs).sum(0) if want_cols else None
        return grad_rows, grad_cols
    grad_rows = torch.ops.aten._cdist_backward(slopes.contiguous(), rows, cols, 1.0, distances)
    grad_cols = None
    if want_cols:
        grad_cols = torch.ops.aten._cdist_backward(
            slopes.T.contiguous(), cols, rows.contiguous(), 1.0, distances.T.contiguous()
        )
    return grad_rows, grad_cols


@functools.cache
def _compiled_blocks():
    """torch.compile'd block kernels, built once per process on first use (dynamic shapes: batch
    and chunk sizes vary without recompiling; the on-disk inductor cache makes later processes
    start in ~2 s instead of ~15 s)."""
    return (
        torch.compile(functools.partial(_block_forward, compiled=True), dynamic=True),
        torch.compile(functools.partial(_block_backward, compiled=True), dynamic=True),
    )


def _block_kernels(kernel: str):
    if kernel == "compiled":
        return _compiled_blocks()
    if kernel == "cdist":
        return functools.partial(_block_forward, compiled=False), functools.partial(_block_backward, compiled=False)
    raise ValueError(f"loss.kernel must be 'compiled' or 'cdist', got {kernel!r}")


class _ChunkedPairSum(torch.autograd.Function):
    """The pair sum over row chunks with an analytic backward.

    Forward keeps nothing but the inputs; backward recomputes each (chunk_rows, B) block of
    distances, forms dL/dD from eq. 4 and contracts it with sign(x_i - y_j). Peak memory is
    O(chunk_rows * B) beyond inputs and gradients; no (b, B, D) tensor exists in either pass.
    When rows and columns are the same batch (one process), dL/dD is symmetric and the row
    gradient with 2 * dL/dD is the whole gradient.

    Two kernels compute each block: "compiled" (torch.compile fuses distance, terms and sum into
    one loop nest per pass, ~5x faster than cdist on CPU) and "cdist" (aten's cdist and its p=1
    backward; no compiler needed). The block math is the same function for both.
    """

    @staticmethod
    def forward(ctx, rows, cols, row_labels, col_labels, tolerance, q, row_offset, chunk_rows, symmetric, kernel):
        block_forward, _ = _block_kernels(kernel)
        total = torch.zeros((), dtype=rows.dtype, device=rows.device)
        positives = torch.zeros((), dtype=torch.long, device=rows.device)
        with torch.autocast(rows.device.type, enabled=False):  # the sums stay in the inputs' fp32
            for start in range(0, len(rows), chunk_rows):
                stop = min(start + chunk_rows, len(rows))
                terms, positive = block_forward(
                    rows[start:stop], cols, row_labels[start:stop], col_labels, tolerance, q, row_offset + start
                )
                total += terms
                positives += positive
        ctx.save_for_backward(rows, cols, row_labels, col_labels)
        ctx.settings = (tolerance, q, row_offset, chunk_rows, symmetric, kernel)
        ctx.mark_non_differentiable(positives)
        return total, positives

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total, _grad_positives):
        rows, cols, row_labels, col_labels = ctx.saved_tensors
        tolerance, q, row_offset, chunk_rows, symmetric, kernel = ctx.settings
        _, block_backward = _block_kernels(kernel)
        scale = 2.0 * grad_total if symmetric else grad_total
        grad_rows = torch.zeros_like(rows)
        grad_cols = None if symmetric else torch.zeros_like(cols)
        with torch.autocast(rows.device.type, enabled=False):
            for start in range(0, len(rows), chunk_rows):
                stop = min(start + chunk_rows, len(rows))
                chunk_grad_rows, chunk_grad_cols = block_backward(
                    rows[start:stop],
                    cols,
                    row_labels[start:stop],
                    col_labels,
                    tolerance,
                    q,
                    row_offset + start,
                    scale,
                    not symmetric,
                )
                grad_rows[start:stop] = chunk_grad_rows
                if not symmetric:
                    grad_cols += chunk_grad_cols
        return grad_rows, grad_cols, None, None, None, None, None, None, None, None


def revised_contrastive_pair_sum(
    row_embeddings: torch.Tensor,
    row_labels: torch.Tensor,
    col_embeddings: torch.Tensor,
    col_labels: torch.Tensor,
    tolerance: float,
    q: float = 100.0,
    row_offset: int = 0,
    chunk_rows: int = 0,
    kernel: str = "cdist",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of eq. 2 over pairs (row i, col j), j != row_offset + i; also the positive-pair count.

    The building block for both the single-process loss (rows = cols) and the distributed one
    (rows = this worker's slice, cols = the gathered global batch). `chunk_rows` > 0 computes it
    `chunk_rows` rows at a time with an analytic backward (`_ChunkedPairSum`, block kernel
    `kernel`): the same value and gradients as the dense autograd version (chunk_rows=0, the
    reference), peak memory O(chunk_rows * B) instead of several (b, B) matrices.
    """
    if chunk_rows:
        _block_kernels(kernel)  # an unknown kernel fails here, before any work
        # One tensor as rows and columns (the single-process batch): a symmetric dL/dD.
        symmetric = row_embeddings is col_embeddings and row_labels is col_labels and row_offset == 0
        return _ChunkedPairSum.apply(
            row_embeddings,
            col_embeddings,
            row_labels,
            col_labels,
            tolerance,
            q,
            row_offset,
            chunk_rows,
            symmetric,
            kernel,
        )
    return _pair_sum_dense(row_embeddings, row_labels, col_embeddings, col_labels, tolerance, q, row_offset)


def ordered_pair_count(batch_size: int) -> int:
    return batch_size * (batch_size - 1)


def revised_contrastive_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    tolerance: float,
    q: float = 100.0,
    chunk_rows: int = 0,
    kernel: str = "cdist",
) -> torch.Tensor:
    """Mean of eq. 2 over all ordered pairs i != j; positive iff |labels_i - labels_j| <= tolerance."""
    if embeddings.ndim != 2 or len(embeddings) != len(labels):
        raise ValueError(f"embeddings {tuple(embeddings.shape)} and labels {tuple(labels.shape)} do not match")
    if len(embeddings) < 2:
        raise ValueError("the pair loss needs a batch of at least 2 faces")
    pair_sum, _ = revised_contrastive_pair_sum(
        embeddings, labels, embeddings, labels, tolerance, q, chunk_rows=chunk_rows, kernel=kernel
    )
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
