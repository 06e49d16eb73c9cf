"""2 gloo ranks vs one process: the global all-pairs loss gives the same gradients as one big batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from agejobs import losses
from agejobs.config import Config
from agejobs.pair_loss import BaselineLoss, SiameseLoss, make_loss

WORLD, LOCAL_BATCH, FEATURES = 2, 6, 12


class TwoHeads(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.age = torch.nn.Linear(FEATURES, 5, dtype=torch.float64)
        self.gender = torch.nn.Linear(FEATURES, 3, dtype=torch.float64)

    def forward(self, x):
        return {"age": self.age(x), "gender": self.gender(x)}


def batch():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(WORLD * LOCAL_BATCH, FEATURES, generator=generator, dtype=torch.float64) * 3
    ages = torch.randint(18, 40, (WORLD * LOCAL_BATCH,), generator=generator)
    genders = torch.randint(0, 2, (WORLD * LOCAL_BATCH,), generator=generator)
    return x, ages, genders


def config(pairs, chunk_rows=0, kernel="cdist"):
    cfg = Config()
    cfg.loss.pairs = pairs
    cfg.loss.chunk_rows = chunk_rows
    cfg.loss.kernel = kernel
    return cfg


def grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def worker(rank, port, pairs, out_dir, chunk_rows=0, kernel="cdist"):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    model = DistributedDataParallel(TwoHeads())
    x, ages, genders = batch()
    rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    loss, log = make_loss(config(pairs, chunk_rows, kernel).loss, "siamese")(model(x[rows]), ages[rows], genders[rows])
    loss.backward()
    torch.save({"grads": grads(model.module), "log": log}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def run_two_ranks(pairs, tmp_path, chunk_rows=0, kernel="cdist"):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(
        worker, args=(port, pairs, str(tmp_path), chunk_rows, kernel), nprocs=WORLD, start_method="spawn"
    )
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]


# Each test spawns gloo ranks as processes (seconds to a minute each): the full suite's, not the fast loop's.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def single_process():
    model = TwoHeads()
    x, ages, genders = batch()
    loss, log = make_loss(config("global").loss, "siamese")(model(x), ages, genders)
    loss.backward()
    return grads(model), log


@pytest.mark.parametrize("gender_weight", [0.25, 0.0])
def test_loss_object_from_plain_values_is_the_formula_on_one_process(gender_weight):
    """On one process: the mean pair loss of age + gender_weight x gender (chunked here, the dense
    formula as reference), and a log of the unscaled parts of the batch."""
    x, ages, genders = batch()
    outputs = TwoHeads()(x)
    loss_fn = SiameseLoss(
        age_tolerance=2, q=50.0, gender_weight=gender_weight, pairs="global", chunk_rows=5, kernel="cdist"
    )
    loss, log = loss_fn(outputs, ages, genders)
    age = losses.revised_contrastive_loss(outputs["age"], ages, 2, q=50.0)
    gender = losses.revised_contrastive_loss(outputs["gender"], genders, 0, q=50.0)
    torch.testing.assert_close(loss, age + gender_weight * gender, rtol=1e-9, atol=0)
    assert log["age_loss"] == pytest.approx(age.item(), rel=1e-9)
    assert log["gender_loss"] == (pytest.approx(gender.item(), rel=1e-9) if gender_weight else 0.0)
    size = len(ages)
    positives = int(((ages[:, None] - ages[None, :]).abs() <= 2).sum()) - size  # not a face with itself
    assert log["positive_pair_ratio"] == pytest.approx(positives / (size * (size - 1)))
    assert list(log) == ["age_loss", "gender_loss", "positive_pair_ratio", "gather_s"]


def test_make_loss_builds_the_configured_loss():
    cfg = config("local", chunk_rows=3, kernel="cdist")
    siamese = make_loss(cfg.loss, "siamese")
    assert isinstance(siamese, SiameseLoss)
    assert (
        siamese.age_tolerance,
        siamese.q,
        siamese.gender_weight,
        siamese.pairs,
        siamese.chunk_rows,
        siamese.kernel,
    ) == (cfg.loss.age_tolerance, cfg.loss.q, cfg.loss.gender_weight, "local", 3, "cdist")
    x, ages, genders = batch()
    heads = TwoHeads()(x)
    outputs = {"age": heads["age"][:, :1], "gender": heads["gender"]}  # a regression head: one age
    regression = make_loss(cfg.loss, "regression")
    assert isinstance(regression, BaselineLoss)
    loss, log = regression(outputs, ages, genders)
    age = losses.l1_regression_loss(outputs["age"], ages)
    gender = losses.gender_classification_loss(outputs["gender"], genders)
    torch.testing.assert_close(loss, (age + gender).float())
    assert log == pytest.approx({"age_loss": age.item(), "gender_loss": gender.item()})


@pytest.mark.parametrize(("chunk_rows", "kernel"), [(0, "cdist"), (4, "cdist"), (4, "compiled")])
def test_global_pairs_match_one_process_on_the_concatenated_batch(tmp_path, single_process, chunk_rows, kernel):
    """One dense single-process step vs 2 ranks, dense or chunked (4 rows: chunks cross ranks' rows)."""
    expected, expected_log = single_process
    results = run_two_ranks("global", tmp_path, chunk_rows, kernel)
    for result in results:
        for name, grad in expected.items():
            torch.testing.assert_close(result["grads"][name], grad, rtol=1e-5, atol=1e-8)
        assert result["log"]["age_loss"] == pytest.approx(expected_log["age_loss"], rel=1e-9)
        assert result["log"]["positive_pair_ratio"] == pytest.approx(expected_log["positive_pair_ratio"])


def test_local_pairs_differ_from_the_global_loss(tmp_path, single_process):
    expected, _ = single_process
    results = run_two_ranks("local", tmp_path)
    assert not torch.allclose(results[0]["grads"]["age.weight"], expected["age.weight"], rtol=1e-3)


LARGE_WORLD, LARGE_LOCAL = 8, 24


def embeddings_only_batch():
    """Age and gender embeddings of LARGE_WORLD * LARGE_LOCAL faces (no backbone), float64."""
    generator = torch.Generator().manual_seed(2)
    total = LARGE_WORLD * LARGE_LOCAL
    return (
        torch.randn(total, 70, generator=generator, dtype=torch.float64) * 10,
        torch.randn(total, 10, generator=generator, dtype=torch.float64) * 10,
        torch.randint(1, 90, (total,), generator=generator),
        torch.randint(0, 2, (total,), generator=generator),
    )


def embeddings_worker(rank, port, out_dir):
    """bench/bench_global_batch.py's step at a size one process can hold: chunks of 7 rows cross
    the ranks' row boundaries."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=LARGE_WORLD)
    torch.set_num_threads(1)
    age, gender, ages, genders = embeddings_only_batch()
    rows = slice(rank * LARGE_LOCAL, (rank + 1) * LARGE_LOCAL)
    outputs = {"age": age[rows].clone().requires_grad_(True), "gender": gender[rows].clone().requires_grad_(True)}
    loss, _ = make_loss(config("global", chunk_rows=7).loss, "siamese")(outputs, ages[rows], genders[rows])
    loss.backward()
    torch.save({name: tensor.grad for name, tensor in outputs.items()}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_eight_ranks_of_embeddings_match_one_process(tmp_path):
    """Each rank's gradient is world_size x the single-process one (the loss is scaled to cancel
    DDP's averaging, and here no DDP averages it)."""
    age, gender, ages, genders = embeddings_only_batch()
    whole = {"age": age.clone().requires_grad_(True), "gender": gender.clone().requires_grad_(True)}
    make_loss(config("global").loss, "siamese")(whole, ages, genders)[0].backward()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(embeddings_worker, args=(port, str(tmp_path)), nprocs=LARGE_WORLD, start_method="spawn")
    for rank in range(LARGE_WORLD):
        grads = torch.load(tmp_path / f"rank{rank}.pt")
        rows = slice(rank * LARGE_LOCAL, (rank + 1) * LARGE_LOCAL)
        for name in ("age", "gender"):
            torch.testing.assert_close(grads[name] / LARGE_WORLD, whole[name].grad[rows], rtol=1e-9, atol=1e-12)
