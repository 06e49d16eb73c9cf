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
# Carried through decoding untouched: where a face came from (scoring writes it out per input shard).
SOURCE_COLUMNS = ("path", "input_shard")


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
        out = {name: np.asarray(batch[name]) for name in LABEL_COLUMNS + SOURCE_COLUMNS if name in batch}
        out["image"] = images
        out["error"] = np.asarray(errors, dtype=object)
        return out


# Rows per streamed block: blocks must not grow with the dataset, or neither does memory stay flat.
ROWS_PER_BLOCK = 512

# Reading manifests, packs and archives is I/O: a quarter CPU per read task, so reads never wait
# behind the decode and embed actor pools for a whole logical CPU.
READ_TASK_CPUS = 0.25


def manifest_rows(manifest_uri: str) -> int:
    """Rows of a manifest, from its Parquet footer (no data read)."""
    import pyarrow.parquet as pq

    fs, path = storage.filesystem_for(manifest_uri)
    with fs.open(path, "rb") as handle:
        return pq.ParquetFile(handle).metadata.num_rows


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


def read_row_groups(batch: dict, columns: list[str]):
    """Ray Data stage (a task): {"shard", "row_group"} descriptors -> the rows of those row groups.

    One row group (256 faces, `pack.ROW_GROUP_ROWS`) per call: a read task holds one row group
    at a time, whatever the size of the shard or the archive.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for shard, row_group in zip(batch["shard"], batch["row_group"]):
        fs, path = storage.filesystem_for(str(shard))
        with fs.open(path, "rb") as handle:
            tables.append(pq.ParquetFile(handle).read_row_group(int(row_group), columns=columns))
    return pa.concat_tables(tables)


def pack_row_groups(pack_uri: str) -> list[dict]:
    """One descriptor per row group of every shard of a finished pack (reads only the footers)."""
    import pyarrow.parquet as pq

    descriptors = []
    for shard in pack.done_shards(pack_uri):
        fs, path = storage.filesystem_for(shard)
        with fs.open(path, "rb") as handle:
            groups = pq.ParquetFile(handle).metadata.num_row_groups
        descriptors += [{"shard": shard, "row_group": index} for index in range(groups)]
    return descriptors


def manifest_dataset(
    source_uri: str, split: str | None = None, shuffle: bool = False, blocks: int = 16, read_concurrency: int = 2
):
    """Rows of one split of a manifest or a pack as a Ray Dataset (not yet decoded).

    A pack is read one row group per block (`read_row_groups`), a manifest in blocks of at most
    ~ROWS_PER_BLOCK rows: block sizes do not grow with the archive, so neither does memory
    (bench/bench_streaming.py), and at most `read_concurrency` read tasks run at once.
    Shuffling is streaming-friendly: block order is randomized every epoch and the trainer's
    local shuffle buffer mixes rows across blocks. A full `random_shuffle` is an all-to-all
    barrier that stalls every epoch's first batch.
    """
    import ray
    from ray.data.expressions import col

    columns = ["image_id", "path", "age", "gender", "split"]
    if pack.is_pack(source_uri):
        columns.append("image_bytes")
        descriptors = pack_row_groups(source_uri)
        ds = ray.data.from_items(descriptors, override_num_blocks=len(descriptors)).map_batches(
            read_row_groups,
            fn_kwargs={"columns": columns},
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.TaskPoolStrategy(size=read_concurrency),
            num_cpus=READ_TASK_CPUS,
        )
    else:
        filesystem, path = storage.arrow_filesystem(source_uri)
        blocks = max(blocks, -(-manifest_rows(source_uri) // ROWS_PER_BLOCK))
        ds = ray.data.read_parquet(path, filesystem=filesystem, override_num_blocks=blocks, concurrency=read_concurrency,
                                   num_cpus=READ_TASK_CPUS)
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
    read_concurrency: int = 2,
):
    """Decoded faces of one split, streaming. Errored rows are dropped unless `keep_errors`."""
    from ray.data import ActorPoolStrategy
    from ray.data.expressions import col

    ds = manifest_dataset(manifest_uri, split, shuffle=train, blocks=blocks, read_concurrency=read_concurrency)
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
