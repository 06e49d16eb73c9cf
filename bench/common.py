"""What the benchmarks share: peak-RSS sampling and writing results as JSON."""

from __future__ import annotations

import json
import os
import threading


class PeakRss:
    """Samples RSS in a thread while the `with` block runs.

    `tree=True` sums this process and all its descendants (a local Ray cluster); `peak` is the
    largest sample, `processes_at_peak` how many processes it summed, `driver_peak` this
    process alone, `base` this process when sampling started. `pid`: another process (a driver
    run as a subprocess) instead of this one. `pss=True` also sums proportional set sizes
    (`pss_peak`): RSS counts a page of shared memory (Ray's object store) once per process that
    touched it, PSS divides it among them, so a tree's PSS is the memory it really holds.
    """

    def __init__(
        self,
        interval_s: float = 0.2,
        tree: bool = False,
        pid: int | None = None,
        pss: bool = False,
        pss_every_s: float = 5.0,
    ):
        import psutil

        self.root = psutil.Process(pid)
        self.pss, self.pss_peak, self.last_pss, self.driver_pss_peak, self.last_driver_pss = pss, 0, 0, 0, 0
        # PSS reads /proc/PID/smaps_rollup, which walks the process's mappings (Ray's whole object
        # store): every 0.5 s over 17 processes that took a core from the run being measured.
        self.pss_every_s, self._pss_at = pss_every_s, float("-inf")
        self.interval_s = interval_s
        self.tree = tree
        self.base = self.root.memory_info().rss
        self.peak = self.driver_peak = self.last = self.last_driver = self.base
        self.processes_at_peak = 1
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _total(self) -> tuple[int, int]:
        import time

        try:
            processes = [self.root, *self.root.children(recursive=True)] if self.tree else [self.root]
        except Exception:  # the root ended (or was killed) while its children were listed
            return self.last, 0
        total = proportional = count = 0
        with_pss = self.pss and time.monotonic() - self._pss_at >= self.pss_every_s
        self._pss_at = time.monotonic() if with_pss else self._pss_at
        for process in processes:
            try:
                if with_pss:
                    info = process.memory_full_info()
                    proportional += info.pss
                    if process.pid == self.root.pid:
                        self.last_driver_pss = info.pss
                        self.driver_pss_peak = max(self.driver_pss_peak, info.pss)
                else:
                    info = process.memory_info()
                total += info.rss
                count += 1
            except Exception:  # a process that ended between listing and reading
                pass
        if with_pss:
            self.last_pss = proportional
            self.pss_peak = max(self.pss_peak, proportional)
        return total, count

    def sample(self) -> None:
        try:
            driver = self.root.memory_info().rss
        except Exception:  # the process ended (or was killed) while sampling
            return
        total, count = self._total()
        self.last, self.last_driver = total, driver
        if total > self.peak:
            self.peak, self.processes_at_peak = total, count
        self.driver_peak = max(self.driver_peak, driver)

    def _run(self) -> None:
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(self.interval_s)

    def __enter__(self) -> PeakRss:
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


def plain_score_loop(encoded_batches, checkpoint: str, gallery_uri: str, threads: int) -> dict:
    """The plain way to score an archive: one process, `threads` torch threads; each batch of
    (source, encoded image) is preprocessed (images.preprocess_encoded), embedded and estimated
    against the gallery (Gallery.estimate); nothing written. `encoded_batches` is an iterable,
    so listing and reading the archive are timed with the rest."""
    import time

    import numpy as np
    import torch

    from agejobs.checkpoint import load_trained_model
    from agejobs.data import to_model_input
    from agejobs.gallery import load_gallery
    from agejobs.images import preprocess_encoded

    torch.set_num_threads(threads)
    loading = time.perf_counter()
    trained = load_trained_model(checkpoint)
    gallery = load_gallery(gallery_uri, checkpoint, trained.fingerprint)
    size, channels_last = trained.cfg.data.image_size, trained.cfg.model.channels_last
    started = time.perf_counter()
    load_s = started - loading
    scored = 0
    for batch in encoded_batches:
        images = np.stack([preprocess_encoded(data, size, source) for source, data in batch])
        with torch.inference_mode():
            outputs = trained.model(to_model_input(torch.from_numpy(images), channels_last=channels_last))
        estimates = gallery.estimate(outputs["age"].float().numpy(), outputs["gender"].float().numpy())
        scored += len(estimates["predicted_age"])
    seconds = time.perf_counter() - started
    return {
        "faces": scored,
        "seconds": seconds,
        "faces_per_s": scored / seconds,
        "end_to_end_faces_per_s": scored / (seconds + load_s),
        "load_s": load_s,
    }
