"""Ending processes by their id, never by name: the one way agejobs (and its tests) stop what it
started. SIGTERM first, SIGKILL for whatever still lives after a grace period; a process counts
as ended once it is gone or a zombie (its parent reaps it). Linux /proc for the liveness check;
elsewhere a process counts as alive until os.kill says it is gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

GRACE_S = 3.0


def start_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), or None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the name before ")" may hold spaces


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def _alive(pid: int) -> bool:
    if os.path.isdir("/proc"):
        return start_ticks(pid) is not None and not _zombie(pid)
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def end_processes(pids, grace_s: float = GRACE_S) -> None:
    """SIGTERM, then SIGKILL for whatever still lives after grace_s."""
    pids = list(pids)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        living = []
        for pid in pids:
            try:
                os.kill(pid, sig)
                living.append(pid)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + grace_s
        while living and time.monotonic() < deadline:
            time.sleep(0.1)
            living = [pid for pid in living if _alive(pid)]
        pids = living
        if not pids:
            return


def stop_child(process: subprocess.Popen | None, grace_s: float = GRACE_S) -> None:
    """End a server this process started (its Popen), by pid, and reap it."""
    if process is not None and process.poll() is None:
        end_processes([process.pid], grace_s)
        process.wait()
