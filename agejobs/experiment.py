"""One experiment end to end: faces -> train the paper's model and the baselines -> kNN -> report.

    agejobs demo --workdir runs/demo                              # synthetic faces, 2 CPU cores
    agejobs experiment -c configs/utkface.yaml --workdir runs/utk # real faces

Every method gets the same backbone, data, and training budget, so the report answers the
paper's question: does metric learning + kNN beat estimating the age directly?
Outputs in WORKDIR: config.yaml, data/ (manifest), checkpoints/, report.json, plots/*.png.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from agejobs import evaluate, gallery, knn, storage
from agejobs.config import Config, config_to_dict, config_to_yaml
from agejobs.images import Preprocessing

SIAMESE, SIAMESE_AGE_ONLY = "siamese-knn", "siamese-knn-age-only"
RIDGE_PIXELS_SIZE = 32  # a ridge over 32 x 32 x 3 pixels; more only adds noise dimensions


def prepare_dataset(cfg: Config, workdir: str) -> tuple[str, dict]:
    """Materialise the configured faces as a manifest; returns (manifest path, import counts)."""
    data_dir = storage.join(workdir, "data")
    kind = cfg.dataset.kind
    if kind == "synthetic":
        from agejobs.datasets.synthetic import SynthSpec, write_synthetic

        spec = SynthSpec(
            num_subjects=cfg.dataset.synth_subjects,
            images_per_subject=cfg.dataset.synth_images_per_subject,
            image_size=cfg.dataset.synth_image_size,
            test_fraction=cfg.dataset.test_fraction,
            seed=cfg.dataset.split_seed,
        )
        counts = write_synthetic(data_dir, spec, progress=True)
        return storage.join(data_dir, "manifest.parquet"), counts
    if kind == "utkface":
        from agejobs.datasets.manifest import SplitSpec
        from agejobs.datasets.utkface import import_utkface, write_import

        if not cfg.dataset.source:
            raise ValueError("dataset.source: the UTKFace directory is required for dataset.kind=utkface")
        split = SplitSpec(cfg.dataset.split_protocol, cfg.dataset.test_fraction, cfg.dataset.split_seed)
        result = import_utkface(cfg.dataset.source, split)
        if cfg.dataset.verify_images:
            from agejobs.verify import verify_import

            result = verify_import(result, "ray", concurrency=cfg.resources.decode.concurrency)
        return storage.join(data_dir, "manifest.parquet"), write_import(result, data_dir)
    if not cfg.dataset.source:
        raise ValueError("dataset.source: a manifest path is required for dataset.kind=manifest")
    return cfg.dataset.source, {}


def methods_to_train(cfg: Config) -> list[tuple[str, Config]]:
    """(report name, config) for every model this experiment trains."""
    runs = [(SIAMESE, cfg)]
    if cfg.eval.age_only_model and cfg.loss.gender_weight > 0:
        runs.append((SIAMESE_AGE_ONLY, dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, gender_weight=0.0))))
    for baseline in ("regression", "dex"):
        if baseline in cfg.eval.baselines:
            runs.append((baseline, dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, method=baseline))))
    return runs


def embed(checkpoint: str, manifest: str, split: str, cfg: Config) -> dict:
    """One split through the checkpoint's embedder, sized by the eval config."""
    return gallery.embed_split(
        checkpoint,
        manifest,
        split,
        Preprocessing.of(cfg.data),
        cfg.resources,
        cfg.data.test_flip,
    )


def knn_reports(name: str, checkpoint: str, manifest: str, cfg: Config, plots_dir: str) -> list[dict]:
    """Embed gallery (train split) and queries (test split); estimate by M-nearest neighbours."""
    reference = embed(checkpoint, manifest, "train", cfg)
    queries = embed(checkpoint, manifest, "test", cfg)
    return knn_estimate_reports(name, reference, queries, cfg, plots_dir)


EXACT = knn.SearchSettings(mode="exact")


def knn_estimates(reference: dict, queries: dict, cfg: Config) -> dict:
    """Per query face (by image_id): the estimate nightly scoring makes (`gallery.Gallery`),
    from an in-memory gallery of the reference faces searched exactly."""
    references = gallery.Gallery.of_faces(reference, EXACT, cfg.eval.knn_m, gender_index=cfg.loss.gender_weight > 0)
    return {"image_id": queries["image_id"]} | references.estimate(
        queries["age_embedding"], queries["gender_embedding"]
    )


def knn_estimate_reports(name: str, reference: dict, queries: dict, cfg: Config, plots_dir: str) -> list[dict]:
    """Reports of embedded queries estimated from the M nearest embedded reference faces."""
    estimates = knn_estimates(reference, queries, cfg)
    evaluate.plot_embedding_map(
        queries["age_embedding"], queries["age"], storage.join(plots_dir, f"embedding_{name}.png")
    )
    report = evaluate.method_report(
        name,
        estimates["predicted_age"],
        queries["age"],
        estimates["predicted_gender"],
        queries["gender"],
        face_outcomes=queries["face_outcome"],
    )
    # The paper's Table 2: how well the AGE embedding alone separates gender.
    from_age = evaluate.gender_accuracy(estimates["gender_from_age_neighbours"], queries["gender"])
    report["gender_accuracy_from_age_embedding"] = None if np.isnan(from_age) else from_age
    return [report]


def method_reports(name: str, checkpoint: str, manifest: str, cfg: Config, plots_dir: str) -> list[dict]:
    """The test-split report(s) of one trained model: kNN for the paper's models, else direct."""
    if name in (SIAMESE, SIAMESE_AGE_ONLY):
        return knn_reports(name, checkpoint, manifest, cfg, plots_dir)
    return [direct_report(name, checkpoint, manifest, cfg)]


def direct_report(name: str, checkpoint: str, manifest: str, cfg: Config) -> dict:
    queries = embed(checkpoint, manifest, "test", cfg)
    return evaluate.method_report(
        name,
        queries["predicted_age"],
        queries["age"],
        queries["predicted_gender"],
        queries["gender"],
        face_outcomes=queries["face_outcome"],
    )


def load_pixels(manifest: str, split: str, preprocessing: Preprocessing) -> dict:
    """Raw faces of a split as flat float pixels (for the ridge baseline), through the shared decoder."""
    from agejobs.data import collect_by_image_id, face_dataset

    def flatten(batch: dict) -> dict:
        pixels = batch["image"].reshape(len(batch["image"]), -1).astype(np.float32) / 255.0
        return {"pixels": pixels, "age": batch["age"], "gender": batch["gender"], "image_id": batch["image_id"]}

    return collect_by_image_id(face_dataset(manifest, split, preprocessing), flatten)


def ridge_pixels_report(manifest: str, preprocessing: Preprocessing) -> dict:
    """Ridge regression on raw pixels (of the experiment's faces, framed by its data.align, at
    RIDGE_PIXELS_SIZE): how far plain pixel statistics get on this data."""
    from sklearn.linear_model import RidgeClassifierCV, RidgeCV

    preprocessing = dataclasses.replace(preprocessing, size=RIDGE_PIXELS_SIZE)
    train, test = load_pixels(manifest, "train", preprocessing), load_pixels(manifest, "test", preprocessing)
    alphas = np.logspace(-1, 4, 11)
    age_model = RidgeCV(alphas=alphas).fit(train["pixels"], train["age"])
    labelled = train["gender"] >= 0  # unlabelled faces (-1) are not a third gender
    if len(np.unique(train["gender"][labelled])) == 2:
        gender_model = RidgeClassifierCV(alphas=alphas).fit(train["pixels"][labelled], train["gender"][labelled])
        predicted_gender = gender_model.predict(test["pixels"])
    else:
        predicted_gender = np.full(len(test["age"]), -1)
    report = evaluate.method_report(
        "ridge-pixels",
        np.clip(age_model.predict(test["pixels"]), 0, None),
        test["age"],
        predicted_gender,
        test["gender"],
    )
    report["alpha"] = float(age_model.alpha_)
    return report


def mean_report(manifest: str) -> dict:
    from agejobs.data import label_table

    table = label_table(manifest, ("age", "gender", "split")).to_pandas()
    train, test = table[table["split"] == "train"], table[table["split"] == "test"]
    labelled = train["gender"][train["gender"] >= 0]
    majority_gender = int(labelled.mode().iloc[0]) if len(labelled) else -1
    return evaluate.method_report(
        "mean",
        np.full(len(test), train["age"].mean()),
        test["age"],
        np.full(len(test), majority_gender),
        test["gender"],
    )


def say(line: str) -> None:
    """One line per stage on the console (the training bars are progress.TrainingProgress)."""
    print(line, flush=True)


def peer_report(manifest: str, predictions_csv: str) -> dict:
    """An outside model's per-image predictions (CSV: file, pred_age[, pred_gender]) on exactly
    this experiment's test faces, joined on file name: e.g. ../shared/peers/ (dlib's age model)."""
    import pandas as pd

    from agejobs.data import label_table

    labels = label_table(manifest, ("path", "age", "gender", "split")).to_pandas()
    test = labels[labels["split"] == "test"].assign(file=lambda t: t["path"].str.rsplit("/", n=1).str[-1])
    peer = pd.read_csv(predictions_csv)  # pandas reads s3:// through s3fs too
    missing = {"file", "pred_age"} - set(peer.columns)
    if missing:
        raise ValueError(f"eval.peer_predictions {predictions_csv}: missing columns {sorted(missing)}")
    joined = test.merge(peer, on="file", how="inner")
    if len(joined) != len(test):
        raise ValueError(
            f"eval.peer_predictions {predictions_csv}: {len(test) - len(joined)} of {len(test)} test faces "
            "have no prediction; the peer must be compared on exactly the same faces"
        )
    gender = joined["pred_gender"].to_numpy() if "pred_gender" in joined else None
    report = evaluate.method_report(
        "peer",
        joined["pred_age"].to_numpy(),
        joined["age"].to_numpy(),
        gender,
        None if gender is None else joined["gender"].to_numpy(),
    )
    report["predictions"] = predictions_csv
    return report


def stage_data(cfg: Config, workdir: str, timings: dict) -> tuple[str, dict]:
    """The experiment's faces as a manifest (or, with dataset.pack, a pack of it): (source, counts)."""
    started = time.monotonic()
    manifest, counts = prepare_dataset(cfg, workdir)
    if cfg.dataset.pack:
        from agejobs.pack import pack

        packed = storage.join(workdir, "packed")
        counts["pack"] = pack(manifest, packed, int(cfg.dataset.pack_shard_mb * 2**20))
        manifest = packed  # train and evaluate stream the shards
    timings["data"] = time.monotonic() - started
    split_counts = f": {counts['train']} training / {counts['test']} test faces" if "train" in counts else ""
    if counts.get("rows_rejected"):
        split_counts += (
            f", {counts['rows_rejected']} rejected (reasons: {storage.join(workdir, 'data')}/errors.parquet)"
        )
    say(f"[data] {cfg.dataset.kind}{split_counts} ({timings['data']:.0f} s)")
    return manifest, counts


def train_methods(runs: list[tuple[str, Config]], manifest: str, workdir: str, timings: dict) -> tuple[dict, dict]:
    """Train every method of the experiment: ({name: checkpoint}, {name: final metrics})."""
    # Here, not at the top: `agejobs evaluate` uses this module's reports and never trains.
    from agejobs.train import run_training

    checkpoints, train_metrics = {}, {}
    for name, run_cfg in runs:
        started = time.monotonic()
        outcome = run_training(run_cfg, manifest, name, storage.join(workdir, "checkpoints"), progress_label=name)
        checkpoints[name], train_metrics[name] = outcome.checkpoint_path, outcome.metrics
        timings[f"train {name}"] = time.monotonic() - started
        say(
            f"[{name}] trained: {outcome.metrics.get('step', '?')} steps, {outcome.metrics.get('epoch', '?')} epochs "
            f"({timings[f'train {name}']:.0f} s)"
        )
    return checkpoints, train_metrics


def evaluate_methods(cfg: Config, runs, checkpoints: dict, manifest: str, plots_dir: str, timings: dict) -> list[dict]:
    """Test-split reports of the trained methods, the untrained baselines and the peer, in that order."""
    evaluations = [
        (name, lambda name=name, run_cfg=run_cfg: method_reports(name, checkpoints[name], manifest, run_cfg, plots_dir))
        for name, run_cfg in runs
    ]
    evaluations += [
        (name, build)
        for name, build in (
            ("mean", lambda: [mean_report(manifest)]),
            ("ridge-pixels", lambda: [ridge_pixels_report(manifest, Preprocessing.of(cfg.data))]),
        )
        if name in cfg.eval.baselines
    ]
    if cfg.eval.peer_predictions:
        evaluations.append(("peer", lambda: [peer_report(manifest, cfg.eval.peer_predictions)]))
    reports = []
    for name, build in evaluations:
        started = time.monotonic()
        new = build()
        reports += new
        timings[f"evaluate {name}"] = time.monotonic() - started
        say(f"[{name}] test MAE {new[0]['mae']:.2f} on {new[0]['n']} faces ({timings[f'evaluate {name}']:.0f} s)")
    return reports


def run_experiment(cfg: Config, workdir: str) -> dict:
    """The whole experiment on the connected Ray cluster; returns the report (also report.json)."""
    workdir = storage.absolute(workdir)
    storage.write_bytes_atomic(storage.join(workdir, "config.yaml"), config_to_yaml(cfg).encode())
    timings: dict[str, float] = {}
    runs = methods_to_train(cfg)
    manifest, counts = stage_data(cfg, workdir, timings)
    checkpoints, train_metrics = train_methods(runs, manifest, workdir, timings)
    reports = evaluate_methods(cfg, runs, checkpoints, manifest, storage.join(workdir, "plots"), timings)
    numbers = {
        name: {k: v for k, v in values.items() if isinstance(v, (int, float, bool))}
        for name, values in train_metrics.items()
    }
    extra = {
        "workdir": workdir,
        "manifest": manifest,
        "dataset_counts": counts,
        "checkpoints": checkpoints,
        "train_metrics": numbers,
        "timings_s": timings,
        "config": config_to_dict(cfg),
    }
    return evaluate.write_outputs(workdir, reports, extra)
