"""Nearest neighbours by L1 distance (the paper's eq. 1): exact, ScaNN brute force, ScaNN + re-rank.

One interface, `L1Index.search(queries, m) -> (distances, indices)`, nearest first, three modes:
  exact        torch cdist in chunks with a running top-M: the reference.
  brute_force  ScaNN brute force with L1Distance. ScaNN's builder offers only dot product and
               squared L2, but its raw config accepts L1Distance and brute force honours it.
  approximate  ScaNN in squared L2 (k-means tree partitions + anisotropic hashing) returns k'
               candidates per query, and exact L1 over just those candidates picks the M. L2 and
               L1 neighbourhoods overlap strongly but not fully, so k' is chosen by measuring
               recall@M against exact L1 (`recall_at_m`, `choose_candidates`).
"auto" is brute force up to `brute_force_max` rows and approximate above.

ScaNN searchers do not pickle (nor travel through `ray.put`): an index is saved to a directory
(`save`) and each actor loads its own (`load`). Directories may be local or s3:// (staged through a
local temporary directory, since ScaNN reads and writes only local files).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tempfile

import numpy as np
import torch

from agejobs import storage
from agejobs.config import SearchSettings  # the gallery config's own type

INDEX_FILE = "index.json"
EMBEDDINGS_FILE = "embeddings.npy"
SCANN_DIR = "scann"


def exact_l1_knn(
    queries: np.ndarray | torch.Tensor,
    gallery: np.ndarray | torch.Tensor,
    m: int,
    query_chunk: int = 1024,
    gallery_chunk: int = 65536,
) -> tuple[np.ndarray, np.ndarray]:
    """The M nearest gallery rows of each query by L1 distance: (distances, indices), nearest first.

    Memory stays O(query_chunk * (gallery_chunk + m)) whatever the gallery size: each query
    chunk keeps a running top-M while gallery chunks stream past. Ties in distance are broken by
    the lower gallery index, so results are deterministic.
    """
    queries = torch.as_tensor(np.asarray(queries, dtype=np.float32))
    gallery = torch.as_tensor(np.asarray(gallery, dtype=np.float32))
    _check_shapes(queries.shape, gallery.shape, m)
    all_distances, all_indices = [], []
    for q_start in range(0, len(queries), query_chunk):
        query_block = queries[q_start : q_start + query_chunk]
        best_d = torch.empty((len(query_block), 0))
        best_i = torch.empty((len(query_block), 0), dtype=torch.long)
        for g_start in range(0, len(gallery), gallery_chunk):
            block = gallery[g_start : g_start + gallery_chunk]
            distances = torch.cdist(query_block, block, p=1.0)
            indices = torch.arange(g_start, g_start + len(block)).expand(len(query_block), -1)
            # Earlier (lower-index) candidates come first, so a stable sort keeps index order on ties.
            candidate_d = torch.cat([best_d, distances], dim=1)
            candidate_i = torch.cat([best_i, indices], dim=1)
            order = torch.sort(candidate_d, dim=1, stable=True).indices[:, :m]
            best_d = torch.gather(candidate_d, 1, order)
            best_i = torch.gather(candidate_i, 1, order)
        all_distances.append(best_d)
        all_indices.append(best_i)
    return torch.cat(all_distances).numpy(), torch.cat(all_indices).numpy()


def _check_shapes(query_shape, gallery_shape, m: int) -> None:
    if len(query_shape) != 2 or len(gallery_shape) != 2 or query_shape[1] != gallery_shape[1]:
        raise ValueError(
            f"queries {tuple(query_shape)} and gallery {tuple(gallery_shape)} must be (n, d) with the same d"
        )
    if m < 1:
        raise ValueError(f"M must be >= 1, got {m}")
    if m > gallery_shape[0]:
        raise ValueError(f"M={m} nearest neighbours requested but the gallery has only {gallery_shape[0]} faces")


def l1_rerank(
    queries: np.ndarray, gallery: np.ndarray, candidates: np.ndarray, m: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact L1 over each query's candidate rows (n, k'), the M nearest kept, nearest first.

    Candidates < 0 (ScaNN pads when it finds fewer than k') and repeats never win a place."""
    candidates = np.asarray(candidates, dtype=np.int64)
    distances = np.empty(candidates.shape, dtype=np.float32)
    for start in range(0, len(queries), 256):  # (256, k', d) at a time: bounded memory
        block = candidates[start : start + 256]
        rows = gallery[np.clip(block, 0, None)]
        distances[start : start + 256] = np.abs(rows - queries[start : start + 256, None, :]).sum(axis=2)
    distances[candidates < 0] = np.inf
    order = np.lexsort((candidates, distances), axis=1)  # by distance, then by index: deterministic
    sorted_candidates = np.take_along_axis(candidates, order, axis=1)
    sorted_distances = np.take_along_axis(distances, order, axis=1)
    repeat = np.zeros_like(sorted_candidates, dtype=bool)
    repeat[:, 1:] = sorted_candidates[:, 1:] == sorted_candidates[:, :-1]
    sorted_distances[repeat] = np.inf
    order = np.argsort(sorted_distances, axis=1, kind="stable")[:, :m]
    return np.take_along_axis(sorted_distances, order, axis=1), np.take_along_axis(sorted_candidates, order, axis=1)


def recall_at_m(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each query's exact M nearest that the search found."""
    hits = [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, exact)]
    return float(np.sum(hits) / exact.size)


def _scann_builder(embeddings: np.ndarray, neighbours: int):
    from scann.scann_ops.py import scann_ops_pybind

    return scann_ops_pybind.builder(embeddings, neighbours, "squared_l2")


def _l1_brute_force_searcher(embeddings: np.ndarray, m: int):
    from scann.scann_ops.py import scann_ops_pybind

    config = _scann_builder(embeddings, m).score_brute_force().create_config()
    if config.count("SquaredL2Distance") != 1:  # the only distance of a brute-force config
        raise RuntimeError("unexpected ScaNN brute-force config; cannot switch it to L1Distance")
    return scann_ops_pybind.create_searcher(embeddings, config.replace("SquaredL2Distance", "L1Distance"))


def _approximate_searcher(embeddings: np.ndarray, settings: SearchSettings):
    rows = len(embeddings)
    options = settings.query_options(rows)
    builder = _scann_builder(embeddings, options["final_num_neighbors"]).tree(
        num_leaves=settings.leaves(rows),
        num_leaves_to_search=options["leaves_to_search"],
        training_sample_size=min(rows, settings.training_sample),
    )
    # Anisotropic hashing scores candidates cheaply; ScaNN's own exact re-order (in squared L2)
    # sharpens the k' list before our exact L1 pass. Both depths are per-query options.
    return (
        builder.score_ah(2, anisotropic_quantization_threshold=0.2)
        .reorder(options["pre_reorder_num_neighbors"])
        .build()
    )


class L1Index:
    """Gallery vectors + the searcher of one mode; `search` always returns exact L1 distances."""

    def __init__(self, embeddings: np.ndarray, settings: SearchSettings, m: int, searcher=None):
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.settings = settings
        self.m = m
        self.mode = settings.resolved_mode(len(self.embeddings))
        self.searcher = searcher

    @classmethod
    def build(cls, embeddings: np.ndarray, settings: SearchSettings, m: int) -> L1Index:
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        _check_shapes((1, embeddings.shape[1]), embeddings.shape, m)
        index = cls(embeddings, settings, m)
        if index.mode == "brute_force":
            index.searcher = _l1_brute_force_searcher(index.embeddings, m)
        elif index.mode == "approximate":
            index.searcher = _approximate_searcher(index.embeddings, settings)
        return index

    def search(self, queries: np.ndarray, m: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        m = m or self.m
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        _check_shapes(queries.shape, self.embeddings.shape, m)
        if self.mode == "exact":
            return exact_l1_knn(queries, self.embeddings, m)
        if self.mode == "brute_force":
            indices, distances = self.searcher.search_batched(queries, final_num_neighbors=m)
            return np.asarray(distances, dtype=np.float32), np.asarray(indices, dtype=np.int64)
        options = self.settings.query_options(len(self.embeddings))
        options["final_num_neighbors"] = max(options["final_num_neighbors"], m)
        options["pre_reorder_num_neighbors"] = max(options["pre_reorder_num_neighbors"], options["final_num_neighbors"])
        candidates, _ = self.searcher.search_batched(queries, **options)
        return l1_rerank(queries, self.embeddings, candidates, m)

    def save(self, directory: str) -> None:
        """index.json + embeddings.npy (+ scann/): local or s3://, written through a local stage."""
        with tempfile.TemporaryDirectory() as stage:
            np.save(os.path.join(stage, EMBEDDINGS_FILE), self.embeddings)
            if self.searcher is not None:
                os.makedirs(os.path.join(stage, SCANN_DIR))
                # Relative asset paths: the directory is read back from another place.
                self.searcher.serialize(os.path.join(stage, SCANN_DIR), relative_path=True)
            meta = {
                "mode": self.mode,
                "m": self.m,
                "rows": len(self.embeddings),
                "dim": int(self.embeddings.shape[1]),
                "distance": "l1",
                "settings": dataclasses.asdict(self.settings),
            }
            files = {}
            for root, _, names in os.walk(stage):
                for name in names:
                    relative = os.path.relpath(os.path.join(root, name), stage)
                    with open(os.path.join(root, name), "rb") as handle:
                        files[storage.join(directory, *relative.split(os.sep))] = handle.read()
            storage.write_many(files)
            # Written last: a directory without index.json is an unfinished save.
            storage.write_bytes_atomic(storage.join(directory, INDEX_FILE), json.dumps(meta, indent=2).encode())

    @classmethod
    def load(cls, directory: str) -> L1Index:
        index_uri = storage.join(directory, INDEX_FILE)
        if not storage.exists(index_uri):
            raise FileNotFoundError(f"{directory} holds no finished L1 index (no {INDEX_FILE})")
        meta = json.loads(storage.read_bytes(index_uri))
        settings = SearchSettings(**meta["settings"])
        embeddings = np.load(io.BytesIO(storage.read_bytes(storage.join(directory, EMBEDDINGS_FILE))))
        searcher = None
        if meta["mode"] != "exact":
            from scann.scann_ops.py import scann_ops_pybind

            with tempfile.TemporaryDirectory() as stage:
                for uri, _ in storage.list_files(storage.join(directory, SCANN_DIR)):
                    with open(os.path.join(stage, uri.rstrip("/").rsplit("/", 1)[-1]), "wb") as handle:
                        handle.write(storage.read_bytes(uri))
                searcher = scann_ops_pybind.load_searcher(stage)
        return cls(embeddings, dataclasses.replace(settings, mode=meta["mode"]), meta["m"], searcher)


def tune_approximate(
    index: L1Index,
    queries: np.ndarray,
    target_recall: float,
    leaves_options: tuple[int, ...] = (),
    candidate_options: tuple[int, ...] = (20, 50, 100, 200, 400, 800),
) -> tuple[SearchSettings, list[dict]]:
    """The fastest (leaves_to_search, k') of an approximate index whose recall@M against exact L1
    reaches `target_recall` on these queries, measured; ScaNN takes both per query, so one build
    serves the whole grid. Returns (settings, every measured point); the index keeps its own
    settings. The largest point tried if none reaches the target."""
    import time

    if index.mode != "approximate":
        raise ValueError(f"only an approximate index has settings to tune, not {index.mode!r}")
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    _, exact = exact_l1_knn(queries, index.embeddings, index.m)
    leaves = index.settings.leaves(len(index.embeddings))
    leaves_options = leaves_options or tuple(sorted({max(leaves // d, 1) for d in (100, 50, 25, 10, 5, 2)}))
    points, best, saved = [], None, index.settings
    try:
        for leaves_to_search in leaves_options:
            for candidates in (k for k in candidate_options if k >= index.m):
                index.settings = dataclasses.replace(saved, leaves_to_search=leaves_to_search, candidates=candidates)
                started = time.perf_counter()
                _, found = index.search(queries)
                qps = len(queries) / (time.perf_counter() - started)
                point = {
                    "leaves_to_search": leaves_to_search,
                    "candidates": candidates,
                    "recall": recall_at_m(found, exact),
                    "qps": qps,
                }
                points.append(point)
                if point["recall"] >= target_recall:
                    if best is None or qps > best["qps"]:
                        best = point
                    break  # more candidates at these leaves only cost time
    finally:
        index.settings = saved
    chosen = best or points[-1]
    return dataclasses.replace(
        saved, leaves_to_search=chosen["leaves_to_search"], candidates=chosen["candidates"]
    ), points
