"""Backbone + heads: the paper's age (N_a) and gender (N_g) embeddings, and the baselines' heads.

    net = build_model("inception_v3", method="siamese", age_dim=70, gender_dim=10, dropout=0.5)
    out = net(images)            # {"age": (n, 70), "gender": (n, 10)}

Pretrained weights come only from a local path or URI (no downloads at run time): a torchvision
ImageNet state dict for the backbone, loaded strictly so a wrong file fails loudly.
"""

from __future__ import annotations

import io

import torch
import torchvision
from torch import nn

from agejobs import storage
from agejobs.config import ModelConfig, TrainConfig

# backbone -> (classifier attribute replaced by the heads, feature width, smallest input side)
BACKBONES = {
    "inception_v3": ("fc", 2048, 75),
    "mobilenet_v2": ("classifier", 1280, 32),
    "resnet18": ("fc", 512, 32),
    # Small and fast on CPU: the demo's backbone.
    "mobilenet_v3_small": ("classifier", 576, 32),
}
METHODS = ("siamese", "regression", "dex")


class WeightsError(ValueError):
    """A weights file that is missing or does not fit the backbone; the message names the file."""


def load_state_dict(uri: str) -> dict[str, torch.Tensor]:
    if not storage.exists(uri):
        raise WeightsError(f"weights file {uri} does not exist")
    try:
        state = torch.load(io.BytesIO(storage.read_bytes(uri)), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a non-checkpoint file
        raise WeightsError(f"weights file {uri} is not a torch state dict: {error}") from error
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise WeightsError(f"weights file {uri} holds a {type(state).__name__}, not a state dict")
    return state


def _torchvision_backbone(name: str, with_imagenet_classifier_shapes: bool) -> nn.Module:
    if name == "inception_v3":
        # ImageNet checkpoints carry the auxiliary classifier, so build it to load strictly and
        # drop it afterwards; the paper uses the main branch only.
        return torchvision.models.inception_v3(
            weights=None, aux_logits=with_imagenet_classifier_shapes, init_weights=True, transform_input=False
        )
    if name == "mobilenet_v2":
        return torchvision.models.mobilenet_v2(weights=None)
    if name == "resnet18":
        return torchvision.models.resnet18(weights=None)
    if name == "mobilenet_v3_small":
        return torchvision.models.mobilenet_v3_small(weights=None)
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")


def build_backbone(name: str, weights: str = "") -> tuple[nn.Module, int]:
    """A torchvision backbone that maps images to pooled features, and the feature width."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    classifier_attr, feature_dim, _ = BACKBONES[name]
    backbone = _torchvision_backbone(name, with_imagenet_classifier_shapes=bool(weights))
    if weights:
        state = load_state_dict(weights)
        result = backbone.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise WeightsError(
                f"weights file {weights} does not match backbone {name}: "
                f"{len(result.missing_keys)} missing keys (e.g. {result.missing_keys[:3]}), "
                f"{len(result.unexpected_keys)} unexpected keys (e.g. {result.unexpected_keys[:3]})"
            )
    if name == "inception_v3":
        backbone.aux_logits = False
        backbone.AuxLogits = None
        # The heads apply the paper's dropout; Inception's own would apply it twice.
        backbone.dropout = nn.Identity()
    setattr(backbone, classifier_attr, nn.Identity())
    return backbone, feature_dim


class AgeEmbeddingNet(nn.Module):
    """Backbone features -> dropout -> heads.

    siamese:    age embedding (age_dim) and gender embedding (gender_dim), compared by L1
    regression: one age value, and 2 gender logits
    dex:        max_age + 1 age logits, and 2 gender logits
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        method: str = "siamese",
        age_dim: int = ModelConfig.age_dim,
        gender_dim: int = ModelConfig.gender_dim,
        dropout: float = ModelConfig.dropout,
        max_age: int = TrainConfig.max_age,
    ):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        self.method = method
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        age_out = {"siamese": age_dim, "regression": 1, "dex": max_age + 1}[method]
        gender_out = gender_dim if method == "siamese" else 2
        self.age_head = nn.Linear(feature_dim, age_out)
        self.gender_head = nn.Linear(feature_dim, gender_out)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.dropout(torch.flatten(self.backbone(images), 1))
        return {"age": self.age_head(features), "gender": self.gender_head(features)}


def build_model(
    backbone: str,
    method: str = "siamese",
    age_dim: int = ModelConfig.age_dim,
    gender_dim: int = ModelConfig.gender_dim,
    dropout: float = ModelConfig.dropout,
    weights: str = "",
    max_age: int = TrainConfig.max_age,
) -> AgeEmbeddingNet:
    net, feature_dim = build_backbone(backbone, weights)
    return AgeEmbeddingNet(net, feature_dim, method, age_dim, gender_dim, dropout, max_age)


def build_model_from_config(
    model_cfg: ModelConfig, method: str, max_age: int = TrainConfig.max_age, weights: str | None = None
) -> AgeEmbeddingNet:
    """The model as the config describes it, in its memory format (feed it `to_model_input(...,
    channels_last=model_cfg.channels_last)`); later `.to(device)` and `load_state_dict` keep it."""
    model = build_model(
        model_cfg.backbone,
        method=method,
        age_dim=model_cfg.age_dim,
        gender_dim=model_cfg.gender_dim,
        dropout=model_cfg.dropout,
        weights=model_cfg.weights if weights is None else weights,
        max_age=max_age,
    )
    return model.to(memory_format=torch.channels_last) if model_cfg.channels_last else model
