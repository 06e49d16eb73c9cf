"""Listing and planning a loose archive: 1,000,000 local files and 100,000 objects through the
embedded S3 endpoint, against the plain way of listing each.

    python bench/bench_listing.py --workdir runs/night                 # ~15 min on 2 cores
    python bench/bench_listing.py --workdir runs/night-small --local-files 20000 --s3-objects 5000

The loose archive is night_faces.write_loose (faces/NNNN/night-KKKKKKK.jpg, 1,000 a directory;
kept in --workdir); the S3 archive is the first --s3-objects of those files PUT into a moto
server (agejobs.s3_local) on 127.0.0.1. Each measurement runs in a fresh child process, so its
peak RSS (ru_maxrss) is its own:
  plain    local: os.scandir recursively, (path, size) of every file, sorted;
           S3: boto3's list_objects_v2 paginator, (key, size) of every object, sorted
  find     storage.find_files: what `agejobs score` lists a loose archive with
  plan     score.make_plan: the listing + inputs.parquet (input shard, image id, path per file)
Prints a table and writes bench/results/listing.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import night_faces
from common import settings, write_results

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def plain_local(root: str) -> list[tuple[str, int]]:
    files, stack = [], [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    files.append((entry.path, entry.stat().st_size))
    return sorted(files)


def plain_s3(uri: str) -> list[tuple[str, int]]:
    import boto3

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    files = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/"):
        files.extend((f"s3://{bucket}/{item['Key']}", item["Size"]) for item in page.get("Contents", []))
    return sorted(files)


def child(method: str, uri: str, run_dir: str) -> dict:
    """One measurement in this (fresh) process: seconds, files, peak RSS."""
    from agejobs import score, storage

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    if method == "plain":
        files = len(plain_s3(uri) if uri.startswith("s3://") else plain_local(uri))
    elif method == "find":
        files = len(storage.find_files(uri))
    else:
        files = sum(score.make_plan(uri, run_dir, 1000).shard_rows)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "method": method,
        "files": files,
        "seconds": seconds,
        "peak_rss_mib": peak / 1024,
        "rss_growth_mib": (peak - base) / 1024,
    }


def measure(method: str, uri: str, env: dict | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="listing-plan-") as run_dir:
        output = subprocess.run(
            [sys.executable, __file__, "--child", method, uri, run_dir],
            check=True,
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
        ).stdout
    result = json.loads(output.strip().splitlines()[-1])
    print(
        f"  {uri[:48]:<48} {method:<6} {result['files']:>9} files {result['seconds']:>7.1f} s "
        f"{result['rss_growth_mib']:>7.0f} MiB",
        flush=True,
    )
    return result


def upload(s3, local_root: str, uri: str, count: int) -> float:
    """PUT the first `count` files of the loose archive under `uri` (16 threads); seconds."""
    from concurrent.futures import ThreadPoolExecutor

    import boto3

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    client = boto3.client("s3", endpoint_url=s3.endpoint_url)
    paths = [path for path, _ in plain_local(local_root)][:count]

    def put(path: str) -> None:
        with open(path, "rb") as handle:
            client.put_object(Bucket=bucket, Key=f"{prefix}/{os.path.relpath(path, local_root)}", Body=handle.read())

    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, paths))
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=os.path.join(ROOT, "runs", "night"))
    parser.add_argument("--local-files", type=int, default=1_000_000)
    parser.add_argument("--s3-objects", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "listing.json"))
    parser.add_argument(
        "--keep-s3",
        action="store_true",
        help="measure only the local archive; keep the S3 rows of the existing --out (marked so)",
    )
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "URI", "RUN_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0

    from agejobs.s3_local import LocalS3

    work = os.path.abspath(args.workdir)
    loose = os.path.join(work, f"loose-{args.local_files}")
    started = time.perf_counter()
    sources = night_faces.load_sources(os.path.join(work, "utkface", "manifest.parquet"))
    generated = night_faces.write_loose(loose, sources, args.local_files, args.seed)
    del sources
    print(f"generate: {generated} in {time.perf_counter() - started:.0f} s", flush=True)
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "settings": settings(args),
        "local": {},
        "s3": {},
    }
    for method in ("plain", "find", "plan"):
        results["local"][method] = measure(method, loose)
    if args.keep_s3:
        with open(args.out) as handle:
            previous = json.load(handle)
        results.update(
            s3=previous["s3"],
            s3_upload_s=previous["s3_upload_s"],
            s3_measured_with=previous.get("s3_measured_with", "the previous run of this benchmark"),
        )
    else:
        with LocalS3() as s3:
            s3.create_bucket("night")
            uri = "s3://night/loose"
            results["s3_upload_s"] = upload(s3, loose, uri, args.s3_objects)
            env = {**os.environ, **s3.environment()}
            for method in ("plain", "find", "plan"):
                results["s3"][method] = measure(method, uri, env)
    write_results(args.out, results)
    print(f"\nlisting a loose archive ({results['machine']})")
    print(f"{'archive':<28} {'method':<44} {'files':>9} {'seconds':>8} {'RSS MiB':>8}")
    names = {
        "plain": "plain (os.scandir / boto3 paginator)",
        "find": "storage.find_files",
        "plan": "score.make_plan (listing + inputs.parquet)",
    }
    for where, label in (
        ("local", f"local, {args.local_files:,} files"),
        ("s3", f"S3 (moto), {args.s3_objects:,} objects"),
    ):
        for method, row in results[where].items():
            print(
                f"{label:<28} {names[method]:<44} {row['files']:>9} {row['seconds']:>8.1f} "
                f"{row['rss_growth_mib']:>8.0f}"
            )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
