"""`ray job submit --working-dir . -- python -m agejobs train ...` against a Ray head this test
starts (own temp dir, explicit CPUs, free ports) and stops by process id: the job trains a tiny
model to completion and writes its checkpoint."""

import json
import os
import subprocess
import sys

import pytest

from agejobs.datasets.synthetic import SynthSpec, write_synthetic
from tests.ray_local import LocalRayHead

pytestmark = [pytest.mark.slow, pytest.mark.ray]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


@pytest.fixture
def ray_head():
    """A local head on free ports; yields the dashboard (job) address; ends only its processes."""
    head = LocalRayHead(num_cpus=4)
    with head:
        yield head.dashboard_url, head.env
    assert not os.path.exists(head.temp_dir)  # no logs and sockets left behind in /tmp


def test_ray_job_submit_trains_to_completion(ray_head, tmp_path):
    address, env = ray_head
    write_synthetic(str(tmp_path / "faces"), SynthSpec(num_subjects=12, images_per_subject=3, image_size=40))
    workdir = tmp_path / "run"
    command = [
        f"{BIN}/ray",
        "job",
        "submit",
        "--address",
        address,
        "--working-dir",
        REPO,
        "--",
        "python",
        "-m",
        "agejobs",
        "train",
        "-c",
        "configs/demo.yaml",
        "--manifest",
        str(tmp_path / "faces" / "manifest.parquet"),
        "--workdir",
        str(workdir),
        "data.image_size=32",
        "model.weights=",
        "train.batch_size=8",
        "train.max_steps=2",
        "train.max_time_s=0",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout
    # The job's log carries each worker line once (a bare print in a Ray Train worker came out twice).
    assert done.stdout.count("[train] epoch 1 done:") == 1, done.stdout[-3000:]
    result = json.loads([line for line in done.stdout.splitlines() if line.startswith('{"command": "train"')][-1])
    assert result["checkpoint"].startswith(str(workdir / "runs" / "siamese"))
    assert os.path.exists(os.path.join(result["checkpoint"], "checkpoint.pt"))
