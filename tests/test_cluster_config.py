"""ray_cluster.yaml against the autoscaler schema shipped in the installed ray; the KubeRay
manifests, Prometheus config and Grafana dashboard against what agejobs actually is."""

import json
import os
import re
import shlex

import pytest
import yaml

import agejobs
from agejobs import metrics
from agejobs.cli import build_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = f"ghcr.io/agejobs/agejobs:{agejobs.__version__}"
WORKER_TYPES = {"cpu_worker": 0, "gpu_embed": 1, "gpu_train": 8}  # GPUs per node


def load(name):
    with open(os.path.join(ROOT, name)) as handle:
        return yaml.safe_load(handle)


def test_ray_cluster_yaml_validates_against_the_installed_autoscaler_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(load("ray_cluster.yaml"))  # what `ray up` does before launching
    validate_config(config)  # jsonschema of ray/autoscaler/ray-schema.json + Ray's own checks
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    assert set(types) == {"head", *WORKER_TYPES}
    for name, gpus in WORKER_TYPES.items():
        assert types[name]["min_workers"] == 0 and types[name]["max_workers"] >= 1
        assert types[name]["resources"].get("GPU", 0) == gpus
    assert types["head"]["resources"]["GPU"] == 0  # no heavy work on the head
    assert 0 < config["idle_timeout_minutes"] <= 30
    assert sum(t["max_workers"] for n, t in types.items() if n != "head") <= config["max_workers"]


def test_ray_cluster_installs_this_version_and_exports_metrics():
    config = load("ray_cluster.yaml")
    setup = " ".join(config["setup_commands"])
    assert f"AGEJOBS_VERSION={agejobs.__version__}" in setup and "/home/ray/agejobs" in setup
    assert config["file_mounts"] == {"/home/ray/agejobs": "."}
    for command in config["head_start_ray_commands"][-1:] + config["worker_start_ray_commands"][-1:]:
        assert "--metrics-export-port=8080" in command


def agejobs_entrypoint(command: str):
    """Parse an `... python -m agejobs SUBCOMMAND ...` command line with the real CLI parser."""
    words = shlex.split(command)
    start = words.index("agejobs", words.index("-m")) + 1
    return build_parser().parse_args(words[start:])


def test_kuberay_raycluster_names_image_resources_and_autoscaling():
    cluster = load("cluster/raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True and spec["rayVersion"].startswith("2.60")
    head = spec["headGroupSpec"]
    assert head["template"]["spec"]["containers"][0]["image"] == IMAGE
    assert head["rayStartParams"]["metrics-export-port"] == "8080"
    groups = {group["groupName"]: group for group in spec["workerGroupSpecs"]}
    assert set(groups) == {name.replace("_", "-") for name in WORKER_TYPES}
    for name, gpus in WORKER_TYPES.items():
        group = groups[name.replace("_", "-")]
        container = group["template"]["spec"]["containers"][0]
        assert container["image"] == IMAGE
        assert group["minReplicas"] == 0 and group["maxReplicas"] >= 1
        assert container["resources"]["limits"].get("nvidia.com/gpu", 0) == gpus
        assert group["rayStartParams"]["metrics-export-port"] == "8080"


@pytest.mark.parametrize(
    ("name", "command"), [("cluster/rayjob-train.yaml", "train"), ("cluster/rayjob-score.yaml", "score")]
)
def test_rayjobs_run_real_agejobs_commands_on_the_cluster(name, command):
    job = load(name)
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": "agejobs"}
    args = agejobs_entrypoint(job["spec"]["entrypoint"])
    assert args.command == command
    from agejobs.config import load_config

    config_path = os.path.join(ROOT, args.config) if getattr(args, "config", None) else None
    load_config(config_path, args.overrides)  # every key=value is a real, well-typed config key
    assert yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    assert job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["image"] == IMAGE


def test_nightly_cronjob_submits_a_dated_scoring_run():
    cron = load("cluster/score-cronjob.yaml")
    assert cron["kind"] == "CronJob" and cron["spec"]["schedule"] == "0 2 * * *"
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == IMAGE
    script = container["args"][0]
    assert "ray job submit --address http://agejobs-head-svc:8265" in script
    args = agejobs_entrypoint(script.split(" -- ", 1)[1].replace("$DAY", "2026-11-22"))
    assert args.command == "score" and args.run_id == "2026-11-22"
    runtime_env = load("cluster/runtime_env.yaml")
    assert runtime_env["env_vars"]["OMP_NUM_THREADS"] == "1"


def test_prometheus_config_scrapes_ray_and_strips_its_prefix_from_ours():
    config = load("cluster/prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["ray"]["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]
    for name in ("ray", "ray-pods"):
        relabel = jobs[name]["metric_relabel_configs"][0]
        assert (
            re.sub(
                f"^{relabel['regex']}$", relabel["replacement"].replace("$1", r"\1"), "ray_agejobs_score_images_total"
            )
            == "agejobs_score_images_total"
        )
    assert jobs["agejobs-process"]["static_configs"][0]["targets"]


def test_grafana_dashboard_is_valid_and_every_query_names_an_exported_metric():
    with open(os.path.join(ROOT, "cluster", "grafana-dashboard.json")) as handle:
        dashboard = json.load(handle)
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    exported = set(metrics.exported_names())
    queried = set()
    for panel in panels:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = set(re.findall(r"\bagejobs_[a-z_]+", target["expr"]))
            assert names, target["expr"]
            assert names <= exported, names - exported
            queried |= names
    # Every family we define is on the dashboard (histograms through their series).
    assert {metrics.full_name(n) for n, d in metrics.DEFINITIONS.items() if d.kind != "histogram"} <= queried
