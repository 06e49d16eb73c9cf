"""The GPU path: the same code as on CPU, run on CUDA (compiled pair loss through Triton, bf16
autocast, channels_last, NCCL, GPU embedding actors). Skipped where there is no CUDA device."""

import os
import socket

import numpy as np
import pytest
import torch

from agejobs import losses

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device (the GPU path: Triton kernels, bf16 autocast, NCCL)"
    ),
]


@pytest.mark.parametrize("kernel", ["compiled", "cdist"])
def test_pair_loss_on_cuda_equals_cpu(kernel):
    torch.manual_seed(0)
    embeddings = torch.randn(1024, 70) * 10
    ages = torch.randint(0, 80, (1024,))
    results = []
    for device in ("cpu", "cuda"):
        x = embeddings.to(device).requires_grad_(True)
        loss = losses.revised_contrastive_loss(x, ages.to(device), 3, 100.0, chunk_rows=256, kernel=kernel)
        loss.backward()
        results.append((loss.detach().cpu(), x.grad.cpu()))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-4, atol=0)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-3, atol=1e-6)


def test_bf16_autocast_model_with_fp32_pair_loss():
    from agejobs.config import load_config
    from agejobs.data import to_model_input
    from agejobs.model import build_model_from_config
    from agejobs.pair_loss import make_loss

    cfg = load_config(None, ["model.backbone=mobilenet_v2", "model.weights=", "data.image_size=64"])
    model = build_model_from_config(cfg.model, "siamese").cuda().to(memory_format=torch.channels_last)
    images = torch.randint(0, 255, (32, 64, 64, 3), dtype=torch.uint8).pin_memory().cuda(non_blocking=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        outputs = model(to_model_input(images, channels_last=True))
    assert outputs["age"].dtype == torch.bfloat16
    loss_fn = make_loss(cfg.loss, cfg.train.method)
    loss, log = loss_fn(outputs, torch.randint(18, 60, (32,)).cuda(), torch.randint(0, 2, (32,)).cuda())
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def _nccl_worker(rank, port, out_dir):
    import torch.distributed as dist

    from agejobs import distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl", rank=rank, world_size=2)
    torch.cuda.set_device(rank)
    torch.manual_seed(0)
    x = (torch.randn(16, 70) * 5).cuda().requires_grad_(True)
    labels = torch.randint(18, 40, (16,)).cuda()
    rows = slice(rank * 8, (rank + 1) * 8)
    local = x[rows]
    cols = distributed.gather_with_grad(local)
    col_labels = distributed.gather_no_grad(labels[rows])
    pair_sum, _ = losses.revised_contrastive_pair_sum(
        local, labels[rows], cols, col_labels, 3, 100.0, rank * 8, 4, "compiled"
    )
    (pair_sum * distributed.global_pair_loss_scale() / (16 * 15)).backward()
    torch.save(x.grad.cpu(), os.path.join(out_dir, f"grad{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices for a 2-rank NCCL group")
def test_two_rank_nccl_gradients_equal_one_process(tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.start_processes(_nccl_worker, args=(port, str(tmp_path)), nprocs=2, start_method="spawn")
    torch.manual_seed(0)
    x = (torch.randn(16, 70) * 5).requires_grad_(True)
    labels = torch.randint(18, 40, (16,))
    losses.revised_contrastive_loss(x, labels, 3, 100.0).backward()
    # Each rank's gradient covers its own rows (DDP would average; the scale cancels it).
    total = sum(torch.load(tmp_path / f"grad{rank}.pt") for rank in range(2)) / 2
    torch.testing.assert_close(total, x.grad, rtol=1e-4, atol=1e-6)


def test_embedder_on_cuda_matches_cpu(tmp_path, monkeypatch):
    from agejobs.config import load_config
    from agejobs.gallery import Embedder
    from agejobs.train import write_initial_checkpoint

    checkpoint = write_initial_checkpoint(
        str(tmp_path / "ck"), load_config(None, ["model.weights=", "data.image_size=64"])
    )
    batch = {
        "image": np.random.default_rng(0).integers(0, 255, (8, 64, 64, 3), dtype=np.uint8),
        "image_id": np.arange(8),
        "error": np.array([""] * 7 + ["bad"], dtype=object),
    }
    on_gpu = Embedder(checkpoint)(dict(batch))
    assert on_gpu["age_embedding"].shape == (8, 70) and not on_gpu["age_embedding"][7].any()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same stage, on the CPU
    on_cpu = Embedder(checkpoint)(dict(batch))
    difference = np.linalg.norm(on_gpu["age_embedding"] - on_cpu["age_embedding"])
    assert difference <= 0.05 * np.linalg.norm(on_cpu["age_embedding"])  # bf16 vs fp32
