"""What the benchmarks share: peak-RSS sampling and writing results as JSON."""

from __future__ import annotations

import json
import os
import threading


class PeakRss:
    """Samples RSS in a thread while the `with` block runs.

    `tree=True` sums this process and all its descendants (a local Ray cluster); `peak` is the
    largest sample, `processes_at_peak` how many processes it summed, `driver_peak` this
    process alone, `base` this process when sampling started.
    """

    def __init__(self, interval_s: float = 0.2, tree: bool = False):
        import psutil

        self.root = psutil.Process()
        self.interval_s = interval_s
        self.tree = tree
        self.base = self.root.memory_info().rss
        self.peak = self.driver_peak = self.base
        self.processes_at_peak = 1
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _total(self) -> tuple[int, int]:
        processes = [self.root, *self.root.children(recursive=True)] if self.tree else [self.root]
        total = count = 0
        for process in processes:
            try:
                total += process.memory_info().rss
                count += 1
            except Exception:  # a process that ended between listing and reading
                pass
        return total, count

    def sample(self) -> None:
        total, count = self._total()
        if total > self.peak:
            self.peak, self.processes_at_peak = total, count
        self.driver_peak = max(self.driver_peak, self.root.memory_info().rss)

    def _run(self) -> None:
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(self.interval_s)

    def __enter__(self) -> "PeakRss":
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop_event.set()
        self.thread.join()
        self.sample()


def settings(args) -> dict:
    """The benchmark's arguments worth recording (not where its output went)."""
    return {key: value for key, value in vars(args).items() if key not in ("out", "workdir", "child")}


def write_results(path: str, results: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(results, handle, indent=2)
