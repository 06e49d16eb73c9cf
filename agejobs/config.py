"""Typed run configuration: dataclasses loaded from YAML, with dotted command-line overrides.

Strict on purpose (nanoGPT's configurator): an unknown key or a value of the wrong type is an
error that names the key, so a typo never silently trains the wrong model. The resolved config
is written next to every run's outputs (`dump_config`).

    cfg = load_config("configs/paper.yaml", ["train.batch_size=64", "model.backbone=resnet18"])
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or override that does not fit the schema; the message names the key."""


@dataclass
class DatasetConfig:
    # Where faces come from: "synthetic" (generated into the workdir), "utkface" (imported from
    # `source`), or "manifest" (an existing agejobs manifest at `source`).
    kind: str = "synthetic"
    source: str = ""
    test_fraction: float = 0.2
    split_seed: int = 0
    split_protocol: str = "random"  # "random" (the paper) or "subject" (subject-exclusive)
    # Decode every imported image once; undecodable ones go to errors.parquet, not to training.
    verify_images: bool = True
    # Pack the manifest into Parquet shards of image bytes (`agejobs pack`) and train/evaluate
    # from the shards: large sequential reads instead of one GET per image.
    pack: bool = False
    pack_shard_mb: float = 64.0
    # Synthetic faces only.
    synth_subjects: int = 600
    synth_images_per_subject: int = 5
    synth_image_size: int = 80


@dataclass
class DataConfig:
    image_size: int = 227
    # Training from a pack: rows of each worker's local shuffle buffer, mixing the row groups
    # (256 faces each) read in a fresh order every epoch. A manifest is shuffled in full
    # every epoch instead (data.py) and needs none.
    shuffle_buffer_size: int = 1024
    # How the face is framed before resizing (align.py), in training, galleries, evaluation and
    # scoring alike (the checkpoint keeps it): "none" (pre-cropped faces), "box" (largest Haar
    # face + 25% margin), "landmarks" (dlib detector + 5 points, warped to UTKFace's framing).
    align: str = "none"
    # An image in which no face is found: "whole" (the whole image stands in) or "error" (an
    # error row with the reason). Either way the outcome column says what happened.
    no_face: str = "whole"
    # At inference (galleries, evaluation, scoring): run each face and its mirror image through
    # the model and average the outputs (embeddings, predicted ages, gender logits). 2x the cost.
    test_flip: bool = False


@dataclass
class ModelConfig:
    backbone: str = "inception_v3"
    # Local path or URI of an ImageNet state dict for the backbone; empty = random init.
    weights: str = ""
    age_dim: int = 70
    gender_dim: int = 10
    dropout: float = 0.5
    # NHWC memory format for weights and inputs, on every device: oneDNN's CPU convolutions and
    # cuDNN's tensor cores are both fastest in it (MobileNetV2 training at 128 px on 2 CPU
    # cores: 2.05x, bench/bench_train_throughput.py --setups plain_contiguous; README).
    channels_last: bool = True


@dataclass
class LossConfig:
    # Ages within `age_tolerance` years (|a_i - a_j| <= tolerance) are positives. The paper's
    # "margin 4: difference less than 4" is tolerance 3 for integer ages (see losses.py).
    age_tolerance: int = 3
    q: float = 100.0
    # 0 = the paper's age-only model; 1 = the multi-task age + gender model.
    gender_weight: float = 1.0
    # "global": pairs span the whole batch across workers; "local": each worker's own rows only.
    pairs: str = "global"
    # Rows of the pair loss computed at a time (0 = all at once): peak memory O(chunk_rows x B).
    chunk_rows: int = 256
    # Block kernel of the chunked pair loss: "compiled" (torch.compile, fused; needs a C++
    # compiler on CPU, Triton on GPU) or "cdist" (aten cdist; no compiler).
    kernel: str = "compiled"


@dataclass
class OptimConfig:
    name: str = "adadelta"
    lr: float = 1.0
    weight_decay: float = 0.0


@dataclass
class TrainConfig:
    # "siamese" (the paper), or the baselines "regression" (L1 head) and "dex" (softmax expectation).
    method: str = "siamese"
    batch_size: int = 128  # global: summed over workers
    epochs: int = 10
    # 0 = no limit. A budget ends training at the first step past it, on every worker at once.
    max_steps: int = 0
    max_time_s: float = 0.0
    # "cosine" decays the learning rate to 0 over the budget (epochs, max_steps or max_time_s).
    lr_schedule: str = "constant"
    num_workers: int = 2
    cpus_per_worker: float = 0.5
    torch_threads_per_worker: int = 1
    use_gpu: bool = False
    amp: bool = False
    seed: int = 0
    storage_path: str = "runs"
    keep_checkpoints: int = 2
    max_failures: int = 0
    # Fault drill: on the first attempt only, the last worker dies (os._exit) at this step, so
    # Ray Train must restart the group from the latest checkpoint. 0 = off.
    fail_at_step: int = 0
    log_every_steps: int = 20
    max_age: int = 120  # DEX classes 0..max_age


@dataclass
class EvalConfig:
    knn_m: int = 20  # M: an age is the mean age of the M nearest gallery faces (the paper: 20)
    # Baselines evaluated beside the paper's method, each trained with the same backbone and budget.
    baselines: list[str] = field(default_factory=lambda: ["mean", "ridge-pixels", "regression", "dex"])
    # Also train the paper's age-only model (gender_weight 0): the ablation of its Table 2.
    age_only_model: bool = True
    # An outside model's per-image predictions (CSV with file, pred_age[, pred_gender]), reported
    # as the row "peer" on exactly the test faces (joined on file name); empty = none.
    peer_predictions: str = ""


@dataclass(frozen=True)
class SearchSettings:
    """How a gallery's L1 index searches (knn.py): "auto" is ScaNN brute-force L1 up to
    brute_force_max faces and approximate + exact re-rank above. The approximate defaults were
    measured by bench/bench_gallery_search.py (knn.tune_approximate) on 1M x 70."""

    mode: str = "auto"  # exact | brute_force | approximate | auto
    brute_force_max: int = 100_000
    candidates: int = 200  # k': approximate candidates re-ranked by exact L1
    reorder: int = 0  # ScaNN's own squared-L2 re-order depth before k' are taken; 0 = 2 k'
    num_leaves: int = 0  # 0 = about sqrt(rows)
    leaves_to_search: int = 0  # 0 = num_leaves / 10
    training_sample: int = 100_000  # rows the partitioner trains on

    def query_options(self, rows: int) -> dict:
        """ScaNN's per-query knobs: tunable after the build (`knn.tune_approximate`)."""
        leaves = self.leaves(rows)
        return {
            "final_num_neighbors": self.candidates,
            "pre_reorder_num_neighbors": max(self.reorder or 2 * self.candidates, self.candidates),
            "leaves_to_search": min(self.leaves_to_search or max(leaves // 10, 1), leaves),
        }

    def leaves(self, rows: int) -> int:
        return min(self.num_leaves or max(int(math.sqrt(rows)), 1), rows)

    def resolved_mode(self, rows: int) -> str:
        if self.mode == "auto":
            return "brute_force" if rows <= self.brute_force_max else "approximate"
        if self.mode not in SEARCH_MODES:
            raise ValueError(f"search mode must be one of {SEARCH_MODES + ('auto',)}, got {self.mode!r}")
        return self.mode


SEARCH_MODES = ("exact", "brute_force", "approximate")


@dataclass
class GalleryConfig:
    split: str = "train"  # the split of the source whose faces become the gallery
    search: SearchSettings = field(default_factory=SearchSettings)
    # Condensation: 0 keeps every face; K > 0 keeps at most K prototypes per age (k-means).
    prototypes_per_age: int = 0


@dataclass
class ScoreConfig:
    # Loose images of an archive are scored in input shards of this many files (a pack's own
    # shards are its input shards); each becomes one output file with a done-marker.
    shard_images: int = 1000
    # Fault drill: the driver exits (os._exit) right after writing this many shards. 0 = off.
    fail_after_shards: int = 0


@dataclass
class StageResources:
    """How one Ray Data stage runs: tasks or actors in flight (an actor pool grows from 1 to
    `concurrency`), rows per call, and what each task or actor holds."""

    concurrency: int = 1
    batch_size: int = 64  # rows per call (read: one row group per call, whatever this says)
    cpus: float = 1.0
    gpus: float = 0.0  # e.g. 1 for embedding on a GPU worker type (its CPUs then count 0)
    torch_threads: int = 1


@dataclass
class ResourcesConfig:
    """One block per stage of every job that streams faces (training's input, galleries,
    evaluation, scoring, verification): read -> decode -> embed -> search."""

    # Parquet reads are I/O: a quarter CPU each, so they never wait behind the actor pools for a
    # whole logical CPU; the count in flight bounds memory whatever the archive size.
    read: StageResources = field(default_factory=lambda: StageResources(concurrency=2, batch_size=1, cpus=0.25))
    decode: StageResources = field(default_factory=lambda: StageResources(concurrency=1, batch_size=64, cpus=0.5))
    embed: StageResources = field(default_factory=lambda: StageResources(concurrency=1, batch_size=128, cpus=1.0))
    search: StageResources = field(default_factory=lambda: StageResources(concurrency=1, batch_size=64, cpus=0.5))


@dataclass
class StorageConfig:
    # S3 settings; empty = the standard AWS chain (environment, ~/.aws files, instance role).
    # See storage.py. Keys given here are exported to the chain, never written back out.
    endpoint_url: str = ""
    region: str = ""
    profile: str = ""
    access_key_id: str = field(default="", repr=False)
    secret_access_key: str = field(default="", repr=False)
    retries: int = 5


SECRET_KEYS = ("storage.access_key_id", "storage.secret_access_key")


@dataclass
class RayConfig:
    address: str = ""  # empty = start a local Ray instance
    num_cpus: int = 0  # logical CPUs of a local instance; 0 = all cores, at least 4 (ray_runtime.MIN_LOCAL_CPUS)
    # Metrics (agejobs/metrics.py): Ray's metrics agent port for a local instance (0 = Ray's
    # choice, unscraped), and this process's prometheus_client endpoint (0 = off).
    metrics_export_port: int = 0
    metrics_port: int = 0
    # Object store of a local instance in MiB; 0 = Ray's default (30 % of memory). Every process
    # that reads a block maps its shared-memory pages, so over a long run each one's RSS grows
    # until it has touched the whole store: a smaller store bounds that (bench/bench_night.py).
    object_store_mb: int = 0


@dataclass
class Config:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    gallery: GalleryConfig = field(default_factory=GalleryConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    ray: RayConfig = field(default_factory=RayConfig)


CHOICES = {
    "dataset.kind": ("synthetic", "utkface", "manifest"),
    "dataset.split_protocol": ("random", "subject"),
    "data.align": ("none", "box", "landmarks"),
    "data.no_face": ("whole", "error"),
    "model.backbone": ("inception_v3", "mobilenet_v2", "resnet18", "mobilenet_v3_small"),
    "loss.pairs": ("global", "local"),
    "loss.kernel": ("compiled", "cdist"),
    "gallery.search.mode": ("auto", *SEARCH_MODES),
    "optim.name": ("adadelta", "adam", "sgd"),
    "train.method": ("siamese", "regression", "dex"),
    "train.lr_schedule": ("constant", "cosine"),
}


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check `value` against a field annotation; ints widen to float, nothing else converts."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} is not {annotation}")
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(item, item_type, f"{key}[{i}]") for i, item in enumerate(value)]
    if annotation is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}")
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{key}: expected {annotation.__name__}, got bool {value!r}")
    if not isinstance(value, annotation):
        raise ConfigError(f"{key}: expected {annotation.__name__}, got {type(value).__name__} {value!r}")
    return value


def _from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]} (known: {', '.join(sorted(known))})")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _from_dict(hint, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, f"{prefix}{name}")
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted_key: str, value: Any) -> None:
    parts = dotted_key.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted_key}: {part} is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`train.batch_size=64` -> ("train.batch_size", 64); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has no key")
    return key, yaml.safe_load(raw) if raw.strip() else ""


def validate(cfg: Config) -> Config:
    for dotted, allowed in CHOICES.items():
        value = cfg
        for name in dotted.split("."):
            value = getattr(value, name)
        if value not in allowed:
            raise ConfigError(f"{dotted}: {value!r} is not one of {', '.join(allowed)}")
    for baseline in cfg.eval.baselines:
        if baseline not in ("mean", "ridge-pixels", "regression", "dex"):
            raise ConfigError(f"eval.baselines: unknown baseline {baseline!r}")
    positive = {
        "train.batch_size": cfg.train.batch_size,
        "train.num_workers": cfg.train.num_workers,
        "data.image_size": cfg.data.image_size,
        "model.age_dim": cfg.model.age_dim,
        "model.gender_dim": cfg.model.gender_dim,
        "eval.knn_m": cfg.eval.knn_m,
        "loss.q": cfg.loss.q,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key}: must be > 0, got {value}")
    if cfg.train.batch_size % cfg.train.num_workers:
        raise ConfigError(
            f"train.batch_size: {cfg.train.batch_size} is not divisible by train.num_workers={cfg.train.num_workers}"
        )
    if not 0.0 <= cfg.model.dropout < 1.0:
        raise ConfigError(f"model.dropout: must be in [0, 1), got {cfg.model.dropout}")
    if cfg.storage.retries < 1:
        raise ConfigError(f"storage.retries: must be >= 1, got {cfg.storage.retries}")
    if cfg.loss.age_tolerance < 0:
        raise ConfigError(f"loss.age_tolerance: must be >= 0, got {cfg.loss.age_tolerance}")
    return cfg


# Keys that older versions wrote into the configs saved in checkpoints and that no longer mean
# anything (job sizing now lives in `resources`, which a checkpoint does not decide): dropped when
# a stored config is read back (a config file naming one is still an error).
RETIRED_KEYS = (
    "data.manifest_blocks",
    "data.decode_concurrency",
    "data.decode_batch_size",
    "data.read_concurrency",
    "eval.knn_chunk_size",
    "eval.cs_max_threshold",
    "eval.embed_batch_size",
    "eval.embed_concurrency",
    "eval.embed_torch_threads",
    "score.batch_size",
    "score.read_concurrency",
    "score.decode_concurrency",
    "score.embed_concurrency",
    "score.embed_torch_threads",
    "score.embed_gpus",
    "score.search_concurrency",
)
# Before gallery.search was typed as the search settings, they were flat keys of gallery.
FLAT_SEARCH_KEYS = ("brute_force_max", "candidates", "reorder", "num_leaves", "leaves_to_search")


def _upgrade_stored(data: dict) -> dict:
    """A config saved by an earlier version, in today's schema."""
    data = {section: dict(values) if isinstance(values, dict) else values for section, values in data.items()}
    for dotted in RETIRED_KEYS:
        section, name = dotted.split(".")
        data.get(section, {}).pop(name, None)
    if "face_crop" in data.get("data", {}):  # before data.align: a Haar box or nothing
        data["data"]["align"] = "box" if data["data"].pop("face_crop") else "none"
    gallery = data.get("gallery", {})
    if isinstance(gallery.get("search"), str):
        gallery["search"] = {"mode": gallery["search"]} | {
            key: gallery.pop(key) for key in FLAT_SEARCH_KEYS if key in gallery
        }
    return data


def config_from_dict(data: dict, stored: bool = False) -> Config:
    """A validated Config from plain data; `stored`: a config saved by an earlier run, whose
    retired keys are dropped (`_upgrade_stored`)."""
    return validate(_from_dict(Config, _upgrade_stored(data) if stored else data))


def load_config(path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load YAML (or defaults when path is None), apply `key=value` overrides, validate."""
    tree: dict = {}
    if path:
        if not os.path.exists(path):
            raise ConfigError(f"config file {path} does not exist")
        with open(path) as handle:
            tree = yaml.safe_load(handle) or {}
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {path}: top level must be a mapping")
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    return config_from_dict(tree)


def with_absolute_paths(cfg: Config, base: str | None = None) -> Config:
    """Resolve relative local paths against `base` (default: cwd) in the driver: Ray workers run
    in other directories, possibly on other machines."""
    base = base or os.getcwd()

    def resolve(value: str) -> str:
        return (
            value
            if not value or "://" in value or os.path.isabs(value)
            else os.path.normpath(os.path.join(base, value))
        )

    return dataclasses.replace(
        cfg,
        dataset=dataclasses.replace(cfg.dataset, source=resolve(cfg.dataset.source)),
        model=dataclasses.replace(cfg.model, weights=resolve(cfg.model.weights)),
        eval=dataclasses.replace(cfg.eval, peer_predictions=resolve(cfg.eval.peer_predictions)),
    )


def without_secrets(cfg: Config) -> Config:
    """The config with credentials blanked: what may be logged, dumped or put in a checkpoint.
    A reader of the dump falls back to the standard AWS chain for credentials."""
    return dataclasses.replace(cfg, storage=dataclasses.replace(cfg.storage, access_key_id="", secret_access_key=""))


def config_to_dict(cfg: Config) -> dict:
    """Plain-data form of the config, credentials blanked (see `without_secrets`)."""
    return dataclasses.asdict(without_secrets(cfg))


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def dump_config(cfg: Config, path: str) -> None:
    """Write the resolved config (credentials blanked) to a local path; it loads back to an
    equal Config apart from the credentials. For URIs use storage.write_bytes_atomic."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as handle:
        handle.write(config_to_yaml(cfg))
    os.replace(tmp, path)
