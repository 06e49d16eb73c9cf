"""Ray's fake multi-node autoscaler with ray_cluster.yaml's worker types: a scoring run that asks
for more than the head holds makes the cluster add nodes, completes, and the idle nodes go away."""

import os
import threading
import time

import pytest
from test_score import OVERRIDES

from agejobs.config import load_config
from agejobs.train import write_initial_checkpoint
from tests.ray_local import LocalRayHead, fake_autoscaling_config

pytestmark = [pytest.mark.slow, pytest.mark.ray]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER_YAML = os.path.join(ROOT, "ray_cluster.yaml")


def alive_nodes():
    import ray

    return [node for node in ray.nodes() if node["Alive"]]


def test_fake_config_keeps_the_worker_types_of_ray_cluster_yaml():
    config = fake_autoscaling_config(CLUSTER_YAML, "127.0.0.1:1", head_cpus=1)
    assert set(config["available_node_types"]) == {"ray.head.default", "cpu_worker", "gpu_embed", "gpu_train"}
    assert config["available_node_types"]["gpu_embed"]["resources"]["GPU"] == 1
    assert "GPU" not in config["available_node_types"]["cpu_worker"]["resources"]
    assert all(t.get("min_workers", 0) == 0 for t in config["available_node_types"].values())


def test_scoring_beyond_the_head_adds_nodes_then_idle_nodes_are_removed(tmp_path):
    import ray

    from agejobs.datasets.synthetic import SynthSpec, write_synthetic
    from agejobs.gallery import build_gallery
    from agejobs.ray_runtime import quiet_ray_data, ray_session
    from agejobs.score import score_archive

    write_synthetic(str(tmp_path / "faces"), SynthSpec(num_subjects=12, images_per_subject=4, image_size=40, seed=5))
    checkpoint = write_initial_checkpoint(str(tmp_path / "ck"), load_config(None, OVERRIDES))
    # The head has 1 CPU; decode (0.5) + 2 embedding actors (1 each) + search (0.5) need 3.
    cfg = load_config(
        None,
        OVERRIDES
        + [
            "resources.embed.concurrency=2",
            "score.shard_images=8",
            "resources.decode.batch_size=4",
            "resources.embed.batch_size=4",
            "resources.search.batch_size=4",
        ],
    )
    with LocalRayHead(num_cpus=1, autoscaling=CLUSTER_YAML, idle_timeout_minutes=0.2) as head:
        with ray_session(address=head.gcs_address):
            quiet_ray_data()
            assert len(alive_nodes()) == 1
            peak = {"nodes": 1, "first_added": None}

            def watch(stop):
                while not stop.is_set():
                    nodes = alive_nodes()
                    peak["nodes"] = max(peak["nodes"], len(nodes))
                    added = [
                        node for node in nodes if "GPU" in node["Resources"] or node["Resources"].get("CPU", 0) == 2
                    ]
                    if added and peak["first_added"] is None:
                        peak["first_added"] = "gpu" if added[0]["Resources"].get("GPU") else "cpu"
                    time.sleep(0.5)

            stop = threading.Event()
            watcher = threading.Thread(target=watch, args=(stop,), daemon=True)
            watcher.start()
            build_gallery(checkpoint, str(tmp_path / "faces" / "manifest.parquet"), str(tmp_path / "gallery"), cfg)
            summary = score_archive(
                str(tmp_path / "faces" / "images"),
                str(tmp_path / "out"),
                "night",
                checkpoint,
                str(tmp_path / "gallery"),
                cfg,
            )
            stop.set()
            watcher.join()
            assert summary["rows_in"] == 48 and summary["scored"] == 48
            assert peak["nodes"] >= 2, "the autoscaler never added a node"
            # CPU-only work scales the CPU worker type first (GPU types only once it is at its
            # max_workers: Ray Data asks for more than the 2 fake cpu_worker nodes hold).
            assert peak["first_added"] == "cpu", peak
            # Idle nodes leave after idle_timeout_minutes (12 s) plus an update or two.
            deadline = time.monotonic() + 120
            while len(alive_nodes()) > 1 and time.monotonic() < deadline:
                time.sleep(1)
            assert len(alive_nodes()) == 1, [n["NodeManagerAddress"] for n in alive_nodes()]
    assert not ray.is_initialized()
