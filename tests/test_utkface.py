from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from agejobs.datasets.manifest import ERRORS_SCHEMA, MANIFEST_SCHEMA, SplitSpec, read_manifest
from agejobs.datasets.utkface import import_utkface, parse_utkface_name, write_import

# The shared data sits beside the checkout: <parent>/shared/data/utkface-part1.
REAL_UTKFACE_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "utkface-part1"

VALID_FILES = {
    "25_0_2_20170116174525125.jpg.chip.jpg": (25, 0),
    "1_1_4_20161219203650636.jpg.chip.jpg": (1, 1),
    "116_1_0_20170120134921760.jpg": (116, 1),  # in-the-wild release: no .chip.jpg
}
# file name -> reason it must be rejected with
INVALID_FILES = {
    "61_1_20170109142408075.jpg.chip.jpg": "file name has 3 fields, expected 4: age_gender_race_datetime",
    "30_3_0_20170109150557335.jpg.chip.jpg": "gender 3 is not 0 (male) or 1 (female)",
    "200_0_0_20170109150557335.jpg.chip.jpg": "age 200 outside 0..120",
    "xx_0_0_20170109150557335.jpg.chip.jpg": "age 'xx' is not a non-negative whole number",
    "40_0_7_20170109150557335.jpg.chip.jpg": "race 7 is not 0..4",
    "README.txt": "not a UTKFace image name: expected suffix .jpg.chip.jpg or .jpg",
    ".DS_Store": "not a UTKFace image name: expected suffix .jpg.chip.jpg or .jpg",
}
EMPTY_FILE = "33_0_1_20170109150557335.jpg.chip.jpg"


@pytest.fixture
def utkface_dir(tmp_path: Path) -> Path:
    src = tmp_path / "utkface"
    src.mkdir()
    for name in [*VALID_FILES, *INVALID_FILES]:
        (src / name).write_bytes(b"\xff\xd8 not really a jpeg")
    (src / EMPTY_FILE).write_bytes(b"")
    subdir = src / "5_0_0_20170109150557335.jpg.chip.jpg"  # image-like name, but a directory
    subdir.mkdir()
    (subdir / "7_0_0_20170109150557335.jpg.chip.jpg").write_bytes(b"\xff\xd8")
    return src


def test_parse_valid_name():
    assert parse_utkface_name("25_0_2_20170116174525125.jpg.chip.jpg") == {
        "age": 25,
        "gender": 0,
        "race": 2,
        "datetime": "20170116174525125",
    }
    assert parse_utkface_name("116_1_0_20170120134921760.jpg")["age"] == 116
    # The real archive has a datetime one millisecond digit short; it carries no label.
    assert parse_utkface_name("14_0_0_2017011022340900.jpg.chip.jpg")["datetime"] == "2017011022340900"


@pytest.mark.parametrize(
    "name, reason",
    [
        *INVALID_FILES.items(),
        ("25_0_2_2017011617.jpg", "datetime '2017011617' is not 14..17 digits (yyyymmddHHMMSSfff)"),
        ("25_-1_2_20170116174525125.jpg", "gender '-1' is not a non-negative whole number"),
        ("25_0_2_20170116174525125_x.jpg", "file name has 5 fields, expected 4: age_gender_race_datetime"),
    ],
)
def test_parse_malformed_name_gives_reason(name: str, reason: str):
    with pytest.raises(ValueError) as raised:
        parse_utkface_name(name)
    assert str(raised.value) == reason


def test_import_rows_and_rejections(utkface_dir: Path):
    result = import_utkface(str(utkface_dir))

    assert result.table.schema == MANIFEST_SCHEMA
    rows = result.table.to_pylist()
    assert [row["image_id"] for row in rows] == sorted(name.split(".")[0] for name in VALID_FILES)
    for row in rows:
        file_name = Path(row["path"]).name
        assert row["path"] == str(utkface_dir / file_name)
        assert (row["age"], row["gender"]) == VALID_FILES[file_name]
        assert row["subject_id"] == row["image_id"]  # no identities: each image its own subject
        assert row["dataset"] == "utkface"
        assert row["split"] in ("train", "test")

    expected_rejected = {**INVALID_FILES, EMPTY_FILE: "empty file"}
    got_rejected = {Path(r.input).name: r.reason for r in result.rejected}
    assert got_rejected == expected_rejected
    assert all(r.input == str(utkface_dir / Path(r.input).name) for r in result.rejected)

    counts = result.counts()
    assert counts["rows_ok"] == 3 and counts["rows_rejected"] == len(expected_rejected)
    assert counts["rows_in"] == counts["rows_ok"] + counts["rows_rejected"]  # subdirectory not counted
    assert counts["train"] + counts["test"] == counts["rows_ok"]


def test_duplicate_image_id_rejected(tmp_path: Path):
    (tmp_path / "25_0_2_20170116174525125.jpg").write_bytes(b"a")
    (tmp_path / "25_0_2_20170116174525125.jpg.chip.jpg").write_bytes(b"b")
    result = import_utkface(str(tmp_path))
    assert result.table.column("path").to_pylist() == [str(tmp_path / "25_0_2_20170116174525125.jpg")]
    assert [r.reason for r in result.rejected] == [
        "duplicate image_id '25_0_2_20170116174525125', already imported from 25_0_2_20170116174525125.jpg"
    ]


def test_import_is_deterministic(utkface_dir: Path):
    first, second = (
        import_utkface(str(utkface_dir), SplitSpec(seed=3)),
        import_utkface(str(utkface_dir), SplitSpec(seed=3)),
    )
    assert first.table.equals(second.table)
    assert first.rejected == second.rejected


def many_images_dir(root: Path, count: int) -> Path:
    root.mkdir()
    for index in range(count):
        (root / f"{1 + index % 100}_{index % 2}_{index % 5}_2017{index:013d}.jpg.chip.jpg").write_bytes(b"x")
    return root


def test_split_fraction_and_modes(tmp_path: Path):
    src = many_images_dir(tmp_path / "many", 2000)
    random_split = import_utkface(str(src), SplitSpec("random", 0.25, 0))
    counts = random_split.counts()
    assert counts["rows_ok"] == 2000
    assert abs(counts["test"] / 2000 - 0.25) < 0.04
    # Each image is its own subject, so the subject-exclusive split is the same assignment.
    assert import_utkface(str(src), SplitSpec("subject", 0.25, 0)).table.equals(random_split.table)
    # A different seed picks a different test set.
    other_seed = import_utkface(str(src), SplitSpec("random", 0.25, 1))
    assert other_seed.table.column("split").to_pylist() != random_split.table.column("split").to_pylist()


def test_bad_arguments_raise(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown split protocol 'by_age'"):
        SplitSpec("by_age")
    with pytest.raises(ValueError, match="test_fraction"):
        SplitSpec(test_fraction=1.5)  # raised even with no images to split


def test_write_import(utkface_dir: Path, tmp_path: Path):
    result = import_utkface(str(utkface_dir))
    out_dir = tmp_path / "out"
    counts = write_import(result, str(out_dir))
    assert counts == result.counts()
    assert read_manifest(str(out_dir / "manifest.parquet")).equals(result.table)
    errors = pq.read_table(out_dir / "errors.parquet")
    assert errors.schema == ERRORS_SCHEMA
    assert errors.num_rows == counts["rows_rejected"]
    assert sorted(p.name for p in out_dir.iterdir()) == ["errors.parquet", "manifest.parquet"]


def test_write_import_with_no_errors_still_writes_errors_table(tmp_path: Path):
    src = many_images_dir(tmp_path / "clean", 3)
    counts = write_import(import_utkface(str(src)), str(tmp_path / "out"))
    assert counts["rows_rejected"] == 0
    assert pq.read_table(tmp_path / "out" / "errors.parquet").num_rows == 0


@pytest.mark.skipif(not REAL_UTKFACE_DIR.is_dir(), reason=f"shared UTKFace copy not found at {REAL_UTKFACE_DIR}")
def test_real_utkface_part1():
    result = import_utkface(str(REAL_UTKFACE_DIR))
    counts = result.counts()
    assert counts["rows_in"] == 9780
    assert counts["rows_ok"] == 9778
    assert counts["rows_rejected"] == 2
    assert counts["train"] + counts["test"] == 9778
    # Both malformed names have three fields: one lacks race, in the other the middle
    # field is 3, which cannot be told apart as "gender 3" or "missing gender, race 3".
    assert {Path(r.input).name: r.reason for r in result.rejected} == {
        "61_1_20170109142408075.jpg.chip.jpg": "file name has 3 fields, expected 4: age_gender_race_datetime",
        "61_3_20170109150557335.jpg.chip.jpg": "file name has 3 fields, expected 4: age_gender_race_datetime",
    }
