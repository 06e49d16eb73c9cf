"""Training batches are mixed as a random permutation mixes them, whatever the source's order.

A label-sorted manifest (one row group, ages ascending: what an importer listing UTKFace by file
name used to write) and a pack made from it are streamed into 2 Ray Train workers through the
trainer's own dataset, TorchTrainer and per-epoch batch iterator (`train.training_dataset`,
`train.make_trainer`, `train.epoch_batches`). The loop records what each step receives. Each
face's PNG encodes its own row number and age in its first pixel, so the ids are read from the
decoded images the loop gets, not from a side column.

Reference: the same statistics over 400 simulated epochs of i.i.d. batches (a fresh permutation
of the same ages, split into the same per-worker batches). Each epoch's statistic must lie within
4 standard deviations of the simulated mean:
- mean within-worker age std per step (i.i.d.: 22.19 +- 0.11),
- share of global-batch pairs within 3 years (i.i.d.: 0.0850 +- 0.0017),
- lag-1 correlation of consecutive steps' global mean age (i.i.d.: -0.03 +- 0.14).
The orders are seeded, so the outcome is the same on every run, not a draw.
"""

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from agejobs.config import load_config
from agejobs.datasets.manifest import MANIFEST_SCHEMA
from agejobs.ray_runtime import quiet_ray_data, ray_session

pytestmark = [pytest.mark.slow, pytest.mark.ray]

AGES = np.repeat(np.arange(1, 81), 20)  # 1,600 faces, 20 per age 1..80, sorted
WORKERS, GLOBAL_BATCH, EPOCHS, TOLERANCE = 2, 32, 2, 3
SIGMAS = 4.0


def face_png(row: int, age: int) -> bytes:
    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    pixels[0, 0] = (row // 256, row % 256, age)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")  # lossless: the pixel survives decoding
    return buffer.getvalue()


@pytest.fixture(scope="module")
def local_ray():
    with ray_session(num_cpus=4):
        quiet_ray_data()
        yield


@pytest.fixture(scope="module")
def sorted_manifest(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("sorted")
    rows = []
    for row, age in enumerate(AGES):
        path = root / f"{row:05d}.png"
        path.write_bytes(face_png(row, int(age)))
        rows.append(
            {
                "image_id": f"{row:05d}",
                "path": str(path),
                "age": int(age),
                "gender": row % 2,
                "subject_id": f"{row:05d}",
                "split": "train",
                "dataset": "synthetic",
            }
        )
    manifest = str(root / "manifest.parquet")
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), manifest)  # ONE row group
    assert pq.ParquetFile(manifest).metadata.num_row_groups == 1
    return manifest


def batch_statistics(worker_steps: list[list[np.ndarray]]) -> dict:
    """worker_steps[w][t]: the ages worker w got at step t of one epoch."""
    count = min(len(steps) for steps in worker_steps)
    within_std = np.mean([np.std(ages) for steps in worker_steps for ages in steps[:count]])
    global_batches = [np.concatenate([steps[t] for steps in worker_steps]) for t in range(count)]
    ratios = []
    for ages in global_batches:
        gaps = np.abs(ages[:, None] - ages[None, :])
        ratios.append((gaps[~np.eye(len(ages), dtype=bool)] <= TOLERANCE).mean())
    means = np.array([ages.mean() for ages in global_batches])
    return {
        "within_std": float(within_std),
        "positive_ratio": float(np.mean(ratios)),
        "lag1_corr": float(np.corrcoef(means[:-1], means[1:])[0, 1]),
    }


def iid_reference(repeats: int = 400) -> dict:
    rng = np.random.default_rng(0)
    local = GLOBAL_BATCH // WORKERS
    steps = len(AGES) // GLOBAL_BATCH
    draws = []
    for _ in range(repeats):
        order = AGES[rng.permutation(len(AGES))]
        worker_steps = [
            [order[t * GLOBAL_BATCH + w * local : t * GLOBAL_BATCH + (w + 1) * local] for t in range(steps)]
            for w in range(WORKERS)
        ]
        draws.append(batch_statistics(worker_steps))
    return {key: (np.mean([d[key] for d in draws]), np.std([d[key] for d in draws])) for key in draws[0]}


def record_training_batches(source: str, out_dir, overrides: list[str]) -> list[list[dict]]:
    """Run the trainer's data path on 2 workers; returns per rank the list of steps received."""
    from agejobs.config import config_to_dict
    from agejobs.train import make_trainer, shuffle_buffer_rows, training_dataset

    cfg = load_config(
        None,
        [
            f"train.num_workers={WORKERS}",
            f"train.batch_size={GLOBAL_BATCH}",
            "data.image_size=8",
            "train.seed=3",
            *overrides,
        ],
    )

    def recording_loop(loop_config):
        import ray.train

        from agejobs.config import config_from_dict
        from agejobs.train import epoch_batches

        cfg = config_from_dict(loop_config["config"])
        context = ray.train.get_context()
        rank, world = context.get_world_rank(), context.get_world_size()
        shard = ray.train.get_dataset_shard("train")
        steps = []
        for epoch in range(EPOCHS):
            for batch in epoch_batches(
                shard, cfg.train.batch_size // world, loop_config["shuffle_buffer_rows"], cfg, epoch, rank
            ):
                first_pixel = batch["image"][:, 0, 0, :].long()
                steps.append(
                    {
                        "epoch": epoch,
                        "rows": (first_pixel[:, 0] * 256 + first_pixel[:, 1]).tolist(),
                        "pixel_ages": first_pixel[:, 2].tolist(),
                        "ages": batch["age"].tolist(),
                    }
                )
        with open(f"{loop_config['out']}/rank-{rank}.json", "w") as handle:
            json.dump(steps, handle)

    loop_config = {
        "config": config_to_dict(cfg),
        "out": str(out_dir),
        "shuffle_buffer_rows": shuffle_buffer_rows(cfg, source),
    }
    make_trainer(recording_loop, loop_config, cfg, training_dataset(cfg, source), "mixing", str(out_dir / "runs")).fit()
    return [json.loads((out_dir / f"rank-{rank}.json").read_text()) for rank in range(WORKERS)]


def check_like_iid(received: list[list[dict]]) -> None:
    reference = iid_reference()
    first_batches = []
    for epoch in range(EPOCHS):
        per_worker = [[step for step in steps if step["epoch"] == epoch] for steps in received]
        rows = [row for steps in per_worker for step in steps for row in step["rows"]]
        # Every face once per epoch (1,600 faces = 2 workers x 50 full batches of 16).
        assert sorted(rows) == list(range(len(AGES))), f"epoch {epoch}: faces missing or repeated"
        for steps in per_worker:
            for step in steps:  # each image arrived with its own label
                assert step["ages"] == step["pixel_ages"] == [int(AGES[row]) for row in step["rows"]]
        stats = batch_statistics([[np.asarray(step["ages"]) for step in steps] for steps in per_worker])
        for key, value in stats.items():
            mean, sd = reference[key]
            assert abs(value - mean) <= SIGMAS * sd, (
                f"epoch {epoch}: {key} = {value:.3f}, i.i.d. batches give {mean:.3f} +- {sd:.3f}"
            )
        first_batches.append(per_worker[0][0]["rows"])
    assert first_batches[0] != first_batches[1], "every epoch must draw a fresh order"


def test_batches_from_a_label_sorted_manifest_are_mixed_like_iid_batches(local_ray, sorted_manifest, tmp_path):
    check_like_iid(record_training_batches(sorted_manifest, tmp_path, []))


def test_batches_from_a_pack_of_a_label_sorted_manifest_are_mixed_like_iid_batches(
    local_ray, sorted_manifest, tmp_path
):
    from agejobs.pack import pack

    packed = tmp_path / "packed"
    pack(sorted_manifest, str(packed), target_shard_bytes=40_000, runner="inline")  # ~4 shards of row groups
    # A buffer of a quarter row group: the mixing must come from the pack's own row order.
    check_like_iid(record_training_batches(str(packed), tmp_path, ["data.shuffle_buffer_size=64"]))
