"""The console script: instant help, JSON count lines, errors that name the input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agejobs.cli import main

UTKFACE = Path(__file__).resolve().parents[2] / "shared" / "data" / "utkface-part1"


def test_help_imports_no_heavy_modules():
    code = (
        "import sys; from agejobs.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'ray', 'scann', 'torchvision', 'pyarrow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_python_dash_m_help():
    out = subprocess.run([sys.executable, "-m", "agejobs", "--help"], capture_output=True, text=True, check=True).stdout
    assert "demo" in out and "ingest" in out


def last_json_line(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


def test_synth_prints_counts(tmp_path, capsys):
    assert (
        main(
            [
                "synth",
                str(tmp_path / "synth"),
                "dataset.synth_subjects=6",
                "dataset.synth_images_per_subject=2",
                "dataset.synth_image_size=40",
            ]
        )
        == 0
    )
    counts = last_json_line(capsys.readouterr().out)
    assert counts["rows_ok"] == 12 and counts["rows_rejected"] == 0
    assert (tmp_path / "synth" / "manifest.parquet").exists()
    assert json.loads((tmp_path / "synth" / "agejobs-synth.json").read_text()) == counts  # the console's record, kept


@pytest.mark.skipif(not UTKFACE.is_dir(), reason="shared UTKFace subset not present beside the checkout")
def test_ingest_utkface_prints_counts(tmp_path, capsys):
    assert main(["ingest", "utkface", str(UTKFACE), str(tmp_path / "utk"), "dataset.verify_images=false"]) == 0
    counts = last_json_line(capsys.readouterr().out)
    assert (counts["rows_ok"], counts["rows_rejected"]) == (9778, 2)
    assert json.loads((tmp_path / "utk" / "agejobs-ingest.json").read_text()) == counts
    assert counts["rows_in"] == counts["rows_ok"] + counts["rows_rejected"]


def test_bad_override_is_a_clear_error(tmp_path, capsys):
    assert main(["demo", "--workdir", str(tmp_path), "train.batchsize=3"]) == 2
    assert "unknown config key train.batchsize" in capsys.readouterr().err


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    argv = [
        "gallery",
        "build",
        "--checkpoint",
        str(tmp_path / "runs" / "nope"),
        "--source",
        str(tmp_path / "m.parquet"),
        "--out",
        str(tmp_path / "gallery"),
        "ray.num_cpus=1",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"agejobs gallery: error: {tmp_path / 'runs' / 'nope'} is not an agejobs checkpoint" in err
    assert "Traceback" not in err


def test_evaluate_overrides_only_inference_settings_of_a_checkpoint(tmp_path):
    from agejobs.cli import inference_config
    from agejobs.config import ConfigError, load_config

    trained = load_config(None, ["data.align=landmarks", "eval.knn_m=5"])
    changed = inference_config(trained, None, ["data.test_flip=true", "eval.knn_m=30"])
    assert (changed.data.test_flip, changed.eval.knn_m, changed.data.align) == (True, 30, "landmarks")
    for key in ("data.align=none", "data.image_size=64", "model.backbone=resnet18"):
        with pytest.raises(ConfigError, match="trained model's own setting"):
            inference_config(trained, None, [key])
    # A config file (-c) lends its inference settings only; overrides come on top.
    job = tmp_path / "job.yaml"
    job.write_text("eval: {knn_m: 7}\ndata: {test_flip: true, image_size: 64, align: none}\n")
    from_file = inference_config(trained, str(job), [])
    assert (from_file.eval.knn_m, from_file.data.test_flip, from_file.data.image_size, from_file.data.align) == (
        7,
        True,
        trained.data.image_size,
        "landmarks",
    )
    assert inference_config(trained, str(job), ["eval.knn_m=9"]).eval.knn_m == 9


INPUT_TYPOS = [
    (
        ["train", "-c", "configs/demo.yaml", "--manifest", "{tmp}/nope.parquet"],
        "manifest {tmp}/nope.parquet does not exist",
    ),
    (["pack", "{tmp}/nope.parquet", "{tmp}/packed"], "manifest {tmp}/nope.parquet does not exist"),
    (["ingest", "utkface", "{tmp}/nope", "{tmp}/out"], "source {tmp}/nope does not exist"),
    (
        ["experiment", "-c", "configs/utkface.yaml", "--workdir", "{tmp}/w", "dataset.source={tmp}/nope"],
        "dataset.source {tmp}/nope does not exist",
    ),
    (
        ["score", "--checkpoint", "{tmp}/ck", "--gallery", "{tmp}/g", "--archive", "{tmp}/a", "--out", "{tmp}/o"],
        "{tmp}/ck is not an agejobs checkpoint",
    ),
    (
        ["evaluate", "--scored", "{tmp}/run", "--labels", "{tmp}/nope.parquet"],
        "labels {tmp}/nope.parquet does not exist",
    ),
]


@pytest.mark.parametrize("argv, message", INPUT_TYPOS, ids=[argv[0] for argv, _ in INPUT_TYPOS])
def test_a_missing_input_is_named_before_ray_starts(argv, message, tmp_path, capsys, monkeypatch):
    """A typo in a path costs no Ray start-up: every command checks its inputs first."""
    from agejobs import ray_runtime

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray started before the inputs were checked")

    monkeypatch.setattr(ray_runtime, "ray_session", no_ray)
    assert main([part.format(tmp=tmp_path) for part in argv]) == 2
    err = capsys.readouterr().err
    assert message.format(tmp=tmp_path) in err and "Traceback" not in err
