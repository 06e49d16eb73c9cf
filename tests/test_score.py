"""Gallery build and nightly scoring, on Ray, tiny: refusal of a foreign model, kill + rerun exactly
once, corrupt images as error rows, evaluate on scored output."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from agejobs.config import load_config
from agejobs.datasets.synthetic import SynthSpec, write_synthetic
from agejobs.gallery import GalleryMismatchError, build_gallery, load_gallery, read_gallery_manifest
from agejobs.ray_runtime import ray_session
from agejobs.score import read_scored, score_archive
from agejobs.train import write_initial_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.ray]

OVERRIDES = [
    "model.backbone=mobilenet_v3_small",
    "model.weights=",
    "data.image_size=32",
    "eval.knn_m=5",
    "resources.embed.batch_size=16",
    "resources.decode.batch_size=16",
    "resources.search.batch_size=16",
    "ray.num_cpus=4",
]


def make_checkpoint(directory, seed):
    """An untrained model saved as a training checkpoint: its embeddings are as deterministic
    as a trained one's, which is all gallery and scoring mechanics need."""
    return write_initial_checkpoint(str(directory), load_config(None, OVERRIDES + [f"train.seed={seed}"]))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("score")
    write_synthetic(str(root / "faces"), SynthSpec(num_subjects=14, images_per_subject=3, image_size=40, seed=1))
    cfg = load_config(None, OVERRIDES)
    checkpoint = make_checkpoint(root / "ck-a", seed=1)
    with ray_session(num_cpus=4):
        manifest = build_gallery(checkpoint, str(root / "faces" / "manifest.parquet"), str(root / "gallery"), cfg)
    return {"root": root, "cfg": cfg, "checkpoint": checkpoint, "gallery": str(root / "gallery"), "manifest": manifest}


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "agejobs", *args], capture_output=True, text=True, timeout=600)


def score_args(world, archive, out, *extra):
    return [
        "score",
        "--checkpoint",
        world["checkpoint"],
        "--gallery",
        world["gallery"],
        "--archive",
        str(archive),
        "--out",
        str(out),
        "--run-id",
        "2026-11-22",
        *OVERRIDES,
        *extra,
    ]


def test_gallery_manifest_describes_what_was_built(world):
    manifest = read_gallery_manifest(world["gallery"])
    train_rows = pq.read_table(world["root"] / "faces" / "manifest.parquet").to_pandas().query("split == 'train'")
    assert manifest["count"] == manifest["faces_embedded"] == len(train_rows)
    assert manifest["age_embedding_dim"] == 70 and manifest["gender_embedding_dim"] == 10
    assert manifest["distance"] == "l1" and manifest["search"]["mode"] == "brute_force"
    assert manifest["checkpoint"] == world["checkpoint"] and len(manifest["model_fingerprint"]) == 64


def test_gallery_built_by_one_checkpoint_is_refused_by_another(world, tmp_path):
    other = make_checkpoint(tmp_path / "ck-b", seed=2)
    with pytest.raises(GalleryMismatchError, match="ck-a.*ck-b"):
        with ray_session(num_cpus=4):
            score_archive(
                str(world["root"] / "faces" / "images"),
                str(tmp_path / "out"),
                "r",
                other,
                world["gallery"],
                world["cfg"],
            )
    assert not (tmp_path / "out").exists()  # refused before any work
    done = run_cli(*score_args({**world, "checkpoint": other}, world["root"] / "faces" / "images", tmp_path / "out"))
    assert done.returncode == 2
    assert "was embedded by checkpoint" in done.stderr and "Build a gallery with this checkpoint" in done.stderr
    # The matching model loads it.
    assert load_gallery(world["gallery"], world["checkpoint"], world["manifest"]["model_fingerprint"]).ages.size


def test_killed_scoring_run_rerun_holds_each_input_exactly_once(world, tmp_path):
    archive = world["root"] / "faces" / "images"
    inputs = sorted(str(archive / name) for name in os.listdir(archive))
    out = tmp_path / "out"
    killed = run_cli(*score_args(world, archive, out, "score.shard_images=8", "score.fail_after_shards=2"))
    assert killed.returncode == 3, killed.stderr[-2000:]
    run_dir = out / "2026-11-22"
    assert len(list(run_dir.glob("shard-*.parquet.done"))) == 2 and not (run_dir / "run.json").exists()

    rerun = run_cli(*score_args(world, archive, out, "score.shard_images=8"))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert summary["shards"] == 6 and summary["shards_skipped"] == 2 and summary["shards_written"] == 4
    predictions, errors = read_scored(str(run_dir))
    paths = predictions["path"].to_pylist() + errors["path"].to_pylist()
    assert sorted(paths) == inputs  # every input once: no duplicates, no gaps
    assert errors.num_rows == 0 and summary["rows_in"] == len(inputs)
    stamps = set(zip(predictions["model_version"].to_pylist(), predictions["gallery_version"].to_pylist()))
    assert stamps == {(world["manifest"]["model_fingerprint"][:16], world["manifest"]["gallery_version"])}

    before = written_files(out)
    again = run_cli(*score_args(world, archive, out, "score.shard_images=8"))
    assert again.returncode == 0, again.stderr[-2000:]
    summary_again = json.loads(again.stdout.strip().splitlines()[-1])
    assert summary_again["shards_written"] == 0 and summary_again["shards_skipped"] == 6
    assert summary_again["rows_in"] == summary["rows_in"] and summary_again["scored"] == summary["scored"]
    assert written_files(out) == before  # a finished night: no file written, touched or added (run.json too)


def written_files(root: Path) -> dict:
    """Every file under root: (mtime_ns, size, bytes) by relative path."""
    return {
        str(path.relative_to(root)): (path.stat().st_mtime_ns, path.stat().st_size, path.read_bytes())
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_corrupt_images_become_error_rows_and_every_other_input_is_scored(world, tmp_path):
    archive = tmp_path / "archive"
    shutil.copytree(world["root"] / "faces" / "images", archive / "good")
    bad = {
        "bad/truncated.jpg": (world["root"] / "faces" / "images").glob("*.jpg").__next__().read_bytes()[:300],
        "bad/empty.jpg": b"",
        "bad/notes.txt": b"not an image",
        "bad/page.jpg": b"<html>503 Slow Down</html>",
    }
    for name, data in bad.items():
        (archive / name).parent.mkdir(exist_ok=True)
        (archive / name).write_bytes(data)
    with ray_session(num_cpus=4):
        summary = score_archive(
            str(archive), str(tmp_path / "out"), "night", world["checkpoint"], world["gallery"], world["cfg"]
        )
    predictions, errors = read_scored(str(tmp_path / "out" / "night"))
    good = sorted(str(path) for path in (archive / "good").iterdir())
    assert sorted(predictions["path"].to_pylist()) == good
    assert sorted(errors["image_id"].to_pylist()) == sorted(bad)
    for path, reason in zip(errors["path"].to_pylist(), errors["reason"].to_pylist()):
        assert reason.startswith(path), reason  # each reason names its input
    assert set(errors["reason_class"].to_pylist()) == {"decode"}  # the decoder's own class, not the words
    assert summary["rows_in"] == len(good) + len(bad) == summary["scored"] + summary["errors"]
    assert predictions["predicted_age"].null_count == 0 and min(predictions["predicted_age"].to_pylist()) > 0
    assert set(predictions["predicted_gender"].to_pylist()) <= {0, 1}


def test_evaluate_on_scored_output_joined_with_labels(world, tmp_path):
    archive = world["root"] / "faces" / "images"
    assert run_cli(*score_args(world, archive, tmp_path / "out")).returncode == 0
    done = run_cli(
        "evaluate",
        "--scored",
        str(tmp_path / "out" / "2026-11-22"),
        "--labels",
        str(world["root"] / "faces" / "manifest.parquet"),
        "--workdir",
        str(tmp_path / "eval"),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["methods"][0]["n"] == len(os.listdir(archive)) == report["labelled_rows"]
    assert (tmp_path / "eval" / "plots" / "cs_curve.png").exists()


def test_evaluation_and_scoring_give_each_face_the_same_estimate(world, tmp_path):
    """Evaluation (`agejobs evaluate`, the experiment's report) and nightly scoring estimate with one
    Gallery object: for the same checkpoint, gallery faces (the train split, searched exactly) and
    query faces, every face gets the same age, spread, gender and vote share from both."""
    import numpy as np

    from agejobs import experiment
    from agejobs.checkpoint import checkpoint_identity

    faces = str(world["root"] / "faces" / "manifest.parquet")
    cfg = load_config(None, OVERRIDES + ["gallery.search.mode=exact"])
    model_cfg, _ = checkpoint_identity(world["checkpoint"])
    with ray_session(num_cpus=4):
        build_gallery(world["checkpoint"], faces, str(tmp_path / "gallery"), cfg)
        score_archive(
            str(world["root"] / "faces" / "images"),
            str(tmp_path / "out"),
            "r",
            world["checkpoint"],
            str(tmp_path / "gallery"),
            cfg,
        )
        reference = experiment.embed(world["checkpoint"], faces, "train", model_cfg)
        queries = experiment.embed(world["checkpoint"], faces, "test", model_cfg)
    evaluated = experiment.knn_estimates(reference, queries, model_cfg)
    paths = pq.read_table(faces, columns=["image_id", "path"]).to_pydict()
    path_of = dict(zip(paths["image_id"], paths["path"]))
    scored, _ = read_scored(str(tmp_path / "out" / "r"))
    by_path = {path: row for row, path in enumerate(scored["path"].to_pylist())}
    rows = [by_path[path_of[image_id]] for image_id in evaluated["image_id"]]
    assert len(rows) == len(queries["age"]) > 5
    for name in ("predicted_age", "age_spread", "predicted_gender", "gender_vote_share"):
        from_scoring = scored[name].to_numpy()[rows]
        from_evaluation = np.asarray(evaluated[name]).astype(from_scoring.dtype)
        assert np.array_equal(from_scoring, from_evaluation), name
    # Not vacuous: the faces' estimates differ from one another.
    assert len(np.unique(evaluated["predicted_age"])) > 1


def test_scoring_a_packed_archive_on_s3_writes_its_output_there(world, s3_bucket):
    """The nightly shape on object storage: faces packed into s3:// shards, scored, output on s3://."""
    from agejobs import pack, storage

    write_synthetic(f"{s3_bucket}/faces", SynthSpec(num_subjects=6, images_per_subject=3, image_size=40, seed=7))
    pack.pack(f"{s3_bucket}/faces/manifest.parquet", f"{s3_bucket}/packed", target_shard_bytes=12_000, runner="inline")
    with ray_session(num_cpus=4):
        summary = score_archive(
            f"{s3_bucket}/packed", f"{s3_bucket}/scores", "night", world["checkpoint"], world["gallery"], world["cfg"]
        )
    plan_shards = pack.read_plan(f"{s3_bucket}/packed").num_shards
    assert summary["shards"] == plan_shards >= 2 and summary["scored"] == 18 and summary["errors"] == 0
    predictions, _ = read_scored(f"{s3_bucket}/scores/night")
    assert sorted(predictions["path"].to_pylist()) == sorted(
        uri for uri, _ in storage.find_files(f"{s3_bucket}/faces/images")
    )  # the faces' own s3:// URIs
    assert storage.is_done(f"{s3_bucket}/scores/night/shard-00000.parquet")


def test_scoring_frames_faces_as_the_checkpoint_was_trained_and_writes_the_outcome(world, tmp_path):
    """The checkpoint says data.align=landmarks; the scoring job's own config says nothing of it.
    Every output row says what the face search found."""
    utkface = Path(__file__).resolve().parents[2] / "shared" / "data" / "utkface-part1"
    if not utkface.is_dir():
        pytest.skip(f"{utkface} absent: no real face to find")
    checkpoint = write_initial_checkpoint(str(tmp_path / "ck"), load_config(None, OVERRIDES + ["data.align=landmarks"]))
    archive = tmp_path / "archive"
    archive.mkdir()
    face = sorted(utkface.iterdir())[0]
    shutil.copy(face, archive / "face.jpg")
    Image.new("RGB", (120, 90), (90, 90, 90)).save(archive / "blank.jpg")
    with ray_session(num_cpus=4):
        gallery = build_gallery(
            checkpoint, str(world["root"] / "faces" / "manifest.parquet"), str(tmp_path / "gallery"), world["cfg"]
        )
        score_archive(str(archive), str(tmp_path / "out"), "night", checkpoint, str(tmp_path / "gallery"), world["cfg"])
    assert gallery["preprocessing"] == {"size": 32, "align": "landmarks", "no_face": "whole", "test_flip": False}
    assert gallery["face_outcomes"] == {"no_face": gallery["faces_embedded"]}  # drawn faces: none found, kept whole
    predictions, errors = read_scored(str(tmp_path / "out" / "night"))
    outcomes = dict(
        zip([Path(p).name for p in predictions["path"].to_pylist()], predictions["face_outcome"].to_pylist())
    )
    assert outcomes == {"face.jpg": "one_face", "blank.jpg": "no_face"} and errors.num_rows == 0
    assert sorted(predictions["faces_found"].to_pylist()) == [0, 1]


def test_a_finished_run_of_another_model_is_refused(tmp_path):
    from agejobs.score import RUN_FILE, finished_run

    stamp = {"model_version": "a" * 16, "gallery_version": "g1", "run_id": "night"}
    assert finished_run(str(tmp_path), stamp) is None  # never finished: score it
    (tmp_path / RUN_FILE).write_text(json.dumps({**stamp, "rows_in": 3}))
    assert finished_run(str(tmp_path), stamp)["rows_in"] == 3
    with pytest.raises(ValueError, match="was scored with"):
        finished_run(str(tmp_path), {**stamp, "model_version": "b" * 16})
