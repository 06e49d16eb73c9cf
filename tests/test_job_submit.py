"""`ray job submit --working-dir . -- python -m agejobs train ...` against a Ray head this test
starts (own temp dir, explicit CPUs, free ports) and stops by process id: the job trains a tiny
model to completion and writes its checkpoint."""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import psutil
import pytest

from agejobs.datasets.synthetic import SynthSpec, write_synthetic

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ray_processes() -> set[int]:
    found = set()
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "ray" in cmdline and ("gcs_server" in cmdline or "raylet" in cmdline or "ray::" in cmdline or "ray/dashboard" in cmdline or "ray/_private" in cmdline or "default_worker" in cmdline or "log_monitor" in cmdline or "monitor.py" in cmdline):
            found.add(process.info["pid"])
    return found


@pytest.fixture
def ray_head():
    """A local head on free ports; yields the dashboard (job) address; ends only its processes."""
    temp_dir = tempfile.mkdtemp(prefix="agejobs-head-", dir="/tmp")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}:{os.environ['PATH']}"}
    before = ray_processes()
    dashboard_port = free_port()
    subprocess.run(
        [f"{BIN}/ray", "start", "--head", f"--port={free_port()}", f"--dashboard-port={dashboard_port}",
         "--dashboard-host=127.0.0.1", "--include-dashboard=true", "--num-cpus=4", f"--temp-dir={temp_dir}",
         "--disable-usage-stats", f"--ray-client-server-port={free_port()}"],
        check=True, env=env, capture_output=True, text=True,
    )
    started = ray_processes() - before
    try:
        yield f"http://127.0.0.1:{dashboard_port}", env
    finally:
        ours = started | (ray_processes() - before)
        for pid in ours:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in ours):
            time.sleep(0.5)
        for pid in ours:
            if psutil.pid_exists(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def test_ray_job_submit_trains_to_completion(ray_head, tmp_path):
    address, env = ray_head
    write_synthetic(str(tmp_path / "faces"), SynthSpec(num_subjects=12, images_per_subject=3, image_size=40))
    workdir = tmp_path / "run"
    command = [
        f"{BIN}/ray", "job", "submit", "--address", address, "--working-dir", REPO, "--",
        "python", "-m", "agejobs", "train", "-c", "configs/demo.yaml",
        "--manifest", str(tmp_path / "faces" / "manifest.parquet"), "--workdir", str(workdir),
        "data.image_size=32", "model.weights=", "train.batch_size=8", "train.max_steps=2", "train.max_time_s=0",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout
    result = json.loads([line for line in done.stdout.splitlines() if line.startswith('{"checkpoint"')][-1])
    assert result["checkpoint"].startswith(str(workdir / "runs" / "siamese"))
    assert os.path.exists(os.path.join(result["checkpoint"], "checkpoint.pt"))
