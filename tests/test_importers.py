"""Importers of the published dataset layouts, each on a small fixture tree of that exact shape."""

from __future__ import annotations

import io
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from agejobs.datasets.aaf import import_aaf
from agejobs.datasets.appa_real import import_appa_real
from agejobs.datasets.fgnet import import_fgnet
from agejobs.datasets.imdb_wiki import age_at_photo, birth_date, import_imdb_wiki
from agejobs.datasets.manifest import MANIFEST_SCHEMA, ImportResult, SplitSpec
from agejobs.datasets.megaage import import_megaage
from agejobs.datasets.morph import import_morph
from agejobs.datasets.registry import LAYOUTS, import_layout
from agejobs.storage import StorageError


def tiny_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2), (120, 80, 60)).save(buffer, "JPEG")
    return buffer.getvalue()


JPEG = tiny_jpeg()


def write_images(directory: Path, *names: str, empty: tuple[str, ...] = ()) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_bytes(JPEG)
    for name in empty:
        (directory / name).write_bytes(b"")


def write_lines(path: Path, *lines: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


def rows_of(result: ImportResult) -> dict[str, tuple]:
    """image_id -> (path, age, gender, subject_id) of every manifest row."""
    assert result.table.schema == MANIFEST_SCHEMA
    ids = result.table.column("image_id").to_pylist()
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    rows = result.table.to_pylist()
    return {row["image_id"]: (row["path"], row["age"], row["gender"], row["subject_id"]) for row in rows}


def rejected_of(result: ImportResult) -> dict[str, str]:
    assert all(r.stage == "import" for r in result.rejected)
    return {r.input: r.reason for r in result.rejected}


def check_counts(result: ImportResult, rows_in: int) -> None:
    counts = result.counts()
    assert counts["rows_in"] == rows_in == counts["rows_ok"] + counts["rows_rejected"]
    assert counts["train"] + counts["test"] == counts["rows_ok"]


def check_split_protocols(run) -> None:
    """`run(split)` imports one fixture: both protocols, seeded and deterministic."""
    by_subject = run(SplitSpec("subject", 0.5, seed=7))
    splits_of_subject: dict[str, set] = {}
    for row in by_subject.table.to_pylist():
        splits_of_subject.setdefault(row["subject_id"], set()).add(row["split"])
    assert all(len(splits) == 1 for splits in splits_of_subject.values())
    per_image = run(SplitSpec("random", 0.5, seed=7))
    assert per_image.table.drop(["split"]).equals(by_subject.table.drop(["split"]))  # only the split differs
    assert per_image.rejected == by_subject.rejected
    again = run(SplitSpec("random", 0.5, seed=7))
    assert again.table.equals(per_image.table) and again.rejected == per_image.rejected


# --------------------------------------------------------------------------------------------- MORPH

MORPH_HEADER = "id_num,picture_num,dob,doa,race,gender,facial_hair,age,age_diff,glasses,photo"


def make_morph(root: Path) -> Path:
    write_images(
        root / "Album2",
        "003055_1M22.JPG",
        "003055_2M23.JPG",
        "000412_0F45.JPG",
        "000500_0F30.JPG",
        "000501_0M30.JPG",
        "000502_0M30.JPG",
        "000503_0M30.JPG",
        "unreferenced.JPG",
        empty=("000600_0F41.JPG",),
    )
    write_lines(
        root / "morph_2008_nonCommercial.csv",
        MORPH_HEADER,
        "3055,1,07/23/1980,05/01/2003,B,M,0,22,0,0,Album2/003055_1M22.JPG",  # line 2
        "3055,2,07/23/1980,06/11/2004,B,m,0,23,1,0,Album2/003055_2M23.JPG",
        "412,0,02/02/1958,03/03/2003,W,F,0,45,0,1,Album2/000412_0F45.JPG",
        "500,0,01/01/1973,01/01/2003,W,X,0,30,0,0,Album2/000500_0F30.JPG",  # line 5: gender X
        "501,0,01/01/1973,01/01/2003,W,M,0,130,0,0,Album2/000501_0M30.JPG",
        "502,0,01/01/1973,01/01/2003,W,M,0,22.5,0,0,Album2/000502_0M30.JPG",
        "503,0,01/01/1973,01/01/2003,W,M,0,,0,0,Album2/000503_0M30.JPG",
        "999,0,01/01/1973,01/01/2003,W,M,0,30,0,0,Album2/009999_0M30.JPG",  # line 9: no such file
        "600,0,01/01/1962,01/01/2003,H,F,0,41,0,0,Album2/000600_0F41.JPG",
        "3055,1,07/23/1980,05/01/2003,B,M,0,22,0,0,Album2/003055_1M22.JPG",  # line 11: duplicate
        "777,0,01/01/1973",
        "778,0,01/01/1973,01/01/2003,W,M,0,30,0,0,../outside.JPG",
        ",0,01/01/1973,01/01/2003,W,M,0,30,0,0,Album2/000503_0M30.JPG",
        "",
    )
    return root


def test_morph(tmp_path: Path):
    root = make_morph(tmp_path / "morph")
    result = import_morph(str(root))
    album, csv_uri = root / "Album2", str(root / "morph_2008_nonCommercial.csv")
    assert rows_of(result) == {
        "000412_0F45": (str(album / "000412_0F45.JPG"), 45, 1, "412"),
        "003055_1M22": (str(album / "003055_1M22.JPG"), 22, 0, "3055"),
        "003055_2M23": (str(album / "003055_2M23.JPG"), 23, 0, "3055"),
    }
    assert rejected_of(result) == {
        f"{csv_uri}:5": "gender code 'X' is not M or F",
        f"{csv_uri}:6": "age 130 outside 0..120",
        f"{csv_uri}:7": "age 22.5 is not a whole number of years",
        f"{csv_uri}:8": "age missing",
        f"{csv_uri}:9": f"image file not found: {album / '009999_0M30.JPG'}",
        f"{csv_uri}:10": f"empty image file: {album / '000600_0F41.JPG'}",
        f"{csv_uri}:11": f"duplicate image_id '003055_1M22', already imported from {csv_uri}:2",
        f"{csv_uri}:12": "row has 3 fields, the header has 11",
        f"{csv_uri}:13": "photo path '../outside.JPG' is empty or leaves the source directory",
        f"{csv_uri}:14": "id_num missing",
    }
    check_counts(result, rows_in=13)  # the unreferenced image and the blank line are not inputs
    assert set(result.table.column("dataset").to_pylist()) == {"morph"}
    check_split_protocols(lambda split: import_morph(str(root), split))


def test_morph_malformed_csv_names_the_file(tmp_path: Path):
    with pytest.raises(StorageError, match="morph_2008_nonCommercial.csv"):
        import_morph(str(tmp_path))
    write_lines(tmp_path / "morph_2008_nonCommercial.csv", "id_num,gender,photo", "1,M,Album2/a.JPG")
    with pytest.raises(ValueError, match=r"morph_2008_nonCommercial.csv: missing required column\(s\) \['age'\]"):
        import_morph(str(tmp_path))


# ------------------------------------------------------------------------------------------- MegaAge


def make_megaage(root: Path) -> Path:
    write_images(root / "train", "1.jpg", "2.jpg", "3.jpg", "4.jpg", "7.jpg", "unlisted.jpg")
    write_images(root / "test", "1.jpg", empty=("2.jpg",))
    names = ("1.jpg", "2.jpg", "3.jpg", "4.jpg", "", "5.jpg", "7.jpg", "sub/6.jpg", "")
    write_lines(root / "list" / "train_name.txt", *names)
    write_lines(root / "list" / "train_age.txt", "22", "35.0", "-3", "abc", "40", "9", "", "30", "", "")
    write_lines(root / "list" / "test_name.txt", "1.jpg", "2.jpg", "1.jpg")
    write_lines(root / "list" / "test_age.txt", "61", "5", "61")
    return root


def test_megaage(tmp_path: Path):
    root = make_megaage(tmp_path / "megaage_asian")
    result = import_megaage(str(root))
    train_list, test_list = root / "list" / "train_name.txt", root / "list" / "test_name.txt"
    assert rows_of(result) == {
        "test/1": (str(root / "test" / "1.jpg"), 61, -1, "test/1"),
        "train/1": (str(root / "train" / "1.jpg"), 22, -1, "train/1"),
        "train/2": (str(root / "train" / "2.jpg"), 35, -1, "train/2"),
    }
    assert rejected_of(result) == {
        f"{train_list}:3": "age -3 outside 0..120",
        f"{train_list}:4": "age 'abc' is not a number",
        f"{train_list}:5": "image name missing (blank line)",
        f"{train_list}:6": f"image file not found: {root / 'train' / '5.jpg'}",
        f"{train_list}:7": "age missing",
        f"{train_list}:8": "image name 'sub/6.jpg' has a directory part",
        f"{test_list}:2": f"empty image file: {root / 'test' / '2.jpg'}",
        f"{test_list}:3": f"duplicate image_id 'test/1', already imported from {test_list}:1",
    }
    check_counts(result, rows_in=11)
    check_split_protocols(lambda split: import_megaage(str(root), split))


def test_megaage_name_and_age_files_of_different_length(tmp_path: Path):
    root = make_megaage(tmp_path / "megaage_asian")
    write_lines(root / "list" / "test_age.txt", "61")
    with pytest.raises(ValueError, match=r"test_name.txt has 3 lines but .*test_age.txt has 1"):
        import_megaage(str(root))


# ----------------------------------------------------------------------------------------------- AAF

AAF_IMAGES = ("00000A02.jpg", "07381A30.jpg", "00010A25.jpg", "00011A40.jpg", "00012A33.jpg", "07400A45.jpg")


def make_aaf(root: Path, aligned_dir: str = "aglined faces") -> Path:
    write_images(root / aligned_dir, *AAF_IMAGES)
    write_images(root / "original images", *AAF_IMAGES)
    write_lines(
        root / "image sets" / "train.txt",
        "00000A02.jpg 0",
        "07381A30.jpg 1",
        "00010A25 0",  # the README's format string has no .jpg
        "00011A40.jpg 1",  # line 4: male code for a serial in the female range
        "00012A33.jpg 2",
        "0012A33.jpg 0",
        "00013A50.jpg",
        "00014A60.jpg 0",  # line 8: no such image
        "",
    )
    write_lines(root / "image sets" / "val.txt", "07400A45.jpg 1", "00000A02.jpg 0", "07401A20.jpg 0")
    return root


def test_aaf(tmp_path: Path):
    root = make_aaf(tmp_path / "All-Age-Faces Dataset")
    result = import_aaf(str(root))
    aligned, train, val = root / "aglined faces", root / "image sets" / "train.txt", root / "image sets" / "val.txt"
    assert rows_of(result) == {
        "00000A02": (str(aligned / "00000A02.jpg"), 2, 1, "00000"),  # AAF 0 = female -> ours 1
        "00010A25": (str(aligned / "00010A25.jpg"), 25, 1, "00010"),
        "07381A30": (str(aligned / "07381A30.jpg"), 30, 0, "07381"),  # AAF 1 = male -> ours 0
        "07400A45": (str(aligned / "07400A45.jpg"), 45, 0, "07400"),
    }
    assert rejected_of(result) == {
        f"{train}:4": "gender code says male but serial 00011 is in the README's female 00000..07380 range",
        f"{train}:5": "gender code '2' is not 0 (female) or 1 (male)",
        f"{train}:6": "file name '0012A33.jpg' is not %05dA%02d.jpg",
        f"{train}:7": "expected '<file name> <gender code>', got '00013A50.jpg'",
        f"{train}:8": f"image file not found: {aligned / '00014A60.jpg'}",
        f"{val}:2": f"duplicate image_id '00000A02', already imported from {train}:1",
        f"{val}:3": "gender code says female but serial 07401 is in the README's male 07381..13321 range",
    }
    check_counts(result, rows_in=11)
    check_split_protocols(lambda split: import_aaf(str(root), split))

    original = import_aaf(str(root), images="original")
    assert original.table.column("path").to_pylist() == [
        str(root / "original images" / f"{image_id}.jpg") for image_id in rows_of(result)
    ]
    with pytest.raises(ValueError, match="images must be one of"):
        import_aaf(str(root), images="cropped")


def test_aaf_aligned_directory_spelt_right(tmp_path: Path):
    root = make_aaf(tmp_path / "aaf", aligned_dir="aligned faces")
    assert import_aaf(str(root)).table.column("path").to_pylist()[0] == str(root / "aligned faces" / "00000A02.jpg")


# -------------------------------------------------------------------------------------------- FG-NET


def make_fgnet(root: Path) -> Path:
    write_images(
        root / "images",
        "001A02.JPG",
        "001A43a.JPG",
        "001a10.jpg",
        "002A05.JPG",
        "002A05.jpg",
        "Thumbs.db",
        "04A10.JPG",
        empty=("003A00.JPG",),
    )
    write_images(root / "images" / "extra", "005A05.JPG")  # a subdirectory: not an input
    return root


def test_fgnet(tmp_path: Path):
    root = make_fgnet(tmp_path / "FGNET")
    result = import_fgnet(str(root))
    images = root / "images"
    assert rows_of(result) == {
        "001A02": (str(images / "001A02.JPG"), 2, -1, "001"),
        "001A43a": (str(images / "001A43a.JPG"), 43, -1, "001"),
        "001a10": (str(images / "001a10.jpg"), 10, -1, "001"),
        "002A05": (str(images / "002A05.JPG"), 5, -1, "002"),
    }
    bad_name = "not an FG-NET image name: expected <3-digit subject>A<2-digit age>[letter].JPG"
    assert rejected_of(result) == {
        str(images / "002A05.jpg"): f"duplicate image_id '002A05', already imported from {images / '002A05.JPG'}",
        str(images / "003A00.JPG"): f"empty image file: {images / '003A00.JPG'}",
        str(images / "04A10.JPG"): bad_name,
        str(images / "Thumbs.db"): bad_name,
    }
    check_counts(result, rows_in=8)
    check_split_protocols(lambda split: import_fgnet(str(root), split))
    with pytest.raises(StorageError, match="nowhere"):
        import_fgnet(str(tmp_path / "nowhere"))


def test_subject_protocol_keeps_subjects_whole_where_random_does_not(tmp_path: Path):
    names = [f"{subject:03d}A{age:02d}.JPG" for subject in range(1, 31) for age in (3, 10, 20, 40)]
    write_images(tmp_path / "images", *names)

    def splits_per_subject(protocol: str) -> list[int]:
        table = import_fgnet(str(tmp_path), SplitSpec(protocol, 0.5, seed=1)).table.to_pylist()
        subjects = {row["subject_id"] for row in table}
        return [len({row["split"] for row in table if row["subject_id"] == s}) for s in subjects]

    assert max(splits_per_subject("subject")) == 1
    assert max(splits_per_subject("random")) == 2


# ----------------------------------------------------------------------------------------- APPA-REAL

GT_HEADER = "file_name,num_ratings,apparent_age_avg,apparent_age_std,real_age"
CATEGORIES_HEADER = "file,gender,race,makeup,time,happiness"


def make_appa_real(root: Path, face_crops: bool = True) -> Path:
    def part(name: str, gt_rows: list[str], category_rows: list[str], photos: list[str], empty_crops=()):
        crops = [photo + "_face.jpg" for photo in photos] if face_crops else []
        full_crops = [crop for crop in crops if crop not in empty_crops]
        write_images(root / name, *photos, *full_crops, empty=tuple(crop for crop in crops if crop in empty_crops))
        write_lines(root / f"gt_avg_{name}.csv", GT_HEADER, *gt_rows)
        write_lines(root / f"allcategories_{name}.csv", CATEGORIES_HEADER, *category_rows)

    part(
        "train",
        [
            "000000.jpg,38,25.1,3.2,26",
            "000001.jpg,38,40.0,3.0,41",
            "000002.jpg,38,90.0,3.0,130",  # line 4: age out of range
            "000003.jpg,38,20.0,3.0,20",  # no category row
            "000004.jpg,38,20.0,3.0,20",  # gender 'other'
            "000005.jpg,38,20.0,3.0,20",  # photo but no face crop
            "000006.jpg,38,20.0",
        ],
        [
            "000000.jpg,male,caucasian,makeup,young,happy",
            "000001.jpg,Female,asian,no_makeup,young,neutral",
            "000002.jpg,male,afroamerican,no_makeup,old,neutral",
            "000004.jpg,other,asian,no_makeup,young,neutral",
            "000005.jpg,female,asian,no_makeup,young,neutral",
            "000006.jpg,female",  # malformed: its image just has no gender
        ],
        ["000000.jpg", "000001.jpg", "000002.jpg", "000003.jpg", "000004.jpg"],
    )
    write_images(root / "train", "000005.jpg")
    part("valid", ["000000.jpg,30,31.5,4.0,30"], ["000000.jpg,female,asian,makeup,young,happy"], ["000000.jpg"])
    part(
        "test",
        ["000000.jpg,30,6.0,1.0,5", "000001.jpg,30,6.0,1.0,7"],
        ["000000.jpg,male,asian,no_makeup,young,happy", "000001.jpg,male,asian,no_makeup,young,happy"],
        ["000000.jpg", "000001.jpg"],
        empty_crops=("000001.jpg_face.jpg",),
    )
    return root


def test_appa_real(tmp_path: Path):
    root = make_appa_real(tmp_path / "appa-real-release")
    result = import_appa_real(str(root))
    assert rows_of(result) == {
        "test/000000": (str(root / "test" / "000000.jpg_face.jpg"), 5, 0, "test/000000"),
        "train/000000": (str(root / "train" / "000000.jpg_face.jpg"), 26, 0, "train/000000"),
        "train/000001": (str(root / "train" / "000001.jpg_face.jpg"), 41, 1, "train/000001"),
        "valid/000000": (str(root / "valid" / "000000.jpg_face.jpg"), 30, 1, "valid/000000"),
    }
    train_gt, test_gt = root / "gt_avg_train.csv", root / "gt_avg_test.csv"
    assert rejected_of(result) == {
        f"{train_gt}:4": "age 130 outside 0..120",
        f"{train_gt}:5": "no gender: 000003.jpg has no well-formed row in allcategories_train.csv",
        f"{train_gt}:6": "gender 'other' in allcategories_train.csv is not male or female",
        f"{train_gt}:7": f"image file not found: {root / 'train' / '000005.jpg_face.jpg'}",
        f"{train_gt}:8": "row has 3 fields, the header has 5",
        f"{test_gt}:3": f"empty image file: {root / 'test' / '000001.jpg_face.jpg'}",
    }
    check_counts(result, rows_in=10)  # gt_avg rows only: allcategories rows are lookups
    check_split_protocols(lambda split: import_appa_real(str(root), split))

    photos = import_appa_real(str(root), image="original")
    assert rows_of(photos)["train/000000"][0] == str(root / "train" / "000000.jpg")
    assert "train/000005" in rows_of(photos)  # the photo exists, only its crop is missing
    with pytest.raises(ValueError, match="image must be one of"):
        import_appa_real(str(root), image="aligned")


def test_appa_real_without_face_crops_reads_the_photos(tmp_path: Path):
    root = make_appa_real(tmp_path / "appa", face_crops=False)
    assert rows_of(import_appa_real(str(root)))["valid/000000"][0] == str(root / "valid" / "000000.jpg")


# ----------------------------------------------------------------------------------------- IMDB-WIKI


def datenum(day: date) -> float:
    """MATLAB serial date number of a date (datenum(0000-01-01) == 1)."""
    return float(day.toordinal() + 366)


# full_path, dob, photo_taken, gender, name, face_score, second_face_score
WIKI_COLUMNS = [
    ("17/10000217_1981-05-05_2009.jpg", datenum(date(1981, 5, 5)), 2009, 1.0, "Sami Jauhojärvi", 4.3, np.nan),
    ("48/10000548_1925-04-04_1964.jpg", datenum(date(1925, 4, 4)), 1964, 0.0, "Ann Lee", 2.1, np.nan),
    ("12/10001112_1971-07-01_2012.jpg", datenum(date(1971, 7, 1)), 2012, 1.0, "", 3.0, np.nan),
    ("48/10000548_1925-04-04_1970.jpg", datenum(date(1925, 4, 4)), 1970, 0.0, "Ann Lee", 1.5, np.nan),
    ("01/noface_1950-01-01_2000.jpg", datenum(date(1950, 1, 1)), 2000, 1.0, "A", -np.inf, np.nan),  # 5
    ("01/two_1950-01-01_2000.jpg", datenum(date(1950, 1, 1)), 2000, 1.0, "B", 3.0, 2.5),
    ("01/nogender_1950-01-01_2000.jpg", datenum(date(1950, 1, 1)), 2000, np.nan, "C", 3.0, np.nan),
    ("01/baddob_1950-01-01_2000.jpg", 0.0, 2000, 1.0, "D", 3.0, np.nan),
    ("01/old_1800-01-01_2000.jpg", datenum(date(1800, 1, 1)), 2000, 0.0, "E", 3.0, np.nan),
    ("01/unborn_1995-01-01_1990.jpg", datenum(date(1995, 1, 1)), 1990, 0.0, "F", 3.0, np.nan),  # 10
    ("01/missing_1950-01-01_2000.jpg", datenum(date(1950, 1, 1)), 2000, 1.0, "G", 3.0, np.nan),
    ("17/10000217_1981-05-05_2009.jpg", datenum(date(1981, 5, 5)), 2009, 1.0, "Sami Jauhojärvi", 4.3, np.nan),
    ("", datenum(date(1950, 1, 1)), 2000, 1.0, "H", 3.0, np.nan),
    ("01/gender2_1950-01-01_2000.jpg", datenum(date(1950, 1, 1)), 2000, 2.0, "I", 3.0, np.nan),
]


def cell_row(values) -> np.ndarray:
    """A 1xN MATLAB cell array as savemat writes it (object array of strings / arrays)."""
    values = list(values)
    cells = np.empty((1, len(values)), dtype=object)
    for index, value in enumerate(values):  # one by one: numpy would broadcast a list of arrays
        cells[0, index] = value
    return cells


def make_imdb_wiki(root: Path, db: str = "wiki") -> Path:
    crop = root / f"{db}_crop"
    paths, dobs, taken, genders, names, scores, second = zip(*WIKI_COLUMNS)
    for path in paths:
        if path and "missing" not in path:
            write_images(crop / Path(path).parent, Path(path).name)
    struct = {
        "dob": np.array([dobs]),
        "photo_taken": np.array([taken], dtype=np.uint16),
        "full_path": cell_row(paths),
        "gender": np.array([genders]),
        "name": cell_row(names),
        "face_location": cell_row(np.array([[1.0, 2.0, 30.0, 40.0]]) for _ in paths),
        "face_score": np.array([scores]),
        "second_face_score": np.array([second]),
    }
    scipy.io.savemat(crop / f"{db}.mat", {db: struct})
    return root


def test_imdb_wiki_fixture_has_the_real_file_shape(tmp_path: Path):
    mat = scipy.io.loadmat(make_imdb_wiki(tmp_path) / "wiki_crop" / "wiki.mat")
    struct = mat["wiki"]
    assert struct.shape == (1, 1) and "full_path" in struct.dtype.names
    record = struct[0, 0]
    assert record["dob"].shape == record["full_path"].shape == (1, len(WIKI_COLUMNS))
    assert record["full_path"][0][0][0] == "17/10000217_1981-05-05_2009.jpg"  # meta[db][0, 0]["full_path"][0]
    assert record["name"][0][2].size == 0  # an empty name is an empty char array


def test_imdb_wiki_age_convention():
    assert birth_date(datenum(date(1981, 5, 5))) == date(1981, 5, 5)
    assert birth_date(723671.0) == date(1981, 5, 5)  # the dob of wiki's 17/10000217_1981-05-05_2009.jpg
    assert age_at_photo(2009, date(1981, 6, 30)) == 28
    assert age_at_photo(2009, date(1981, 7, 1)) == 27  # born in July or later: birthday after mid-year
    assert birth_date(0.0) is None and birth_date(float("nan")) is None


def test_imdb_wiki(tmp_path: Path):
    root = make_imdb_wiki(tmp_path)
    result = import_imdb_wiki(str(root))
    crop, mat = root / "wiki_crop", str(root / "wiki_crop" / "wiki.mat")
    assert rows_of(result) == {
        "wiki/12/10001112_1971-07-01_2012": (
            str(crop / "12/10001112_1971-07-01_2012.jpg"),
            40,
            0,
            "wiki/12/10001112_1971-07-01_2012",
        ),  # no name: own subject
        "wiki/17/10000217_1981-05-05_2009": (str(crop / "17/10000217_1981-05-05_2009.jpg"), 28, 0, "Sami Jauhojärvi"),
        "wiki/48/10000548_1925-04-04_1964": (str(crop / "48/10000548_1925-04-04_1964.jpg"), 39, 1, "Ann Lee"),
        "wiki/48/10000548_1925-04-04_1970": (str(crop / "48/10000548_1925-04-04_1970.jpg"), 45, 1, "Ann Lee"),
    }
    assert rejected_of(result) == {
        f"{mat}:5": "no face detected (face_score -inf)",
        f"{mat}:6": "second face detected (second_face_score 2.500)",
        f"{mat}:7": "gender missing (NaN)",
        f"{mat}:8": "invalid dob 0.0 (not a MATLAB date number of a real date)",
        f"{mat}:9": "age 200 outside 0..120",
        f"{mat}:10": "age -5 outside 0..120",
        f"{mat}:11": f"image file not found: {crop / '01' / 'missing_1950-01-01_2000.jpg'}",
        f"{mat}:12": f"duplicate image_id 'wiki/17/10000217_1981-05-05_2009', already imported from {mat}:1",
        f"{mat}:13": "full_path is empty or leaves the crop directory",
        f"{mat}:14": "gender code 2.0 is not 1 (male) or 0 (female)",
    }
    check_counts(result, rows_in=len(WIKI_COLUMNS))
    check_split_protocols(lambda split: import_imdb_wiki(str(root), split))

    with_second_faces = import_imdb_wiki(str(root), reject_second_face=False)
    assert rows_of(with_second_faces)["wiki/01/two_1950-01-01_2000"][1:] == (50, 0, "B")
    check_counts(with_second_faces, rows_in=len(WIKI_COLUMNS))


def test_imdb_wiki_picks_the_database_and_names_bad_files(tmp_path: Path):
    imdb_root = make_imdb_wiki(tmp_path / "imdb", db="imdb")
    assert import_imdb_wiki(str(imdb_root)).table.column("image_id").to_pylist()[0].startswith("imdb/")
    with pytest.raises(ValueError, match="found neither"):
        import_imdb_wiki(str(tmp_path / "empty"))
    make_imdb_wiki(imdb_root, db="wiki")
    with pytest.raises(ValueError, match="found both"):
        import_imdb_wiki(str(imdb_root))
    assert import_imdb_wiki(str(imdb_root), db="wiki").counts()["rows_ok"] == 4

    (imdb_root / "wiki_crop" / "wiki.mat").write_bytes(b"not a mat file")
    with pytest.raises(ValueError, match=r"wiki_crop/wiki.mat: not a MATLAB file"):
        import_imdb_wiki(str(imdb_root), db="wiki")
    scipy.io.savemat(imdb_root / "wiki_crop" / "wiki.mat", {"wiki": {"dob": np.array([[1.0]])}})
    with pytest.raises(ValueError, match=r"wiki.mat: struct 'wiki' lacks field\(s\) \['photo_taken'"):
        import_imdb_wiki(str(imdb_root), db="wiki")


# ------------------------------------------------------------------------------------------ registry


def test_every_layout_imports_through_the_registry(tmp_path: Path):
    utkface = tmp_path / "utkface"
    write_images(utkface, "25_0_2_20170116174525125.jpg.chip.jpg", "30_1_0_20170116174525125.jpg.chip.jpg")
    sources = {
        "utkface": utkface,
        "morph": make_morph(tmp_path / "morph"),
        "megaage": make_megaage(tmp_path / "megaage"),
        "aaf": make_aaf(tmp_path / "aaf"),
        "fgnet": make_fgnet(tmp_path / "fgnet"),
        "appa-real": make_appa_real(tmp_path / "appa-real"),
        "imdb-wiki": make_imdb_wiki(tmp_path / "imdb-wiki"),
    }
    assert set(LAYOUTS) == set(sources)
    split = SplitSpec("subject", 0.3, seed=5)
    for layout in LAYOUTS:
        result = import_layout(layout, str(sources[layout]), split)
        assert result.split == split
        assert result.table.num_rows >= 2, layout
        assert set(result.table.column("dataset").to_pylist()) == {layout}, layout
    assert import_layout("aaf", str(sources["aaf"]), split, images="original").table.column("path").to_pylist()[
        0
    ] == str(sources["aaf"] / "original images" / "00000A02.jpg")
    with pytest.raises(ValueError, match="unknown dataset layout 'lfw'"):
        import_layout("lfw", str(tmp_path), split)
    with pytest.raises(TypeError, match="unexpected keyword argument 'images'"):
        import_layout("utkface", str(utkface), split, images="original")
