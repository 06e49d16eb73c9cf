"""Gallery search at scale: QPS and recall@M against exact L1 on a 1,000,000 x 70 gallery.

    python bench/bench_gallery_search.py                      # 1M x 70, M = 20, 2 CPU cores
    python bench/bench_gallery_search.py --rows 100000        # quicker

Vectors: `embedding_like_vectors` (a low-dimensional manifold in 70-d plus noise, the shape of a
trained embedding; an isotropic Gaussian would make every index look broken). Gallery, tuning
queries and test queries are drawn separately from the same manifold.

Methods, each answering the same test queries with M = 20 neighbours:
  torch exact         agejobs.knn.exact_l1_knn (cdist in chunks + running top-M): the reference
  numpy exact         |q - G| summed per query, argpartition (on a subset of the queries)
  scann brute L1      ScaNN brute force with L1Distance (agejobs.knn, mode brute_force)
  scann approx+rerank ScaNN tree + AH (squared L2) -> k' candidates -> exact L1 re-rank to M;
                      (partitions searched, k') = the fastest pair reaching recall@M >= --target
                      on the TUNING queries (agejobs.knn.tune_approximate)
  faiss flat L1       faiss IndexFlat(METRIC_L1): exact
  faiss IVF L1        faiss IndexIVFFlat(METRIC_L1), nprobe = the smallest reaching the same target
                      on the tuning queries (same recall, for the QPS comparison)
Recall is measured on the test queries against torch exact. QPS = queries / wall seconds, batch
search, all threads. Prints a table and writes bench/results/gallery_search.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
from common import PeakRss, settings, write_results

HERE = os.path.dirname(os.path.abspath(__file__))


def timed(function, *args):
    started = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - started


def numpy_exact(queries, gallery, m):
    found = np.empty((len(queries), m), dtype=np.int64)
    for row, query in enumerate(queries):
        distances = np.abs(gallery - query).sum(axis=1)
        nearest = np.argpartition(distances, m)[:m]
        found[row] = nearest[np.argsort(distances[nearest], kind="stable")]
    return found


def faiss_ivf(gallery, nlist):
    import faiss

    quantizer = faiss.IndexFlat(gallery.shape[1], faiss.METRIC_L1)
    index = faiss.IndexIVFFlat(quantizer, gallery.shape[1], nlist, faiss.METRIC_L1)
    index.train(gallery[np.random.default_rng(0).choice(len(gallery), min(len(gallery), 50 * nlist), replace=False)])
    index.add(gallery)
    return index


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=70)
    parser.add_argument("--m", type=int, default=20)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--tuning-queries", type=int, default=500)
    parser.add_argument("--numpy-queries", type=int, default=20)
    parser.add_argument("--leaves", type=int, default=0, help="ScaNN partitions (0 = sqrt(rows))")
    parser.add_argument("--target", type=float, default=0.98, help="the goal: recall@M on the test queries")
    parser.add_argument(
        "--tune-target",
        type=float,
        default=0.99,
        help="recall@M the approximate methods are tuned to on the tuning queries (a margin over --target)",
    )
    parser.add_argument("--out", default=os.path.join(HERE, "results", "gallery_search.json"))
    args = parser.parse_args()

    import faiss
    import torch

    from agejobs import knn
    from agejobs.datasets.synthetic import embedding_like_vectors

    gallery = embedding_like_vectors(args.rows, args.dim, seed=0)
    tuning = embedding_like_vectors(args.tuning_queries, args.dim, seed=1)
    queries = embedding_like_vectors(args.queries, args.dim, seed=2)
    m = args.m
    rows, results = (
        [],
        {
            "machine": f"{platform.node()} ({os.cpu_count()} cores)",
            "settings": settings(args),
            "torch_threads": torch.get_num_threads(),
        },
    )

    def record(method, seconds, found, n_queries, build_s=0.0, **extra):
        recall = knn.recall_at_m(found, exact[: len(found)])
        rows.append({"method": method, "qps": n_queries / seconds, "recall": recall, "build_s": build_s, **extra})
        print(
            f"{method:<22} {n_queries / seconds:>10.1f} qps  recall@{m} {recall:.4f}  build {build_s:.1f}s {extra}",
            flush=True,
        )

    (_, exact), seconds = timed(knn.exact_l1_knn, queries, gallery, m)
    record("torch exact", seconds, exact, len(queries))
    found, seconds = timed(numpy_exact, queries[: args.numpy_queries], gallery, m)
    record("numpy exact", seconds, found, args.numpy_queries)

    brute, build_s = timed(knn.L1Index.build, gallery, knn.SearchSettings(mode="brute_force"), m)
    (_, found), seconds = timed(brute.search, queries)
    record("scann brute L1", seconds, found, len(queries), build_s)
    del brute

    with PeakRss() as rss:
        approximate, build_s = timed(
            knn.L1Index.build, gallery, knn.SearchSettings(mode="approximate", num_leaves=args.leaves), m
        )
        (chosen, points), tune_s = timed(knn.tune_approximate, approximate, tuning, args.tune_target)
        approximate.settings = chosen
        (_, found), seconds = timed(approximate.search, queries)
    record(
        "scann approx+rerank",
        seconds,
        found,
        len(queries),
        build_s,
        num_leaves=chosen.leaves(len(gallery)),
        leaves_to_search=chosen.leaves_to_search,
        candidates=chosen.candidates,
        tune_s=round(tune_s, 1),
        tuning_points=points,
        peak_rss_mib=round(rss.peak / 2**20),
    )
    del approximate

    flat = faiss.IndexFlat(args.dim, faiss.METRIC_L1)
    flat.add(gallery)
    (_, found), seconds = timed(flat.search, queries, m)
    record("faiss flat L1", seconds, found, len(queries))
    del flat

    nlist = int(4 * np.sqrt(args.rows))
    ivf, build_s = timed(faiss_ivf, gallery, nlist)
    _, tuning_exact = knn.exact_l1_knn(tuning, gallery, m)
    nprobe_recalls = {}
    for nprobe in (1, 2, 4, 8, 16, 32, 64, 128):
        ivf.nprobe = nprobe
        nprobe_recalls[nprobe] = knn.recall_at_m(ivf.search(tuning, m)[1], tuning_exact)
        if nprobe_recalls[nprobe] >= args.tune_target:
            break
    (_, found), seconds = timed(ivf.search, queries, m)
    record(
        "faiss IVF L1",
        seconds,
        found,
        len(queries),
        build_s,
        nlist=nlist,
        nprobe=ivf.nprobe,
        tuning_recall_by_nprobe=nprobe_recalls,
    )

    by_method = {row["method"]: row for row in rows}
    reference = by_method["torch exact"]["qps"]
    results["rows"] = rows
    results["speedup_vs_torch_exact"] = {row["method"]: row["qps"] / reference for row in rows}
    write_results(args.out, results)
    print(f"\ngallery search, {args.rows:,} x {args.dim}, M={m}, {results['machine']}")
    print(f"{'method':<22} {'QPS':>10} {'recall@' + str(m):>10} {'x exact':>8} {'build s':>8}")
    for row in rows:
        print(
            f"{row['method']:<22} {row['qps']:>10.1f} {row['recall']:>10.4f} {row['qps'] / reference:>7.1f}x "
            f"{row['build_s']:>8.1f}"
        )
    approx = by_method["scann approx+rerank"]
    fastest_exact = max((row for row in rows if row["recall"] == 1.0), key=lambda row: row["qps"])
    results["approximate_vs_fastest_exact"] = approx["qps"] / fastest_exact["qps"]
    print(
        f"scann approx+rerank: {approx['qps'] / reference:.1f}x torch exact, "
        f"{results['approximate_vs_fastest_exact']:.1f}x the fastest exact ({fastest_exact['method']}), "
        f"at recall@{m} {approx['recall']:.3f} (goal >= 20x at >= {args.target})"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
