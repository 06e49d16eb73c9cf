"""Alert rules: promtool's own checks and unit tests, one firing test per rule, and the KubeRay
PrometheusRule equal to cluster/alerts.yml.

    python -m tests.test_alerts      # regenerate cluster/prometheus-rule.yaml from alerts.yml
"""

import os
import subprocess

import pytest
import yaml

from tests.prometheus_server import CLUSTER, MISSING, binary, local_config

RULE_HEADER = """# cluster/alerts.yml as a PrometheusRule, for clusters whose Prometheus is run by the Prometheus
# Operator (kube-prometheus-stack): `kubectl apply -f cluster/prometheus-rule.yaml`. The operator
# selects rules by label: set `release` to your stack's release name. Generated from alerts.yml
# (tests/test_alerts.py fails when the two differ); edit alerts.yml and regenerate with
#   python -m tests.test_alerts
"""
needs_promtool = pytest.mark.skipif(binary("promtool") is None, reason=MISSING)


def load(name: str) -> dict:
    with open(os.path.join(CLUSTER, name)) as handle:
        return yaml.safe_load(handle)


def promtool(*args: str) -> str:
    done = subprocess.run([binary("promtool"), *args], capture_output=True, text=True, cwd=CLUSTER)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


@needs_promtool
def test_rules_pass_promtool_check_and_unit_tests():
    assert "SUCCESS: 9 rules found" in promtool("check", "rules", "alerts.yml")
    assert "SUCCESS" in promtool("test", "rules", "alerts.test.yml")


@needs_promtool
def test_prometheus_config_passes_promtool(tmp_path):
    # Debian's build has no Kubernetes discovery, so the ray-pods job is checked without it; the
    # rest is cluster/prometheus.yml as shipped (rule file included).
    config = load("prometheus.yml")
    config["scrape_configs"] = [job for job in config["scrape_configs"] if "kubernetes_sd_configs" not in job]
    config["rule_files"] = [os.path.join(CLUSTER, name) for name in config["rule_files"]]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    assert "is valid prometheus config file syntax" in promtool("check", "config", str(path))
    local = tmp_path / "local.yml"
    local.write_text(yaml.safe_dump(local_config(8080, 9464)))
    promtool("check", "config", str(local))


def test_every_rule_has_a_firing_unit_test():
    rules = [rule["alert"] for group in load("alerts.yml")["groups"] for rule in group["rules"]]
    assert len(rules) == len(set(rules)) == 9
    fired = {
        check["alertname"]
        for test in load("alerts.test.yml")["tests"]
        for check in test["alert_rule_test"]
        if check.get("exp_alerts")
    }
    assert fired == set(rules)
    for group in load("alerts.yml")["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("page", "ticket") and rule["annotations"]["summary"], rule["alert"]


def prometheus_rule_text() -> str:
    class Dumper(yaml.SafeDumper):
        pass

    Dumper.add_representer(
        str,
        lambda dumper, text: dumper.represent_scalar(
            "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None
        ),
    )
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "agejobs", "labels": {"app.kubernetes.io/part-of": "agejobs", "release": "prometheus"}},
        "spec": {"groups": load("alerts.yml")["groups"]},
    }
    return RULE_HEADER + yaml.dump(rule, Dumper=Dumper, sort_keys=False, width=100)


def test_prometheus_rule_for_kuberay_is_alerts_yml():
    rule = load("prometheus-rule.yaml")
    assert rule["kind"] == "PrometheusRule" and rule["spec"]["groups"] == load("alerts.yml")["groups"]
    with open(os.path.join(CLUSTER, "prometheus-rule.yaml")) as handle:
        assert handle.read() == prometheus_rule_text(), "regenerate: python -m tests.test_alerts"


if __name__ == "__main__":
    with open(os.path.join(CLUSTER, "prometheus-rule.yaml"), "w") as handle:
        handle.write(prometheus_rule_text())
