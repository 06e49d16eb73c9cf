"""Faces as Ray Data streams, and THE preprocessing shared by training, evaluation and scoring.

    manifest.parquet -> read_parquet -> filter(split) -> [shuffle rows] -> map_batches(DecodeFaces)
                     -> {"image": uint8 (n, S, S, 3), "age", "gender", "image_id", "error"}

Decoding and resizing run in Ray Data on CPU (so CPU nodes can feed GPU trainers) and ship uint8
(4x smaller than float); `to_model_input` normalizes on the model's device. A face that cannot be
decoded becomes a row with a non-empty `error`, never an exception that kills the job.
"""

from __future__ import annotations

import io

import numpy as np

from agejobs import storage

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LABEL_COLUMNS = ("image_id", "age", "gender")


class ImageDecodeError(ValueError):
    """An input that is not a usable image; the message names the input."""


def decode_image(data: bytes, source: str = "<bytes>") -> "np.ndarray":
    """Encoded bytes -> RGB uint8 (H, W, 3), EXIF orientation applied."""
    from PIL import Image, ImageOps

    if not data:
        raise ImageDecodeError(f"{source}: empty file")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image = ImageOps.exif_transpose(image)
            return np.asarray(image.convert("RGB"))
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(f"{source}: image too large ({error})") from error
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageDecodeError(f"{source}: cannot decode image ({error})") from error


def resize_square(image: "np.ndarray", size: int) -> "np.ndarray":
    """Resize a face crop to (size, size, 3) uint8; the whole crop is kept, aspect is not."""
    from PIL import Image

    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def preprocess_encoded(data: bytes, size: int, flip: bool = False, source: str = "<bytes>") -> "np.ndarray":
    """The one preprocessing path: decode -> RGB -> resize -> optional horizontal flip."""
    image = resize_square(decode_image(data, source), size)
    return image[:, ::-1] if flip else image


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

    def __init__(self, image_size: int, flip_probability: float = 0.0, seed: int | None = None):
        self.image_size = image_size
        self.flip_probability = flip_probability
        # Unseeded for training: each epoch re-executes the stage and should flip differently.
        self.rng = np.random.default_rng(seed)

    def __call__(self, batch: dict) -> dict:
        paths = batch["path"]
        images = np.zeros((len(paths), self.image_size, self.image_size, 3), dtype=np.uint8)
        errors = []
        flips = self.rng.random(len(paths)) < self.flip_probability
        for index, path in enumerate(paths):
            try:
                images[index] = preprocess_encoded(storage.read_bytes(path), self.image_size, flips[index], path)
                errors.append("")
            except (ImageDecodeError, OSError) as error:
                errors.append(str(error))
        out = {name: np.asarray(batch[name]) for name in LABEL_COLUMNS if name in batch}
        out["image"] = images
        out["error"] = np.asarray(errors, dtype=object)
        return out


def manifest_dataset(manifest_uri: str, split: str | None = None, shuffle: bool = False, blocks: int = 16):
    """Manifest rows of one split as a Ray Dataset (not yet decoded).

    Shuffling is streaming-friendly: the manifest is cut into `blocks` blocks whose order is
    randomized every epoch, and the trainer's local shuffle buffer mixes rows across them. A
    full `random_shuffle` is an all-to-all barrier that stalls every epoch's first batch.
    """
    import ray
    from ray.data.expressions import col

    ds = ray.data.read_parquet(manifest_uri, override_num_blocks=blocks).select_columns(
        ["image_id", "path", "age", "gender", "split"]
    )
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
):
    """Decoded faces of one split, streaming. Errored rows are dropped unless `keep_errors`."""
    from ray.data import ActorPoolStrategy
    from ray.data.expressions import col

    ds = manifest_dataset(manifest_uri, split, shuffle=train, blocks=blocks)
    ds = ds.map_batches(
        DecodeFaces,
        fn_constructor_kwargs={"image_size": image_size, "flip_probability": 0.5 if train else 0.0},
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
