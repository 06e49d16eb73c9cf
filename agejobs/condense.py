"""Gallery condensation, the paper's stated future work: a smaller reference set that keeps the
estimates. Every query searches the whole gallery, so search cost and memory grow with it; per-age
prototypes cap the gallery at (ages x genders x K) rows whatever the number of faces embedded.

For each (age, gender) group with more than K faces, k-means (scikit-learn) splits its age
embeddings into K clusters, and each cluster becomes one prototype: the coordinate-wise median of
its members' embeddings (the point minimising summed L1 distance to them, since the search is
L1), carrying the group's age and gender. Groups of at most K faces are kept as they are.
How MAE moves with gallery size is measured, not assumed (bench/bench_condensation.py).
"""

from __future__ import annotations

import numpy as np

EMBEDDINGS = ("age_embedding", "gender_embedding")


def per_age_prototypes(columns: dict, per_group: int, seed: int = 0) -> dict:
    """Gallery columns (image_id, age, gender, age_embedding, gender_embedding) -> condensed columns."""
    from sklearn.cluster import KMeans

    if per_group < 1:
        raise ValueError(f"prototypes per age must be >= 1, got {per_group}")
    ages, genders = np.asarray(columns["age"]), np.asarray(columns["gender"])
    kept: dict[str, list] = {name: [] for name in ("image_id", "age", "gender") + EMBEDDINGS}
    for age, gender in sorted(set(zip(ages.tolist(), genders.tolist()))):
        members = np.flatnonzero((ages == age) & (genders == gender))
        if len(members) <= per_group:
            for name in kept:
                kept[name].extend(np.asarray(columns[name])[members])
            continue
        clusters = KMeans(n_clusters=per_group, n_init=1, random_state=seed).fit_predict(
            columns["age_embedding"][members]
        )
        for cluster in range(per_group):
            group = members[clusters == cluster]
            kept["image_id"].append(f"prototype:age={age}:gender={gender}:{cluster}")
            kept["age"].append(age)
            kept["gender"].append(gender)
            for name in EMBEDDINGS:
                kept[name].append(np.median(columns[name][group], axis=0))
    return {
        "image_id": np.asarray(kept["image_id"], dtype=object),
        "age": np.asarray(kept["age"], dtype=np.asarray(columns["age"]).dtype),
        "gender": np.asarray(kept["gender"], dtype=np.asarray(columns["gender"]).dtype),
        **{name: np.asarray(kept[name], dtype=np.float32).reshape(-1, columns[name].shape[1]) for name in EMBEDDINGS},
    }
