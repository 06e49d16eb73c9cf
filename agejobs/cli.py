"""The `agejobs` command. Each subcommand is `main_<command>(args)` (`main_gallery_build` for
`gallery build`); heavy imports happen inside them so that `agejobs --help` starts instantly.

Every command takes `-c CONFIG` and dotted `key=value` overrides (config.py is the one place
defaults live: a command has flags only for its inputs and outputs), and checks that its inputs
exist before it starts Ray, so a typo costs no Ray start-up.

    agejobs demo [--workdir DIR] [--storage local|s3] [-c configs/demo.yaml] [key=value ...]
    agejobs experiment -c configs/utkface.yaml --workdir DIR [key=value ...]
    agejobs synth OUT [-c CONFIG] [dataset.synth_subjects=N dataset.synth_images_per_subject=K ...]
    agejobs ingest LAYOUT SRC OUT [-c CONFIG] [dataset.split_protocol=subject dataset.verify_images=false ...]
    agejobs pack MANIFEST OUT [-c CONFIG] [dataset.pack_shard_mb=64 dataset.verify_images=false ...]
    agejobs train -c CONFIG --manifest MANIFEST|PACK [--workdir DIR] [key=value ...]
    agejobs evaluate --checkpoint DIR --manifest MANIFEST|PACK [--workdir DIR] [-c CONFIG]
                     [data.test_flip=true eval.knn_m=M ...]
    agejobs evaluate --scored OUT/RUN_ID --labels MANIFEST|PACK [--workdir DIR] [-c CONFIG]
    agejobs gallery build --checkpoint DIR --source MANIFEST|PACK --out DIR [-c CONFIG] [key=value ...]
    agejobs score --checkpoint DIR --gallery DIR --archive PREFIX|PACK --out DIR [--run-id ID]
                  [-c CONFIG] [key=value ...]

Every path may be a local path or a URI (s3://bucket/prefix; S3 settings from the config's
`storage:` section or the standard AWS environment). Batch commands end by printing one JSON
line of counts or results.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: importing these here would slow `agejobs --help`
    from agejobs.config import Config

DEFAULT_DEMO_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "demo.yaml")


def _print_json(payload: dict) -> None:
    print(json.dumps(payload, sort_keys=False, default=str), flush=True)


def _finish(command: str, out_uri: str, payload: dict) -> int:
    """A batch command's counts: one JSON line on the console and the same record in its output
    (OUT/agejobs-<command>.json), so the console, the metrics and the output directory agree.
    (`score` keeps its record as OUT/RUN_ID/run.json: a rerun of a finished night writes nothing.)"""
    from agejobs import storage

    record = {"command": command, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **payload}
    text = json.dumps(record, sort_keys=False, default=str)
    storage.write_bytes_atomic(storage.join(out_uri, f"agejobs-{command.replace(' ', '-')}.json"), text.encode())
    print(text, flush=True)
    return 0


def _load(args) -> Config:
    """The run's config; its S3 settings are exported before anything (Ray included) starts."""
    from agejobs import storage
    from agejobs.config import load_config, with_absolute_paths

    cfg = with_absolute_paths(load_config(args.config, args.overrides))
    storage.configure(cfg.storage)
    if cfg.ray.metrics_port:
        _serve_metrics(cfg.ray.metrics_port)
    return cfg


def _require(uri: str, what: str) -> str:
    """An input that must exist, checked before Ray starts; the error names it."""
    from agejobs import storage

    if not storage.exists(uri):
        raise FileNotFoundError(f"{what} {uri} does not exist")
    return uri


def _serve_metrics(port: int) -> None:
    """This process's agejobs_* metrics (the ones recorded without Ray) on http://0.0.0.0:port/."""
    from agejobs import metrics

    metrics.serve(port)
    print(f"metrics: http://0.0.0.0:{port}/metrics", flush=True)


def _console(args) -> str:
    """How much of Ray's own output reaches this console: none unless --verbose."""
    return "verbose" if getattr(args, "verbose", False) else "quiet"


def _ray_for(cfg, args):
    """Ray for a command: the configured cluster, or a private local instance whose metrics agent
    listens on ray.metrics_export_port."""
    from agejobs.ray_runtime import ray_session

    return ray_session(
        cfg.ray.address,
        cfg.ray.num_cpus,
        console=_console(args),
        metrics_export_port=cfg.ray.metrics_export_port,
        object_store_mb=cfg.ray.object_store_mb,
    )


def main_synth(args) -> int:
    from agejobs.datasets.synthetic import SynthSpec, write_synthetic

    dataset = _load(args).dataset
    spec = SynthSpec(
        num_subjects=dataset.synth_subjects,
        images_per_subject=dataset.synth_images_per_subject,
        image_size=dataset.synth_image_size,
        test_fraction=dataset.test_fraction,
        seed=dataset.split_seed,
    )
    return _finish("synth", args.out, write_synthetic(args.out, spec, progress=True))


def main_ingest(args) -> int:
    from agejobs.datasets.manifest import SplitSpec, rejected_by_stage, write_import
    from agejobs.datasets.registry import import_layout

    cfg = _load(args)
    dataset = cfg.dataset
    result = import_layout(
        args.layout,
        _require(args.src, "source"),
        SplitSpec(dataset.split_protocol, dataset.test_fraction, dataset.split_seed),
    )
    if dataset.verify_images:
        from agejobs.ray_runtime import quiet_ray_data
        from agejobs.verify import verify_import

        with _ray_for(cfg, args):
            quiet_ray_data()
            result = verify_import(result, "ray", concurrency=cfg.resources.decode.concurrency)
    counts = write_import(result, args.out)
    return _finish(
        "ingest", args.out, {"layout": args.layout, **counts, "rejected_by_stage": rejected_by_stage(result.rejected)}
    )


def main_pack(args) -> int:
    from agejobs.pack import pack

    cfg = _load(args)
    _require(args.manifest, "manifest")
    with _ray_for(cfg, args):
        counts = pack(
            args.manifest, args.out, int(cfg.dataset.pack_shard_mb * 2**20), verify_images=cfg.dataset.verify_images
        )
    return _finish("pack", args.out, counts)


def main_experiment(args) -> int:
    """`demo` and `experiment`: the whole pipeline, one line per stage, then the table."""
    if getattr(args, "storage", "local") == "s3":
        return main_demo_on_local_s3(args)
    from agejobs.experiment import run_experiment
    from agejobs.ray_runtime import quiet_ray_data

    cfg = _load(args)
    if cfg.dataset.kind != "synthetic":
        _require(cfg.dataset.source, "dataset.source")
    with _ray_for(cfg, args):
        quiet_ray_data()
        report = run_experiment(cfg, args.workdir)
    return _print_experiment(report)


DEMO_BUCKET = "agejobs-demo"


def main_demo_on_local_s3(args) -> int:
    """The demo with every byte going through an embedded S3 endpoint (moto on 127.0.0.1):
    faces uploaded to s3://agejobs-demo/<run>/data, packed into shards there, streamed into
    training, checkpoints and outputs written there; the report and plots are then copied
    back to --workdir, since the endpoint (and its in-memory bucket) ends with the command."""
    import dataclasses

    from agejobs import storage
    from agejobs.experiment import run_experiment
    from agejobs.ray_runtime import quiet_ray_data
    from agejobs.s3_local import LocalS3

    local_workdir = os.path.abspath(args.workdir)
    with LocalS3() as endpoint:
        print(f"embedded S3 endpoint: {endpoint.endpoint_url}", flush=True)
        cfg = _load(args)
        cfg = dataclasses.replace(cfg, dataset=dataclasses.replace(cfg.dataset, pack=True))
        endpoint.create_bucket(DEMO_BUCKET)
        remote_workdir = f"s3://{DEMO_BUCKET}/{os.path.basename(local_workdir.rstrip('/')) or 'demo'}"
        with _ray_for(cfg, args):
            quiet_ray_data()
            report = run_experiment(cfg, remote_workdir)
        fs, remote_path = storage.filesystem_for(remote_workdir)
        os.makedirs(local_workdir, exist_ok=True)
        for name in ("report.json", "config.yaml", "plots", "data/errors.parquet"):
            if fs.exists(f"{remote_path}/{name}"):
                fs.get(f"{remote_path}/{name}", os.path.join(local_workdir, name), recursive=True)
    report["workdir"] = local_workdir
    print(f"\n(copied from {remote_workdir} before the embedded endpoint stopped)")
    return _print_experiment(report)


def _print_experiment(report: dict) -> int:
    from agejobs import evaluate

    print()
    evaluate.print_reports(report["methods"])
    print(f"\nreport: {os.path.join(report['workdir'], 'report.json')}")
    print(f"plots:  {os.path.join(report['workdir'], 'plots')}/")
    by_name = {m["method"]: m for m in report["methods"]}
    _print_json(
        {name: round(method["mae"], 3) for name, method in by_name.items()}
        | {"report": os.path.join(report["workdir"], "report.json")}
    )
    return 0


def _workdir(uri: str) -> str:
    from agejobs import storage

    return storage.absolute(uri)


def main_train(args) -> int:
    from agejobs import storage
    from agejobs.config import config_to_yaml
    from agejobs.ray_runtime import quiet_ray_data
    from agejobs.train import run_training

    cfg = _load(args)
    _require(args.manifest, "manifest")
    workdir = _workdir(args.workdir)
    storage.write_bytes_atomic(storage.join(workdir, "config.yaml"), config_to_yaml(cfg).encode())
    path = cfg.train.storage_path
    checkpoints = path if storage.is_remote(path) or os.path.isabs(path) else storage.join(workdir, path)
    with _ray_for(cfg, args):
        quiet_ray_data()
        name = args.name or cfg.train.method
        outcome = run_training(cfg, args.manifest, name, checkpoints, progress_label=name)
    metrics = {k: v for k, v in outcome.metrics.items() if isinstance(v, (int, float))}
    return _finish("train", workdir, {"checkpoint": outcome.checkpoint_path, **metrics})


def main_gallery_build(args) -> int:
    from agejobs.checkpoint import resolve_checkpoint
    from agejobs.gallery import build_gallery
    from agejobs.ray_runtime import quiet_ray_data

    cfg = _load(args)
    resolve_checkpoint(args.checkpoint)
    _require(args.source, "source")
    with _ray_for(cfg, args):
        quiet_ray_data()
        manifest = build_gallery(args.checkpoint, args.source, _workdir(args.out), cfg)
    keys = (
        "gallery_version",
        "count",
        "faces_embedded",
        "age_embedding_dim",
        "gender_index",
        "distance",
        "search",
        "build_seconds",
    )
    return _finish(
        "gallery build", _workdir(args.out), {key: manifest[key] for key in keys} | {"gallery": _workdir(args.out)}
    )


def main_score(args) -> int:
    from agejobs.checkpoint import resolve_checkpoint
    from agejobs.gallery import read_gallery_manifest
    from agejobs.ray_runtime import quiet_ray_data
    from agejobs.score import default_run_id, score_archive

    cfg = _load(args)
    resolve_checkpoint(args.checkpoint)
    read_gallery_manifest(args.gallery)
    _require(args.archive, "archive")
    with _ray_for(cfg, args):
        quiet_ray_data()
        summary = score_archive(
            args.archive, _workdir(args.out), args.run_id or default_run_id(), args.checkpoint, args.gallery, cfg
        )
    _print_json(summary)
    return 0


# What `evaluate --checkpoint` may change of the checkpoint's own config: how its estimate is
# made, never how its faces are framed or sized (that would not be the model that was trained).
INFERENCE_KEYS = ("eval.", "resources.", "ray.", "storage.", "data.test_flip")


def inference_config(cfg: Config, config_path: str | None, overrides: list[str]) -> Config:
    """The checkpoint's config with the inference settings of a config file (-c) and of
    `key=value` overrides; overriding any other key is an error naming it."""
    from agejobs.config import ConfigError, config_from_dict, config_to_dict, load_config, parse_override

    tree = config_to_dict(cfg)
    settings = []
    if config_path:
        job = config_to_dict(load_config(config_path))
        for prefix in INFERENCE_KEYS:
            section, _, name = prefix.rstrip(".").partition(".")
            settings += [(f"{section}.{key}", value) for key, value in job[section].items() if not name or key == name]
    for text in overrides:
        key, value = parse_override(text)
        if not key.startswith(INFERENCE_KEYS):
            raise ConfigError(
                f"evaluate --checkpoint: {key} is the trained model's own setting; only "
                f"{', '.join(INFERENCE_KEYS)} may be overridden"
            )
        settings.append((key, value))
    for key, value in settings:
        section, name = key.split(".", 1)
        tree.setdefault(section, {})[name] = value
    return config_from_dict(tree)


def main_evaluate(args) -> int:
    if args.scored:
        return main_evaluate_scored(args)
    if not (args.checkpoint and args.manifest):
        raise ValueError("evaluate needs --checkpoint and --manifest, or --scored and --labels")
    from agejobs import evaluate, storage
    from agejobs.checkpoint import checkpoint_identity
    from agejobs.experiment import SIAMESE, method_reports
    from agejobs.ray_runtime import quiet_ray_data

    _load(args)  # S3 settings and the metrics endpoint, before anything is read
    cfg = inference_config(checkpoint_identity(args.checkpoint)[0], args.config, args.overrides)
    _require(args.manifest, "manifest")
    workdir = _workdir(args.workdir)
    with _ray_for(cfg, args):
        quiet_ray_data()
        name = SIAMESE if cfg.train.method == "siamese" else cfg.train.method
        reports = method_reports(name, args.checkpoint, args.manifest, cfg, storage.join(workdir, "plots"))
    evaluate.write_outputs(workdir, reports, {"checkpoint": args.checkpoint, "manifest": args.manifest})
    evaluate.print_reports(reports)
    _print_json({"mae": reports[0]["mae"], "n": reports[0]["n"], "report": storage.join(workdir, "report.json")})
    return 0


def main_evaluate_scored(args) -> int:
    """The spine's report and plots for a scoring run's output joined (by path) with labels."""
    from agejobs import evaluate, storage

    if not args.labels:
        raise ValueError("evaluate --scored needs --labels MANIFEST|PACK")
    _load(args)
    _require(args.labels, "labels")
    _require(args.scored, "scoring run")
    report, extra = evaluate.scored_report(args.scored, args.labels, args.split)
    workdir = _workdir(args.workdir)
    evaluate.write_outputs(workdir, [report], extra)
    evaluate.print_reports([report])
    _print_json(
        {
            "mae": report["mae"],
            "n": report["n"],
            "error_rows": extra["error_rows"],
            "report": storage.join(workdir, "report.json"),
        }
    )
    return 0


def _with_config(sub, default=None, required=False) -> None:
    sub.add_argument("-c", "--config", default=default, required=required, help="YAML config (configs/*.yaml)")
    sub.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.epochs=3")


def _add_pipelines(commands, common) -> None:
    demo = commands.add_parser(
        "demo", parents=[common], help="synthetic faces -> train -> gallery -> evaluate, on 2 CPU cores"
    )
    demo.add_argument("--workdir", default="runs/demo", help="every output goes here (report: WORKDIR/report.json)")
    demo.add_argument(
        "--storage",
        default="local",
        choices=["local", "s3"],
        help="s3: run everything through an embedded S3 endpoint on 127.0.0.1 (moto), packed shards included",
    )
    _with_config(demo, default=DEFAULT_DEMO_CONFIG)
    demo.set_defaults(handler=main_experiment)
    experiment = commands.add_parser(
        "experiment", parents=[common], help="the demo's pipeline on any configured dataset"
    )
    experiment.add_argument("--workdir", required=True)
    _with_config(experiment, required=True)
    experiment.set_defaults(handler=main_experiment)


def _add_data_commands(commands, common) -> None:
    synth = commands.add_parser(
        "synth", parents=[common], help="write a deterministic synthetic face dataset + manifest (dataset.synth_*)"
    )
    synth.add_argument("out")
    _with_config(synth)
    synth.set_defaults(handler=main_synth)
    ingest = commands.add_parser(
        "ingest", parents=[common], help="import a published dataset layout into a manifest (dataset.*)"
    )
    ingest.add_argument("layout", help="utkface, morph, megaage, aaf, fgnet, appa-real or imdb-wiki")
    ingest.add_argument("src", help="the dataset's root directory or URI, in its published layout")
    ingest.add_argument("out", help="directory or URI for manifest.parquet + errors.parquet")
    _with_config(ingest)
    ingest.set_defaults(handler=main_ingest)
    pack = commands.add_parser(
        "pack", parents=[common], help="manifest of loose images -> Parquet shards of image bytes"
    )
    pack.add_argument("manifest")
    pack.add_argument("out", help="directory or URI for shard-NNNNN.parquet (+ .errors.parquet, .done)")
    _with_config(pack)
    pack.set_defaults(handler=main_pack)


def _add_train_and_evaluate(commands, common) -> None:
    train = commands.add_parser("train", parents=[common], help="train one model with Ray Train")
    train.add_argument("--manifest", required=True, help="manifest.parquet or pack directory (local or URI)")
    train.add_argument("--workdir", default="runs/train")
    train.add_argument("--name", default="", help="run name under the storage path")
    _with_config(train, required=True)
    train.set_defaults(handler=main_train)
    evaluate = commands.add_parser(
        "evaluate",
        parents=[common],
        help="kNN (or direct) estimates on the test split + report; or a scoring run's output vs labels",
    )
    evaluate.add_argument("--checkpoint", help="with --manifest: evaluate a checkpoint on the test split")
    evaluate.add_argument("--manifest")
    evaluate.add_argument("--scored", help="with --labels: a scoring run's output directory (OUT/RUN_ID)")
    evaluate.add_argument("--labels", help="manifest or pack holding the scored images' labels (joined on path)")
    evaluate.add_argument("--split", default="", help="with --scored: only labels of this split (e.g. test)")
    evaluate.add_argument("--workdir", default="runs/evaluate")
    _with_config(evaluate)
    evaluate.set_defaults(handler=main_evaluate)


def _add_batch_jobs(commands, common) -> None:
    gallery = commands.add_parser("gallery", help="build a gallery (embeddings + L1 index) from a checkpoint")
    gallery_commands = gallery.add_subparsers(dest="gallery_command", required=True)
    build = gallery_commands.add_parser(
        "build", parents=[common], help="embed a split with a checkpoint; write faces, index, manifest"
    )
    build.add_argument("--checkpoint", required=True)
    build.add_argument("--source", required=True, help="manifest or pack; the split is gallery.split (default train)")
    build.add_argument("--out", required=True, help="gallery directory (local or URI)")
    _with_config(build)
    build.set_defaults(handler=main_gallery_build)
    score = commands.add_parser(
        "score", parents=[common], help="score an image archive against a gallery (resumable, sharded output)"
    )
    score.add_argument("--checkpoint", required=True)
    score.add_argument("--gallery", required=True, help="built by `agejobs gallery build` with the same checkpoint")
    score.add_argument("--archive", required=True, help="a prefix of loose images, or a pack directory")
    score.add_argument("--out", required=True, help="output root; the run writes OUT/RUN_ID/")
    score.add_argument("--run-id", default="", help="default: today's UTC date (a rerun resumes the same run)")
    _with_config(score)
    score.set_defaults(handler=main_score)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agejobs", description="Facial age estimation (Jeong et al. 2018) trained and scored on Ray."
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve this process's agejobs_* metrics (prometheus_client) on this port",
    )
    # Every subcommand takes --verbose (after its name, where users type it).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--verbose",
        action="store_true",
        help="also print Ray's own logs (workers, Ray Train, Ray Data, raylet); off by default",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (_add_pipelines, _add_data_commands, _add_train_and_evaluate, _add_batch_jobs):
        add(commands, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    import logging

    from agejobs.storage import StorageError  # light: fsspec only

    args = build_parser().parse_args(argv)
    if args.metrics_port:
        _serve_metrics(args.metrics_port)
    # Our own progress and counts (pack shards, verify, rejected rows) at INFO; libraries stay quiet.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    # demo and experiment say one line per stage themselves: their modules' INFO lines only with --verbose.
    staged = args.command in ("demo", "experiment") and not getattr(args, "verbose", False)
    logging.getLogger("agejobs").setLevel(logging.WARNING if staged else logging.INFO)
    try:
        return args.handler(args)
    # Config, input, weights, storage, a checkpoint or manifest that is not there: a message naming
    # the input, not a traceback.
    except (ValueError, FileNotFoundError, StorageError) as error:
        print(f"agejobs {args.command}: error: {error}", file=sys.stderr)
        return 2
