"""A million-face night: `agejobs score` over a 1,000,000-face pack, killed half way and rerun.

    python bench/bench_night.py --workdir runs/night                        # ~1 h on 2 cores
    python bench/bench_night.py --workdir runs/night-small --faces 20000 --subset 5000   # minutes

Phases; what each makes is kept in --workdir, so a rerun of the benchmark resumes:
  setup     a real checkpoint: UTKFace part 1 ingested, MobileNetV2 (ImageNet weights) trained 2
            epochs at 64 px by `agejobs train`, its gallery built from the train split by `agejobs
            gallery build` (or --checkpoint and --gallery)
  generate  night_faces.write_pack: faces 0..N-1 (the night) and 0..S-1 (the subset), seeded,
            distinct bytes; 8,192 faces a shard
  plain     common.plain_score_loop over the subset pack: one process, 2 torch threads, reading the
            pack's row groups, the same preprocessing, model and Gallery.estimate; nothing written
  subset    `agejobs score` of the subset pack, uninterrupted
  night     `agejobs score` of the N-face pack; its whole process group SIGKILLed once half of the
            shards are done; the processes and temp dir of its Ray instance counted after the kill;
            the same command rerun to the end
  check     every output and error file streamed (one column, a bitmap of N): each input once

Each `agejobs score` is a child process in a session of its own, sampled every 0.5 s: RSS of the
driver and of its whole process tree (Ray's GCS, raylet and workers are its descendants), and the
tree's PSS (RSS counts each page of Ray's shared-memory object store once per process that
touched it; PSS shares it out, so the tree's PSS is the memory the run really holds).
Both runs use a local instance with a --store-mb object store (2,048 MiB; ray.object_store_mb):
with Ray's default (30 % of memory, 7 GiB here) every process's RSS grows through the night as it
maps more of the store's pages, which is not memory held (the tree's PSS stays flat).
Throughput = faces / wall seconds of the commands (Ray start-up, actor start-up and model and
index loading included); "after first output" leaves out each command's time to its first
scored block (seen in its log, polled every 0.5 s). Prints a table and writes bench/results/night.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time

import night_faces
import numpy as np
from common import PeakRss, plain_score_loop, settings, write_results

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
AGEJOBS = [sys.executable, "-m", "agejobs"]
MODEL_OVERRIDES = ["data.image_size=64", "data.test_flip=false", "train.epochs=2"]
SCORE_OVERRIDES = [
    "resources.decode.batch_size=64",
    "resources.embed.batch_size=64",
    "resources.search.batch_size=64",
    "resources.decode.concurrency=1",
    "resources.embed.concurrency=2",
    "resources.search.concurrency=1",
    "ray.num_cpus=4",
]
STORE_MB = 2048  # --store-mb: the local instance's object store (ray.object_store_mb)
FIRST_OUTPUT = re.compile(r"first scored rows after [0-9.]+ s")


def agejobs(*args: str, log: str) -> str:
    """Run an agejobs command to the end; its JSON summary line is returned."""
    with open(log, "a") as handle:
        subprocess.run([*AGEJOBS, *args], check=True, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
    with open(log) as handle:
        return json_line(handle.read())


def json_line(text: str) -> str:
    """The last JSON object line of a command's output (progress bars share the stream)."""
    return [line for line in text.splitlines() if line.lstrip().startswith("{")][-1].strip()


def setup(args) -> tuple[str, str]:
    if args.checkpoint and args.gallery:
        return args.checkpoint, args.gallery
    work = os.path.abspath(args.workdir)
    manifest, gallery = os.path.join(work, "utkface", "manifest.parquet"), os.path.join(work, "gallery")
    log = os.path.join(work, "setup.log")
    if not os.path.exists(manifest):
        agejobs(
            "ingest",
            "utkface",
            os.path.join(SHARED, "data", "utkface-part1"),
            os.path.dirname(manifest),
            "dataset.verify_images=false",
            log=log,
        )
    record = os.path.join(work, "checkpoint.json")
    if not os.path.exists(record):
        line = agejobs(
            "train",
            "-c",
            "configs/utkface.yaml",
            "--manifest",
            manifest,
            "--workdir",
            os.path.join(work, "train"),
            *MODEL_OVERRIDES,
            log=log,
        )
        with open(record, "w") as handle:
            handle.write(line)  # {"command": "train", "checkpoint": ..., training metrics}
    with open(record) as handle:
        checkpoint = json.load(handle)["checkpoint"]
    if not os.path.exists(os.path.join(gallery, "gallery.json")):
        agejobs(
            "gallery",
            "build",
            "--checkpoint",
            checkpoint,
            "--source",
            manifest,
            "--out",
            gallery,
            "-c",
            "configs/utkface.yaml",
            *MODEL_OVERRIDES,
            log=log,
        )
    return checkpoint, gallery


def pack_batches(pack_uri: str, batch: int):
    """(image_id, bytes) batches of a pack, read row group by row group as a plain loop would."""
    import pyarrow.parquet as pq

    from agejobs.pack import done_shards

    for shard in done_shards(pack_uri):
        for record in pq.ParquetFile(shard).iter_batches(batch_size=batch, columns=["image_id", "image_bytes"]):
            yield list(zip(record.column("image_id").to_pylist(), record.column("image_bytes").to_pylist()))


def done_markers(run_dir: str) -> list[str]:
    try:
        return [name for name in os.listdir(run_dir) if name.endswith(".parquet.done")]
    except FileNotFoundError:
        return []


def faces_done(run_dir: str) -> int:
    total = 0
    for name in done_markers(run_dir):
        with open(os.path.join(run_dir, name)) as handle:
            total += json.load(handle)["rows_in"]
    return total


def score_command(pack_dir: str, out: str, checkpoint: str, gallery: str, store_mb: int) -> list[str]:
    return [
        *AGEJOBS,
        "score",
        "--checkpoint",
        checkpoint,
        "--gallery",
        gallery,
        "--archive",
        pack_dir,
        "--out",
        out,
        "--run-id",
        "night",
        *SCORE_OVERRIDES,
        f"ray.object_store_mb={store_mb}",
    ]


def leftovers(temp_root: str) -> dict:
    """Processes still using, and temp dirs still under, the instance's temp root."""
    from agejobs.ray_reaper import session_pids

    dirs = [os.path.join(temp_root, name) for name in os.listdir(temp_root)]
    return {"temp_dirs": len(dirs), "processes": sum(len(session_pids(path)) for path in dirs)}


def run_score(command: list[str], log: str, temp_root: str, kill_at_shards: int = 0, trace: list | None = None) -> dict:
    """One `agejobs score` child; SIGKILL of its process group once `kill_at_shards` are done."""
    run_dir = command[command.index("--out") + 1] + "/night"
    env = {**os.environ, "AGEJOBS_RAY_TMP": temp_root, "PYTHONPATH": ROOT}
    started = time.perf_counter()
    with open(log, "w") as handle:
        child = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True
        )
    killed, first_output_s = False, None  # seconds from the command's start (Ray start-up included)
    with PeakRss(interval_s=0.5, tree=True, pid=child.pid, pss=True) as rss:
        last_trace = 0.0
        while child.poll() is None:
            time.sleep(0.5)
            now = time.perf_counter() - started
            if trace is not None and now - last_trace >= 10:
                last_trace = now
                trace.append(
                    {
                        "s": round(now, 1),
                        "faces_done": faces_done(run_dir),
                        "tree_rss_mib": round(rss.last / 2**20),
                        "tree_pss_mib": round(rss.last_pss / 2**20),
                        "driver_rss_mib": round(rss.last_driver / 2**20),
                        "driver_pss_mib": round(rss.last_driver_pss / 2**20),
                    }
                )
            if first_output_s is None:
                with open(log) as handle:
                    first_output_s = now if FIRST_OUTPUT.search(handle.read()) else None
            if kill_at_shards and len(done_markers(run_dir)) >= kill_at_shards:
                os.killpg(child.pid, signal.SIGKILL)
                killed = True
                child.wait()
    seconds = time.perf_counter() - started
    with open(log) as handle:
        text = handle.read()
    result = {
        "seconds": seconds,
        "killed": killed,
        "returncode": child.returncode,
        "first_output_s": first_output_s,
        "peak_tree_mib": rss.peak / 2**20,
        "peak_tree_pss_mib": rss.pss_peak / 2**20,
        "peak_driver_mib": rss.driver_peak / 2**20,
        "peak_driver_pss_mib": rss.driver_pss_peak / 2**20,
        "processes_at_peak": rss.processes_at_peak,
        "faces_done_after": faces_done(run_dir),
    }
    if not killed and child.returncode != 0:
        raise RuntimeError(f"agejobs score failed ({child.returncode}); see {log}")
    if not killed:
        result["summary"] = json.loads(json_line(text))
    return result


def wait_for_cleanup(temp_root: str, timeout_s: float = 60) -> dict:
    """Leftovers right after the kill, and how long until none were left."""
    killed_at = time.perf_counter()
    first = leftovers(temp_root)
    while time.perf_counter() - killed_at < timeout_s:
        now = leftovers(temp_root)
        if not now["processes"] and not now["temp_dirs"]:
            return {"right_after_kill": first, "gone_after_s": round(time.perf_counter() - killed_at, 1)}
        time.sleep(0.5)
    return {"right_after_kill": first, "gone_after_s": None, "left": leftovers(temp_root)}


def exactly_once(run_dir: str, faces: int) -> dict:
    """Each face id 0..faces-1 in exactly one output or error row, read one column at a time."""
    import pyarrow.parquet as pq

    seen = np.zeros(faces, dtype=bool)
    duplicates = rows = 0
    for name in sorted(os.listdir(run_dir)):
        if not (name.startswith("shard-") and name.endswith(".parquet")):
            continue
        for record in pq.ParquetFile(os.path.join(run_dir, name)).iter_batches(columns=["image_id"], batch_size=65536):
            ids = np.asarray([int(image_id[6:13]) for image_id in record.column("image_id").to_pylist()])
            rows += len(ids)
            duplicates += int(seen[ids].sum()) + len(ids) - len(np.unique(ids))
            seen[ids] = True
    return {
        "rows": rows,
        "distinct": int(seen.sum()),
        "missing": int(faces - seen.sum()),
        "duplicates": duplicates,
        "exactly_once": bool(rows == faces and seen.all() and duplicates == 0),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=os.path.join(ROOT, "runs", "night"))
    parser.add_argument("--faces", type=int, default=1_000_000)
    parser.add_argument("--subset", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the plain loop (= cores)")
    parser.add_argument(
        "--store-mb", type=int, default=STORE_MB, help="object store of the Ray instance, MiB (0 = Ray's default)"
    )
    parser.add_argument("--checkpoint", default="")
    parser.add_argument("--gallery", default="")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "night.json"))
    args = parser.parse_args()
    work = os.path.abspath(args.workdir)
    os.makedirs(work, exist_ok=True)
    checkpoint, gallery = setup(args)
    print(f"setup: checkpoint {checkpoint}, gallery {gallery}", flush=True)

    packs = {"night": os.path.join(work, f"pack-{args.faces}"), "subset": os.path.join(work, f"pack-{args.subset}")}
    started = time.perf_counter()
    sources = night_faces.load_sources(os.path.join(work, "utkface", "manifest.parquet"))
    generated = {
        name: night_faces.write_pack(packs[name], sources, faces, args.seed)
        for name, faces in (("night", args.faces), ("subset", args.subset))
    }
    del sources
    print(f"generate: {generated} in {time.perf_counter() - started:.0f} s", flush=True)

    plain = plain_score_loop(pack_batches(packs["subset"], 64), checkpoint, gallery, args.threads)
    print(f"plain loop, subset: {plain}", flush=True)

    temp_root = tempfile.mkdtemp(prefix="night-ray-", dir="/tmp")  # short: Ray's socket paths
    scored = os.path.join(work, "scored")
    subprocess.run(["rm", "-rf", scored], check=True)
    subset = run_score(
        score_command(packs["subset"], os.path.join(scored, "subset"), checkpoint, gallery, args.store_mb),
        os.path.join(work, "score-subset.log"),
        temp_root,
    )
    print(f"agejobs score, subset: {subset}", flush=True)

    night_out = os.path.join(scored, "night")
    command = score_command(packs["night"], night_out, checkpoint, gallery, args.store_mb)
    trace: list = []
    shards = generated["night"]["shards"]
    first = run_score(
        command, os.path.join(work, "score-night-1.log"), temp_root, kill_at_shards=shards // 2, trace=trace
    )
    cleanup = wait_for_cleanup(temp_root)
    print(f"agejobs score, night, killed: {first}; leftovers {cleanup}", flush=True)
    second = run_score(command, os.path.join(work, "score-night-2.log"), temp_root, trace=trace)
    print(f"agejobs score, night, rerun: {second}", flush=True)
    check = exactly_once(os.path.join(night_out, "night"), args.faces)
    print(f"exactly once: {check}", flush=True)
    os.rmdir(temp_root)
    report(args, plain, subset, first, second, cleanup, check, trace, generated)
    return 0 if check["exactly_once"] else 1


def report(args, plain, subset, first, second, cleanup, check, trace, generated) -> None:
    night_s = first["seconds"] + second["seconds"]
    startup_s = (first["first_output_s"] or 0) + (second["first_output_s"] or 0)
    night = {
        "faces": args.faces,
        "seconds": night_s,
        "faces_per_s": args.faces / night_s,
        "faces_per_s_after_first_output": args.faces / (night_s - startup_s),
        "peak_tree_mib": max(first["peak_tree_mib"], second["peak_tree_mib"]),
        "peak_tree_pss_mib": max(first["peak_tree_pss_mib"], second["peak_tree_pss_mib"]),
        "peak_driver_mib": max(first["peak_driver_mib"], second["peak_driver_mib"]),
    }
    subset_run = {
        "faces": args.subset,
        "seconds": subset["seconds"],
        "faces_per_s": args.subset / subset["seconds"],
        "faces_per_s_after_first_output": args.subset / (subset["seconds"] - subset["first_output_s"]),
        "peak_tree_mib": subset["peak_tree_mib"],
        "peak_tree_pss_mib": subset["peak_tree_pss_mib"],
        "peak_driver_mib": subset["peak_driver_mib"],
    }
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "settings": settings(args),
        "generated": generated,
        "plain_subset": plain,
        "score_subset": subset_run,
        "night": night,
        "runs": {"killed": first, "rerun": second},
        "leftovers_after_kill": cleanup,
        "exactly_once": check,
        "ratio_night_to_plain": night["faces_per_s"] / plain["end_to_end_faces_per_s"],
        "ratio_subset_to_plain": subset_run["faces_per_s"] / plain["end_to_end_faces_per_s"],
        "rss_ratio_tree": night["peak_tree_mib"] / subset_run["peak_tree_mib"],
        "pss_ratio_tree": night["peak_tree_pss_mib"] / subset_run["peak_tree_pss_mib"],
        "rss_ratio_driver": night["peak_driver_mib"] / subset_run["peak_driver_mib"],
        "trace": trace,
    }
    write_results(args.out, results)
    print(f"\nbatch scoring night, MobileNetV2 64 px, batch 64, {results['machine']}")
    print(
        f"{'setup':<46} {'faces':>9} {'wall s':>8} {'faces/s':>8} {'after 1st':>9} {'driver MiB':>10} "
        f"{'tree MiB':>9} {'tree PSS':>9}"
    )
    print(
        f"{'plain loop, 1 process x ' + str(args.threads) + ' threads, subset':<46} {plain['faces']:>9} "
        f"{plain['seconds'] + plain['load_s']:>8.0f} {plain['end_to_end_faces_per_s']:>8.1f}"
    )
    for name, run in (("agejobs score, subset", subset_run), ("agejobs score, night (killed at 1/2 + rerun)", night)):
        print(
            f"{name:<46} {run['faces']:>9} {run['seconds']:>8.0f} {run['faces_per_s']:>8.1f} "
            f"{run['faces_per_s_after_first_output']:>9.1f} {run['peak_driver_mib']:>10.0f} "
            f"{run['peak_tree_mib']:>9.0f} {run['peak_tree_pss_mib']:>9.0f}"
        )
    print(
        f"night / plain faces/s: {results['ratio_night_to_plain']:.2f} (goal >= 0.85); "
        f"subset / plain: {results['ratio_subset_to_plain']:.2f}"
    )
    print(
        f"peak RSS night / subset: driver {results['rss_ratio_driver']:.2f}, tree {results['rss_ratio_tree']:.2f} "
        f"(tree PSS {results['pss_ratio_tree']:.2f}) (goal <= 1.2)"
    )
    print(f"after the kill: {cleanup}; exactly once: {check}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
