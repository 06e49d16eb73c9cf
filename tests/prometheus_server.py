"""A real Prometheus server for the tests (a test helper): Debian's `prometheus` package.

The config is cluster/prometheus.yml itself with what a laptop does not have replaced: the same
job names and metric relabelling, Ray's file-based discovery swapped for the local instance's
metrics agent (a static target: a local instance without its dashboard writes no discovery
file), the Kubernetes job left out (Debian builds Prometheus without Kubernetes discovery) and a
1 s scrape interval. cluster/alerts.yml is loaded as the rule file. Started on 127.0.0.1 on a
free port, stopped by its pid.

    with PrometheusServer(ray_metrics_port, tmp_path) as prometheus:
        prometheus.query("rate(agejobs_train_steps_total[30s])")
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import yaml

from agejobs.processes import stop_child

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER = os.path.join(ROOT, "cluster")
MISSING = (
    "no prometheus/promtool in the venv or on PATH: `make install` unpacks Debian's `prometheus` "
    "package where apt is available; elsewhere install Prometheus >= 2.42 with promtool on PATH"
)


def binary(name: str) -> str | None:
    """The venv's own (unpacked there by `make install`), else one on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    return beside if os.access(beside, os.X_OK) else shutil.which(name)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def local_config(ray_metrics_port: int, process_port: int, interval_s: int = 1) -> dict:
    """cluster/prometheus.yml for a local Ray instance (see the module docstring)."""
    with open(os.path.join(CLUSTER, "prometheus.yml")) as handle:
        config = yaml.safe_load(handle)
    config["global"].update(scrape_interval=f"{interval_s}s", evaluation_interval=f"{interval_s}s")
    config["rule_files"] = [os.path.join(CLUSTER, name) for name in config["rule_files"]]
    jobs = []
    for job in config["scrape_configs"]:
        if "kubernetes_sd_configs" in job:
            continue
        if "file_sd_configs" in job:
            del job["file_sd_configs"]
            job["static_configs"] = [{"targets": [f"127.0.0.1:{ray_metrics_port}"]}]
        elif "static_configs" in job:
            job["static_configs"] = [{"targets": [f"127.0.0.1:{process_port}"]}]
        jobs.append(job)
    config["scrape_configs"] = jobs
    return config


class PrometheusServer:
    def __init__(self, ray_metrics_port: int, workdir: str, process_port: int | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = str(workdir)
        self.config = local_config(ray_metrics_port, process_port or free_port())
        self.process: subprocess.Popen | None = None

    def start(self) -> PrometheusServer:
        config_path = os.path.join(self.workdir, "prometheus.yml")
        with open(config_path, "w") as handle:
            yaml.safe_dump(self.config, handle)
        self.log = open(os.path.join(self.workdir, "prometheus.log"), "w")
        self.process = subprocess.Popen(
            [
                binary("prometheus"),
                f"--config.file={config_path}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                f"--storage.tsdb.path={os.path.join(self.workdir, 'tsdb')}",
                "--web.enable-lifecycle",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"prometheus did not become ready on {self.url}; see {self.log.name}")
            time.sleep(0.2)
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def api(self, path: str, **params) -> dict:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=30) as response:
            body = json.load(response)
        if body["status"] != "success":
            raise RuntimeError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """Instant query (now, or at Unix time `at`): [{"metric": labels, "value": [t, "v"]}]."""
        return self.api("query", query=expr, **({"time": at} if at is not None else {}))["result"]

    def query_range(self, expr: str, start: float, end: float, step_s: float = 1.0) -> list[dict]:
        return self.api("query_range", query=expr, start=start, end=end, step=step_s)["result"]

    def stop(self) -> None:
        stop_child(self.process, grace_s=15)
        self.process = None
        if getattr(self, "log", None):
            self.log.close()

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
