"""What the training shuffle costs per epoch: the split's index shuffled in full by Ray Data.

    python bench/bench_epoch_shuffle.py                    # 10k, 100k and 1M faces
    python bench/bench_epoch_shuffle.py --rows 1000000

For each size, a manifest of that many faces (image_id, path, labels: no pixels) is written,
then `data.shuffled_rows` (what the trainer streams, before decoding) is executed twice, as two
epochs: time to its first block (what an epoch's first step waits for, before decoding) and to
its last, and the peak RSS of the driver and of all Ray processes. The reference is the plain
way of doing the same in one process: numpy's permutation of the index table (pyarrow take).
Prints a table, writes bench/results/epoch_shuffle.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

from common import PeakRss, settings, write_results

HERE = os.path.dirname(os.path.abspath(__file__))


def write_manifest(path: str, rows: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from agejobs.datasets.manifest import MANIFEST_SCHEMA

    ids = [f"{i:08d}_0_0_20170116174525125" for i in range(rows)]
    table = pa.table(
        {
            "image_id": ids,
            "path": [f"s3://faces-archive/utkface/part1/{i}.jpg.chip.jpg" for i in ids],
            "age": np.sort(np.random.default_rng(0).integers(1, 100, rows)).astype(np.int16),  # sorted: the worst case
            "gender": (np.arange(rows) % 2).astype(np.int8),
            "subject_id": ids,
            "split": ["train"] * rows,
            "dataset": ["synthetic"] * rows,
        },
        schema=MANIFEST_SCHEMA,
    )
    pq.write_table(table, path)


def ray_epochs(manifest: str, epochs: int) -> list[dict]:
    from agejobs.data import shuffled_rows

    ds = shuffled_rows(manifest, "train", seed=0)
    measured = []
    for _ in range(epochs):
        started = time.perf_counter()
        first, rows = None, 0
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            first = first if first is not None else time.perf_counter() - started
            rows += batch.num_rows
        measured.append({"first_block_s": first, "epoch_s": time.perf_counter() - started, "rows": rows})
    return measured


def plain_epoch(manifest: str) -> float:
    import numpy as np
    import pyarrow.parquet as pq

    started = time.perf_counter()
    table = pq.read_table(manifest, columns=["image_id", "path", "age", "gender", "split"])
    table.take(np.random.default_rng(0).permutation(table.num_rows))
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="10000,100000,1000000")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--num-cpus", type=int, default=4)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "epoch_shuffle.json"))
    args = parser.parse_args()

    from agejobs.ray_runtime import quiet_ray_data, ray_session

    results = {"machine": f"{platform.node()} ({os.cpu_count()} cores)", "settings": settings(args), "sizes": []}
    with tempfile.TemporaryDirectory() as directory, ray_session(num_cpus=args.num_cpus, console="quiet"):
        quiet_ray_data()
        for rows in (int(r) for r in args.rows.split(",")):
            manifest = os.path.join(directory, f"manifest-{rows}.parquet")
            write_manifest(manifest, rows)
            with PeakRss(tree=True) as rss:
                epochs = ray_epochs(manifest, args.epochs)
            plain = plain_epoch(manifest)
            results["sizes"].append(
                {
                    "rows": rows,
                    "epochs": epochs,
                    "plain_permutation_s": plain,
                    "peak_rss_mib": rss.peak / 2**20,
                    "driver_peak_rss_mib": rss.driver_peak / 2**20,
                }
            )
            last = epochs[-1]
            print(
                f"[bench] {rows:>9,} faces: epoch {last['epoch_s']:.2f} s (first block {last['first_block_s']:.2f} s), "
                f"plain permutation {plain:.2f} s, peak RSS {rss.peak / 2**20:,.0f} MiB",
                flush=True,
            )
    write_results(args.out, results)
    print(f"\nepoch shuffle of the index (Ray Data random_shuffle, {args.num_cpus} logical CPUs; {results['machine']})")
    print(f"{'faces':>10} {'first block s':>14} {'epoch s':>8} {'plain s':>8} {'peak RSS MiB':>13}")
    for size in results["sizes"]:
        last = size["epochs"][-1]
        print(
            f"{size['rows']:>10,} {last['first_block_s']:>14.2f} {last['epoch_s']:>8.2f} "
            f"{size['plain_permutation_s']:>8.2f} {size['peak_rss_mib']:>13,.0f}"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
