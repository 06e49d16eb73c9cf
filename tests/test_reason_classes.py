"""Reason classes come from the place that rejects an input, never from the message's words.

Every rejection site is fed real bad inputs (the bad-input corpus, missing files, bad labels,
duplicates) and must say the class of each: in its rows (`reason_class` / `error_class`) and in
the `reason` label of the metric. The words of these messages mislead a matcher: "image" contains
"age", "image file not found" names a file, not a label."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prometheus_client import REGISTRY

from agejobs import metrics, pack
from agejobs.data import DecodeFaces
from agejobs.datasets.imdb_wiki import row_problem
from agejobs.datasets.importing import ManifestBuilder
from agejobs.datasets.manifest import MANIFEST_SCHEMA, SplitSpec
from agejobs.datasets.utkface import import_utkface
from agejobs.images import Preprocessing
from agejobs.verify import CheckDecodable
from tests.bad_inputs import write_bad_input_corpus

# The class of each error case of the bad-input corpus.
CORPUS_CLASSES = {
    "corrupt.jpg": "decode",
    "truncated.jpg": "decode",
    "truncated_png.png": "decode",
    "empty.jpg": "decode",
    "notes.jpg": "decode",
    "error_page.jpg": "decode",
    "ppm_lookalike.jpg": "decode",
    "bomb.png": "too_large",
    "float.tiff": "decode",
    "missing.jpg": "missing",
}


@pytest.fixture
def corpus(tmp_path):
    cases = write_bad_input_corpus(tmp_path / "corpus")
    assert {name for name, (expected, _) in cases.items() if expected == "error"} == set(CORPUS_CLASSES) - {
        "missing.jpg"
    }
    paths = {name: str(tmp_path / "corpus" / name) for name in [*cases, "missing.jpg"]}
    return paths


def rejected_count(stage: str, reason: str) -> float:
    return REGISTRY.get_sample_value("agejobs_ingest_rows_rejected_total", {"stage": stage, "reason": reason}) or 0.0


def test_decode_stages_class_every_bad_file(corpus):
    names = list(corpus)
    batch = {"image_id": np.asarray(names), "path": np.asarray([corpus[name] for name in names])}
    decoded = DecodeFaces(Preprocessing(32))(batch)
    checked = CheckDecodable()(batch)
    for out in (decoded, checked):
        got = {name: cls for name, cls in zip(names, out["error_class"]) if cls}
        assert got == CORPUS_CLASSES
        assert all(bool(error) == bool(cls) for error, cls in zip(out["error"], out["error_class"]))


def test_no_face_is_its_own_class(tmp_path):
    pytest.importorskip("dlib")
    from PIL import Image

    path = tmp_path / "wall.jpg"
    Image.fromarray(np.full((96, 96, 3), 128, dtype=np.uint8)).save(path)
    out = DecodeFaces(Preprocessing(32, align="landmarks", no_face="error"))(
        {"image_id": np.asarray(["wall"]), "path": np.asarray([str(path)])}
    )
    assert list(out["error_class"]) == ["no_face"] and "no face found" in out["error"][0]


def test_pack_writes_classes_to_its_errors_and_metrics(corpus, tmp_path):
    rows = [
        {"image_id": name, "path": path, "age": 30, "gender": 0, "subject_id": name, "split": "train", "dataset": "t"}
        for name, path in corpus.items()
    ]
    manifest = str(tmp_path / "manifest.parquet")
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), manifest)
    before = {
        (stage, cls): rejected_count(stage, cls)
        for stage in (pack.STAGE_READ, pack.STAGE_DECODE)
        for cls in metrics.REJECT_REASONS
    }
    pack.pack(manifest, str(tmp_path / "packed"), runner="inline")
    errors = pack.read_errors(str(tmp_path / "packed"))
    by_input = {
        path.rsplit("/", 1)[1]: (stage, cls)
        for path, stage, cls in zip(
            errors["input"].to_pylist(), errors["stage"].to_pylist(), errors["reason_class"].to_pylist()
        )
    }
    assert {name: cls for name, (_, cls) in by_input.items()} == CORPUS_CLASSES
    grown = {key: rejected_count(*key) - before[key] for key in before}
    expected = {}
    for stage, cls in by_input.values():
        expected[(stage, cls)] = expected.get((stage, cls), 0) + 1
    assert {key: value for key, value in grown.items() if value} == expected
    assert expected[(pack.STAGE_READ, "missing")] == 1 and expected[(pack.STAGE_DECODE, "too_large")] == 1


def test_importers_class_label_missing_empty_and_duplicate(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(b"\xff\xd8 not checked here")
    (images / "empty.jpg").write_bytes(b"")
    builder = ManifestBuilder(SplitSpec(), "t")
    builder.add("row 1", "a", str(images / "a.jpg"), 30, 0, "s1")
    builder.add("row 2", "b", str(images / "a.jpg"), 130, 0, "s2")  # age out of range
    builder.add("row 3", "c", str(images / "no_such_image.jpg"), 30, 0, "s3")
    builder.add("row 4", "d", str(images / "empty.jpg"), 30, 0, "s4")
    builder.add("row 5", "a", str(images / "a.jpg"), 31, 1, "s5")  # the image id again
    builder.add("row 6", "e", str(tmp_path / "no_such_dir" / "e.jpg"), 30, 0, "s6")
    got = {row.input: row.reason_class for row in builder.rejected}
    assert got == {"row 2": "label", "row 3": "missing", "row 4": "decode", "row 5": "duplicate", "row 6": "missing"}
    assert "image file not found" in builder.rejected[1].reason  # the words that used to read as "label"

    utk = tmp_path / "utk"
    utk.mkdir()
    (utk / "30_0_0_20170101150557335.jpg.chip.jpg").write_bytes(b"x")
    (utk / "30_0_0_20170101150557335.jpg").write_bytes(b"x")  # same image id as the chip
    (utk / "31_1_0_20170102150557335.jpg.chip.jpg").write_bytes(b"")
    (utk / "not_a_face_name.jpg").write_bytes(b"x")
    (utk / "200_0_0_20170103150557335.jpg.chip.jpg").write_bytes(b"x")
    result = import_utkface(str(utk))
    got = sorted((row.input.rsplit("/", 1)[1], row.reason_class) for row in result.rejected)
    assert got == [
        ("200_0_0_20170103150557335.jpg.chip.jpg", "label"),
        ("30_0_0_20170101150557335.jpg.chip.jpg", "duplicate"),
        ("31_1_0_20170102150557335.jpg.chip.jpg", "decode"),
        ("not_a_face_name.jpg", "label"),
    ]


def test_metadata_no_face_and_second_face():
    column = {
        "face_score": float("-inf"),
        "second_face_score": float("nan"),
        "gender": 1.0,
        "dob": 723671.0,
        "photo_taken": 2009.0,
    }
    assert row_problem(column, True)[1] == "no_face"
    assert row_problem({**column, "face_score": 3.2, "second_face_score": 1.5}, True)[1] == "other"
    assert row_problem({**column, "face_score": 3.2, "gender": float("nan")}, True)[1] == "label"


def test_every_class_is_a_metric_label_and_nothing_else_is():
    for reason_class in metrics.REJECT_REASONS:
        metrics.inc("score_errors", 1, reason=reason_class)
    for message in ("image file not found: a.jpg", "a.jpg: cannot decode image (unrecognised format)", "labels"):
        with pytest.raises(ValueError, match="not one of"):
            metrics.inc("score_errors", 1, reason=message)
