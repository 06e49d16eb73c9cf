"""Nothing left behind: a killed driver's local Ray instance goes away, workers and temp dir too.

Ray's raylet puts every worker in a process group of its own, so a SIGKILL of the driver's whole
group (what a scheduler or Ctrl-\\ sends) used to leave the run's workers and temp dir behind."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from agejobs.datasets.synthetic import SynthSpec, write_synthetic
from agejobs.ray_reaper import OWNER_FILE, TEMP_PREFIX, reap_orphans, session_pids, start_ticks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
linux_only = pytest.mark.skipif(
    not os.path.isdir("/proc"), reason="the reaper finds a session's processes through /proc (Linux)"
)

pytestmark = pytest.mark.ray


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_until(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout_s} s: {what}")


@linux_only
@pytest.mark.slow
def test_killed_training_driver_leaves_no_ray_process_or_temp_dir(tmp_path):
    temp_root = Path(tempfile.mkdtemp(prefix="aj-", dir="/tmp"))  # short: Ray's socket paths live under it
    write_synthetic(str(tmp_path / "faces"), SynthSpec(num_subjects=16, images_per_subject=3, image_size=40))
    command = [
        sys.executable,
        "-m",
        "agejobs",
        "train",
        "-c",
        "configs/demo.yaml",
        "--manifest",
        str(tmp_path / "faces" / "manifest.parquet"),
        "--workdir",
        str(tmp_path / "run"),
        "data.image_size=32",
        "model.weights=",
        "train.batch_size=16",
        "train.epochs=1000",
        "train.max_time_s=0",
        "ray.num_cpus=4",
    ]
    driver = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, "AGEJOBS_RAY_TMP": str(temp_root)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        temp_dir = wait_until(lambda: next((str(p) for p in temp_root.glob(TEMP_PREFIX + "*")), None), 60, "a temp dir")

        def training_workers():
            pids = session_pids(temp_dir)
            return (
                pids
                if any(b"RayTrainWorker" in open(f"/proc/{pid}/cmdline", "rb").read() for pid in pids if alive(pid))
                else None
            )

        pids = wait_until(training_workers, 180, "Ray Train workers of the run")
        # The point of the test: some of them are out of reach of the group kill.
        assert any(os.getpgid(pid) != driver.pid for pid in pids if alive(pid))
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        wait_until(lambda: not any(alive(pid) for pid in pids), 60, f"the run's processes {pids} ended")
        wait_until(lambda: not os.path.exists(temp_dir), 10, f"{temp_dir} removed")
        assert session_pids(temp_dir) == []
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        shutil.rmtree(temp_root, ignore_errors=True)


@linux_only
def test_next_session_reaps_an_instance_whose_driver_and_watcher_are_gone(tmp_path):
    """The owner record names a dead driver: its processes (found by their files under the temp
    dir) are ended and the dir removed; an instance whose owner lives is left alone."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    orphaned, owned = tmp_path / (TEMP_PREFIX + "orphan"), tmp_path / (TEMP_PREFIX + "owned")
    stray = {}
    for directory, owner in (
        (orphaned, {"pid": gone.pid, "start_ticks": 1}),
        (owned, {"pid": os.getpid(), "start_ticks": start_ticks(os.getpid())}),
    ):
        directory.mkdir()
        (directory / OWNER_FILE).write_text(json.dumps(owner))
        with open(directory / "worker.out", "w") as log:  # a Ray worker's stdout lies in its session dir
            stray[directory] = subprocess.Popen(
                [sys.executable, "-c", "import time; time.sleep(120)"], stdout=log, start_new_session=True
            )
    try:
        assert reap_orphans(str(tmp_path)) == [str(orphaned)]
        assert stray[orphaned].wait(timeout=10) is not None and not orphaned.exists()
        assert stray[owned].poll() is None and owned.exists()
    finally:
        for process in stray.values():
            process.kill()
            process.wait()
