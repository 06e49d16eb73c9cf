"""A worker dies mid-training (the fault drill: os._exit at a chosen step); Ray Train restarts the
worker group, which resumes from the last checkpoint instead of epoch 0."""

import pytest
import torch

from agejobs.checkpoint import read_checkpoint
from agejobs.config import load_config
from agejobs.datasets.synthetic import SynthSpec, write_synthetic
from agejobs.ray_runtime import quiet_ray_data, ray_session
from agejobs.train import run_training, split_age_stats

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_killed_worker_resumes_from_the_last_checkpoint(tmp_path, capfd):
    write_synthetic(str(tmp_path / "faces"), SynthSpec(num_subjects=16, images_per_subject=3, image_size=40))
    manifest = str(tmp_path / "faces" / "manifest.parquet")
    train_rows, _ = split_age_stats(manifest, "train")
    batch = 8
    steps_per_epoch = train_rows // batch
    cfg = load_config(
        "configs/demo.yaml",
        [
            "data.image_size=32",
            "model.weights=",
            f"train.batch_size={batch}",
            "train.num_workers=2",
            "train.epochs=3",
            "train.max_time_s=0",
            "train.max_failures=1",
            f"train.fail_at_step={steps_per_epoch + 1}",  # the first step of epoch 2
        ],
    )
    with ray_session(num_cpus=cfg.ray.num_cpus):
        quiet_ray_data()
        outcome = run_training(cfg, manifest, "drill", str(tmp_path / "checkpoints"))
    printed = capfd.readouterr()
    log = printed.out + printed.err
    # Worker lines reach the driver once each, and the dashboard-less placement-group warning is off.
    assert log.count("[train] fault drill: worker 1 exits at step") == 1, log[-3000:]
    assert "Failed to query Ray Train Controller actor state" not in log
    state = read_checkpoint(outcome.checkpoint_path)["train_state"]
    assert state["epoch"] == 3
    assert state["restarts"] == 1  # resumed once, from the epoch-1 checkpoint
    # Epoch 2's lost step was redone from the checkpoint, not counted twice; nothing restarted at 0.
    assert state["samples_seen"] == state["step"] * batch
    assert state["step"] >= 3 * (steps_per_epoch - 1)
    rngs = state["rng_per_rank"]
    assert len(rngs) == 2 and not torch.equal(rngs[0]["torch"], rngs[1]["torch"])  # per-rank streams
