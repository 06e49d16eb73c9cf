"""Age-estimation metrics, method reports and plots (Jeong et al. 2018, Sec. 4).

Metrics, as in the paper:

* MAE: mean absolute error in years, ``mean(|pred - true|)``.
* CS(T): cumulative score, the percentage (0..100) of samples with ``|pred - true| <= T``.
* Gender accuracy: fraction (0..1) of samples whose predicted gender label equals the true one.

A *report* is the JSON-ready dict one method gets from :func:`method_report`. Every command
writes its reports one way, :func:`write_outputs` (report.json by :func:`write_report` + the CS
and per-age MAE plots), and shows them one way, :func:`print_reports`; :func:`scored_report` is
the report of a scoring run's output joined with labels. Only numpy and the standard library are
imported at module level; matplotlib (Agg canvas, no pyplot state) and scikit-learn are imported
inside the functions that need them.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from agejobs import storage

CS_TABLE_THRESHOLDS = (3, 5)


# ---------------------------------------------------------------------------------------------
# validation


def _as_float_vector(values: ArrayLike, name: str) -> np.ndarray:
    """1-D, non-empty, finite float64 copy of ``values``."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise ValueError(f"{name} has {bad} non-finite value(s) (NaN or inf)")
    return array


def _check_same_length(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{name_a} has {len(a)} values but {name_b} has {len(b)}")


def _age_pair(predicted: ArrayLike, true: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    pred = _as_float_vector(predicted, "predicted")
    truth = _as_float_vector(true, "true")
    _check_same_length(pred, truth, "predicted", "true")
    return pred, truth


def _as_label_vector(values: ArrayLike, name: str) -> np.ndarray:
    """1-D, non-empty label array; numeric labels must be finite."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    if np.issubdtype(array.dtype, np.number) and not np.all(np.isfinite(array)):
        raise ValueError(f"{name} has non-finite value(s) (NaN or inf)")
    return array


# ---------------------------------------------------------------------------------------------
# metrics


def mean_absolute_error(predicted: ArrayLike, true: ArrayLike) -> float:
    """Mean of ``|predicted - true|`` in years."""
    pred, truth = _age_pair(predicted, true)
    return float(np.mean(np.abs(pred - truth)))


def cumulative_score(predicted: ArrayLike, true: ArrayLike, threshold: float) -> float:
    """Percentage (0..100) of samples with ``|predicted - true| <= threshold`` (inclusive)."""
    if not math.isfinite(threshold) or threshold < 0:
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold}")
    pred, truth = _age_pair(predicted, true)
    return float(100.0 * np.mean(np.abs(pred - truth) <= threshold))


def cumulative_scores(predicted: ArrayLike, true: ArrayLike, max_threshold: int = 10) -> dict[int, float]:
    """CS(T) in percent for every integer T in ``0..max_threshold``."""
    if max_threshold < 0:
        raise ValueError(f"max_threshold must be >= 0, got {max_threshold}")
    pred, truth = _age_pair(predicted, true)
    errors = np.abs(pred - truth)
    return {t: float(100.0 * np.mean(errors <= t)) for t in range(int(max_threshold) + 1)}


def gender_accuracy(predicted: ArrayLike, true: ArrayLike) -> float:
    """Fraction (0..1) of gender-labelled samples whose predicted label equals the true one.

    True labels < 0 ("not labelled", see datasets/manifest.py) are left out; with no labelled
    sample at all the accuracy is NaN (reported as null), not a misleading 0 or 1.
    """
    pred = _as_label_vector(predicted, "predicted gender")
    truth = _as_label_vector(true, "true gender")
    _check_same_length(pred, truth, "predicted gender", "true gender")
    labelled = truth >= 0 if np.issubdtype(truth.dtype, np.number) else np.ones(len(truth), dtype=bool)
    return float(np.mean(pred[labelled] == truth[labelled])) if labelled.any() else float("nan")


def mae_by_age_bin(predicted: ArrayLike, true: ArrayLike, bin_width: int = 10) -> list[dict[str, Any]]:
    """MAE per bin of TRUE age, bins ``[k*w, k*w + w - 1]``; only non-empty bins, youngest first.

    Each entry: ``{"bin": "20-29", "lo": 20, "hi": 29, "count": n, "mae": x}``.
    """
    if int(bin_width) != bin_width or bin_width < 1:
        raise ValueError(f"bin_width must be a positive integer, got {bin_width}")
    width = int(bin_width)
    pred, truth = _age_pair(predicted, true)
    errors = np.abs(pred - truth)
    bin_index = np.floor(truth / width).astype(np.int64)
    rows = []
    for k in np.unique(bin_index):  # sorted ascending
        in_bin = bin_index == k
        lo, hi = int(k) * width, int(k) * width + width - 1
        rows.append(
            {
                "bin": f"{lo}-{hi}",
                "lo": lo,
                "hi": hi,
                "count": int(np.count_nonzero(in_bin)),
                "mae": float(np.mean(errors[in_bin])),
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------
# reports


def method_report(
    name: str,
    predicted_age: ArrayLike,
    true_age: ArrayLike,
    predicted_gender: ArrayLike | None = None,
    true_gender: ArrayLike | None = None,
    max_threshold: int = 10,
    bin_width: int = 10,
    face_outcomes: ArrayLike | None = None,
) -> dict[str, Any]:
    """All metrics of one method as a JSON-ready dict (CS keys are strings, gender may be None).

    Gender labels are optional but must come as a pair, one per age sample. With
    `face_outcomes` (one per sample: what the face search found, align.OUTCOMES) the report
    also has "mae_by_face_outcome".
    """
    pred, truth = _age_pair(predicted_age, true_age)
    if (predicted_gender is None) != (true_gender is None):
        raise ValueError("give both predicted_gender and true_gender, or neither")
    accuracy = None
    if predicted_gender is not None and true_gender is not None:
        accuracy = gender_accuracy(predicted_gender, true_gender)
        accuracy = None if math.isnan(accuracy) else accuracy  # no gender-labelled sample
        n_gender = len(np.asarray(true_gender))
        if n_gender != len(truth):
            raise ValueError(f"true_gender has {n_gender} values but true_age has {len(truth)}")
    report = {
        "method": name,
        "n": int(len(truth)),
        "mae": mean_absolute_error(pred, truth),
        "cs": {str(t): cs for t, cs in cumulative_scores(pred, truth, max_threshold).items()},
        "gender_accuracy": accuracy,
        "mae_by_age": mae_by_age_bin(pred, truth, bin_width),
    }
    if face_outcomes is not None:
        report["mae_by_face_outcome"] = mae_by_group(pred, truth, face_outcomes, "face_outcomes")
    return report


def mae_by_group(
    predicted: ArrayLike, true: ArrayLike, groups: ArrayLike, name: str = "groups"
) -> dict[str, dict[str, Any]]:
    """{group: {"n", "mae"}} for every distinct value of `groups` (one per sample)."""
    pred, truth = _age_pair(predicted, true)
    labels = np.asarray(groups).astype(str)
    _check_same_length(labels, truth, name, "true")
    return {
        str(group): {
            "n": int(np.sum(labels == group)),
            "mae": mean_absolute_error(pred[labels == group], truth[labels == group]),
        }
        for group in np.unique(labels)
    }


def _json_default(value: Any) -> Any:
    """Let numpy scalars and arrays inside ``extra`` serialise."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_report(path: str, reports: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``{"methods": reports, **extra}`` as strict JSON (no NaN), atomically
    (storage.write_bytes_atomic)."""
    extra = dict(extra or {})
    if "methods" in extra:
        raise ValueError('extra must not contain the key "methods"')
    document = {"methods": list(reports), **extra}
    text = json.dumps(document, indent=2, allow_nan=False, default=_json_default)
    storage.write_bytes_atomic(path, (text + "\n").encode("utf-8"))
    return document


def write_outputs(workdir: str, reports: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """WORKDIR/report.json and WORKDIR/plots/{cs_curve,mae_by_age}.png: how every command
    (experiment, demo, evaluate) writes its report. Returns the report document."""
    plots_dir = storage.join(workdir, "plots")
    plot_cs_curves(reports, storage.join(plots_dir, "cs_curve.png"))
    plot_mae_by_age(reports, storage.join(plots_dir, "mae_by_age.png"))
    return write_report(storage.join(workdir, "report.json"), reports, extra)


def print_reports(reports: list[dict[str, Any]]) -> None:
    """The console's view of reports: the method table, then MAE by face outcome where known."""
    print(format_table(reports))
    outcomes = format_face_outcomes(reports)
    if outcomes:
        print(outcomes)


def scored_report(scored_uri: str, labels_uri: str, split: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
    """(report, extra) of a scoring run's output (OUT/RUN_ID) joined by path with the labels of a
    manifest or pack; `split`: only faces of that split (e.g. those not in the gallery)."""
    import pyarrow.compute as pc

    from agejobs.data import label_table
    from agejobs.score import read_scored

    predictions, errors = read_scored(scored_uri)
    labels = label_table(labels_uri, ("path", "age", "gender", "split"))
    if split:
        labels = labels.filter(pc.equal(labels["split"], split))
    joined = predictions.join(labels.drop_columns(["split"]), "path", join_type="inner")
    if joined.num_rows == 0:
        raise ValueError(f"no scored row of {scored_uri} has a label in {labels_uri} (joined on path)")
    outcomes = joined["face_outcome"].to_numpy() if "face_outcome" in joined.column_names else None
    report = method_report(
        "scored",
        joined["predicted_age"].to_numpy(),
        joined["age"].to_numpy(),
        joined["predicted_gender"].to_numpy(),
        joined["gender"].to_numpy(),
        face_outcomes=outcomes,
    )
    extra = {
        "scored": scored_uri,
        "labels": labels_uri,
        "split": split or "all",
        "scored_rows": predictions.num_rows,
        "labelled_rows": joined.num_rows,
        "error_rows": errors.num_rows,
    }
    return report, extra


def format_face_outcomes(reports: list[dict[str, Any]]) -> str:
    """One line per report that has MAE by face-search outcome: "method: one_face 4.91 (n=1900), ..."."""
    lines = []
    for report in reports:
        groups = report.get("mae_by_face_outcome")
        if groups:
            cells = ", ".join(f"{name} {group['mae']:.2f} (n={group['n']})" for name, group in groups.items())
            lines.append(f"MAE by face outcome, {report['method']}: {cells}")
    return "\n".join(lines)


def format_table(reports: list[dict[str, Any]]) -> str:
    """Fixed-width text table: method | MAE | CS(3) | CS(5) | gender acc ("-" when missing)."""
    headers = ["method", "MAE", *(f"CS({t})" for t in CS_TABLE_THRESHOLDS), "gender acc"]
    rows = []
    for report in reports:
        cs = report.get("cs", {})
        cs_cells = [f"{cs[str(t)]:.1f}%" if str(t) in cs else "-" for t in CS_TABLE_THRESHOLDS]
        accuracy = report.get("gender_accuracy")
        rows.append(
            [
                str(report["method"]),
                f"{report['mae']:.2f}",
                *cs_cells,
                "-" if accuracy is None else f"{accuracy:.3f}",
            ]
        )
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:])]
        return " | ".join([first, *rest])

    rule = "-+-".join("-" * width for width in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


# ---------------------------------------------------------------------------------------------
# plots


def _new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure on an Agg canvas (no pyplot, no global backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save_png(figure: Any, path: str) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    storage.write_bytes_atomic(path, buffer.getvalue())


def _check_reports(reports: list[dict[str, Any]]) -> None:
    if not reports:
        raise ValueError("reports is empty")


def plot_cs_curves(reports: list[dict[str, Any]], path: str) -> None:
    """PNG of CS(T) (percent) against error threshold T (years), one line per method."""
    _check_reports(reports)
    figure = _new_figure(6.0, 4.2)
    axes = figure.add_subplot()
    for report in reports:
        thresholds = sorted(int(t) for t in report["cs"])
        scores = [report["cs"][str(t)] for t in thresholds]
        label = f"{report['method']} (MAE {report['mae']:.2f})"
        axes.plot(thresholds, scores, marker="o", markersize=3.5, label=label)
    axes.set_title("Cumulative score")
    axes.set_xlabel("Error threshold T (years)")
    axes.set_ylabel("CS(T): samples with |error| ≤ T (%)")
    axes.set_ylim(0, 100)
    max_t = max(int(t) for report in reports for t in report["cs"])
    if max_t <= 20:
        axes.set_xticks(range(max_t + 1))
    axes.set_xlim(left=0)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right", fontsize="small")
    _save_png(figure, path)


def plot_mae_by_age(reports: list[dict[str, Any]], path: str) -> None:
    """PNG of grouped bars: MAE (years) per true-age bin, one bar colour per method."""
    _check_reports(reports)
    bins = sorted({(row["lo"], row["bin"]) for report in reports for row in report["mae_by_age"]})
    labels = [label for _, label in bins]
    position = {label: i for i, label in enumerate(labels)}
    bar_width = 0.8 / len(reports)
    figure = _new_figure(min(14.0, max(6.0, 1.5 + 0.18 * len(labels) * len(reports))), 4.2)
    axes = figure.add_subplot()
    for i, report in enumerate(reports):
        rows = report["mae_by_age"]
        xs = [position[row["bin"]] - 0.4 + bar_width * (i + 0.5) for row in rows]
        axes.bar(xs, [row["mae"] for row in rows], width=bar_width, label=report["method"])
    axes.set_xticks(range(len(labels)), labels)
    axes.set_title("MAE by true age")
    axes.set_xlabel("True age bin (years)")
    axes.set_ylabel("MAE (years)")
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend(fontsize="small")
    _save_png(figure, path)


def plot_embedding_map(
    embeddings: np.ndarray,
    ages: np.ndarray,
    path: str,
    method: str = "pca",
    max_points: int = 2000,
    seed: int = 0,
) -> None:
    """PNG of a 2-D PCA or t-SNE map of embeddings coloured by age (cf. Fig. 10 of the paper).

    More than ``max_points`` rows are subsampled without replacement, deterministically from ``seed``.
    """
    if method not in ("pca", "tsne"):
        raise ValueError(f'method must be "pca" or "tsne", got {method!r}')
    if max_points < 2:
        raise ValueError(f"max_points must be >= 2, got {max_points}")
    vectors = np.asarray(embeddings, dtype=np.float64)
    if vectors.ndim != 2 or vectors.shape[0] < 2 or vectors.shape[1] < 2:
        raise ValueError(f"embeddings must have shape (n >= 2, dim >= 2), got {vectors.shape}")
    if not np.all(np.isfinite(vectors)):
        raise ValueError("embeddings have non-finite value(s) (NaN or inf)")
    age_values = _as_float_vector(ages, "ages")
    _check_same_length(vectors, age_values, "embeddings", "ages")

    if len(vectors) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(vectors), size=max_points, replace=False))
        vectors, age_values = vectors[keep], age_values[keep]

    if method == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, random_state=seed)
        points = pca.fit_transform(vectors)
        share = 100.0 * pca.explained_variance_ratio_
        axis_labels = (f"PC 1 ({share[0]:.0f}% of variance)", f"PC 2 ({share[1]:.0f}% of variance)")
        title = "Embedding map (PCA)"
    else:
        from sklearn.manifold import TSNE

        perplexity = min(30.0, max(1.0, (len(vectors) - 1) / 3.0))
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
        points = tsne.fit_transform(vectors)
        axis_labels = ("t-SNE 1 (arbitrary units)", "t-SNE 2 (arbitrary units)")
        title = "Embedding map (t-SNE)"

    figure = _new_figure(6.0, 5.0)
    axes = figure.add_subplot()
    scatter = axes.scatter(points[:, 0], points[:, 1], c=age_values, cmap="viridis", s=8, alpha=0.8, linewidths=0)
    figure.colorbar(scatter, ax=axes, label="Age (years)")
    axes.set_title(f"{title}, {len(points)} faces")
    axes.set_xlabel(axis_labels[0])
    axes.set_ylabel(axis_labels[1])
    _save_png(figure, path)
