"""Gallery: embed faces with a trained checkpoint (a Ray Data stage), store them with an L1 index,
and estimate age and gender from the M nearest gallery faces.

The paper's estimate: the age of a face is the mean age of its M = 20 nearest gallery faces in
the age embedding, by L1 distance. Gender is the majority of the M nearest in the gender
embedding (or, for the age-only model, in the age embedding: the paper's Table 2).

A built gallery is a directory (local or s3://):
    faces.parquet     image_id, age, gender, age_embedding, gender_embedding (one row per face)
    age_index/        knn.L1Index over the age embeddings (+ gender_index/ for the multi-task model)
    gallery.json      checkpoint URI, model fingerprint, config, dims, count, distance  (written LAST)
A gallery is only ever used with the model that embedded it: `load_gallery` compares the
checkpoint's model fingerprint (a hash of its weights, checkpoint.py) and refuses any other.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass

import numpy as np
import torch

from agejobs import knn, storage
from agejobs.checkpoint import ModelMismatchError, check_same_model, checkpoint_identity, load_trained_model
from agejobs.config import Config, ResourcesConfig, config_to_dict
from agejobs.data import collect_by_image_id, face_dataset, to_model_input
from agejobs.datasets.manifest import write_table_atomic
from agejobs.images import Preprocessing
from agejobs.losses import dex_expectation

MANIFEST_FILE = "gallery.json"
FACES_FILE = "faces.parquet"

# The refusal is checkpoint.py's rule; galleries' callers (and tests) know it by this name.
GalleryMismatchError = ModelMismatchError


class Embedder:
    """Ray Data stage: decoded faces -> embeddings (siamese) or direct estimates (baselines).

    The model loads once per actor, on the GPU when the actor has one. Every column but the
    image passes through; rows whose `error` is set (undecodable inputs) are not run through the
    model and get zero outputs, so errors travel on to be written, never dropped.
    """

    def __init__(self, checkpoint_dir: str, torch_threads: int = 1, test_flip: bool | None = None):
        torch.set_num_threads(torch_threads)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        trained = load_trained_model(checkpoint_dir, self.device)
        self.model, self.cfg = trained.model, trained.cfg
        # None: as the checkpoint says (data.test_flip); galleries and queries must agree.
        self.test_flip = self.cfg.data.test_flip if test_flip is None else test_flip

    @torch.inference_mode()
    def __call__(self, batch: dict) -> dict:
        out = {name: values for name, values in batch.items() if name != "image"}
        ok = np.asarray(batch["error"]) == "" if "error" in batch else np.ones(len(batch["image"]), dtype=bool)
        images = torch.from_numpy(np.ascontiguousarray(batch["image"][ok])).to(self.device, non_blocking=True)
        views = [images, images.flip(2)] if self.test_flip else [images]
        # Each output averaged over the views (the face and its mirror image).
        outputs = [self._outputs(view) for view in views]
        averaged = {name: sum(output[name] for output in outputs) / len(outputs) for name in outputs[0]}

        def full(values: torch.Tensor) -> np.ndarray:
            values = values.float().cpu().numpy()
            filled = np.zeros((len(ok),) + values.shape[1:], dtype=values.dtype)
            filled[ok] = values
            return filled

        if self.cfg.train.method == "siamese":
            out["age_embedding"] = full(averaged["age"])
            out["gender_embedding"] = full(averaged["gender"])
            return out
        out["predicted_age"] = full(averaged["age"])
        out["predicted_gender"] = full(averaged["gender"].argmax(dim=1)).astype(np.int8)
        return out

    def _outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """uint8 faces -> {"age": embedding or predicted age, "gender": embedding or logits}, fp32."""
        # The GPU path adds bf16 autocast; outputs come back as fp32.
        with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.device == "cuda"):
            outputs = self.model(to_model_input(images, channels_last=self.cfg.model.channels_last))
        age, gender = outputs["age"].float(), outputs["gender"].float()
        if self.cfg.train.method == "regression":
            age = age.reshape(-1)
        elif self.cfg.train.method == "dex":
            age = dex_expectation(age)
        return {"age": age, "gender": gender}


def embed_split(
    checkpoint_dir: str,
    manifest_uri: str,
    split: str,
    preprocessing: Preprocessing | int,
    resources: ResourcesConfig | None = None,
    test_flip: bool | None = None,
) -> dict:
    """Run the embedder over one split of a manifest or pack (read, decode and embed sized by
    `resources`); returns column -> numpy array, by image_id."""
    from ray.data import ActorPoolStrategy

    resources = resources or ResourcesConfig()
    embed = resources.embed
    ds = face_dataset(manifest_uri, split, preprocessing, train=False, resources=resources)
    ds = ds.drop_columns(["error", "error_class"]).map_batches(
        Embedder,
        fn_constructor_kwargs={
            "checkpoint_dir": checkpoint_dir,
            "torch_threads": embed.torch_threads,
            "test_flip": test_flip,
        },
        batch_size=embed.batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=embed.concurrency),
        num_cpus=0 if embed.gpus else embed.cpus,
        num_gpus=embed.gpus,
    )
    columns = collect_by_image_id(ds)
    if not columns:
        raise ValueError(f"split {split!r} of {manifest_uri} has no decodable faces")
    return columns


def mean_neighbour_age(neighbour_indices: np.ndarray, gallery_ages: np.ndarray) -> np.ndarray:
    return np.asarray(gallery_ages, dtype=np.float64)[neighbour_indices].mean(axis=1)


def majority_neighbour_gender(
    neighbour_indices: np.ndarray, gallery_genders: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(predicted gender, vote share of that gender) among gender-labelled neighbours.

    A tied vote goes to the nearest labelled neighbour; with no labelled neighbour the
    prediction is -1 (unknown) with share 0.
    """
    votes = np.asarray(gallery_genders)[neighbour_indices]
    labelled = votes >= 0
    voters = labelled.sum(axis=1)
    female_share = np.divide((votes == 1).sum(axis=1), voters, out=np.zeros(len(votes)), where=voters > 0)
    nearest_labelled = votes[np.arange(len(votes)), labelled.argmax(axis=1)]
    predicted = np.where(female_share > 0.5, 1, np.where(female_share < 0.5, 0, nearest_labelled))
    predicted = np.where(voters > 0, predicted, -1).astype(np.int8)
    share = np.where(predicted == 1, female_share, np.where(predicted == 0, 1.0 - female_share, 0.0))
    return predicted, share


def neighbour_age_spread(neighbour_indices: np.ndarray, gallery_ages: np.ndarray) -> np.ndarray:
    """Standard deviation of the neighbours' ages: how much the M nearest faces disagree (an uncertainty)."""
    return np.asarray(gallery_ages, dtype=np.float64)[neighbour_indices].std(axis=1)


@dataclass
class Gallery:
    """Labelled embeddings + their L1 indexes: THE estimate of the paper, for scoring (loaded from
    a built gallery) and for evaluation (built in memory, exact mode) alike."""

    uri: str
    manifest: dict
    ages: np.ndarray
    genders: np.ndarray
    age_index: knn.L1Index
    gender_index: knn.L1Index | None  # None for the age-only model: gender from the age neighbours

    @classmethod
    def of_faces(cls, columns: dict, settings: knn.SearchSettings, m: int, gender_index: bool) -> Gallery:
        """An in-memory gallery of embedded faces (columns of `embed_split`): what evaluation
        estimates against, and what `build_gallery` saves."""
        age_index = knn.L1Index.build(columns["age_embedding"], settings, m)
        gender = knn.L1Index.build(columns["gender_embedding"], settings, m) if gender_index else None
        ages, genders = np.asarray(columns["age"]), np.asarray(columns["gender"])
        return cls("", {}, ages, genders, age_index, gender)

    @property
    def version(self) -> str:
        return self.manifest["gallery_version"]

    def estimate(self, age_embeddings: np.ndarray, gender_embeddings: np.ndarray | None = None) -> dict:
        """Per query: predicted_age (mean of the M nearest), age_spread, predicted_gender,
        gender_vote_share, and gender_from_age_neighbours (the paper's Table 2: the vote of the
        AGE embedding's neighbours, equal to predicted_gender without a gender index)."""
        _, age_neighbours = self.age_index.search(age_embeddings)
        gender_neighbours = age_neighbours
        if self.gender_index is not None and gender_embeddings is not None:
            _, gender_neighbours = self.gender_index.search(gender_embeddings)
        gender, share = majority_neighbour_gender(gender_neighbours, self.genders)
        gender_from_age = gender if gender_neighbours is age_neighbours else None
        if gender_from_age is None:
            gender_from_age, _ = majority_neighbour_gender(age_neighbours, self.genders)
        return {
            "predicted_age": mean_neighbour_age(age_neighbours, self.ages),
            "age_spread": neighbour_age_spread(age_neighbours, self.ages),
            "predicted_gender": gender,
            "gender_vote_share": share,
            "gender_from_age_neighbours": gender_from_age,
        }

    def save(self, uri: str) -> None:
        """Its indexes under `uri` (faces.parquet and gallery.json are `build_gallery`'s)."""
        self.age_index.save(storage.join(uri, "age_index"))
        if self.gender_index is not None:
            self.gender_index.save(storage.join(uri, "gender_index"))


def outcome_counts(outcomes: np.ndarray) -> dict[str, int]:
    """Faces per face-search outcome (align.OUTCOMES), for manifests and reports."""
    names, counts = np.unique(np.asarray(outcomes).astype(str), return_counts=True)
    return {str(name): int(count) for name, count in zip(names, counts)}


def _fixed_size_lists(matrix: np.ndarray):
    import pyarrow as pa

    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def write_faces(columns: dict, uri: str) -> None:
    """The gallery's faces.parquet: one row per face, labels and both embeddings."""
    import pyarrow as pa

    table = pa.table(
        {
            "image_id": pa.array(columns["image_id"].astype(str)),
            "age": pa.array(columns["age"].astype(np.int16)),
            "gender": pa.array(columns["gender"].astype(np.int8)),
            "age_embedding": _fixed_size_lists(columns["age_embedding"]),
            "gender_embedding": _fixed_size_lists(columns["gender_embedding"]),
        }
    )
    write_table_atomic(table, uri)


def content_version(fingerprint: str, columns: dict) -> str:
    """16 hex digits naming the model and exactly these faces: scored rows carry it."""
    content = hashlib.sha256(fingerprint.encode())
    for name in ("age", "gender", "age_embedding", "gender_embedding"):
        content.update(np.ascontiguousarray(columns[name]).tobytes())
    return content.hexdigest()[:16]


def build_gallery(checkpoint_dir: str, source_uri: str, out_uri: str, cfg: Config) -> dict:
    """Embed `cfg.gallery.split` of a manifest or pack with the checkpoint, optionally condense it,
    and write faces, L1 indexes and the manifest (last). Returns the manifest.

    Preprocessing (image size, face alignment) is the checkpoint's own training setting, so gallery
    faces are seen exactly as the model saw faces in training; `cfg` sizes the job and the index.
    """
    from agejobs import condense

    model_cfg, fingerprint = checkpoint_identity(checkpoint_dir)
    if model_cfg.train.method != "siamese":
        raise ValueError(
            f"{checkpoint_dir}: a gallery needs a siamese checkpoint; "
            f"a {model_cfg.train.method} model estimates ages directly"
        )
    started = time.time()
    preprocessing = Preprocessing.of(model_cfg.data)
    columns = embed_split(checkpoint_dir, source_uri, cfg.gallery.split, preprocessing, cfg.resources)
    faces_embedded = len(columns["image_id"])
    if cfg.gallery.prototypes_per_age:
        columns = condense.per_age_prototypes(columns, cfg.gallery.prototypes_per_age, seed=cfg.train.seed)
    write_faces(columns, storage.join(out_uri, FACES_FILE))
    built = Gallery.of_faces(columns, cfg.gallery.search, cfg.eval.knn_m, gender_index=model_cfg.loss.gender_weight > 0)
    built.save(out_uri)
    manifest = {
        "gallery_version": content_version(fingerprint, columns),
        "checkpoint": checkpoint_dir,
        "model_fingerprint": fingerprint,
        "source": source_uri,
        "split": cfg.gallery.split,
        "faces_embedded": faces_embedded,
        "count": len(columns["image_id"]),
        "prototypes_per_age": cfg.gallery.prototypes_per_age,
        "age_embedding_dim": int(columns["age_embedding"].shape[1]),
        "gender_embedding_dim": int(columns["gender_embedding"].shape[1]),
        "gender_index": built.gender_index is not None,
        "distance": "l1",
        "m": cfg.eval.knn_m,
        "search": dataclasses.asdict(cfg.gallery.search) | {"mode": built.age_index.mode},
        "preprocessing": dataclasses.asdict(preprocessing) | {"test_flip": model_cfg.data.test_flip},
        "face_outcomes": outcome_counts(columns["face_outcome"]),
        "model_config": config_to_dict(model_cfg),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": round(time.time() - started, 1),
    }
    storage.write_bytes_atomic(storage.join(out_uri, MANIFEST_FILE), json.dumps(manifest, indent=1).encode())
    return manifest


def read_gallery_manifest(gallery_uri: str) -> dict:
    uri = storage.join(gallery_uri, MANIFEST_FILE)
    if not storage.exists(uri):
        raise FileNotFoundError(
            f"{gallery_uri} is not a finished gallery (no {MANIFEST_FILE}); run `agejobs gallery build`"
        )
    return json.loads(storage.read_bytes(uri))


def check_gallery_matches(manifest: dict, gallery_uri: str, checkpoint: str, fingerprint: str) -> None:
    check_same_model(
        f"gallery {gallery_uri}",
        manifest["checkpoint"],
        manifest["model_fingerprint"],
        checkpoint,
        fingerprint,
        "Build a gallery with this checkpoint (`agejobs gallery build`).",
    )


def load_gallery(gallery_uri: str, checkpoint: str, fingerprint: str) -> Gallery:
    """The gallery at `gallery_uri`, for the model with this fingerprint; any other is refused."""
    import pyarrow.parquet as pq

    manifest = read_gallery_manifest(gallery_uri)
    check_gallery_matches(manifest, gallery_uri, checkpoint, fingerprint)
    fs, path = storage.filesystem_for(storage.join(gallery_uri, FACES_FILE))
    labels = pq.read_table(path, filesystem=fs, columns=["age", "gender"])
    gender_index = knn.L1Index.load(storage.join(gallery_uri, "gender_index")) if manifest["gender_index"] else None
    return Gallery(
        gallery_uri,
        manifest,
        labels["age"].to_numpy(),
        labels["gender"].to_numpy(),
        knn.L1Index.load(storage.join(gallery_uri, "age_index")),
        gender_index,
    )
