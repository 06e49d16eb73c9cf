"""Training progress on the driver's console: a step bar and one line per epoch.

    with TrainingProgress("siamese-knn", total_steps=610) as progress:
        trainer = make_trainer(..., {"progress": progress.board, ...})   # rank 0 posts events
        trainer.fit()

Rank 0 posts small events (`post_step`, `post_epoch`) to a ProgressBoard actor, fire-and-forget,
so a training step never waits for the console. A driver thread polls the board and draws a
tqdm bar of optimizer steps and one line per epoch. This works whether or not Ray forwards the
workers' own output (the CLI turns that off unless --verbose: Ray Train, Ray Data and the raylet
print dozens of lines per run that say nothing to a person training a model).
"""

from __future__ import annotations

import threading

POLL_SECONDS = 0.5


def _board_class():
    import ray

    @ray.remote(num_cpus=0)
    class ProgressBoard:
        """Events posted by rank 0, taken by the driver."""

        def __init__(self):
            self.events: list[dict] = []

        def post(self, event: dict) -> None:
            self.events.append(event)

        def take(self) -> list[dict]:
            events, self.events = self.events, []
            return events

    return ProgressBoard


def post_step(board, step: int) -> None:
    if board is not None:
        board.post.remote({"step": step})


def post_epoch(board, report: dict) -> None:
    if board is not None:
        board.post.remote({"epoch_report": report})


def format_epoch(label: str, report: dict, epochs: int | None = None) -> str:
    """`[label] epoch 2/5: 122 steps, age_loss 41.3, gender_loss 12.0, positive pairs 0.11, 142 images/s`"""
    epoch = f"{report['epoch']}/{epochs}" if epochs else str(report["epoch"])
    parts = [f"{report['epoch_steps']} steps"]
    for key, name, digits in (
        ("age_loss", "age_loss", 4),
        ("gender_loss", "gender_loss", 4),
        ("positive_pair_ratio", "positive pairs", 2),
    ):
        if key in report:
            parts.append(f"{name} {report[key]:.{digits}g}")
    parts.append(f"{report['images_per_s']:.0f} images/s")
    return f"[{label}] epoch {epoch}: " + ", ".join(parts)


class TrainingProgress:
    """Driver side: creates the board, draws the bar and the epoch lines until the `with` ends."""

    def __init__(self, label: str, total_steps: int, epochs: int | None = None):
        self.label, self.total_steps, self.epochs = label, total_steps, epochs
        self.board = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TrainingProgress:
        from tqdm.auto import tqdm

        self.board = _board_class().remote()
        self.bar = tqdm(total=self.total_steps, desc=f"[{self.label}] training", unit="step", leave=False)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self._drain()
        self.bar.close()
        import ray

        ray.kill(self.board)

    def _run(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            self._drain()

    def _drain(self) -> None:
        import ray

        try:
            events = ray.get(self.board.take.remote(), timeout=10)
        except Exception:  # the console is best effort: never fail a training run over it
            return
        for event in events:
            if "step" in event:
                self.bar.update(max(0, min(event["step"], self.total_steps) - self.bar.n))
            else:
                self.bar.write(format_epoch(self.label, event["epoch_report"], self.epochs))
