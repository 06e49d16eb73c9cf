"""The whole pipeline on Ray, tiny: synth -> train (paper + baselines) -> gallery -> evaluate."""

import json

import pytest

from agejobs.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_demo_pipeline_end_to_end(tmp_path, capsys):
    workdir = tmp_path / "demo"
    overrides = [
        "dataset.synth_subjects=24",
        "dataset.synth_images_per_subject=3",
        "dataset.synth_image_size=40",
        "data.image_size=32",
        "model.weights=",  # random init: the test needs no weights file
        "train.lr_schedule=cosine",
        "train.batch_size=16",
        "train.max_steps=2",
        "train.max_time_s=0",
        "eval.knn_m=5",
        "eval.age_only_model=false",
        # every baseline, DEX too (the demo config leaves it out for time)
        "eval.baselines=[mean, ridge-pixels, regression, dex]",
    ]
    assert main(["demo", "--workdir", str(workdir), *overrides]) == 0
    out = capsys.readouterr().out
    assert "siamese-knn" in out and "report:" in out

    report = json.loads((workdir / "report.json").read_text())
    methods = {m["method"]: m for m in report["methods"]}
    assert set(methods) == {"siamese-knn", "regression", "dex", "mean", "ridge-pixels"}
    test_rows = report["dataset_counts"]["test"]
    for method in methods.values():
        assert method["n"] == test_rows  # every test face estimated by every method
        assert 0 <= method["mae"] < 120
        assert set(method["cs"]) == {str(t) for t in range(11)}
        assert 0.0 <= method["gender_accuracy"] <= 1.0
    assert 0.0 <= methods["siamese-knn"]["gender_accuracy_from_age_embedding"] <= 1.0
    for plot in ("cs_curve.png", "mae_by_age.png", "embedding_siamese-knn.png"):
        assert (workdir / "plots" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (workdir / "config.yaml").exists()
    # Each trained model left a checkpoint with model, optimizer, TrainState and config.
    import torch

    checkpoint = torch.load(f"{report['checkpoints']['siamese-knn']}/checkpoint.pt", weights_only=False)
    assert set(checkpoint) == {"model", "optimizer", "train_state", "config"}
    assert checkpoint["train_state"]["step"] == 2


def test_demo_through_the_embedded_s3_endpoint(tmp_path, capsys):
    """`agejobs demo --storage s3`: faces uploaded to S3, packed into shards there, streamed into
    training, checkpoints and outputs written there, report and plots copied back."""
    workdir = tmp_path / "s3demo"
    overrides = [
        "dataset.synth_subjects=20",
        "dataset.synth_images_per_subject=3",
        "dataset.synth_image_size=40",
        "dataset.pack_shard_mb=0.02",  # several shards even for 60 tiny faces
        "data.image_size=32",
        "model.weights=",
        "train.batch_size=16",
        "train.max_steps=2",
        "train.max_time_s=0",
        "eval.knn_m=5",
        "eval.age_only_model=false",
        "eval.baselines=[mean]",
    ]
    assert main(["demo", "--storage", "s3", "--workdir", str(workdir), *overrides]) == 0
    out = capsys.readouterr().out
    assert "embedded S3 endpoint: http://127.0.0.1:" in out
    report = json.loads((workdir / "report.json").read_text())
    assert report["manifest"] == "s3://agejobs-demo/s3demo/packed"  # trained and evaluated from shards
    pack_counts = report["dataset_counts"]["pack"]
    assert pack_counts["rows_in"] == pack_counts["rows_ok"] == 60 and pack_counts["shards"] > 1
    assert report["checkpoints"]["siamese-knn"].startswith("s3://agejobs-demo/s3demo/checkpoints/")
    methods = {m["method"]: m for m in report["methods"]}
    assert methods["siamese-knn"]["n"] == report["dataset_counts"]["test"]
    assert (workdir / "plots" / "cs_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert (workdir / "config.yaml").exists()


def test_train_and_evaluate_commands_on_s3(local_s3, s3_bucket, capsys):
    """`agejobs train` / `agejobs evaluate` with every path on s3:// (the fixture's endpoint):
    shards streamed into Ray Train, checkpoints uploaded there, the report written there."""
    from agejobs import pack, storage
    from agejobs.datasets.synthetic import SynthSpec, write_synthetic

    write_synthetic(f"{s3_bucket}/faces", SynthSpec(num_subjects=16, images_per_subject=3, image_size=40))
    pack.pack(f"{s3_bucket}/faces/manifest.parquet", f"{s3_bucket}/packed", 20_000, runner="inline")
    tiny = ["data.image_size=32", "model.weights=", "train.batch_size=16", "train.max_steps=2", "train.max_time_s=0"]
    assert (
        main(
            [
                "train",
                "-c",
                "configs/demo.yaml",
                "--manifest",
                f"{s3_bucket}/packed",
                "--workdir",
                f"{s3_bucket}/run",
                *tiny,
            ]
        )
        == 0
    )
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert trained["checkpoint"].startswith(f"{s3_bucket}/run/runs/siamese/checkpoint_")  # train.storage_path=runs
    assert storage.exists(f"{trained['checkpoint']}/checkpoint.pt")
    assert storage.exists(f"{s3_bucket}/run/config.yaml")
    assert json.loads(storage.read_bytes(f"{s3_bucket}/run/agejobs-train.json")) == trained  # the record in the output

    evaluate_args = [
        "--checkpoint",
        trained["checkpoint"],
        "--manifest",
        f"{s3_bucket}/packed",
        "--workdir",
        f"{s3_bucket}/eval",
    ]
    assert main(["evaluate", *evaluate_args]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["report"] == f"{s3_bucket}/eval/report.json"
    report = json.loads(storage.read_bytes(evaluated["report"]))
    assert report["methods"][0]["n"] == evaluated["n"] > 0
    assert storage.read_bytes(f"{s3_bucket}/eval/plots/cs_curve.png")[:4] == b"\x89PNG"
