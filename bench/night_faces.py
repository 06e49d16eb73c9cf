"""Seeded archives of many distinct small faces for the scale benchmarks.

Face k is a jittered crop of one of the shared UTKFace chips (which one, the crop box, a mirror,
exposure and the JPEG quality all drawn from a generator seeded by (seed, k)), resized to 64 px and re-encoded: the
same (seed, k) gives the same bytes on any machine, and no two faces share their bytes (checked
when a pack is written). Labels are the source chip's, so a scored night can be checked too.

    sources = load_sources("runs/night/utkface/manifest.parquet")
    write_pack("runs/night/pack-1m", sources, faces=1_000_000, seed=0)      # agejobs pack layout
    write_loose("runs/night/loose-1m", sources, faces=1_000_000, seed=0)    # faces/NNNN/*.jpg

Work is split over processes (fork, the decoded sources shared copy-on-write); a pack shard or a
loose directory that is already complete is skipped, so an interrupted generator resumes.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
from dataclasses import dataclass

import numpy as np

SOURCE_SIZE = 80  # chips are decoded once and kept at this size; crops are taken from it
FACE_SIZE = 64
MIN_CROP = 56
FACES_PER_DIR = 1000


@dataclass
class Sources:
    pixels: np.ndarray  # (n, SOURCE_SIZE, SOURCE_SIZE, 3) uint8
    ages: np.ndarray
    genders: np.ndarray
    image_ids: list[str]


def load_sources(manifest_uri: str) -> Sources:
    """Every face of a manifest, decoded and resized to SOURCE_SIZE."""
    from agejobs import storage
    from agejobs.datasets.manifest import read_manifest
    from agejobs.images import decode_image, resize_square

    table = read_manifest(manifest_uri)
    paths = table.column("path").to_pylist()
    pixels = np.stack([resize_square(decode_image(storage.read_bytes(path), path), SOURCE_SIZE) for path in paths])
    return Sources(
        pixels,
        np.asarray(table.column("age")),
        np.asarray(table.column("gender")),
        table.column("image_id").to_pylist(),
    )


def face_id(k: int) -> str:
    return f"night-{k:07d}.jpg"


def make_face(sources: Sources, seed: int, k: int) -> tuple[bytes, int]:
    """(JPEG bytes, index of the source face) of face k."""
    from PIL import Image

    rng = np.random.default_rng([seed, k])
    source = int(rng.integers(len(sources.pixels)))
    crop = int(rng.integers(MIN_CROP, SOURCE_SIZE + 1))
    top, left = (int(v) for v in rng.integers(0, SOURCE_SIZE - crop + 1, size=2))
    patch = sources.pixels[source, top : top + crop, left : left + crop].astype(np.float32)
    # Exposure jitter: crop, flip and quality alone repeat bytes about 4 times in 1,000 at 1M faces.
    gain, bias = rng.uniform(0.8, 1.2), rng.uniform(-16, 16)
    patch = np.clip(patch * gain + bias, 0, 255).astype(np.uint8)
    image = Image.fromarray(patch).resize((FACE_SIZE, FACE_SIZE), Image.BILINEAR)
    if rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.integers(80, 96)))
    return buffer.getvalue(), source


def digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=8).digest()


# Set in the parent before forking: workers read the decoded sources without pickling them.
_SOURCES: Sources | None = None


def _pack_shard(task: tuple[str, int, int, int, int]) -> np.ndarray:
    from agejobs import pack, storage

    out, seed, index, start, stop = task
    digests = np.empty(stop - start, dtype="S8")
    rows = []
    for position, k in enumerate(range(start, stop)):
        data, source = make_face(_SOURCES, seed, k)
        digests[position] = digest(data)
        rows.append(
            {
                "image_id": face_id(k),
                "path": face_id(k),
                "image_bytes": data,
                "age": int(_SOURCES.ages[source]),
                "gender": int(_SOURCES.genders[source]),
                "subject_id": _SOURCES.image_ids[source],
                "split": "test",
                "dataset": "night",
            }
        )
    if not storage.is_done(pack.shard_uri(out, index)):
        pack.write_shard(rows, [], out, index)
    return digests


def _loose_dir(task: tuple[str, int, int, int]) -> int:
    out, seed, start, stop = task
    directory = os.path.join(out, "faces", f"{start // FACES_PER_DIR:04d}")
    if os.path.isdir(directory) and len(os.listdir(directory)) == stop - start:
        return 0
    os.makedirs(directory, exist_ok=True)
    for k in range(start, stop):
        with open(os.path.join(directory, face_id(k)), "wb") as handle:
            handle.write(make_face(_SOURCES, seed, k)[0])
    return stop - start


def _run(function, tasks: list, sources: Sources, processes: int) -> list:
    global _SOURCES
    _SOURCES = sources
    try:
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            return pool.map(function, tasks, chunksize=1)
    finally:
        _SOURCES = None


def write_pack(
    out: str, sources: Sources, faces: int, seed: int = 0, rows_per_shard: int = 8192, processes: int = 2
) -> dict:
    """A complete pack (pack.json, shards, empty error tables, done-markers) of faces 0..faces-1."""
    from agejobs import pack

    num_shards = -(-faces // rows_per_shard)
    plan = pack.PackPlan(
        source=f"night_faces seed={seed} faces={faces}",
        rows=faces,
        rows_per_shard=rows_per_shard,
        num_shards=num_shards,
        target_shard_bytes=0,
        verify_images=False,
        row_order_seed=None,
    )
    os.makedirs(out, exist_ok=True)
    pack.write_plan(out, plan)
    tasks = [
        (out, seed, index, index * rows_per_shard, min(faces, (index + 1) * rows_per_shard))
        for index in range(num_shards)
    ]
    digests = np.concatenate(_run(_pack_shard, tasks, sources, processes))
    distinct = len(np.unique(digests))
    if distinct != faces:
        raise RuntimeError(f"{out}: only {distinct} of {faces} generated faces have distinct bytes")
    return {"faces": faces, "shards": num_shards, "distinct_bytes": distinct}


def write_loose(out: str, sources: Sources, faces: int, seed: int = 0, processes: int = 2) -> dict:
    """faces/NNNN/night-KKKKKKK.jpg, FACES_PER_DIR files a directory: a loose nightly archive."""
    tasks = [(out, seed, start, min(faces, start + FACES_PER_DIR)) for start in range(0, faces, FACES_PER_DIR)]
    written = sum(_run(_loose_dir, tasks, sources, processes))
    return {"faces": faces, "directories": len(tasks), "files_written_now": written}
