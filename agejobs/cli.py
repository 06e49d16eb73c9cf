"""The `agejobs` command. Each subcommand is a `main_<name>(args)`; heavy imports happen inside them
so that `agejobs --help` starts instantly.

    agejobs demo [--workdir DIR] [-c configs/demo.yaml] [key=value ...]
    agejobs experiment -c configs/utkface.yaml --workdir DIR [key=value ...]
    agejobs synth OUT [--subjects N] [--images-per-subject K] [--size PX] [--seed S]
    agejobs ingest utkface SRC OUT [--test-fraction F] [--seed S]
    agejobs train -c CONFIG --manifest MANIFEST [--workdir DIR] [key=value ...]
    agejobs evaluate --checkpoint DIR --manifest MANIFEST [--workdir DIR]

Batch commands end by printing one JSON line of counts or results.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

DEFAULT_DEMO_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "demo.yaml")


def _print_json(payload: dict) -> None:
    print(json.dumps(payload, sort_keys=False, default=str), flush=True)


def _load(args) -> "Config":  # noqa: F821
    from agejobs.config import load_config, with_absolute_paths

    return with_absolute_paths(load_config(args.config, args.overrides))


def main_synth(args) -> int:
    from agejobs.datasets.synthetic import SynthSpec, write_synthetic

    spec = SynthSpec(
        num_subjects=args.subjects,
        images_per_subject=args.images_per_subject,
        image_size=args.size,
        test_fraction=args.test_fraction,
        seed=args.seed,
    )
    _print_json(write_synthetic(args.out, spec, progress=True))
    return 0


def main_ingest(args) -> int:
    from agejobs.datasets.utkface import import_utkface, write_import

    if not os.path.isdir(args.src):
        raise SystemExit(f"agejobs ingest: source directory {args.src} does not exist")
    result = import_utkface(args.src, args.split, args.test_fraction, args.seed)
    _print_json(write_import(result, args.out))
    return 0


def _run_experiment(args) -> int:
    from agejobs import evaluate
    from agejobs.experiment import run_experiment
    from agejobs.ray_runtime import quiet_ray_data, ray_session

    cfg = _load(args)
    with ray_session(cfg.ray.address, cfg.ray.num_cpus):
        quiet_ray_data()
        report = run_experiment(cfg, args.workdir)
    print()
    print(evaluate.format_table(report["methods"]))
    print(f"\nreport: {os.path.join(report['workdir'], 'report.json')}")
    print(f"plots:  {os.path.join(report['workdir'], 'plots')}/")
    by_name = {m["method"]: m for m in report["methods"]}
    _print_json({name: round(method["mae"], 3) for name, method in by_name.items()} | {"report": os.path.join(report["workdir"], "report.json")})
    return 0


def main_train(args) -> int:
    from agejobs.config import dump_config
    from agejobs.ray_runtime import quiet_ray_data, ray_session
    from agejobs.train import run_training

    cfg = _load(args)
    workdir = os.path.abspath(args.workdir)
    dump_config(cfg, os.path.join(workdir, "config.yaml"))
    storage = cfg.train.storage_path if "://" in cfg.train.storage_path else os.path.join(workdir, cfg.train.storage_path)
    with ray_session(cfg.ray.address, cfg.ray.num_cpus):
        quiet_ray_data()
        outcome = run_training(cfg, args.manifest, args.name or cfg.train.method, storage)
    _print_json({"checkpoint": outcome.checkpoint_path, **{k: v for k, v in outcome.metrics.items() if isinstance(v, (int, float))}})
    return 0


def main_evaluate(args) -> int:
    from agejobs import evaluate
    from agejobs.experiment import SIAMESE, direct_report, knn_reports
    from agejobs.gallery import load_trained_model
    from agejobs.ray_runtime import quiet_ray_data, ray_session

    _, cfg = load_trained_model(args.checkpoint)
    workdir = os.path.abspath(args.workdir)
    plots_dir = os.path.join(workdir, "plots")
    os.makedirs(plots_dir, exist_ok=True)
    with ray_session(cfg.ray.address, cfg.ray.num_cpus):
        quiet_ray_data()
        if cfg.train.method == "siamese":
            reports = knn_reports(SIAMESE, args.checkpoint, args.manifest, cfg, plots_dir)
        else:
            reports = [direct_report(cfg.train.method, args.checkpoint, args.manifest, cfg)]
    evaluate.plot_cs_curves(reports, os.path.join(plots_dir, "cs_curve.png"))
    evaluate.plot_mae_by_age(reports, os.path.join(plots_dir, "mae_by_age.png"))
    evaluate.write_report(os.path.join(workdir, "report.json"), reports, {"checkpoint": args.checkpoint, "manifest": args.manifest})
    print(evaluate.format_table(reports))
    _print_json({"mae": reports[0]["mae"], "n": reports[0]["n"], "report": os.path.join(workdir, "report.json")})
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agejobs", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def with_config(sub, default=None, required=False):
        sub.add_argument("-c", "--config", default=default, required=required, help="YAML config (configs/*.yaml)")
        sub.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.epochs=3")

    demo = commands.add_parser("demo", help="synthetic faces -> train -> gallery -> evaluate, on 2 CPU cores")
    demo.add_argument("--workdir", default="runs/demo", help="every output goes here (report: WORKDIR/report.json)")
    with_config(demo, default=DEFAULT_DEMO_CONFIG)
    demo.set_defaults(handler=_run_experiment)

    experiment = commands.add_parser("experiment", help="the demo's pipeline on any configured dataset")
    experiment.add_argument("--workdir", required=True)
    with_config(experiment, required=True)
    experiment.set_defaults(handler=_run_experiment)

    synth = commands.add_parser("synth", help="write a deterministic synthetic face dataset + manifest")
    synth.add_argument("out")
    synth.add_argument("--subjects", type=int, default=600)
    synth.add_argument("--images-per-subject", type=int, default=5)
    synth.add_argument("--size", type=int, default=80)
    synth.add_argument("--test-fraction", type=float, default=0.2)
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(handler=main_synth)

    ingest = commands.add_parser("ingest", help="import a published dataset layout into a manifest")
    ingest.add_argument("layout", choices=["utkface"])
    ingest.add_argument("src")
    ingest.add_argument("out")
    ingest.add_argument("--split", default="random", choices=["random", "subject"])
    ingest.add_argument("--test-fraction", type=float, default=0.2)
    ingest.add_argument("--seed", type=int, default=0)
    ingest.set_defaults(handler=main_ingest)

    train = commands.add_parser("train", help="train one model with Ray Train")
    train.add_argument("--manifest", required=True, help="manifest.parquet (agejobs synth / ingest)")
    train.add_argument("--workdir", default="runs/train")
    train.add_argument("--name", default="", help="run name under the storage path")
    with_config(train, required=True)
    train.set_defaults(handler=main_train)

    evaluate = commands.add_parser("evaluate", help="kNN (or direct) estimates on the test split + report")
    evaluate.add_argument("--checkpoint", required=True)
    evaluate.add_argument("--manifest", required=True)
    evaluate.add_argument("--workdir", default="runs/evaluate")
    evaluate.set_defaults(handler=main_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ValueError as error:  # config, input and weights errors: a message, not a traceback
        print(f"agejobs {args.command}: error: {error}", file=sys.stderr)
        return 2
