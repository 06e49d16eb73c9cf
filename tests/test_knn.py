"""L1 nearest neighbours: exact on hand-made embeddings, ScaNN brute force and approximate vs exact."""

import numpy as np
import pytest

from agejobs import gallery, knn
from agejobs.datasets.synthetic import embedding_like_vectors


def test_known_neighbours_in_order():
    reference = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 3.0], [5.0, 5.0]])
    queries = np.array([[1.0, 1.0], [9.0, 1.0]])
    distances, indices = knn.exact_l1_knn(queries, reference, 3)
    # query 0: L1 to rows = 2, 10, 3, 8 -> rows 0, 2, 3
    assert indices.tolist()[0] == [0, 2, 3]
    assert distances.tolist()[0] == [2.0, 3.0, 8.0]
    # query 1: L1 = 10, 2, 11, 8 -> rows 1, 3, 0
    assert indices.tolist()[1] == [1, 3, 0]


def test_ties_go_to_the_lower_gallery_index_across_chunks():
    reference = np.array([[1.0], [-1.0], [1.0], [-1.0], [3.0]])  # rows 0-3 all at distance 1
    distances, indices = knn.exact_l1_knn(np.array([[0.0]]), reference, 3, gallery_chunk=2)
    assert indices.tolist() == [[0, 1, 2]]
    assert distances.tolist() == [[1.0, 1.0, 1.0]]


def test_chunking_does_not_change_results():
    rng = np.random.default_rng(0)
    reference, queries = rng.normal(size=(503, 8)), rng.normal(size=(37, 8))
    d_full, i_full = knn.exact_l1_knn(queries, reference, 20)
    d_chunk, i_chunk = knn.exact_l1_knn(queries, reference, 20, query_chunk=5, gallery_chunk=64)
    np.testing.assert_array_equal(i_full, i_chunk)
    np.testing.assert_allclose(d_full, d_chunk, rtol=1e-6)
    brute = np.abs(queries[:, None, :] - reference[None, :, :]).sum(-1)
    np.testing.assert_array_equal(i_full, np.argsort(brute, axis=1, kind="stable")[:, :20])


def test_m_larger_than_gallery_is_an_error():
    with pytest.raises(ValueError, match="M=4 nearest neighbours requested but the gallery has only 3"):
        knn.exact_l1_knn(np.zeros((1, 2)), np.zeros((3, 2)), 4)


def test_dimension_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same d"):
        knn.exact_l1_knn(np.zeros((1, 2)), np.zeros((3, 4)), 1)


def test_mean_age_and_gender_vote():
    indices = np.array([[0, 1, 2, 3], [3, 2, 1, 0]])
    ages = np.array([20, 30, 40, 50])
    np.testing.assert_allclose(gallery.mean_neighbour_age(indices, ages), [35.0, 35.0])
    genders = np.array([1, 0, 1, 0])
    predicted, share = gallery.majority_neighbour_gender(indices, genders)
    # 2 vs 2: the tie goes to the nearest neighbour (row 0 -> female, row 3 -> male).
    assert predicted.tolist() == [1, 0]
    np.testing.assert_allclose(share, [0.5, 0.5])
    predicted, share = gallery.majority_neighbour_gender(np.array([[0, 2, 1]]), genders)
    assert predicted.tolist() == [1]
    np.testing.assert_allclose(share, [2 / 3])


def test_gender_vote_skips_unlabelled_neighbours():
    from agejobs.gallery import majority_neighbour_gender

    genders = np.array([-1, 1, 0, -1, -1])
    neighbours = np.array([[0, 1, 2, 3], [0, 1, 1, 2], [3, 4, 0, 3]])
    predicted, share = majority_neighbour_gender(neighbours, genders)
    # row 0: one female, one male among labelled -> tie goes to the nearest labelled (index 1, female)
    assert predicted.tolist() == [1, 1, -1]
    assert share.tolist() == [0.5, 2 / 3, 0.0]


def clustered(rows: int, seed: int = 0):
    """Embedding-like vectors of one shared manifold (the projection is fixed by seed 0)."""
    return embedding_like_vectors(rows, seed=seed)


def test_scann_brute_force_l1_equals_numpy_exact_top_m():
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(3000, 70)).astype(np.float32)
    queries = rng.normal(size=(50, 70)).astype(np.float32)
    all_distances = np.abs(queries[:, None, :] - reference[None, :, :]).sum(axis=2)
    expected = np.argsort(all_distances, axis=1, kind="stable")[:, :20]
    index = knn.L1Index.build(reference, knn.SearchSettings(mode="brute_force"), m=20)
    distances, indices = index.search(queries)
    assert index.mode == "brute_force"
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(distances, np.take_along_axis(all_distances, expected, axis=1), rtol=1e-5)


def test_approximate_search_reaches_the_configured_recall():
    reference = clustered(20000)
    tuning, held_out = clustered(300, seed=2), clustered(300, seed=3)
    index = knn.L1Index.build(reference, knn.SearchSettings(mode="approximate", num_leaves=140), m=20)
    chosen, points = knn.tune_approximate(index, tuning, 0.98)
    assert (
        max(
            p["recall"]
            for p in points
            if (p["leaves_to_search"], p["candidates"]) == (chosen.leaves_to_search, chosen.candidates)
        )
        >= 0.98
    )
    assert chosen.leaves_to_search < 140  # it did not have to search everything
    index.settings = chosen
    distances, found = index.search(held_out)
    exact_distances, exact = knn.exact_l1_knn(held_out, reference, 20)
    assert knn.recall_at_m(found, exact) >= 0.97  # held-out queries: the tuned k' generalises
    # Whatever was found carries its exact L1 distance, nearest first.
    np.testing.assert_allclose(distances, np.abs(held_out[:, None, :] - reference[found]).sum(axis=2), rtol=1e-5)
    assert (np.diff(distances, axis=1) >= 0).all()


def test_rerank_ignores_padding_and_repeated_candidates():
    reference = np.array([[0.0], [1.0], [2.0], [3.0]], dtype=np.float32)
    candidates = np.array([[3, -1, 1, 1, 2]])
    distances, indices = knn.l1_rerank(np.array([[1.1]], dtype=np.float32), reference, candidates, 3)
    np.testing.assert_array_equal(indices, [[1, 2, 3]])
    np.testing.assert_allclose(distances, [[0.1, 0.9, 1.9]], rtol=1e-5)


@pytest.mark.parametrize("mode", ["exact", "brute_force", "approximate"])
def test_saved_index_loads_and_searches_the_same(tmp_path, mode):
    reference, queries = clustered(2000), clustered(20, seed=5)
    index = knn.L1Index.build(reference, knn.SearchSettings(mode=mode, num_leaves=40, candidates=100), m=5)
    index.save(str(tmp_path / "index"))
    loaded = knn.L1Index.load(str(tmp_path / "index"))
    assert loaded.mode == mode
    for before, after in zip(index.search(queries), loaded.search(queries)):
        np.testing.assert_array_equal(before, after)


def test_unfinished_index_directory_is_refused(tmp_path):
    (tmp_path / "index").mkdir()
    with pytest.raises(FileNotFoundError, match="no index.json"):
        knn.L1Index.load(str(tmp_path / "index"))
