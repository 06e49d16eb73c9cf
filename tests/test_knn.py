"""Exact L1 kNN on hand-made embeddings."""

import numpy as np
import pytest

from agejobs import gallery


def test_known_neighbours_in_order():
    reference = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 3.0], [5.0, 5.0]])
    queries = np.array([[1.0, 1.0], [9.0, 1.0]])
    distances, indices = gallery.exact_l1_knn(queries, reference, 3)
    # query 0: L1 to rows = 2, 10, 3, 8 -> rows 0, 2, 3
    assert indices.tolist()[0] == [0, 2, 3]
    assert distances.tolist()[0] == [2.0, 3.0, 8.0]
    # query 1: L1 = 10, 2, 11, 8 -> rows 1, 3, 0
    assert indices.tolist()[1] == [1, 3, 0]


def test_ties_go_to_the_lower_gallery_index_across_chunks():
    reference = np.array([[1.0], [-1.0], [1.0], [-1.0], [3.0]])  # rows 0-3 all at distance 1
    distances, indices = gallery.exact_l1_knn(np.array([[0.0]]), reference, 3, gallery_chunk=2)
    assert indices.tolist() == [[0, 1, 2]]
    assert distances.tolist() == [[1.0, 1.0, 1.0]]


def test_chunking_does_not_change_results():
    rng = np.random.default_rng(0)
    reference, queries = rng.normal(size=(503, 8)), rng.normal(size=(37, 8))
    d_full, i_full = gallery.exact_l1_knn(queries, reference, 20)
    d_chunk, i_chunk = gallery.exact_l1_knn(queries, reference, 20, query_chunk=5, gallery_chunk=64)
    np.testing.assert_array_equal(i_full, i_chunk)
    np.testing.assert_allclose(d_full, d_chunk, rtol=1e-6)
    brute = np.abs(queries[:, None, :] - reference[None, :, :]).sum(-1)
    np.testing.assert_array_equal(i_full, np.argsort(brute, axis=1, kind="stable")[:, :20])


def test_m_larger_than_gallery_is_an_error():
    with pytest.raises(ValueError, match="M=4 nearest neighbours requested but the gallery has only 3"):
        gallery.exact_l1_knn(np.zeros((1, 2)), np.zeros((3, 2)), 4)


def test_dimension_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same d"):
        gallery.exact_l1_knn(np.zeros((1, 2)), np.zeros((3, 4)), 1)


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
