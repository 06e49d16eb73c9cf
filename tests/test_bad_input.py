"""The bad-input corpus end to end on the embedded S3 endpoint: every kind of unusable image
and label becomes a row with a reason (import, verify, pack, streaming decode), every usable
one goes through, and rows_in == rows_ok + rows_rejected at every stage."""

import csv
import io

import numpy as np
import pyarrow.parquet as pq
import pytest
from bad_inputs import write_bad_input_corpus

from agejobs import pack, storage
from agejobs.data import DecodeFaces
from agejobs.datasets.manifest import SplitSpec, write_import
from agejobs.datasets.registry import import_layout
from agejobs.verify import verify_import

# CSV rows whose LABELS are unusable (their images are fine): reason substring each.
BAD_LABELS = {
    "negative_age": ("-1", "M", "age -1 outside 0..120"),
    "too_old": ("121", "F", "age 121 outside 0..120"),
    "nan_age": ("nan", "M", "age"),
    "missing_age": ("", "F", "age missing"),
    "unknown_gender": ("30", "X", "gender code 'X'"),
    "missing_gender": ("30", "", "gender code ''"),
}


@pytest.fixture
def corpus_on_s3(tmp_path, s3_bucket):
    """A MORPH-layout archive on S3: the image corpus + one CSV row per image + bad-label rows
    (pointing at a good image) + a row whose image does not exist."""
    album = tmp_path / "morph" / "Album2"
    expected = write_bad_input_corpus(album)
    good_jpeg = (album / "good.jpg").read_bytes()
    rows = [
        ["id_num", "picture_num", "dob", "doa", "race", "gender", "facial_hair", "age", "age_diff", "glasses", "photo"]
    ]
    for index, name in enumerate(sorted(expected)):
        rows.append(
            [
                f"{index:03d}",
                "1",
                "",
                "",
                "W",
                "M" if index % 2 else "F",
                "0",
                str(20 + index),
                "0",
                "0",
                f"Album2/{name}",
            ]
        )
    for index, (stem, (age, gender, _)) in enumerate(sorted(BAD_LABELS.items())):
        (album / f"{stem}.jpg").write_bytes(good_jpeg)
        rows.append([f"9{index:02d}", "1", "", "", "W", gender, "0", age, "0", "0", f"Album2/{stem}.jpg"])
    rows.append(["999", "1", "", "", "W", "M", "0", "40", "0", "0", "Album2/not_there.jpg"])
    text = io.StringIO()
    csv.writer(text).writerows(rows)
    (tmp_path / "morph" / "morph_2008_nonCommercial.csv").write_text(text.getvalue())
    fs, _ = storage.filesystem_for(s3_bucket)
    fs.put(str(tmp_path / "morph"), f"{s3_bucket.removeprefix('s3://')}/morph", recursive=True)
    return f"{s3_bucket}/morph", expected, len(rows) - 1


def test_every_bad_input_is_a_row_with_a_reason(corpus_on_s3, s3_bucket):
    source, expected_images, csv_rows = corpus_on_s3
    imported = import_layout("morph", source, SplitSpec("subject", 0.3, 0))
    counts = imported.counts()
    assert counts["rows_in"] == csv_rows == counts["rows_ok"] + counts["rows_rejected"]
    label_reasons = {r.input: r.reason for r in imported.rejected}
    # Bad labels, a missing image and a zero-byte image (seen in the listing) are import rejects.
    assert len(label_reasons) == len(BAD_LABELS) + 2
    for _, _, reason in BAD_LABELS.values():
        assert any(reason in text for text in label_reasons.values()), reason
    assert any(text == f"image file not found: {source}/Album2/not_there.jpg" for text in label_reasons.values())
    assert any(text == f"empty image file: {source}/Album2/empty.jpg" for text in label_reasons.values())

    # Loose files: the verify stage (the same class Ray runs) decodes every image once.
    verified = verify_import(imported, runner="inline")
    decode_reasons = {r.input.rsplit("/", 1)[1]: r.reason for r in verified.rejected if r.stage == "decode"}
    errors = {name for name, (outcome, _) in expected_images.items() if outcome == "error"} - {"empty.jpg"}
    assert set(decode_reasons) == errors
    for name in errors:
        assert expected_images[name][1] in decode_reasons[name], (name, decode_reasons[name])
        assert decode_reasons[name].startswith(f"{source}/Album2/{name}: ")
    ok_images = {p.rsplit("/", 1)[1] for p in verified.table.column("path").to_pylist()}
    assert ok_images == {name for name, (outcome, _) in expected_images.items() if outcome == "ok"}
    final = verified.counts()
    assert final["rows_in"] == csv_rows == final["rows_ok"] + final["rows_rejected"]

    write_import(verified, f"{s3_bucket}/manifest")
    fs, path = storage.filesystem_for(f"{s3_bucket}/manifest/errors.parquet")
    errors_table = pq.read_table(path, filesystem=fs)
    assert errors_table.num_rows == final["rows_rejected"]
    assert set(errors_table.column("stage").to_pylist()) == {"import", "decode"}
    assert all(errors_table.column("reason").to_pylist())

    # Packing the UNverified import: the same images are rejected there, nothing is lost.
    write_import(imported, f"{s3_bucket}/unverified")
    packed = pack.pack(f"{s3_bucket}/unverified/manifest.parquet", f"{s3_bucket}/packed", 4_000, runner="inline")
    assert packed["rows_in"] == counts["rows_ok"] == packed["rows_ok"] + packed["rows_rejected"]
    pack_errors = pack.read_errors(f"{s3_bucket}/packed").to_pylist()
    assert {row["input"].rsplit("/", 1)[1] for row in pack_errors} == errors
    assert {row["stage"] for row in pack_errors} == {"pack-decode"}

    # Streaming decode of the unverified loose files (what training and scoring run): an error
    # row per bad image, a face for every other one.
    table = imported.table
    batch = {name: np.asarray(table.column(name).to_pylist(), dtype=object) for name in ("image_id", "path")}
    batch.update({name: np.asarray(table.column(name).to_pylist()) for name in ("age", "gender")})
    out = DecodeFaces(16)(batch)
    streamed_errors = {path.rsplit("/", 1)[1] for path, error in zip(batch["path"], out["error"]) if error}
    assert streamed_errors == errors
    assert out["image"].shape == (table.num_rows, 16, 16, 3)
