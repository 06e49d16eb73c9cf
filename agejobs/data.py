"""Faces as Ray Data streams, from loose images or packed shards, local or s3://.

    SOURCE -> read_parquet -> filter(split) -> [shuffle blocks] -> map_batches(DecodeFaces)
           -> {"image": uint8 (n, S, S, 3), "age", "gender", "image_id", "error"}

SOURCE is either a manifest (one Parquet file; each row names an image file by `path`, one GET
per image) or a pack directory (`agejobs pack`: shards carrying the image bytes themselves).
Either way nothing is materialised: rows stream through the decode actors in blocks.
The preprocessing itself is images.preprocess_encoded, the same function everywhere.

Decoding and resizing run in Ray Data on CPU (so CPU nodes can feed GPU trainers) and ship uint8
(4x smaller than float); `to_model_input` normalizes on the model's device. A face that cannot be
decoded becomes a row with a non-empty `error`, never an exception that kills the job.
"""

from __future__ import annotations

import numpy as np

from agejobs import pack, storage
from agejobs.images import IMAGENET_MEAN, IMAGENET_STD, ImageDecodeError, preprocess_encoded
LABEL_COLUMNS = ("image_id", "age", "gender")


def to_model_input(images: "torch.Tensor", channels_last: bool = False) -> "torch.Tensor":  # noqa: F821
    """uint8 (n, H, W, 3) on any device -> ImageNet-normalized float (n, 3, H, W)."""
    import torch

    mean = torch.tensor(IMAGENET_MEAN, device=images.device).reshape(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).reshape(1, 3, 1, 1)
    batch = images.permute(0, 3, 1, 2).float().div_(255.0).sub_(mean).div_(std)
    return batch.contiguous(memory_format=torch.channels_last) if channels_last else batch.contiguous()


class DecodeFaces:
    """Ray Data stage: manifest rows -> decoded, resized uint8 faces (+ labels, + error reason).

    `flip_probability` > 0 only for training (horizontal flip augmentation); evaluation and
    scoring use 0, so every face is seen exactly as at test time.
    """

    def __init__(self, image_size: int, flip_probability: float = 0.0, seed: int | None = None, face_crop: bool = False):
        self.image_size = image_size
        self.face_crop = face_crop
        self.flip_probability = flip_probability
        # Unseeded for training: each epoch re-executes the stage and should flip differently.
        self.rng = np.random.default_rng(seed)

    def __call__(self, batch: dict) -> dict:
        paths = batch["path"]
        packed_bytes = batch.get("image_bytes")  # present when reading shards of a pack
        images = np.zeros((len(paths), self.image_size, self.image_size, 3), dtype=np.uint8)
        errors = []
        flips = self.rng.random(len(paths)) < self.flip_probability
        for index, path in enumerate(paths):
            try:
                data = packed_bytes[index] if packed_bytes is not None else storage.read_bytes(path)
                images[index] = preprocess_encoded(data, self.image_size, flips[index], path, face_crop=self.face_crop)
                errors.append("")
            except (ImageDecodeError, OSError) as error:
                errors.append(str(error))
        out = {name: np.asarray(batch[name]) for name in LABEL_COLUMNS if name in batch}
        out["image"] = images
        out["error"] = np.asarray(errors, dtype=object)
        return out


def label_table(source_uri: str, columns: tuple[str, ...] = ("image_id", "age", "gender", "split")):
    """Label columns of every face of a manifest or a pack (no image bytes are read)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    uris = pack.done_shards(source_uri) if pack.is_pack(source_uri) else [source_uri]
    tables = []
    for uri in uris:
        fs, path = storage.filesystem_for(uri)
        tables.append(pq.read_table(path, filesystem=fs, columns=list(columns)))
    return pa.concat_tables(tables)


def manifest_dataset(source_uri: str, split: str | None = None, shuffle: bool = False, blocks: int = 16):
    """Rows of one split of a manifest or a pack as a Ray Dataset (not yet decoded).

    Shuffling is streaming-friendly: the rows are cut into `blocks` blocks (for a pack, at
    least one per shard) whose order is randomized every epoch, and the trainer's local shuffle
    buffer mixes rows across them. A full `random_shuffle` is an all-to-all barrier that stalls
    every epoch's first batch.
    """
    import ray
    from ray.data.expressions import col

    columns = ["image_id", "path", "age", "gender", "split"]
    if pack.is_pack(source_uri):
        shards = pack.done_shards(source_uri)
        filesystem, _ = storage.arrow_filesystem(shards[0])
        paths = [storage.filesystem_for(uri)[1] for uri in shards]
        ds = ray.data.read_parquet(paths, filesystem=filesystem, override_num_blocks=max(blocks, len(paths)))
        columns.append("image_bytes")
    else:
        filesystem, path = storage.arrow_filesystem(source_uri)
        ds = ray.data.read_parquet(path, filesystem=filesystem, override_num_blocks=blocks)
    ds = ds.select_columns(columns)
    if split is not None:
        ds = ds.filter(expr=col("split") == split)
    if shuffle:
        ds = ds.randomize_block_order()
    return ds


def face_dataset(
    manifest_uri: str,
    split: str | None,
    image_size: int,
    train: bool = False,
    batch_size: int = 64,
    concurrency: int = 1,
    keep_errors: bool = False,
    blocks: int = 16,
    face_crop: bool = False,
):
    """Decoded faces of one split, streaming. Errored rows are dropped unless `keep_errors`."""
    from ray.data import ActorPoolStrategy
    from ray.data.expressions import col

    ds = manifest_dataset(manifest_uri, split, shuffle=train, blocks=blocks)
    ds = ds.map_batches(
        DecodeFaces,
        fn_constructor_kwargs={
            "image_size": image_size,
            "flip_probability": 0.5 if train else 0.0,
            "face_crop": face_crop,
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=concurrency),
        num_cpus=0.5,
    )
    if not keep_errors:
        ds = ds.filter(expr=col("error") == "")
    return ds


def collect_by_image_id(ds, transform=None) -> dict:
    """Stream a dataset into column -> numpy array, rows sorted by image_id (streaming order is
    not deterministic). `transform(batch) -> batch` shrinks each batch before it is kept."""
    parts: dict[str, list] = {}
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        for name, values in (transform(batch) if transform else batch).items():
            parts.setdefault(name, []).append(values)
    if not parts:
        return {}
    columns = {name: np.concatenate(values) for name, values in parts.items()}
    order = np.argsort(columns["image_id"], kind="stable")
    return {name: values[order] for name, values in columns.items()}
