"""Gallery: embed faces with a trained checkpoint (a Ray Data stage), and exact L1 kNN estimates.

The paper's estimate: the age of a face is the mean age of its M = 20 nearest gallery faces in
the age embedding, by L1 distance. Gender is the majority of the M nearest in the gender
embedding (or, for the age-only model, in the age embedding: the paper's Table 2).
"""

from __future__ import annotations

import numpy as np
import torch

from agejobs.config import config_from_dict
from agejobs.data import collect_by_image_id, face_dataset, to_model_input
from agejobs.losses import dex_expectation
from agejobs.model import build_model_from_config
from agejobs.train import read_checkpoint


def load_trained_model(checkpoint_dir: str, device: str = "cpu"):
    """(model in eval mode, its Config) from an agejobs training checkpoint directory."""
    payload = read_checkpoint(checkpoint_dir)
    cfg = config_from_dict(payload["config"])
    # The checkpoint holds every weight; the ImageNet file is not needed (nor present) here.
    model = build_model_from_config(cfg.model, cfg.train.method, cfg.train.max_age, weights="")
    model.load_state_dict(payload["model"])
    return model.to(device).eval(), cfg


class Embedder:
    """Ray Data stage: decoded faces -> embeddings (siamese) or direct estimates (baselines).

    The model loads once per actor, on the GPU when the actor has one.
    """

    def __init__(self, checkpoint_dir: str, torch_threads: int = 1):
        torch.set_num_threads(torch_threads)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model, self.cfg = load_trained_model(checkpoint_dir, self.device)

    @torch.inference_mode()
    def __call__(self, batch: dict) -> dict:
        images = to_model_input(torch.from_numpy(np.ascontiguousarray(batch["image"])).to(self.device))
        outputs = self.model(images)
        out = {name: batch[name] for name in ("image_id", "age", "gender") if name in batch}
        if self.cfg.train.method == "siamese":
            out["age_embedding"] = outputs["age"].float().cpu().numpy()
            out["gender_embedding"] = outputs["gender"].float().cpu().numpy()
            return out
        age = outputs["age"].float()
        out["predicted_age"] = (age.reshape(-1) if self.cfg.train.method == "regression" else dex_expectation(age)).cpu().numpy()
        out["predicted_gender"] = outputs["gender"].argmax(dim=1).cpu().numpy()
        return out


def embed_split(
    checkpoint_dir: str,
    manifest_uri: str,
    split: str,
    image_size: int,
    batch_size: int = 128,
    concurrency: int = 1,
    torch_threads: int = 1,
    face_crop: bool = False,
) -> dict:
    """Run the embedder over one split of a manifest or pack; returns column -> numpy array, by image_id."""
    from ray.data import ActorPoolStrategy

    ds = face_dataset(
        manifest_uri, split, image_size, train=False, batch_size=batch_size, concurrency=concurrency, face_crop=face_crop
    )
    ds = ds.drop_columns(["error"]).map_batches(
        Embedder,
        fn_constructor_kwargs={"checkpoint_dir": checkpoint_dir, "torch_threads": torch_threads},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=concurrency),
        num_cpus=1,
    )
    columns = collect_by_image_id(ds)
    if not columns:
        raise ValueError(f"split {split!r} of {manifest_uri} has no decodable faces")
    return columns


def exact_l1_knn(
    queries: np.ndarray | torch.Tensor,
    gallery: np.ndarray | torch.Tensor,
    m: int,
    query_chunk: int = 1024,
    gallery_chunk: int = 65536,
) -> tuple[np.ndarray, np.ndarray]:
    """The M nearest gallery rows of each query by L1 distance: (distances, indices), nearest first.

    Memory stays O(query_chunk * (gallery_chunk + m)) whatever the gallery size: each query
    chunk keeps a running top-M while gallery chunks stream past. Ties in distance are broken by
    the lower gallery index, so results are deterministic.
    """
    queries = torch.as_tensor(np.asarray(queries, dtype=np.float32))
    gallery = torch.as_tensor(np.asarray(gallery, dtype=np.float32))
    if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"queries {tuple(queries.shape)} and gallery {tuple(gallery.shape)} must be (n, d) with the same d")
    if m < 1:
        raise ValueError(f"M must be >= 1, got {m}")
    if m > len(gallery):
        raise ValueError(f"M={m} nearest neighbours requested but the gallery has only {len(gallery)} faces")
    all_distances, all_indices = [], []
    for q_start in range(0, len(queries), query_chunk):
        query_block = queries[q_start : q_start + query_chunk]
        best_d = torch.empty((len(query_block), 0))
        best_i = torch.empty((len(query_block), 0), dtype=torch.long)
        for g_start in range(0, len(gallery), gallery_chunk):
            block = gallery[g_start : g_start + gallery_chunk]
            distances = torch.cdist(query_block, block, p=1.0)
            indices = torch.arange(g_start, g_start + len(block)).expand(len(query_block), -1)
            # Earlier (lower-index) candidates come first, so a stable sort keeps index order on ties.
            candidate_d = torch.cat([best_d, distances], dim=1)
            candidate_i = torch.cat([best_i, indices], dim=1)
            order = torch.sort(candidate_d, dim=1, stable=True).indices[:, :m]
            best_d = torch.gather(candidate_d, 1, order)
            best_i = torch.gather(candidate_i, 1, order)
        all_distances.append(best_d)
        all_indices.append(best_i)
    return torch.cat(all_distances).numpy(), torch.cat(all_indices).numpy()


def mean_neighbour_age(neighbour_indices: np.ndarray, gallery_ages: np.ndarray) -> np.ndarray:
    return np.asarray(gallery_ages, dtype=np.float64)[neighbour_indices].mean(axis=1)


def majority_neighbour_gender(neighbour_indices: np.ndarray, gallery_genders: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
