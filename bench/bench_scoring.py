"""Batch scoring: `agejobs score` (Ray Data) vs a plain torch embed-and-search loop, and peak RSS
when the archive is 10x larger.

    python bench/bench_scoring.py                    # 2,000 and 20,000 faces, 64 px, 2 cores
    python bench/bench_scoring.py model.channels_last=false --out bench/results/scoring_nchw.json

Setup: synthetic faces written as loose JPEGs (the nightly archive), an untrained MobileNetV2 at
--size px saved as a checkpoint (throughput does not depend on the weights' values), and a
gallery built from 1,000 other faces with it.
  plain   one process, --threads torch threads: list the files, read, preprocess (the same
          images.preprocess_encoded), embed in batches, Gallery.estimate; nothing written
  ray     agejobs.score.score_archive into a fresh run: read tasks -> DecodeFaces -> Embedder
          -> SearchGallery actors -> sharded Parquet with done-markers
Throughput = faces / wall seconds, model and gallery loading included for both (Ray itself
already running, as on a cluster), on both archives. The Ray run pays a fixed start-up (its
actors start and each loads its model or index: "first out s" is when the first scored block
reached the driver), which a nightly archive of millions amortizes and 2,000 faces do not.
Peak RSS = the driver and every Ray process, sampled every 0.2 s, for the 1x and 10x archives.
Prints a table and writes bench/results/scoring.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

from common import PeakRss, plain_score_loop, settings, write_results

HERE = os.path.dirname(os.path.abspath(__file__))


def overrides(args) -> list[str]:
    return [
        "model.backbone=mobilenet_v2",
        "model.weights=",
        f"data.image_size={args.size}",
        f"resources.decode.batch_size={args.batch}",
        f"resources.embed.batch_size={args.batch}",
        f"resources.search.batch_size={args.batch}",
        "score.shard_images=1000",
        f"resources.embed.concurrency={args.embed_actors}",
        "resources.decode.concurrency=1",
        "resources.search.concurrency=1",
        f"ray.num_cpus={args.num_cpus}",
        *args.overrides,
    ]


def plain_loop(archive: str, checkpoint: str, gallery_uri: str, batch: int, threads: int) -> dict:
    from agejobs import storage

    def batches():
        paths = [uri for uri, _ in storage.find_files(archive)]
        for start in range(0, len(paths), batch):
            yield [(path, storage.read_bytes(path)) for path in paths[start : start + batch]]

    return plain_score_loop(batches(), checkpoint, gallery_uri, threads)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faces", type=int, default=2000)
    parser.add_argument("--scale", type=int, default=10, help="the larger archive is this many times bigger")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the plain loop (= cores)")
    parser.add_argument("--embed-actors", type=int, default=2, help="1-thread embedding actors of the Ray run")
    parser.add_argument("--num-cpus", type=int, default=4, help="logical CPUs of the local Ray instance")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "scoring.json"))
    parser.add_argument("overrides", nargs="*", help="config key=value for both setups, e.g. model.channels_last=false")
    args = parser.parse_args()

    from agejobs.config import load_config
    from agejobs.datasets.synthetic import SynthSpec, write_synthetic
    from agejobs.gallery import build_gallery
    from agejobs.ray_runtime import quiet_ray_data, ray_session
    from agejobs.score import score_archive
    from agejobs.train import write_initial_checkpoint

    cfg = load_config(None, overrides(args))
    results = {"machine": f"{platform.node()} ({os.cpu_count()} cores)", "settings": settings(args)}
    with tempfile.TemporaryDirectory(prefix="bench-scoring-") as root:

        def synth(name, faces, seed):
            spec = SynthSpec(num_subjects=faces // 4, images_per_subject=4, image_size=max(args.size, 64), seed=seed)
            write_synthetic(os.path.join(root, name), spec)
            return os.path.join(root, name)

        reference = synth("reference", 1250, 1)  # its train split (~1,000 faces) is the gallery
        small = os.path.join(synth("small", args.faces, 2), "images")
        large = os.path.join(synth("large", args.faces * args.scale, 3), "images")
        checkpoint = write_initial_checkpoint(os.path.join(root, "checkpoint"), cfg)
        with ray_session(num_cpus=args.num_cpus):
            quiet_ray_data()
            build_gallery(checkpoint, os.path.join(reference, "manifest.parquet"), os.path.join(root, "gallery"), cfg)
            runs, plain = {}, {}
            for name, archive in (("1x", small), (f"{args.scale}x", large)):
                plain[name] = plain_loop(archive, checkpoint, os.path.join(root, "gallery"), args.batch, args.threads)
                print(f"plain loop, {name}: {plain[name]}", flush=True)
                with PeakRss(tree=True) as rss:
                    started = time.perf_counter()
                    summary = score_archive(
                        archive, os.path.join(root, "scored"), name, checkpoint, os.path.join(root, "gallery"), cfg
                    )
                    seconds = time.perf_counter() - started
                runs[name] = {
                    "faces": summary["rows_in"],
                    "seconds": seconds,
                    "faces_per_s": summary["rows_in"] / seconds,
                    "first_output_s": summary["first_output_s"],
                    "peak_rss_mib": rss.peak / 2**20,
                    "driver_peak_mib": rss.driver_peak / 2**20,
                    "processes_at_peak": rss.processes_at_peak,
                }
                print(name, runs[name], flush=True)
    large_name = f"{args.scale}x"
    results.update(
        plain=plain,
        ray=runs,
        ratio={name: runs[name]["faces_per_s"] / plain[name]["end_to_end_faces_per_s"] for name in runs},
        rss_ratio=runs[large_name]["peak_rss_mib"] / runs["1x"]["peak_rss_mib"],
    )
    write_results(args.out, results)
    print(f"\nbatch scoring, MobileNetV2 {args.size}px, batch {args.batch} ({results['machine']})")
    print(f"{'setup':<44} {'faces':>6} {'first out s':>11} {'faces/s':>8} {'peak RSS MiB':>13}")
    for name, run in runs.items():
        p = plain[name]
        print(
            f"{'plain loop, 1 process x ' + str(args.threads) + ' threads, ' + name:<44} {run['faces']:>6} {'':>11} "
            f"{p['end_to_end_faces_per_s']:>8.1f} {'':>13}"
        )
        print(
            f"{'agejobs score (Ray Data), ' + name + ' archive':<44} {run['faces']:>6} {run['first_output_s']:>11.1f} "
            f"{run['faces_per_s']:>8.1f} {run['peak_rss_mib']:>13.0f}"
        )
    for name in runs:
        print(f"score / plain, {name} archive: {results['ratio'][name]:.2f} (goal >= 0.85)")
    print(f"peak RSS {large_name} / 1x archive: {results['rss_ratio']:.2f} (goal <= 1.2)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
