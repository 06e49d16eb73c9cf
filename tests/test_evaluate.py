"""Metrics, reports and plots of agejobs.evaluate, checked on hand-computed examples."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from agejobs import evaluate as ev

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# |errors| = [2, 0, 3, 9]
PRED = [10, 20, 33, 41]
TRUE = [12, 20, 30, 50]


def test_mae_hand_computed():
    assert ev.mean_absolute_error(PRED, TRUE) == 3.5  # (2 + 0 + 3 + 9) / 4


def test_mae_accepts_arrays_of_any_numeric_dtype():
    pred = np.array(PRED, dtype=np.int16)
    true = np.array(TRUE, dtype=np.float32)
    assert ev.mean_absolute_error(pred, true) == 3.5
    assert ev.mean_absolute_error([1.25], [1]) == 0.25
    assert isinstance(ev.mean_absolute_error(pred, true), float)


@pytest.mark.parametrize(
    ("threshold", "expected"),
    [(0, 25.0), (1, 25.0), (2, 50.0), (2.5, 50.0), (3, 75.0), (8, 75.0), (9, 100.0), (20, 100.0)],
)
def test_cumulative_score_inclusive_boundary(threshold, expected):
    assert ev.cumulative_score(PRED, TRUE, threshold) == expected


def test_cumulative_scores_every_integer_threshold():
    scores = ev.cumulative_scores(PRED, TRUE, max_threshold=10)
    assert scores == {
        0: 25.0,
        1: 25.0,
        2: 50.0,
        3: 75.0,
        4: 75.0,
        5: 75.0,
        6: 75.0,
        7: 75.0,
        8: 75.0,
        9: 100.0,
        10: 100.0,
    }
    assert ev.cumulative_scores(PRED, TRUE, max_threshold=0) == {0: 25.0}


def test_cumulative_score_rejects_negative_threshold():
    with pytest.raises(ValueError, match="threshold"):
        ev.cumulative_score(PRED, TRUE, -1)


def test_gender_accuracy():
    assert ev.gender_accuracy([0, 1, 1, 0], [0, 1, 0, 0]) == 0.75
    assert ev.gender_accuracy(np.array([1, 1]), np.array([0, 0])) == 0.0
    assert ev.gender_accuracy([True, False, True], [1, 0, 1]) == 1.0
    assert ev.gender_accuracy(["F", "M"], ["F", "F"]) == 0.5


def test_gender_accuracy_rejects_mismatch_and_empty():
    with pytest.raises(ValueError, match="3.*2"):
        ev.gender_accuracy([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        ev.gender_accuracy([], [])


@pytest.mark.parametrize(
    "metric",
    [ev.mean_absolute_error, lambda p, t: ev.cumulative_score(p, t, 3), ev.cumulative_scores, ev.mae_by_age_bin],
)
def test_age_metrics_validate_inputs(metric):
    with pytest.raises(ValueError, match="predicted has 3 values but true has 4"):
        metric([1, 2, 3], [1, 2, 3, 4])
    with pytest.raises(ValueError, match="empty"):
        metric([], [])
    with pytest.raises(ValueError, match="non-finite"):
        metric([1.0, np.nan], [1, 2])
    with pytest.raises(ValueError, match="non-finite"):
        metric([1.0, np.inf], [1, 2])
    with pytest.raises(ValueError, match="one-dimensional"):
        metric([[1, 2]], [[1, 2]])


def test_mae_by_age_bin_uses_true_age():
    # true 12 and 20 fall in different bins; the prediction of 10 for 12 stays in bin 10-19.
    rows = ev.mae_by_age_bin(PRED, TRUE, bin_width=10)
    assert rows == [
        {"bin": "10-19", "lo": 10, "hi": 19, "count": 1, "mae": 2.0},
        {"bin": "20-29", "lo": 20, "hi": 29, "count": 1, "mae": 0.0},
        {"bin": "30-39", "lo": 30, "hi": 39, "count": 1, "mae": 3.0},
        {"bin": "50-59", "lo": 50, "hi": 59, "count": 1, "mae": 9.0},  # 40-49 empty: left out
    ]


def test_mae_by_age_bin_groups_and_orders():
    rows = ev.mae_by_age_bin([7, 1, 30, 4, 26], [9, 0, 25, 5, 29], bin_width=5)
    assert rows == [
        {"bin": "0-4", "lo": 0, "hi": 4, "count": 1, "mae": 1.0},
        {"bin": "5-9", "lo": 5, "hi": 9, "count": 2, "mae": 1.5},  # errors 2 and 1
        {"bin": "25-29", "lo": 25, "hi": 29, "count": 2, "mae": 4.0},  # errors 5 and 3
    ]
    with pytest.raises(ValueError, match="bin_width"):
        ev.mae_by_age_bin(PRED, TRUE, bin_width=0)


def test_method_report_contents():
    report = ev.method_report("siamese-knn", PRED, TRUE, [0, 1, 1, 0], [0, 1, 0, 0], max_threshold=3)
    assert report == {
        "method": "siamese-knn",
        "n": 4,
        "mae": 3.5,
        "cs": {"0": 25.0, "1": 25.0, "2": 50.0, "3": 75.0},
        "gender_accuracy": 0.75,
        "mae_by_age": ev.mae_by_age_bin(PRED, TRUE),
    }


def test_method_report_without_gender_and_gender_checks():
    assert ev.method_report("mean", PRED, TRUE)["gender_accuracy"] is None
    with pytest.raises(ValueError, match="both"):
        ev.method_report("dex", PRED, TRUE, predicted_gender=[0, 1, 1, 0])
    with pytest.raises(ValueError, match="true_gender has 2 values but true_age has 4"):
        ev.method_report("dex", PRED, TRUE, [0, 1], [0, 1])


def _two_reports() -> list[dict]:
    return [
        ev.method_report("siamese-knn", PRED, TRUE, [0, 1, 1, 0], [0, 1, 0, 0]),
        ev.method_report("mean", [30, 30, 30, 30], TRUE),
    ]


def test_write_report_round_trips_through_json(tmp_path):
    reports = _two_reports()
    path = tmp_path / "sub" / "report.json"
    written = ev.write_report(str(path), reports, extra={"dataset": "synthetic", "seed": np.int64(7)})
    loaded = json.loads(path.read_text())
    assert loaded == written
    assert loaded["methods"] == reports
    assert loaded["dataset"] == "synthetic" and loaded["seed"] == 7
    assert loaded["methods"][1]["gender_accuracy"] is None
    assert os.listdir(path.parent) == ["report.json"]  # no temp file left behind


def test_write_report_rejects_nan_and_methods_key(tmp_path):
    path = tmp_path / "report.json"
    with pytest.raises(ValueError):
        ev.write_report(str(path), [], extra={"methods": []})
    with pytest.raises(ValueError):
        ev.write_report(str(path), [], extra={"loss": float("nan")})
    assert os.listdir(tmp_path) == []


def test_format_table():
    table = ev.format_table(_two_reports())
    assert table.splitlines() == [
        "method      |   MAE | CS(3) | CS(5) | gender acc",
        "------------+-------+-------+-------+-----------",
        "siamese-knn |  3.50 | 75.0% | 75.0% |      0.750",
        "mean        | 12.00 | 25.0% | 25.0% |          -",  # errors 18, 10, 0, 20
    ]


def _assert_png(path) -> None:
    data = path.read_bytes()
    assert len(data) > 1000
    assert data[:8] == PNG_MAGIC


def test_plot_cs_curves_and_mae_by_age(tmp_path):
    reports = _two_reports()
    ev.plot_cs_curves(reports, str(tmp_path / "cs.png"))
    ev.plot_mae_by_age(reports, str(tmp_path / "mae.png"))
    _assert_png(tmp_path / "cs.png")
    _assert_png(tmp_path / "mae.png")
    with pytest.raises(ValueError, match="empty"):
        ev.plot_cs_curves([], str(tmp_path / "none.png"))


@pytest.mark.parametrize(("method", "n", "max_points"), [("pca", 300, 100), ("tsne", 40, 2000)])
def test_plot_embedding_map(tmp_path, method, n, max_points):
    rng = np.random.default_rng(0)
    ages = rng.integers(0, 80, size=n)
    embeddings = np.outer(ages, rng.normal(size=16)) + rng.normal(size=(n, 16))
    path = tmp_path / f"map_{method}.png"
    ev.plot_embedding_map(embeddings, ages, str(path), method=method, max_points=max_points, seed=1)
    _assert_png(path)


def test_plot_embedding_map_validates(tmp_path):
    path = str(tmp_path / "map.png")
    with pytest.raises(ValueError, match="method"):
        ev.plot_embedding_map(np.zeros((5, 3)), np.arange(5), path, method="umap")
    with pytest.raises(ValueError, match="embeddings has 5 values but ages has 4"):
        ev.plot_embedding_map(np.zeros((5, 3)), np.arange(4), path)
    with pytest.raises(ValueError, match="shape"):
        ev.plot_embedding_map(np.zeros(5), np.arange(5), path)


def test_plot_embedding_map_subsample_is_deterministic(tmp_path):
    rng = np.random.default_rng(0)
    ages = rng.integers(0, 80, size=200)
    embeddings = np.outer(ages, rng.normal(size=8)) + 20 * rng.normal(size=(200, 8))
    images = []
    for name, seed in [("a", 3), ("b", 3), ("c", 4)]:
        path = tmp_path / f"{name}.png"
        ev.plot_embedding_map(embeddings, ages, str(path), max_points=50, seed=seed)
        images.append(path.read_bytes())
    assert images[0] == images[1]
    assert images[0] != images[2]


def test_gender_accuracy_leaves_out_unlabelled_faces():
    from agejobs.evaluate import gender_accuracy, method_report

    assert gender_accuracy([0, 1, 1, 0], [0, -1, 1, 1]) == pytest.approx(2 / 3)
    assert method_report("m", [1, 2], [1, 2], [0, 1], [-1, -1])["gender_accuracy"] is None


def test_peer_row_is_computed_on_exactly_the_test_faces(tmp_path):
    import pyarrow.parquet as pq

    from agejobs.datasets.manifest import rows_to_table
    from agejobs.experiment import peer_report

    rows = [
        {
            "image_id": f"f{i}",
            "path": f"/data/f{i}.jpg",
            "age": age,
            "gender": i % 2,
            "subject_id": f"f{i}",
            "split": split,
            "dataset": "utkface",
        }
        for i, (age, split) in enumerate(zip(TRUE + [40], ["test"] * 4 + ["train"]))
    ]
    manifest = tmp_path / "manifest.parquet"
    pq.write_table(rows_to_table(rows), manifest)
    csv = tmp_path / "peer.csv"
    # one prediction per face, the training face's included (it must not count), in another order
    csv.write_text(
        "file,pred_age,pred_gender\n"
        + "\n".join(f"f{i}.jpg,{pred},{i % 2}" for i, pred in reversed(list(enumerate(PRED + [99]))))
    )
    report = peer_report(str(manifest), str(csv))
    assert report["method"] == "peer" and report["n"] == 4
    assert report["mae"] == 3.5 and report["gender_accuracy"] == 1.0
    csv.write_text("file,pred_age\nf0.jpg,10\n")
    with pytest.raises(ValueError, match="3 of 4 test faces have no prediction"):
        peer_report(str(manifest), str(csv))
