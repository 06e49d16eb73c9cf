"""Gallery condensation: MAE and search cost vs gallery size, on a trained checkpoint and real faces.

    python bench/bench_condensation.py --checkpoint runs/utkface/checkpoints/siamese-knn/checkpoint_... \
        --source runs/utkface/data/manifest.parquet

The training split is embedded once with the checkpoint (the gallery), the test split once (the
queries). For K in --per-age, the gallery is condensed to at most K prototypes per (age, gender)
(agejobs.condense.per_age_prototypes: k-means in the age embedding, L1-median prototypes), and the
test faces are estimated from their M nearest prototypes (exact L1). "all" is the full gallery.
Prints gallery size, MAE, CS(5), gender accuracy and query time; writes
bench/results/condensation.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

from common import settings, write_results

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--source", required=True, help="manifest or pack with train and test splits")
    parser.add_argument("--per-age", default="1,2,4,8,16,32")
    parser.add_argument("--m", type=int, default=20)
    parser.add_argument("--num-cpus", type=int, default=4)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "condensation.json"))
    args = parser.parse_args()

    from agejobs import condense, evaluate, gallery, knn
    from agejobs.checkpoint import load_trained_model
    from agejobs.config import ResourcesConfig, StageResources
    from agejobs.images import Preprocessing
    from agejobs.ray_runtime import quiet_ray_data, ray_session

    trained = load_trained_model(args.checkpoint)
    # Two decode and two embedding actors of 64 faces, as before the resources blocks.
    resources = ResourcesConfig(
        decode=StageResources(concurrency=2, batch_size=64, cpus=0.5),
        embed=StageResources(concurrency=2, batch_size=64),
    )
    preprocessing = Preprocessing.of(trained.cfg.data)
    with ray_session(num_cpus=args.num_cpus):
        quiet_ray_data()
        reference = gallery.embed_split(args.checkpoint, args.source, "train", preprocessing, resources)
        queries = gallery.embed_split(args.checkpoint, args.source, "test", preprocessing, resources)
    rows = []
    for label in ["all"] + args.per_age.split(","):
        columns = reference if label == "all" else condense.per_age_prototypes(reference, int(label))
        started = time.perf_counter()
        _, neighbours = knn.exact_l1_knn(
            queries["age_embedding"], columns["age_embedding"], min(args.m, len(columns["age"]))
        )
        _, gender_neighbours = knn.exact_l1_knn(
            queries["gender_embedding"], columns["gender_embedding"], min(args.m, len(columns["age"]))
        )
        seconds = time.perf_counter() - started
        predicted = gallery.mean_neighbour_age(neighbours, columns["age"])
        gender, _ = gallery.majority_neighbour_gender(gender_neighbours, columns["gender"])
        rows.append(
            {
                "per_age": label,
                "gallery_size": len(columns["age"]),
                "mae": evaluate.mean_absolute_error(predicted, queries["age"]),
                "cs5": evaluate.cumulative_score(predicted, queries["age"], 5),
                "gender_accuracy": evaluate.gender_accuracy(gender, queries["gender"]),
                "search_s": seconds,
            }
        )
        print(rows[-1], flush=True)
    results = {
        "machine": f"{platform.node()} ({os.cpu_count()} cores)",
        "settings": settings(args),
        "queries": len(queries["age"]),
        "rows": rows,
    }
    write_results(args.out, results)
    print(f"\ngallery condensation, {len(queries['age'])} test faces, M={args.m} ({results['machine']})")
    print(f"{'per (age, gender)':>17} {'gallery':>8} {'MAE':>6} {'CS(5)':>6} {'gender':>7} {'search s':>9}")
    for row in rows:
        print(
            f"{row['per_age']:>17} {row['gallery_size']:>8} {row['mae']:>6.2f} {row['cs5']:>5.1f}% "
            f"{row['gender_accuracy']:>7.1%} {row['search_s']:>9.3f}"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
