"""Face alignment: detection rate and throughput per core, and its share of a scoring run.

    python bench/bench_alignment.py                   # 300 UTKFace chips + the same 300 re-framed (~2 min)

On one core (torch and OpenCV at 1 thread), for the same faces: every 25th file of
../shared/data/utkface-part1 as it is (200 x 200 chips), and re-framed as archive photos
(bench_robustness.reframe, seed 0: 400-1100 px non-square photos, rolled up to +-20 degrees).
Per data.align mode (images.preprocess_face, bytes in, 112 px chip out):
  none       decode + resize
  box        + OpenCV's Haar cascade (the alternative in the box: no landmarks)
  landmarks  + dlib HOG detector + 5-point shape predictor + warp (agejobs' choice)
it reports faces/s and the share of images where a face was found. The share of a scoring
run is estimated from per-face costs measured in the same run: preprocessing (decode + framing)
against preprocessing + the model's forward pass (MobileNetV2 at 112 px, batch 64, 1 thread,
channels_last), the two per-face CPU costs of `agejobs score` (search is ~1% at gallery sizes
here). Writes bench/results/alignment.json.
"""

from __future__ import annotations

import argparse
import glob
import os
import platform
import subprocess
import sys
import time

from bench_robustness import reframe
from common import settings, write_results

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
UTKFACE = os.path.join(os.path.dirname(ROOT), "shared", "data", "utkface-part1")


def time_preprocessing(encoded: list[bytes], align: str, size: int) -> dict:
    from agejobs.images import Preprocessing, preprocess_face

    preprocess_face(encoded[0], Preprocessing(size, align))  # models loaded outside the timing
    started = time.perf_counter()
    outcomes = [preprocess_face(data, Preprocessing(size, align)).outcome for data in encoded]
    seconds = time.perf_counter() - started
    found = sum(outcome in ("one_face", "several_faces") for outcome in outcomes)
    return {
        "faces_per_s": round(len(encoded) / seconds, 1),
        "ms_per_face": round(1000 * seconds / len(encoded), 2),
        "detected": round(found / len(encoded), 4) if align != "none" else None,
        "outcomes": {name: outcomes.count(name) for name in sorted(set(outcomes))},
    }


def time_forward(size: int, batch: int = 64, repeats: int = 4) -> float:
    """ms per face of MobileNetV2's forward pass (inference, 1 thread, channels_last)."""
    import torch
    import torchvision

    model = torchvision.models.mobilenet_v2().eval().to(memory_format=torch.channels_last)
    images = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        model(images)
        started = time.perf_counter()
        for _ in range(repeats):
            model(images)
    return 1000 * (time.perf_counter() - started) / (repeats * batch)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faces", type=int, default=300)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "alignment.json"))
    args = parser.parse_args()

    import cv2
    import numpy as np
    import torch

    from agejobs.images import decode_image

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    files = sorted(glob.glob(os.path.join(UTKFACE, "*.jpg")))[::25][: args.faces]
    chips = [open(path, "rb").read() for path in files]
    photos = [
        reframe(decode_image(data, path), np.random.default_rng([0, index]))
        for index, (path, data) in enumerate(zip(files, chips))
    ]
    forward_ms = time_forward(args.size)
    results = {
        "machine": f"{platform.node()} ({os.cpu_count()} cores)",
        "settings": settings(args),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "forward_ms_per_face": round(forward_ms, 2),
        "inputs": {},
    }
    for name, encoded in (("utkface chips", chips), ("re-framed photos", photos)):
        modes = {mode: time_preprocessing(encoded, mode, args.size) for mode in ("none", "box", "landmarks")}
        for mode in modes.values():
            mode["share_of_scoring"] = round(mode["ms_per_face"] / (mode["ms_per_face"] + forward_ms), 3)
        results["inputs"][name] = modes
    write_results(args.out, results)
    print(
        f"alignment, 1 core, {args.faces} faces, {args.size} px chips ({results['machine']}, {results['commit']}); "
        f"MobileNetV2 forward {forward_ms:.2f} ms/face"
    )
    print(f"{'input':<18}{'data.align':<12}{'faces/s':>9}{'ms/face':>9}{'detected':>10}{'share of scoring':>18}")
    for name, modes in results["inputs"].items():
        for mode, row in modes.items():
            detected = "-" if row["detected"] is None else f"{100 * row['detected']:.1f}%"
            print(
                f"{name:<18}{mode:<12}{row['faces_per_s']:>9.1f}{row['ms_per_face']:>9.2f}{detected:>10}"
                f"{100 * row['share_of_scoring']:>17.1f}%"
            )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
