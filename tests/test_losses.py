"""The revised contrastive loss against a naive double loop of eq. 2-4, its gradients, its labels."""

import math

import pytest
import torch

from agejobs import losses


def naive_revised_contrastive(embeddings, labels, tolerance, q=100.0):
    """Eq. 1-4 transcribed literally, one ordered pair at a time, in Python floats."""
    n = len(embeddings)
    total = 0.0
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            distance = sum(abs(a - b) for a, b in zip(embeddings[i], embeddings[j]))  # eq. 1, L1
            similar = abs(labels[i] - labels[j]) <= tolerance  # eq. 3 with the documented margin
            if similar:
                total += 2.0 / q * distance**2  # L+
            else:
                total += 2.0 * q * math.exp(-2.77 / q * distance)  # L-
    return total / (n * (n - 1))


@pytest.mark.parametrize("tolerance", [0, 1, 3, 4, 10])
@pytest.mark.parametrize("seed", [0, 1])
def test_loss_equals_naive_double_loop(tolerance, seed):
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(17, 7, generator=generator, dtype=torch.float64) * 30
    labels = torch.randint(0, 25, (17,), generator=generator)
    expected = naive_revised_contrastive(embeddings.tolist(), labels.tolist(), tolerance)
    got = losses.revised_contrastive_loss(embeddings, labels, tolerance).item()
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_loss_with_other_q_equals_naive():
    generator = torch.Generator().manual_seed(3)
    embeddings = torch.rand(9, 5, generator=generator, dtype=torch.float64) * 10
    labels = torch.randint(0, 8, (9,), generator=generator)
    expected = naive_revised_contrastive(embeddings.tolist(), labels.tolist(), 2, q=7.5)
    assert losses.revised_contrastive_loss(embeddings, labels, 2, q=7.5).item() == pytest.approx(expected, rel=1e-9)


def test_gradcheck():
    generator = torch.Generator().manual_seed(4)
    embeddings = (torch.randn(6, 4, generator=generator, dtype=torch.float64) * 5).requires_grad_()
    labels = torch.tensor([20, 21, 25, 30, 23, 40])
    assert torch.autograd.gradcheck(lambda x: losses.revised_contrastive_loss(x, labels, 3), (embeddings,))


def test_gap_exactly_at_tolerance_is_positive_and_one_more_is_negative():
    ages = torch.tensor([30, 33, 34, 27, 26])
    targets = losses.tolerance_pair_targets(ages, ages, 3)
    assert targets[0, 1] and targets[1, 0]  # gap 3 == tolerance: positive (paper: "less than 4")
    assert not targets[0, 2]  # gap 4: negative
    assert targets[0, 3] and not targets[0, 4]  # same below
    # The loss follows the targets: a gap-3 pair pays L+, a gap-4 pair pays L-.
    embeddings = torch.tensor([[0.0], [10.0]], dtype=torch.float64)
    at_tolerance = losses.revised_contrastive_loss(embeddings, torch.tensor([30, 33]), 3).item()
    beyond = losses.revised_contrastive_loss(embeddings, torch.tensor([30, 34]), 3).item()
    assert at_tolerance == pytest.approx(2 / 100 * 10.0**2)
    assert beyond == pytest.approx(2 * 100 * math.exp(-2.77 * 10 / 100))


def test_gender_positives_are_exactly_same_gender_pairs():
    genders = torch.tensor([0, 1, 1, 0, 1])
    targets = losses.tolerance_pair_targets(genders, genders, 0)
    expected = torch.tensor([[a == b for b in genders.tolist()] for a in genders.tolist()])
    assert torch.equal(targets, expected)


def test_self_pairs_are_excluded():
    # Two identical faces of the same age: the only pairs are (0,1) and (1,0), at distance 0.
    embeddings = torch.zeros(2, 3)
    assert losses.revised_contrastive_loss(embeddings, torch.tensor([5, 5]), 0).item() == 0.0


def test_row_slices_sum_to_the_full_loss():
    """Local rows x global columns, summed over slices, is the loss of the whole batch."""
    generator = torch.Generator().manual_seed(5)
    embeddings = torch.randn(12, 6, generator=generator, dtype=torch.float64) * 20
    labels = torch.randint(0, 30, (12,), generator=generator)
    full = losses.revised_contrastive_loss(embeddings, labels, 3)
    pieces = [
        losses.revised_contrastive_pair_sum(
            embeddings[s : s + 4], labels[s : s + 4], embeddings, labels, 3, row_offset=s
        )[0]
        for s in (0, 4, 8)
    ]
    assert (sum(pieces) / losses.ordered_pair_count(12)).item() == pytest.approx(full.item(), rel=1e-12)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="do not match"):
        losses.revised_contrastive_loss(torch.zeros(3, 2), torch.zeros(4), 1)
    with pytest.raises(ValueError, match="at least 2"):
        losses.revised_contrastive_loss(torch.zeros(1, 2), torch.zeros(1), 1)


def test_dex_expectation_and_baseline_losses():
    logits = torch.full((1, 5), -1e9)
    logits[0, 2] = logits[0, 4] = 0.0  # half the mass on age 2, half on age 4
    assert losses.dex_expectation(logits).item() == pytest.approx(3.0)
    assert losses.l1_regression_loss(torch.tensor([[10.0], [20.0]]), torch.tensor([12, 20])).item() == pytest.approx(
        1.0
    )


def test_unlabelled_faces_take_no_part_in_pairs():
    torch.manual_seed(0)
    embeddings = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    genders = torch.tensor([0, 1, -1, 0, -1, 1])
    pair_sum, positives = losses.revised_contrastive_pair_sum(embeddings, genders, embeddings, genders, 0, 100.0)
    labelled = genders >= 0
    sub = embeddings[labelled]
    expected_sum, expected_positives = losses.revised_contrastive_pair_sum(
        sub, genders[labelled], sub, genders[labelled], 0, 100.0
    )
    assert torch.allclose(pair_sum, expected_sum) and positives == expected_positives == 4
    pair_sum.backward()
    assert torch.all(embeddings.grad[~labelled] == 0)  # an unlabelled face gets no gradient


def test_gender_classification_ignores_unlabelled():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [5.0, -5.0]])
    assert torch.allclose(
        losses.gender_classification_loss(logits, torch.tensor([0, 1, -1])),
        losses.gender_classification_loss(logits[:2], torch.tensor([0, 1])),
    )
    assert losses.gender_classification_loss(logits, torch.tensor([-1, -1, -1])).item() == 0.0


@pytest.mark.parametrize("kernel", ["cdist", "compiled"])
@pytest.mark.parametrize("chunk_rows", [1, 3, 7, 16])
def test_chunked_pair_sum_equals_dense_in_value_and_gradients(chunk_rows, kernel):
    torch.manual_seed(1)
    rows = torch.randn(10, 5, dtype=torch.float64, requires_grad=True)
    cols = torch.randn(17, 5, dtype=torch.float64, requires_grad=True)
    row_labels, col_labels = torch.randint(0, 30, (10,)), torch.randint(0, 30, (17,))
    col_labels[:3] = -1  # unlabelled columns take part in neither version

    def run(chunk):
        rows.grad = cols.grad = None
        pair_sum, positives = losses.revised_contrastive_pair_sum(
            rows, row_labels, cols, col_labels, 3, 50.0, 4, chunk, kernel
        )
        (pair_sum * 0.7).backward()
        return pair_sum.detach(), positives, rows.grad.clone(), cols.grad.clone()

    dense, chunked = run(0), run(chunk_rows)
    assert torch.allclose(dense[0], chunked[0], rtol=1e-12) and dense[1] == chunked[1]
    assert torch.allclose(dense[2], chunked[2], rtol=1e-10) and torch.allclose(dense[3], chunked[3], rtol=1e-10)


@pytest.mark.parametrize("kernel", ["cdist", "compiled"])
def test_chunked_loss_on_one_batch_passes_gradcheck(kernel):
    torch.manual_seed(2)
    embeddings = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([20, 21, 25, 40, 41, 60, 23])

    def chunked(e, chunk_rows):
        return losses.revised_contrastive_loss(e, labels, 3, 10.0, chunk_rows=chunk_rows, kernel=kernel)

    assert torch.autograd.gradcheck(lambda e: chunked(e, 2), (embeddings,))
    full = losses.revised_contrastive_loss(embeddings, labels, 3, 10.0)
    assert torch.allclose(full, chunked(embeddings, 3))


def test_compiled_kernel_matches_cdist_in_float32_on_a_large_batch():
    """fp32 at a training-sized batch: the fused loop sums in another order than cdist, nothing else."""
    torch.manual_seed(3)
    embeddings = (torch.randn(600, 70) * 10).requires_grad_(True)
    ages = torch.randint(0, 80, (600,))
    results = []
    for kernel in ("cdist", "compiled"):
        embeddings.grad = None
        loss = losses.revised_contrastive_loss(embeddings, ages, 3, 100.0, chunk_rows=256, kernel=kernel)
        loss.backward()
        results.append((loss.detach(), embeddings.grad.clone()))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=0)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-4, atol=1e-7)


def test_unknown_kernel_is_refused():
    embeddings = torch.randn(4, 3)
    with pytest.raises(ValueError, match="loss.kernel"):
        losses.revised_contrastive_loss(embeddings, torch.arange(4), 3, chunk_rows=2, kernel="triton")
