"""Faces as Ray Data streams, from loose images or packed shards, local or s3://.

    evaluation:  SOURCE -> read -> filter(split) -> map_batches(DecodeFaces)
    training:    SOURCE -> the split's rows in a fresh seeded order every epoch -> DecodeFaces
    both yield   {"image": uint8 (n, S, S, 3), "age", "gender", "image_id", "error", "error_class",
                  "face_outcome", "faces_found"}

SOURCE is either a manifest (one Parquet file; each row names an image file by `path`, one GET
per image) or a pack directory (`agejobs pack`: shards carrying the image bytes themselves).
Either way no pixels are materialised: rows stream through the decode actors in blocks.
The preprocessing itself is images.preprocess_face, the same function everywhere, set by the
config's data.* (images.Preprocessing) and, after training, by the checkpoint's.

Decoding and resizing run in Ray Data on CPU (so CPU nodes can feed GPU trainers) and ship uint8
(4x smaller than float); `to_model_input` normalizes on the model's device and `random_flip`
augments there. A face that cannot be read or decoded becomes a row with a non-empty `error` and
its `error_class` (images.decode_or_reason), never an exception that kills the job.

The training shuffle: batches must be mixed as a random permutation mixes them, whatever the
order of the source (importers list files by name, and UTKFace's names begin with the age).
- A manifest: the split's index (image_id, path, age, gender: ~100 bytes a face, no pixels) is
  read once by the driver, and Ray Data shuffles it in full every epoch (`random_shuffle`,
  seeded by train.seed and the epoch's execution index), then cuts it into blocks of
  SHUFFLED_BLOCK_ROWS rows that stream through decoding. Every global batch is a slice of a true
  random permutation. Cost: the index in the object store (~100 MB per million faces) and one
  all-to-all of the index per epoch before its first decode (README: measured).
- A pack: its rows carry the image bytes, so a full shuffle would push every image through the
  object store. Instead `pack` writes its rows in a seeded random permutation of the manifest
  (so every row group is a uniform sample), the row groups are read in a fresh seeded order
  every epoch, and each worker's local buffer (data.shuffle_buffer_size rows) mixes rows of
  several row groups.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from agejobs import metrics, pack, storage
from agejobs.config import ResourcesConfig, StageResources
from agejobs.images import IMAGENET_MEAN, IMAGENET_STD, NoFaceError, Preprocessing, decode_or_reason, preprocess_face

if TYPE_CHECKING:  # annotations only: torch is imported inside the functions that use it
    import torch

LABEL_COLUMNS = ("image_id", "age", "gender")
# Carried through decoding untouched: where a face came from (scoring writes it out per input shard).
SOURCE_COLUMNS = ("path", "input_shard")


def to_model_input(images: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """uint8 (n, H, W, 3) on any device -> ImageNet-normalized float (n, 3, H, W)."""
    import torch

    mean = torch.tensor(IMAGENET_MEAN, device=images.device).reshape(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).reshape(1, 3, 1, 1)
    batch = images.permute(0, 3, 1, 2).float().div_(255.0).sub_(mean).div_(std)
    return batch.contiguous(memory_format=torch.channels_last) if channels_last else batch.contiguous()


def random_flip(images: torch.Tensor, probability: float = 0.5) -> torch.Tensor:
    """Training augmentation on uint8 (n, H, W, 3): each face mirrored left-right with `probability`.

    Drawn from the worker's torch RNG (seeded per rank, saved in checkpoints), not in the decode
    actors, so one seed gives one training run."""
    import torch

    flip = torch.rand(len(images), device=images.device) < probability
    return torch.where(flip.reshape(-1, 1, 1, 1), images.flip(2), images)


class DecodeFaces:
    """Ray Data stage: manifest rows -> decoded, framed, resized uint8 faces (+ labels, + error reason,
    + what the face search found: `face_outcome`, one of align.OUTCOMES, and `faces_found`).

    Every face comes out exactly as at test time; training augments later (`random_flip`)."""

    def __init__(self, preprocessing: Preprocessing | int):
        self.preprocessing = as_preprocessing(preprocessing)

    def __call__(self, batch: dict) -> dict:
        paths = batch["path"]
        packed_bytes = batch.get("image_bytes")  # present when reading shards of a pack
        size = self.preprocessing.size
        images = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
        errors, classes, outcomes, faces = [], [], [], np.zeros(len(paths), dtype=np.int16)
        read = packed_bytes if packed_bytes is not None else storage.read_bytes
        for index, result in enumerate(decode_or_reason(paths, read, self._preprocess)):
            errors.append(result.reason)
            classes.append(result.reason_class)
            if result.error is None:
                images[index], faces[index] = result.value.image, result.value.faces
                outcomes.append(result.value.outcome)
            else:  # "": never got as far as looking for a face
                outcomes.append("no_face" if isinstance(result.error, NoFaceError) else "")
        for outcome in set(outcomes) - {""}:  # "": undecodable, never searched
            metrics.inc("face_outcomes", outcomes.count(outcome), outcome=outcome)
        out = {name: np.asarray(batch[name]) for name in LABEL_COLUMNS + SOURCE_COLUMNS if name in batch}
        out["image"] = images
        out["error"] = np.asarray(errors, dtype=object)
        out["error_class"] = np.asarray(classes, dtype=object)  # metrics.REJECT_REASONS, "" when decoded
        out["face_outcome"] = np.asarray(outcomes, dtype=object)
        out["faces_found"] = faces
        return out

    def _preprocess(self, data: bytes, source: str):
        return preprocess_face(data, self.preprocessing, source)


def as_preprocessing(preprocessing: Preprocessing | int) -> Preprocessing:
    """A Preprocessing, or a bare image size for whole images (no face search)."""
    return preprocessing if isinstance(preprocessing, Preprocessing) else Preprocessing(int(preprocessing))


# Rows per streamed block: blocks must not grow with the dataset, or neither does memory stay flat.
ROWS_PER_BLOCK = 512


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


def pack_dataset(pack_uri: str, columns: list[str], read: StageResources | None = None, order=None):
    """Rows of a pack, one row group per block (`read_row_groups`); with `order` (a Ray Data
    seed config) the row groups are read in a fresh seeded order every epoch."""
    return row_group_reads(pack_row_groups(pack_uri), columns, read or ResourcesConfig().read, order=order)


def row_group_reads(descriptors: list[dict], columns: list[str], read: StageResources, reader=None, order=None):
    """The read stage of every stream of shards: one {"shard", "row_group", ...} descriptor per
    block, each read by a task (`reader`, default `read_row_groups`) sized by `resources.read`;
    with `order`, the blocks come in a fresh seeded order every epoch."""
    import ray

    ds = ray.data.from_items(descriptors, override_num_blocks=len(descriptors))
    if order is not None:
        ds = ds.randomize_block_order(seed=order)
    return ds.map_batches(
        reader or read_row_groups,
        fn_kwargs={"columns": columns},
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.TaskPoolStrategy(size=read.concurrency),
        num_cpus=read.cpus,
    )


ROW_COLUMNS = ["image_id", "path", "age", "gender", "split"]


def manifest_dataset(
    source_uri: str, split: str | None = None, blocks: int = 16, read: StageResources | None = None, pack_order=None
):
    """Rows of one split of a manifest or a pack as a Ray Dataset (not yet decoded), in source order
    (a pack's row groups in `pack_order`'s, when given).

    A pack is read one row group per block, a manifest in blocks of at most ~ROWS_PER_BLOCK rows:
    block sizes do not grow with the archive, so neither does memory (bench/bench_streaming.py),
    and at most `read.concurrency` read tasks run at once.
    """
    import ray
    from ray.data.expressions import col

    read = read or ResourcesConfig().read
    if pack.is_pack(source_uri):
        ds = pack_dataset(source_uri, ROW_COLUMNS + ["image_bytes"], read, pack_order)
    else:
        filesystem, path = storage.arrow_filesystem(source_uri)
        blocks = max(blocks, -(-manifest_rows(source_uri) // ROWS_PER_BLOCK))
        ds = ray.data.read_parquet(
            path, filesystem=filesystem, override_num_blocks=blocks, concurrency=read.concurrency, num_cpus=read.cpus
        )
        ds = ds.select_columns(ROW_COLUMNS)
    if split is not None:
        ds = ds.filter(expr=col("split") == split)
    return ds


# Rows per block of the shuffled index: an epoch's first batch waits for one block's decoding.
SHUFFLED_BLOCK_ROWS = 256
# Rows per block of the index before the shuffle: the shuffle's map tasks run in parallel over them.
INDEX_BLOCK_ROWS = 65_536


def shuffled_rows(source_uri: str, split: str | None, seed: int, read: StageResources | None = None):
    """Rows of one split in a fresh order every epoch, seeded (same seed, same orders); see the
    module docstring for the manifest and the pack case."""
    import pyarrow.compute as pc
    import ray
    from ray.data import RandomSeedConfig

    # reseed_after_execution: each execution of the dataset (an epoch) gets seed + its index.
    order = RandomSeedConfig(seed=seed, reseed_after_execution=True)
    if pack.is_pack(source_uri):
        return manifest_dataset(source_uri, split, read=read, pack_order=order)
    index = label_table(source_uri, tuple(ROW_COLUMNS))
    if split is not None:
        index = index.filter(pc.equal(index["split"], split))
    if index.num_rows == 0:
        raise ValueError(f"{source_uri} has no rows in split {split!r}")
    pieces = [index.slice(start, INDEX_BLOCK_ROWS) for start in range(0, index.num_rows, INDEX_BLOCK_ROWS)]
    ds = ray.data.from_arrow(pieces).random_shuffle(seed=order, num_cpus=(read or ResourcesConfig().read).cpus)
    return ds.repartition(target_num_rows_per_block=SHUFFLED_BLOCK_ROWS)


def face_dataset(
    manifest_uri: str,
    split: str | None,
    preprocessing: Preprocessing | int,
    train: bool = False,
    resources: ResourcesConfig | None = None,
    keep_errors: bool = False,
    blocks: int = 16,
    seed: int = 0,
):
    """Decoded faces of one split, streaming, read and decoded as `resources` say; for training
    (`train`) in a fresh order every epoch (`shuffled_rows`, seeded by `seed`). Errored rows are
    dropped unless `keep_errors`."""
    from ray.data import ActorPoolStrategy
    from ray.data.expressions import col

    resources = resources or ResourcesConfig()
    if train:
        ds = shuffled_rows(manifest_uri, split, seed, resources.read)
    else:
        ds = manifest_dataset(manifest_uri, split, blocks=blocks, read=resources.read)
    decode = resources.decode
    ds = ds.map_batches(
        DecodeFaces,
        fn_constructor_kwargs={"preprocessing": as_preprocessing(preprocessing)},
        batch_size=decode.batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=decode.concurrency),
        num_cpus=decode.cpus,
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
