"""2 gloo ranks vs one process: the global all-pairs loss gives the same gradients as one big batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from agejobs.config import Config
from agejobs.train import siamese_loss

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
    loss, log = siamese_loss(model(x[rows]), ages[rows], genders[rows], config(pairs, chunk_rows, kernel))
    loss.backward()
    torch.save({"grads": grads(model.module), "log": log}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def run_two_ranks(pairs, tmp_path, chunk_rows=0, kernel="cdist"):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(worker, args=(port, pairs, str(tmp_path), chunk_rows, kernel), nprocs=WORLD, start_method="spawn")
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]


# Each test spawns gloo ranks as processes (seconds to a minute each): the full suite's, not the fast loop's.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def single_process():
    model = TwoHeads()
    x, ages, genders = batch()
    loss, log = siamese_loss(model(x), ages, genders, config("global"))
    loss.backward()
    return grads(model), log


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
    return (torch.randn(total, 70, generator=generator, dtype=torch.float64) * 10,
            torch.randn(total, 10, generator=generator, dtype=torch.float64) * 10,
            torch.randint(1, 90, (total,), generator=generator), torch.randint(0, 2, (total,), generator=generator))


def embeddings_worker(rank, port, out_dir):
    """bench/bench_global_batch.py's step at a size one process can hold: chunks of 7 rows cross
    the ranks' row boundaries."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=LARGE_WORLD)
    torch.set_num_threads(1)
    age, gender, ages, genders = embeddings_only_batch()
    rows = slice(rank * LARGE_LOCAL, (rank + 1) * LARGE_LOCAL)
    outputs = {"age": age[rows].clone().requires_grad_(True), "gender": gender[rows].clone().requires_grad_(True)}
    loss, _ = siamese_loss(outputs, ages[rows], genders[rows], config("global", chunk_rows=7))
    loss.backward()
    torch.save({name: tensor.grad for name, tensor in outputs.items()}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_eight_ranks_of_embeddings_match_one_process(tmp_path):
    """Each rank's gradient is world_size x the single-process one (the loss is scaled to cancel
    DDP's averaging, and here no DDP averages it)."""
    age, gender, ages, genders = embeddings_only_batch()
    whole = {"age": age.clone().requires_grad_(True), "gender": gender.clone().requires_grad_(True)}
    siamese_loss(whole, ages, genders, config("global"))[0].backward()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(embeddings_worker, args=(port, str(tmp_path)), nprocs=LARGE_WORLD, start_method="spawn")
    for rank in range(LARGE_WORLD):
        grads = torch.load(tmp_path / f"rank{rank}.pt")
        rows = slice(rank * LARGE_LOCAL, (rank + 1) * LARGE_LOCAL)
        for name in ("age", "gender"):
            torch.testing.assert_close(grads[name] / LARGE_WORLD, whole[name].grad[rows], rtol=1e-9, atol=1e-12)
