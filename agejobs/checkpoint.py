"""Trained checkpoints: the file format, finding the newest one of a run, reading one back, and
the model's identity (its weights' fingerprint).

A checkpoint is a directory (local or s3://) holding one `checkpoint.pt`:
    model        the unwrapped model's state dict
    optimizer    the optimizer's state dict
    train_state  train.TrainState as a dict (epoch, step, per-rank RNG streams, ...)
    config       the training Config as a dict
Training writes and restores them (train.py); galleries, scoring, evaluation and experiments only
read them, through this module, so none of them imports the training code. A gallery is only ever
used with the model that embedded it: `check_same_model` compares fingerprints and refuses any other.

Imports config, storage and model only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from dataclasses import dataclass

import torch

from agejobs import storage
from agejobs.config import Config, config_from_dict, config_to_dict
from agejobs.model import build_model_from_config

CHECKPOINT_FILE = "checkpoint.pt"


def save_checkpoint(directory: str, model: torch.nn.Module, optimizer, state, cfg: Config) -> None:
    """Write the checkpoint payload into a local directory; `state` is a TrainState or its dict."""
    unwrapped = model.module if hasattr(model, "module") else model
    payload = {
        "model": unwrapped.state_dict(),
        "optimizer": optimizer.state_dict(),
        "train_state": dataclasses.asdict(state) if dataclasses.is_dataclass(state) else dict(state),
        "config": config_to_dict(cfg),
    }
    torch.save(payload, os.path.join(directory, CHECKPOINT_FILE))


def resolve_checkpoint(directory: str) -> str:
    """A checkpoint directory as given, or, for a run directory (Ray Train's `storage_path/name`),
    its newest `checkpoint_<timestamp>`: nightly jobs name the run, not one checkpoint."""
    if storage.exists(storage.join(directory, CHECKPOINT_FILE)):
        return directory
    fs, path = storage.filesystem_for(directory)
    try:
        children = sorted(
            name
            for name in fs.ls(path.rstrip("/"), detail=False)
            if name.rstrip("/").rsplit("/", 1)[-1].startswith("checkpoint_")
        )
    except OSError:
        children = []
    for child in reversed(children):  # timestamped names: the last is the newest
        candidate = storage.uri_of(directory, child)
        if storage.exists(storage.join(candidate, CHECKPOINT_FILE)):
            return candidate
    raise FileNotFoundError(f"{directory} is not an agejobs checkpoint (no {CHECKPOINT_FILE}) nor a run holding one")


def read_checkpoint(directory: str) -> dict:
    """The payload of an agejobs checkpoint directory (local path or URI, e.g. s3://), or of the
    newest checkpoint of a run directory."""
    uri = storage.join(resolve_checkpoint(directory), CHECKPOINT_FILE)
    # Optimizer and RNG state hold numpy/python objects: this file is ours, not an untrusted one.
    return torch.load(io.BytesIO(storage.read_bytes(uri)), map_location="cpu", weights_only=False)


def model_fingerprint(state_dict: dict) -> str:
    """sha256 of a model's weights (names, dtypes, shapes, values): the same weights give the same
    fingerprint whichever checkpoint file or optimizer state carried them."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


@dataclass
class TrainedModel:
    model: torch.nn.Module
    cfg: Config
    fingerprint: str


def checkpoint_identity(checkpoint_dir: str) -> tuple[Config, str]:
    """(the checkpoint's training Config, its model fingerprint), without building the model.
    Older checkpoints lack newer config keys (they get their defaults) or carry retired ones."""
    payload = read_checkpoint(checkpoint_dir)
    return config_from_dict(payload["config"], stored=True), model_fingerprint(payload["model"])


def load_trained_model(checkpoint_dir: str, device: str = "cpu") -> TrainedModel:
    """The model (eval mode), its Config and fingerprint from an agejobs training checkpoint."""
    payload = read_checkpoint(checkpoint_dir)
    cfg = config_from_dict(payload["config"], stored=True)
    # The checkpoint holds every weight; the ImageNet file is not needed (nor present) here.
    model = build_model_from_config(cfg.model, cfg.train.method, cfg.train.max_age, weights="")
    model.load_state_dict(payload["model"])
    return TrainedModel(model.to(device).eval(), cfg, model_fingerprint(payload["model"]))


class ModelMismatchError(ValueError):
    """Embeddings (a gallery) used with a model other than the one that embedded them."""


def check_same_model(
    what: str, embedded_by: str, embedded_fingerprint: str, checkpoint: str, fingerprint: str, remedy: str
) -> None:
    """Refuse to mix models: `what` (e.g. "gallery URI") was embedded by checkpoint `embedded_by`,
    whose fingerprint must be this checkpoint's. Two models' embeddings are not comparable."""
    if embedded_fingerprint != fingerprint:
        raise ModelMismatchError(
            f"{what} was embedded by checkpoint {embedded_by} (model "
            f"{embedded_fingerprint[:12]}), but checkpoint {checkpoint} is model {fingerprint[:12]}: "
            f"its embeddings live in another space. {remedy}"
        )
