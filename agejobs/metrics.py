"""agejobs' Prometheus metrics: one table of definitions, two exporters.

Names follow Prometheus conventions: the `agejobs_` prefix, base units in the name (`_seconds`,
`_bytes`), counters exposed with `_total`, and labels of low cardinality only (a stage or a reason
class: never a path, an image id or a message).

Where a value goes depends on the process that records it:
  * with Ray initialised (Train workers, Ray Data actors and tasks, and the job's driver):
    `ray.util.metrics`, exported by each node's metrics agent on `--metrics-export-port` (8080
    in ray_cluster.yaml and cluster/raycluster.yaml; `ray.metrics_export_port` for a local
    instance). Ray prefixes `ray_` to every application metric; cluster/prometheus.yml strips
    it again, so dashboards see the same `agejobs_*` names everywhere.
  * without Ray (a single-process run: `ingest` without --verify, `pack --runner inline`):
    prometheus_client's registry, served by `serve(port)` (`ray.metrics_port`).
Counters are declared without `_total`: both exporters append it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

PREFIX = "agejobs_"
# Batch latencies of the scoring stages: a 64-face batch takes milliseconds on a GPU and
# seconds on a CPU.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Why an input was rejected, as a label value. The site that rejects says which (images.py,
# datasets/importing.py, storage.py), never a matcher over the message's words.
REJECT_REASONS = ("label", "missing", "duplicate", "decode", "too_large", "no_face", "other")


@dataclass(frozen=True)
class Definition:
    kind: str  # counter | gauge | histogram
    help: str
    labels: tuple[str, ...] = ()


DEFINITIONS: dict[str, Definition] = {
    # training (recorded by rank 0 for the global batch)
    "train_steps": Definition("counter", "Optimizer steps taken."),
    "train_images": Definition("counter", "Training images processed (global batch)."),
    "train_epoch": Definition("gauge", "Epochs completed."),
    "train_age_loss": Definition("gauge", "Age revised contrastive loss of the last global batch."),
    "train_gender_loss": Definition("gauge", "Gender revised contrastive loss of the last global batch."),
    "train_positive_pair_ratio": Definition(
        "gauge", "Fraction of ordered pairs of the last global batch that are age positives."
    ),
    "train_images_per_second": Definition("gauge", "Training throughput of the current epoch."),
    "train_gather_seconds": Definition("counter", "Seconds spent gathering embeddings across workers."),
    "train_seconds_since_checkpoint": Definition("gauge", "Seconds since the last checkpoint was reported."),
    # ingestion (imports, verify, pack)
    "ingest_rows_read": Definition("counter", "Input rows read by import, verify and pack.", ("stage",)),
    "ingest_rows_rejected": Definition(
        "counter", "Input rows rejected, by stage and reason class.", ("stage", "reason")
    ),
    # scoring
    "score_images": Definition("counter", "Images scored (a prediction written)."),
    "score_errors": Definition("counter", "Images that could not be scored, by reason class.", ("reason",)),
    # preprocessing (every decode: training, galleries, evaluation, scoring)
    "face_outcomes": Definition(
        "counter",
        "Decoded images by what the face search found (one_face, several_faces, no_face, not_searched).",
        ("outcome",),
    ),
    "score_batch_latency_seconds": Definition("histogram", "Seconds per batch of a scoring stage.", ("stage",)),
    "score_shards_done": Definition("counter", "Output shards written with their done-marker."),
    # the scoring run in progress (set by its driver): what the alert rules watch
    "score_run_shards": Definition("gauge", "Input shards of the running scoring run."),
    "score_run_shards_done": Definition(
        "gauge", "Input shards of the running scoring run that are done (earlier runs' included)."
    ),
    "score_run_started_timestamp_seconds": Definition("gauge", "Unix time the running scoring run started."),
    "score_last_shard_done_timestamp_seconds": Definition(
        "gauge", "Unix time the running scoring run last finished a shard (or started)."
    ),
}


def full_name(name: str) -> str:
    """The name as scraped: agejobs_<name>, plus _total for counters."""
    return PREFIX + name + ("_total" if DEFINITIONS[name].kind == "counter" else "")


def exported_names() -> list[str]:
    """Every metric name a scrape can show (histograms as their _bucket/_sum/_count series)."""
    names = []
    for name, definition in DEFINITIONS.items():
        if definition.kind == "histogram":
            names += [PREFIX + name + suffix for suffix in ("_bucket", "_sum", "_count")]
        else:
            names.append(full_name(name))
    return names


_lock = threading.Lock()
_metrics: dict[tuple[str, str], object] = {}  # (backend, name) -> exporter object, per process


def _ray_active() -> bool:
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized()


def _make(backend: str, name: str):
    definition = DEFINITIONS[name]
    if backend == "ray":
        from ray.util import metrics as ray_metrics

        kwargs = {"description": definition.help, "tag_keys": definition.labels}
        if definition.kind == "counter":
            return ray_metrics.Counter(PREFIX + name, **kwargs)
        if definition.kind == "gauge":
            return ray_metrics.Gauge(PREFIX + name, **kwargs)
        return ray_metrics.Histogram(PREFIX + name, boundaries=list(LATENCY_BUCKETS), **kwargs)
    import prometheus_client

    kwargs = {"labelnames": definition.labels}
    if definition.kind == "counter":
        return prometheus_client.Counter(PREFIX + name, definition.help, **kwargs)
    if definition.kind == "gauge":
        return prometheus_client.Gauge(PREFIX + name, definition.help, **kwargs)
    return prometheus_client.Histogram(PREFIX + name, definition.help, buckets=LATENCY_BUCKETS, **kwargs)


def _metric(name: str):
    if name not in DEFINITIONS:
        raise KeyError(f"unknown metric {name!r}; define it in agejobs.metrics.DEFINITIONS")
    backend = "ray" if _ray_active() else "prometheus"
    key = (backend, name)
    with _lock:
        if key not in _metrics:
            _metrics[key] = _make(backend, name)
        return backend, _metrics[key]


def _check_labels(name: str, labels: dict) -> None:
    if set(labels) != set(DEFINITIONS[name].labels):
        raise ValueError(f"metric {name} takes labels {DEFINITIONS[name].labels}, got {tuple(labels)}")
    if labels.get("reason", REJECT_REASONS[0]) not in REJECT_REASONS:
        raise ValueError(f"metric {name}: reason {labels['reason']!r} is not one of {REJECT_REASONS}")


def _record(name: str, method: str, value: float, labels: dict) -> None:
    _check_labels(name, labels)
    backend, metric = _metric(name)
    if backend == "ray":
        getattr(metric, method)(value, tags=labels or None)
        return
    target = metric.labels(**labels) if labels else metric
    getattr(target, method)(value)


def inc(name: str, value: float = 1.0, **labels: str) -> None:
    if value > 0:  # a counter never goes down; a zero increment is no news
        _record(name, "inc", value, labels)


def set_gauge(name: str, value: float, **labels: str) -> None:
    _record(name, "set", value, labels)


def observe(name: str, value: float, **labels: str) -> None:
    _record(name, "observe", value, labels)


def serve(port: int, address: str = "0.0.0.0"):
    """Serve prometheus_client's registry (this process's agejobs_* metrics) on http://address:port/."""
    import prometheus_client

    return prometheus_client.start_http_server(port, addr=address)
