"""Streaming faces from S3: loose files vs packed shards, and memory as the archive grows.

    python bench/bench_streaming.py                  # 10k images; RSS over 10k vs 50k rows
    python bench/bench_streaming.py --images 2000 --large 10000   # a quick run

Everything goes through the embedded S3 endpoint (moto on 127.0.0.1, started here):
  1. N synthetic faces are written straight to s3:// (the upload) with their manifest;
  2. they are packed into Parquet shards on s3:// (`agejobs pack`, Ray tasks);
  3. one streaming pass (Ray Data: read -> DecodeFaces -> iterate) over the loose files and one
     over the shards, each in a fresh process + Ray instance: images/s;
  4. the peak RSS (driver + every Ray process it started, sampled every 0.2 s) of a streaming pass
     over the shards of N rows vs `--large` rows (the N faces repeated under new ids).
Prints a table and writes bench/results/streaming.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

from common import PeakRss, settings, write_results

HERE = os.path.dirname(os.path.abspath(__file__))
BUCKET = "agejobs-bench"


def one_pass(source: str, image_size: int, concurrency: int, num_cpus: int) -> dict:
    """One streaming pass in THIS process (run as a child by main): rows, seconds, peak RSS."""
    from agejobs.config import ResourcesConfig, StageResources
    from agejobs.data import face_dataset
    from agejobs.ray_runtime import quiet_ray_data, ray_session

    with ray_session(num_cpus=num_cpus):
        quiet_ray_data()
        with PeakRss(tree=True) as rss:
            started = time.perf_counter()
            decode = StageResources(concurrency=concurrency, batch_size=128, cpus=0.5)
            ds = face_dataset(source, None, image_size, resources=ResourcesConfig(decode=decode), keep_errors=True)
            rows = errors = 0
            for batch in ds.iter_batches(batch_size=256, batch_format="numpy"):
                rows += len(batch["image_id"])
                errors += int((batch["error"] != "").sum())
            seconds = time.perf_counter() - started
    return {
        "rows": rows,
        "errors": errors,
        "seconds": seconds,
        "images_per_s": rows / seconds,
        "peak_rss_bytes": rss.peak,
        "processes_at_peak": rss.processes_at_peak,
        "driver_peak_rss_bytes": rss.driver_peak,
    }


def run_child(source: str, args) -> dict:
    """A pass in a fresh interpreter (and Ray instance), so peaks and caches do not carry over."""
    command = [
        sys.executable,
        __file__,
        "--child",
        source,
        "--image-size",
        str(args.image_size),
        "--concurrency",
        str(args.concurrency),
        "--num-cpus",
        str(args.num_cpus),
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    if done.returncode != 0:
        raise RuntimeError(f"pass over {source} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def repeated_manifest(manifest_uri: str, out_uri: str, copies: int) -> str:
    """The manifest's rows `copies` times under new image ids (same image files)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from agejobs.datasets.manifest import read_manifest, write_table_atomic

    table = read_manifest(manifest_uri)
    parts = []
    for copy in range(copies):
        ids = pc.binary_join_element_wise(table.column("image_id"), pa.scalar(f"r{copy}"), "-")
        parts.append(table.set_column(0, "image_id", ids))
    write_table_atomic(pa.concat_tables(parts), out_uri)
    return out_uri


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=50_000, help="rows of the larger archive for the RSS check")
    parser.add_argument("--face-size", type=int, default=128, help="pixel size of the stored synthetic faces")
    parser.add_argument("--image-size", type=int, default=64, help="decoded size (the model input)")
    parser.add_argument("--concurrency", type=int, default=2, help="decode actors")
    parser.add_argument("--num-cpus", type=int, default=4)
    parser.add_argument("--shard-mb", type=float, default=16.0)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "streaming.json"))
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_pass(args.child, args.image_size, args.concurrency, args.num_cpus)))
        return 0

    from agejobs import pack
    from agejobs.datasets.synthetic import SynthSpec, write_synthetic
    from agejobs.ray_runtime import quiet_ray_data, ray_session
    from agejobs.s3_local import LocalS3

    images_per_subject = 5
    with LocalS3() as endpoint:
        endpoint.create_bucket(BUCKET)
        base = f"s3://{BUCKET}"
        started = time.perf_counter()
        spec = SynthSpec(
            num_subjects=args.images // images_per_subject,
            images_per_subject=images_per_subject,
            image_size=args.face_size,
        )
        write_synthetic(f"{base}/loose", spec)
        upload_s = time.perf_counter() - started
        copies = max(1, round(args.large / args.images))
        large_manifest = repeated_manifest(f"{base}/loose/manifest.parquet", f"{base}/large/manifest.parquet", copies)
        with ray_session(num_cpus=args.num_cpus):
            quiet_ray_data()
            started = time.perf_counter()
            small_pack = pack.pack(f"{base}/loose/manifest.parquet", f"{base}/packed", int(args.shard_mb * 2**20))
            pack_s = time.perf_counter() - started
            large_pack = pack.pack(large_manifest, f"{base}/packed-large", int(args.shard_mb * 2**20))
        loose = run_child(f"{base}/loose/manifest.parquet", args)
        shards = run_child(f"{base}/packed", args)
        large = run_child(f"{base}/packed-large", args)

    results = {
        "machine": f"{platform.node()} ({os.cpu_count()} cores, {platform.machine()})",
        "settings": settings(args),
        "upload": {"images": args.images, "seconds": upload_s},
        "pack": {**small_pack, "seconds": pack_s},
        "loose": loose,
        "shards": shards,
        "shards_large": {**large, "pack": large_pack},
        "shards_vs_loose_speedup": shards["images_per_s"] / loose["images_per_s"],
        "rss_large_over_small": large["peak_rss_bytes"] / shards["peak_rss_bytes"],
    }
    write_results(args.out, results)

    mib = 2**20
    print(
        f"\nstreaming from the embedded S3 endpoint ({results['machine']}), decode to {args.image_size}px, "
        f"{args.concurrency} decode actors"
    )
    print(
        f"{'source':<24} {'rows':>7} {'seconds':>8} {'images/s':>9} {'peak RSS MiB':>13} {'processes':>10} "
        f"{'driver MiB':>11}"
    )
    for name, row in (
        ("loose files", loose),
        (f"shards ({small_pack['shards']})", shards),
        (f"shards ({large_pack['shards']}), {copies}x rows", large),
    ):
        print(
            f"{name:<24} {row['rows']:>7} {row['seconds']:>8.1f} {row['images_per_s']:>9.0f} "
            f"{row['peak_rss_bytes'] / mib:>13.0f} {row['processes_at_peak']:>10} "
            f"{row['driver_peak_rss_bytes'] / mib:>11.0f}"
        )
    print(f"shards / loose throughput: {results['shards_vs_loose_speedup']:.2f}x")
    print(f"peak RSS, {large['rows']} vs {shards['rows']} rows: {results['rss_large_over_small']:.2f}x (goal <= 1.2x)")
    print(f"upload {args.images} images: {upload_s:.0f} s; pack: {pack_s:.0f} s")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
