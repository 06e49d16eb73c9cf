"""A private local Ray instance ends with the driver that started it, however that driver ends.

`ray.init()` starts the head processes (GCS, raylet, monitors) as children of the driver, in its
process group, but the raylet puts every worker in a process group of its own. So when a killed
driver's group is sent SIGKILL (Ctrl-\\, a scheduler's kill, the OOM killer), the workers of that
run survive it, and so does the instance's temp dir. Two guards, both by pid and never by name:

- a watcher (`python -m agejobs.ray_reaper`, in a session of its own so the group kill misses it)
  waits for the driver's pid to end, then ends every process of the instance and removes its
  temp dir;
- the temp dir holds an owner record (driver pid + its start time, so a reused pid does not
  count as alive); the next local session reaps any instance whose owner is gone, in case the
  watcher was killed too.

A process belongs to an instance when its command line, working directory or an open file lies
under the instance's temp dir: Ray's head processes name it in their arguments, and every worker
writes its stdout/stderr to log files there (its command line is renamed to `ray::...`).
Linux (/proc) only; elsewhere both guards do nothing.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time

from agejobs.processes import end_processes, start_ticks

OWNER_FILE = "agejobs-owner.json"
TEMP_PREFIX = "agejobs-ray-"


def temp_root() -> str:
    """Where local instances' temp dirs go: short, because Ray's unix sockets live under them
    and must stay below ~107 characters."""
    return os.environ.get("AGEJOBS_RAY_TMP", "/tmp")


def owner_alive(owner: dict) -> bool:
    return start_ticks(owner["pid"]) == owner["start_ticks"]


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _process_uses(pid: str, root: str) -> bool:
    base = f"/proc/{pid}"
    try:
        with open(f"{base}/cmdline", "rb") as handle:
            if root.encode() in handle.read():
                return True
        if _under(os.readlink(f"{base}/cwd"), root):
            return True
        for fd in os.listdir(f"{base}/fd"):
            try:
                if _under(os.readlink(f"{base}/fd/{fd}"), root):
                    return True
            except OSError:
                continue
    except OSError:  # gone, or another user's
        return False
    return False


def session_pids(temp_dir: str) -> list[int]:
    """Pids of the processes of the instance living in temp_dir (never this process)."""
    if not os.path.isdir("/proc"):
        return []
    root = os.path.realpath(temp_dir)
    return [
        int(pid)
        for pid in os.listdir("/proc")
        if pid.isdigit() and int(pid) != os.getpid() and _process_uses(pid, root)
    ]


def reap(temp_dir: str) -> None:
    end_processes(session_pids(temp_dir))
    shutil.rmtree(temp_dir, ignore_errors=True)


def claim(temp_dir: str) -> subprocess.Popen | None:
    """Record this process as the instance's owner and start its watcher (None off Linux)."""
    ticks = start_ticks(os.getpid())
    if ticks is None:
        return None
    owner = {"pid": os.getpid(), "start_ticks": ticks}
    with open(os.path.join(temp_dir, OWNER_FILE), "w") as handle:
        json.dump(owner, handle)
    # The watcher imports this module from where the driver did (an installed or a source tree),
    # and runs in "/" so that it holds no directory of the driver's open.
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    search_path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, "-m", __name__, str(owner["pid"]), str(ticks), temp_dir],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        cwd="/",
        env={**os.environ, "PYTHONPATH": search_path},
    )


def release(watcher: subprocess.Popen | None) -> None:
    """The driver shut its instance down itself: the watcher has nothing left to do."""
    if watcher is not None:
        watcher.terminate()
        watcher.wait()


def reap_orphans(root: str | None = None) -> list[str]:
    """Reap every local instance under root whose owner is gone; returns their temp dirs."""
    root = root or temp_root()
    reaped = []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        temp_dir = os.path.join(root, name)
        try:
            with open(os.path.join(temp_dir, OWNER_FILE)) as handle:
                owner = json.load(handle)
        except (OSError, ValueError):  # not ours, or not claimed yet
            continue
        if name.startswith(TEMP_PREFIX) and not owner_alive(owner):
            reap(temp_dir)
            reaped.append(temp_dir)
    return reaped


def wait_for_exit(pid: int, ticks: int) -> None:
    try:
        descriptor = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd: poll
        while start_ticks(pid) == ticks:
            time.sleep(1.0)
        return
    if start_ticks(pid) == ticks:  # the pid still names the driver, not a successor
        select.select([descriptor], [], [])
    os.close(descriptor)


def main(argv: list[str]) -> int:
    pid, ticks, temp_dir = int(argv[0]), int(argv[1]), argv[2]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # released: the driver cleaned up
    wait_for_exit(pid, ticks)
    reap(temp_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
