"""A Ray head started with `ray start` on this machine, for the job-submission and autoscaling tests
(a test helper, not part of the package: it lists Ray processes with psutil, a test dependency).

    with LocalRayHead(num_cpus=4) as head:                      # `ray job submit` target
        subprocess.run(["ray", "job", "submit", "--address", head.dashboard_url, ...], env=head.env)

    with LocalRayHead(num_cpus=1, autoscaling=ray_cluster_yaml) as head:
        ...  # Ray's fake multi-node provider adds and removes "nodes" (local raylets)

The head gets its own temp dir, free ports and an explicit CPU count, and is stopped by the ids of
the processes it started: `ray stop` (and ray.cluster_utils.AutoscalingCluster, which calls it)
would kill every Ray process on the machine.

The autoscaling harness uses the worker types of ray_cluster.yaml, so the same types scale
locally as on AWS: their names, GPU counts and limits, with CPUs, node counts and the idle
timeout shrunk to what one small machine holds (`fake_autoscaling_config`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile

from agejobs.processes import end_processes

BIN = os.path.dirname(sys.executable)
# Processes of a Ray node (head or fake worker node) and of its workers.
RAY_PROCESS_MARKERS = (
    "gcs_server",
    "raylet",
    "ray::",
    "ray/dashboard",
    "ray/_private",
    "default_worker",
    "log_monitor",
    "monitor.py",
    "runtime_env",
    "ray.util.client.server",
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ray_processes() -> set[int]:
    import psutil

    found = set()
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "ray" in cmdline and any(marker in cmdline for marker in RAY_PROCESS_MARKERS):
            found.add(process.info["pid"])
    return found


def fake_autoscaling_config(
    cluster_yaml: str,
    gcs_address: str,
    head_cpus: int,
    cpus_per_node: int = 2,
    max_nodes_per_type: int = 2,
    idle_timeout_minutes: float = 0.2,
) -> dict:
    """ray_cluster.yaml's worker types for Ray's fake multi-node provider (nodes = local raylets)."""
    import yaml

    with open(cluster_yaml) as handle:
        cluster = yaml.safe_load(handle)
    head_type = cluster["head_node_type"]
    node_types = {
        "ray.head.default": {"resources": {"CPU": head_cpus}, "node_config": {}, "max_workers": 0},
    }
    for name, node_type in cluster["available_node_types"].items():
        if name == head_type:
            continue
        gpus = node_type.get("resources", {}).get("GPU", 0)
        resources = {"CPU": cpus_per_node, **({"GPU": min(gpus, 1)} if gpus else {})}
        node_types[name] = {
            "resources": resources,
            "node_config": {},
            "min_workers": node_type.get("min_workers", 0),
            "max_workers": min(node_type.get("max_workers", 1), max_nodes_per_type),
        }
    return {
        "cluster_name": f"{cluster['cluster_name']}-local",
        "max_workers": max_nodes_per_type * (len(node_types) - 1),
        "upscaling_speed": cluster.get("upscaling_speed", 1.0),
        "idle_timeout_minutes": idle_timeout_minutes,
        "provider": {
            "type": "fake_multinode",
            "gcs_address": gcs_address,
            "disable_launch_config_check": True,
            "disable_node_updaters": True,
            "use_node_id_as_ip": True,
        },
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": node_types,
        "head_node_type": "ray.head.default",
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


class LocalRayHead:
    def __init__(self, num_cpus: int = 4, autoscaling: str | None = None, metrics_export_port: int = 0, **fake_options):
        self.num_cpus = num_cpus
        self.autoscaling = autoscaling  # path of a cluster YAML whose worker types are faked locally
        self.fake_options = fake_options
        self.metrics_export_port = metrics_export_port
        self.temp_dir = tempfile.mkdtemp(prefix="agejobs-head-", dir="/tmp")
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "disabled",
            "PATH": f"{BIN}:{os.environ['PATH']}",
            "RAY_EXPORT_COUNTER_AS_GAUGE": "0",
        }
        self.started: set[int] = set()
        self.before: set[int] = set()

    def start(self) -> LocalRayHead:
        from ray._private.services import get_node_ip_address

        port, dashboard_port = free_port(), free_port()
        self.gcs_address = f"{get_node_ip_address()}:{port}"
        self.dashboard_url = f"http://127.0.0.1:{dashboard_port}"
        command = [
            f"{BIN}/ray",
            "start",
            "--head",
            f"--port={port}",
            f"--dashboard-port={dashboard_port}",
            "--dashboard-host=127.0.0.1",
            "--include-dashboard=true",
            f"--num-cpus={self.num_cpus}",
            f"--temp-dir={self.temp_dir}",
            "--disable-usage-stats",
            f"--ray-client-server-port={free_port()}",
        ]
        if self.metrics_export_port:
            command.append(f"--metrics-export-port={self.metrics_export_port}")
        if self.autoscaling:
            config = fake_autoscaling_config(self.autoscaling, self.gcs_address, self.num_cpus, **self.fake_options)
            config_path = os.path.join(self.temp_dir, "autoscaling.json")
            with open(config_path, "w") as handle:
                json.dump(config, handle)
            command.append(f"--autoscaling-config={config_path}")
            # The fake provider refuses to run without RAY_FAKE_CLUSTER; a 1 s update loop lets
            # tests see scale-up and scale-down in seconds.
            self.env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
        self.before = ray_processes()
        done = subprocess.run(command, env=self.env, capture_output=True, text=True)
        self.started = ray_processes() - self.before
        if done.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        return self

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM, then SIGKILL, to the Ray processes that appeared since `start` (fake nodes and
        job drivers included), and nothing else; then remove the head's temp dir (logs, sockets,
        ~7 MB a head), which no process uses any more."""
        end_processes(self.started | (ray_processes() - self.before), grace_s)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalRayHead:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
