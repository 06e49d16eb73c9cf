"""Metrics as Prometheus scrapes them: prometheus_client for a single-process run, Ray's metrics
agent during a small training and a small scoring run: parsed with prometheus_client's parser,
and scraped by a real Prometheus server that then answers every query of every panel of
cluster/grafana-dashboard.json and evaluates cluster/alerts.yml."""

import json
import os
import re
import socket
import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agejobs import metrics
from agejobs.datasets.manifest import Rejected, record_rows
from tests.prometheus_server import MISSING, PrometheusServer, binary

DASHBOARD = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cluster", "grafana-dashboard.json"
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scrape(port: int) -> dict[str, float]:
    """{sample name{labels}: value}, summed over Ray's per-process label sets."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            keep = {k: v for k, v in sample.labels.items() if k in ("stage", "reason", "le")}
            key = sample.name + ("{" + ",".join(f"{k}={v}" for k, v in sorted(keep.items())) + "}" if keep else "")
            values[key] = values.get(key, 0.0) + sample.value
    return values


def ours(values: dict[str, float], prefix: str = "") -> dict[str, float]:
    """Our samples, with Ray's `ray_` prefix (stripped by cluster/prometheus.yml) removed."""
    return {key[len(prefix) :]: value for key, value in values.items() if key.startswith(prefix + "agejobs_")}


def test_names_follow_prometheus_conventions():
    for name, definition in metrics.DEFINITIONS.items():
        full = metrics.full_name(name)
        assert full.startswith("agejobs_") and full == full.lower()
        assert full.endswith("_total") == (definition.kind == "counter")
        assert not set(definition.labels) & {"path", "image_id", "error", "message"}  # low cardinality
        if "seconds" in name or "latency" in name:
            assert "_seconds" in full
    with pytest.raises(ValueError, match="takes labels"):
        metrics.inc("score_errors")  # a labelled metric without its label
    with pytest.raises(ValueError, match="not one of"):
        metrics.inc("score_errors", reason="cannot decode image")  # a message is not a reason class


def test_single_process_run_serves_our_metrics_through_prometheus_client():
    port = free_port()
    metrics.serve(port, address="127.0.0.1")
    record_rows("import", 1, [])  # the families exist from here on (other tests may have counted too)
    before = ours(scrape(port))
    record_rows(
        "import",
        10,
        [
            Rejected("a.jpg", "import", "age 130 out of range", "label"),
            Rejected("b.jpg", "decode", "b.jpg: truncated image", "decode"),
        ],
    )
    middle = ours(scrape(port))
    record_rows("import", 5, [Rejected("c.jpg", "import", "image file not found: c.jpg", "missing")])
    after = ours(scrape(port))

    def grew(name, start, end):
        return end.get(name, 0.0) - start.get(name, 0.0)

    read = "agejobs_ingest_rows_read_total{stage=import}"
    assert grew(read, before, middle) == 10 and grew(read, middle, after) == 5  # increasing counters
    assert grew("agejobs_ingest_rows_rejected_total{reason=label,stage=import}", before, middle) == 1
    assert grew("agejobs_ingest_rows_rejected_total{reason=decode,stage=decode}", before, middle) == 1
    assert grew("agejobs_ingest_rows_rejected_total{reason=missing,stage=import}", middle, after) == 1


def dashboard_targets() -> list[tuple[str, str, set[str]]]:
    """(panel title, PromQL, labels its legend names) of every query of the dashboard."""
    with open(DASHBOARD) as handle:
        panels = json.load(handle)["panels"]
    return [
        (panel["title"], target["expr"], set(re.findall(r"{{\s*(\w+)\s*}}", target.get("legendFormat", ""))))
        for panel in panels
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


def check_dashboard_and_alerts(prometheus: PrometheusServer, start: float, end: float) -> None:
    """Every dashboard query returned data with its legend's labels at some second of the runs;
    counters rose through rate(); every alert rule was evaluated without error."""
    empty, unlabelled = [], []
    for title, expr, labels in dashboard_targets():
        series = prometheus.query_range(expr, start, end)
        if not any(s["values"] for s in series):
            empty.append(f"{title}: {expr}")
        elif not all(labels <= set(s["metric"]) for s in series):
            unlabelled.append(f"{title}: {expr} lacks {labels}: {[s['metric'] for s in series][:2]}")
    assert not empty, empty
    assert not unlabelled, unlabelled
    # (A pack of 20 rows counts once per task: its counter appears at its final value, which rate()
    # cannot see rise. Training and scoring count batch by batch.)
    for counter in ("agejobs_train_steps_total", "agejobs_score_images_total"):
        rates = prometheus.query_range(f"sum(rate({counter}[10s]))", start, end)
        assert rates and max(float(v) for _, v in rates[0]["values"]) > 0, counter
    groups = prometheus.api("rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == 9 and all(rule["health"] == "ok" for rule in rules), [
        (r["name"], r.get("lastError")) for r in rules
    ]


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.skipif(binary("prometheus") is None, reason=MISSING)
def test_training_and_scoring_runs_export_increasing_metrics_through_ray(tmp_path, monkeypatch):
    from agejobs import pack
    from agejobs.config import load_config
    from agejobs.datasets.synthetic import SynthSpec, write_synthetic
    from agejobs.gallery import build_gallery
    from agejobs.ray_runtime import quiet_ray_data, ray_session
    from agejobs.score import score_archive
    from agejobs.train import run_training

    monkeypatch.setenv("RAY_metrics_report_interval_ms", "200")  # Ray's agent reports every 0.2 s
    port = free_port()
    # Enough faces that scoring runs for a few report intervals after its actors start.
    write_synthetic(str(tmp_path / "faces"), SynthSpec(num_subjects=200, images_per_subject=4, image_size=40, seed=3))
    manifest = str(tmp_path / "faces" / "manifest.parquet")
    cfg = load_config(
        None,
        [
            "model.backbone=mobilenet_v3_small",
            "model.weights=",
            "data.image_size=32",
            "train.batch_size=8",
            "train.epochs=40",
            "train.max_steps=24",
            "train.max_time_s=0",
            "train.log_every_steps=0",
            "eval.knn_m=5",
            "resources.embed.batch_size=8",  # the gallery's embedding and scoring's alike
            "resources.decode.batch_size=4",
            "resources.search.batch_size=4",
            "score.shard_images=40",
        ],
    )
    seen: dict[str, list[dict]] = {"train": [], "score": []}
    phase = {"name": "train", "done": False}

    def poll():
        while not phase["done"]:
            try:
                seen[phase["name"]].append(ours(scrape(port), prefix="ray_"))
            except OSError:
                pass  # the agent starts a moment after Ray
            time.sleep(0.2)

    # Inputs that get rejected, so the rejection panels have something to show.
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "page.jpg").write_bytes(b"<html>503 Slow Down</html>")
    with_missing = tmp_path / "with_missing.parquet"
    import pyarrow.parquet as pq

    table = pq.read_table(manifest).slice(0, 20)
    rows = table.to_pylist()
    rows[0]["path"] = str(tmp_path / "faces" / "no_such_face.jpg")
    pq.write_table(table.from_pylist(rows, schema=table.schema), with_missing)
    (tmp_path / "prometheus").mkdir()
    with (
        ray_session(num_cpus=4, metrics_export_port=port),
        PrometheusServer(port, tmp_path / "prometheus") as prometheus,
    ):
        started = time.time()
        quiet_ray_data()
        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        outcome = run_training(cfg, manifest, "metrics", str(tmp_path / "runs"))
        time.sleep(2)
        phase["name"] = "score"
        build_gallery(outcome.checkpoint_path, manifest, str(tmp_path / "gallery"), cfg)
        score_archive(
            str(tmp_path / "faces" / "images"),
            str(tmp_path / "scored"),
            "night",
            outcome.checkpoint_path,
            str(tmp_path / "gallery"),
            cfg,
        )
        time.sleep(3)
        phase["done"] = True
        poller.join()
        # After the agent checks: rejections at ingestion (a missing file) and at scoring (two bad files).
        pack.pack(str(with_missing), str(tmp_path / "packed"), runner="ray")
        score_archive(
            str(bad), str(tmp_path / "scored"), "bad", outcome.checkpoint_path, str(tmp_path / "gallery"), cfg
        )
        time.sleep(4)  # a few scrapes after the last run
        check_dashboard_and_alerts(prometheus, started, time.time())

    steps = [sample["agejobs_train_steps_total"] for sample in seen["train"] if "agejobs_train_steps_total" in sample]
    assert len(set(steps)) >= 2 and steps == sorted(steps), steps  # seen rising while training ran
    # Ray exports a gauge's latest value once per report interval, counters for the process's life:
    # look for each name in any scrape taken while training ran.
    during = {name: value for sample in seen["train"] for name, value in sample.items()}
    for name in (
        "agejobs_train_images_total",
        "agejobs_train_age_loss",
        "agejobs_train_gender_loss",
        "agejobs_train_positive_pair_ratio",
        "agejobs_train_images_per_second",
        "agejobs_train_epoch",
        "agejobs_train_seconds_since_checkpoint",
        "agejobs_train_gather_seconds_total",
    ):
        assert name in during, sorted(during)
    # A global batch of 8 faces aged 1-80 has no pair within 3 years about one time in 25, so a
    # single value may be 0: every scraped value lies in [0, 1] and some step saw positives.
    ratios = [
        sample["agejobs_train_positive_pair_ratio"]
        for sample in seen["train"]
        if "agejobs_train_positive_pair_ratio" in sample
    ]
    assert all(0 <= ratio <= 1 for ratio in ratios) and max(ratios) > 0, ratios
    assert during["agejobs_train_images_per_second"] > 0

    scored = [sample.get("agejobs_score_images_total", 0.0) for sample in seen["score"]]
    assert scored == sorted(scored) and scored[-1] == 800 and len({v for v in scored if v}) >= 2, scored
    last = seen["score"][-1]
    assert last["agejobs_score_shards_done_total"] == 20
    assert last["agejobs_score_batch_latency_seconds_count{stage=embed}"] == 100  # 800 faces / batches of 8
    assert last["agejobs_score_batch_latency_seconds_count{stage=search}"] >= 1
    assert (
        last["agejobs_score_batch_latency_seconds_bucket{le=+Inf,stage=search}"]
        == last["agejobs_score_batch_latency_seconds_count{stage=search}"]
    )
