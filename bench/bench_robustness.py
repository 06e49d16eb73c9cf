"""Robustness to framing: faces as archives hold them, not as UTKFace crops them.

    python bench/bench_robustness.py                       # trains 2 siamese models (~40 min here)
    python bench/bench_robustness.py --checkpoint none=runs/utkface/checkpoints/siamese-knn

The held-out faces of the seed-0 split of ../shared/data/utkface-part1 are re-framed the way
archive photos are framed, by a seeded generator (`reframe`, one rng per face): the chip
shrunk to 30-55% of the shorter side of a larger, non-square canvas (4:3, 3:4, 16:9, 2:3),
rolled by up to +-20 degrees, placed off-centre on a different background (smooth random colour
field + noise), edges feathered, saved as JPEG of quality 40-90. Each re-framed face keeps its
file name and label; the training split is untouched.

Two siamese models are trained by `agejobs` itself on the training split with one config
(default configs/utkface.yaml), differing only in data.align: "none" and "landmarks" (a
checkpoint given with --checkpoint MODE=DIR is used instead of training that one; it must carry
that data.align). Each is evaluated by the experiment's own kNN estimate (gallery: the training
split's original faces, the checkpoint's own preprocessing) on the original and on the
re-framed test faces. Prints a table, writes bench/results/robustness.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time

from common import settings, write_results

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODES = ("none", "landmarks")
ASPECTS = ((4, 3), (3, 4), (16, 9), (2, 3))


def reframe(face, rng):
    """An RGB uint8 face chip -> the same face in an archive-like photo (see the module doc)."""
    import cv2
    import numpy as np

    across, down = ASPECTS[rng.integers(len(ASPECTS))]
    short = int(rng.integers(400, 641))
    width, height = (round(short * across / down), short) if across >= down else (short, round(short * down / across))
    side = rng.uniform(0.30, 0.55) * min(width, height)
    angle = rng.uniform(-20, 20)
    # The rotated chip's bounding square, kept inside the canvas: off-centre, never cut.
    reach = side * (abs(np.cos(np.radians(angle))) + abs(np.sin(np.radians(angle)))) / 2
    centre = (rng.uniform(reach, width - reach), rng.uniform(reach, height - reach))
    matrix = cv2.getRotationMatrix2D((face.shape[1] / 2, face.shape[0] / 2), angle, side / face.shape[1])
    matrix[:, 2] += np.array(centre) - np.array([face.shape[1] / 2, face.shape[0] / 2])
    field = rng.integers(0, 256, (int(rng.integers(2, 7)), int(rng.integers(2, 7)), 3)).astype(np.uint8)
    background = cv2.resize(field, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    background += rng.normal(0, 6, background.shape)
    warped = cv2.warpAffine(
        face, matrix, (width, height), flags=cv2.INTER_AREA if side < face.shape[1] else cv2.INTER_LINEAR
    )
    mask = cv2.warpAffine(np.ones(face.shape[:2], np.float32), matrix, (width, height))
    mask = cv2.GaussianBlur(mask, (0, 0), max(1.0, side / 60))[:, :, None]
    photo = np.clip(mask * warped + (1 - mask) * background, 0, 255).astype(np.uint8)
    quality = int(rng.integers(40, 91))
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(photo, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return encoded.tobytes()


def write_reframed(manifest: str, out_dir: str, seed: int) -> str:
    """Re-frame every test face of the manifest into out_dir; returns the manifest whose test rows
    point at the re-framed files (written once: a rerun reuses it)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from agejobs.images import decode_image

    reframed_manifest = os.path.join(out_dir, "manifest.parquet")
    if os.path.exists(reframed_manifest):
        return reframed_manifest
    table = pq.read_table(manifest)
    paths = table["path"].to_pylist()
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    for index, (path, split) in enumerate(zip(paths, table["split"].to_pylist())):
        if split != "test":
            continue
        rng = np.random.default_rng([seed, index])
        target = os.path.join(out_dir, "images", os.path.basename(path))
        with open(path, "rb") as handle:
            photo = reframe(decode_image(handle.read(), path), rng)
        with open(target, "wb") as handle:
            handle.write(photo)
        paths[index] = target
    table = table.set_column(table.schema.get_field_index("path"), "path", pa.array(paths))
    pq.write_table(table, reframed_manifest + ".tmp")
    os.replace(reframed_manifest + ".tmp", reframed_manifest)
    return reframed_manifest


def evaluate_model(checkpoint: str, manifests: dict, cfg, plots_dir: str) -> dict:
    """kNN reports of one checkpoint on every variant of the test faces (gallery: train split)."""
    from agejobs import experiment
    from agejobs.checkpoint import load_trained_model

    model_cfg = load_trained_model(checkpoint).cfg
    run_cfg = dataclasses.replace(model_cfg, eval=cfg.eval)
    started = time.perf_counter()
    reference = experiment.embed(checkpoint, manifests["original"], "train", run_cfg)
    results = {}
    for variant, manifest in manifests.items():
        queries = experiment.embed(checkpoint, manifest, "test", run_cfg)
        report = experiment.knn_estimate_reports(
            experiment.SIAMESE, reference, queries, run_cfg, os.path.join(plots_dir, variant)
        )[0]
        results[variant] = {key: report[key] for key in ("n", "mae", "cs", "mae_by_face_outcome")}
        print(
            f"[{model_cfg.data.align}] {variant}: MAE {report['mae']:.2f} on {report['n']} faces; "
            f"{ {k: v['n'] for k, v in report['mae_by_face_outcome'].items()} }",
            flush=True,
        )
    results["evaluate_s"] = round(time.perf_counter() - started, 1)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", default="configs/utkface.yaml", help="relative paths resolve against the repository root"
    )
    parser.add_argument(
        "--checkpoint", action="append", default=[], help="MODE=DIR: use this checkpoint for that data.align"
    )
    parser.add_argument("--seed", type=int, default=0, help="the re-framing generator's seed")
    parser.add_argument(
        "--modes", default=",".join(MODES), help="data.align modes to (re)run; the others' rows are kept from --out"
    )
    parser.add_argument("--num-cpus", type=int, default=4)
    parser.add_argument("--workdir", default=os.path.join(ROOT, "runs", "bench-robustness"))
    parser.add_argument("--out", default=os.path.join(HERE, "results", "robustness.json"))
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = parser.parse_args()

    from agejobs import experiment, storage
    from agejobs.config import load_config, with_absolute_paths
    from agejobs.ray_runtime import quiet_ray_data, ray_session
    from agejobs.train import run_training

    cfg = with_absolute_paths(load_config(os.path.join(ROOT, args.config), args.overrides), ROOT)
    given = dict(item.split("=", 1) for item in args.checkpoint)
    workdir = os.path.abspath(args.workdir)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    kept = {}
    if os.path.exists(args.out):
        with open(args.out) as handle:
            kept = json.load(handle)["models"]
    results = {"machine": f"{platform.node()} ({os.cpu_count()} cores)", "settings": settings(args), "models": {}}
    with ray_session(num_cpus=args.num_cpus):
        quiet_ray_data()
        manifest, _ = experiment.prepare_dataset(cfg, workdir)
        started = time.perf_counter()
        manifests = {
            "original": manifest,
            "reframed": write_reframed(manifest, os.path.join(workdir, "reframed"), args.seed),
        }
        print(f"[reframe] test faces re-framed ({time.perf_counter() - started:.0f} s)", flush=True)
        for mode in MODES:
            if mode not in args.modes.split(","):
                if mode in kept:
                    results["models"][mode] = kept[mode]
                continue
            mode_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, align=mode))
            started = time.perf_counter()
            if mode in given:
                checkpoint, trained = os.path.abspath(given[mode]), "given"
            else:
                outcome = run_training(
                    mode_cfg,
                    manifest,
                    f"siamese-{mode}",
                    storage.join(workdir, "checkpoints"),
                    progress_label=f"align {mode}",
                )
                checkpoint, trained = outcome.checkpoint_path, f"{outcome.metrics.get('step')} steps"
            evaluation = evaluate_model(checkpoint, manifests, mode_cfg, os.path.join(workdir, "plots", mode))
            # Recorded relative to the repository: where a run put its checkpoints is not a setting.
            results["models"][mode] = {
                "checkpoint": os.path.relpath(checkpoint, ROOT),
                "trained": trained,
                "commit": commit,
                "seconds": round(time.perf_counter() - started, 1),
                **evaluation,
            }
    for model in results["models"].values():
        model["gap"] = round(model["reframed"]["mae"] - model["original"]["mae"], 3)
    write_results(args.out, results)
    print(f"\nrobustness to framing, siamese-kNN, {cfg.data.image_size} px ({results['machine']})")
    print(f"{'data.align':<12}{'original MAE':>14}{'re-framed MAE':>15}{'gap':>8}{'CS(5) orig / re-framed':>26}")
    for mode, model in results["models"].items():
        original, reframed = model["original"], model["reframed"]
        print(
            f"{mode:<12}{original['mae']:>14.2f}{reframed['mae']:>15.2f}{model['gap']:>+8.2f}"
            f"{original['cs']['5']:>17.1f}% / {reframed['cs']['5']:.1f}%   (evaluated at {model.get('commit', '?')})"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
