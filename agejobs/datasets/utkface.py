"""Import a UTKFace directory into the common manifest.

UTKFace carries its labels in the file name, `<age>_<gender>_<race>_<datetime>.jpg.chip.jpg`
(the aligned-and-cropped release; the in-the-wild release drops `.chip.jpg`):
age in years, gender 0 = male / 1 = female, race 0..4, datetime yyyymmddHHMMSSfff.
Every file in the directory is either a manifest row or a rejected input with a reason,
so rows_in == rows_ok + rows_rejected; subdirectories are not inputs and are skipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pyarrow as pa

from agejobs.datasets.manifest import (
    Rejected,
    errors_to_table,
    rows_to_table,
    subject_split,
    validate_label,
    write_table_atomic,
)

DATASET = "utkface"
STAGE = "import"
# Longest first, so `x.jpg.chip.jpg` loses its whole suffix rather than only `.jpg`.
IMAGE_SUFFIXES = (".jpg.chip.jpg", ".jpg")
NAME_FIELDS = "age_gender_race_datetime"
RACES = range(0, 5)  # 0 White, 1 Black, 2 Asian, 3 Indian, 4 Others
# The datetime is yyyymmddHHMMSS plus milliseconds. The real archive has names whose
# millisecond part is one digit short (e.g. 14_0_0_2017011022340900), so accept 0..3
# millisecond digits: the datetime carries no label, and those images are fine.
DATETIME_DIGITS = range(14, 18)
# "random" is the paper's protocol (random test selection); "subject" is the
# subject-exclusive protocol used for other datasets. See _split_for for why they agree here.
SPLIT_MODES = ("random", "subject")


@dataclass
class ImportResult:
    table: pa.Table  # manifest rows (MANIFEST_SCHEMA), sorted by image_id
    rejected: list[Rejected] = field(default_factory=list)

    def counts(self) -> dict:
        splits = self.table.column("split").to_pylist()
        rows_ok = self.table.num_rows
        return {
            "rows_in": rows_ok + len(self.rejected),
            "rows_ok": rows_ok,
            "rows_rejected": len(self.rejected),
            "train": splits.count("train"),
            "test": splits.count("test"),
        }


def image_id_of(file_name: str) -> str | None:
    """The file name without its image suffix, or None when it is not a UTKFace image name."""
    for suffix in IMAGE_SUFFIXES:
        if file_name.endswith(suffix) and len(file_name) > len(suffix):
            return file_name[: -len(suffix)]
    return None


def _is_ascii_digits(text: str) -> bool:
    # str.isdigit alone accepts non-ASCII digits such as "٣", which int() would then parse.
    return text.isascii() and text.isdigit()


def parse_utkface_name(file_name: str) -> dict:
    """Labels encoded in a UTKFace file name: {"age", "gender", "race", "datetime"}.

    Raises ValueError whose message is the reason the name is unusable.
    """
    image_id = image_id_of(file_name)
    if image_id is None:
        raise ValueError(f"not a UTKFace image name: expected suffix {' or '.join(IMAGE_SUFFIXES)}")
    fields = image_id.split("_")
    if len(fields) != 4:
        raise ValueError(f"file name has {len(fields)} fields, expected 4: {NAME_FIELDS}")
    age_text, gender_text, race_text, datetime_text = fields
    for name, text in (("age", age_text), ("gender", gender_text), ("race", race_text)):
        if not _is_ascii_digits(text):
            raise ValueError(f"{name} {text!r} is not a non-negative whole number")
    age, gender, race = int(age_text), int(gender_text), int(race_text)
    label_problem = validate_label(age, gender)
    if label_problem is not None:
        raise ValueError(label_problem)
    if race not in RACES:
        raise ValueError(f"race {race} is not {RACES.start}..{RACES.stop - 1}")
    if not (_is_ascii_digits(datetime_text) and len(datetime_text) in DATETIME_DIGITS):
        raise ValueError(
            f"datetime {datetime_text!r} is not {DATETIME_DIGITS.start}..{DATETIME_DIGITS.stop - 1} "
            "digits (yyyymmddHHMMSSfff)"
        )
    return {"age": age, "gender": gender, "race": race, "datetime": datetime_text}


def _split_for(image_id: str, split: str, test_fraction: float, seed: int) -> str:
    # UTKFace has no identity labels, so each image is its own subject (subject_id = image_id).
    # Hashing per image with subject_split is then a seeded random selection of test images,
    # which is the paper's "random" protocol, and "subject" reduces to exactly the same thing.
    # Hashing rather than shuffling keeps an image's split stable when files are added.
    if split not in SPLIT_MODES:
        raise ValueError(f"unknown split {split!r}, expected one of {SPLIT_MODES}")
    return subject_split(image_id, test_fraction, seed)


def _problem_with_file(entry: os.DirEntry) -> str | None:
    """Reason a directory entry cannot be an image, or None when it can."""
    try:
        if not entry.is_file():  # follows symlinks: a dangling link or a socket lands here
            return "not a regular file"
        if entry.stat().st_size == 0:
            return "empty file"
    except OSError as error:
        return f"cannot stat file: {error.strerror or error}"
    return None


def import_utkface(
    src_dir: str, split: str = "random", test_fraction: float = 0.2, seed: int = 0
) -> ImportResult:
    """One manifest row per well-named, non-empty image in src_dir; everything else rejected."""
    # Fail on bad arguments up front, not only once a valid image turns up.
    _split_for("", split, test_fraction, seed)
    src_dir = os.path.abspath(src_dir)
    with os.scandir(src_dir) as scan:
        entries = sorted(scan, key=lambda entry: entry.name)  # deterministic order

    rows: list[dict] = []
    rejected: list[Rejected] = []
    file_name_of_id: dict[str, str] = {}
    for entry in entries:
        try:
            if entry.is_dir():
                continue
        except OSError:
            pass  # unreadable entry: not a directory we can skip, so judge it as a file below
        path = os.path.join(src_dir, entry.name)
        try:
            labels = parse_utkface_name(entry.name)
        except ValueError as error:
            rejected.append(Rejected(path, STAGE, str(error)))
            continue
        problem = _problem_with_file(entry)
        if problem is not None:
            rejected.append(Rejected(path, STAGE, problem))
            continue
        image_id = image_id_of(entry.name)
        if image_id in file_name_of_id:
            # `x.jpg` and `x.jpg.chip.jpg` side by side would share an id; keep the first.
            reason = f"duplicate image_id {image_id!r}, already imported from {file_name_of_id[image_id]}"
            rejected.append(Rejected(path, STAGE, reason))
            continue
        file_name_of_id[image_id] = entry.name
        rows.append(
            {
                "image_id": image_id,
                "path": path,
                "age": labels["age"],
                "gender": labels["gender"],
                "subject_id": image_id,  # no identity labels: each image is its own subject
                "split": _split_for(image_id, split, test_fraction, seed),
                "dataset": DATASET,
            }
        )
    rows.sort(key=lambda row: row["image_id"])
    return ImportResult(table=rows_to_table(rows), rejected=rejected)


def write_import(result: ImportResult, out_dir: str) -> dict:
    """Write out_dir/errors.parquet then out_dir/manifest.parquet; return the counts.

    The manifest goes last so that a reader who finds it also finds its complete errors table.
    """
    write_table_atomic(errors_to_table(result.rejected), os.path.join(out_dir, "errors.parquet"))
    write_table_atomic(result.table, os.path.join(out_dir, "manifest.parquet"))
    return result.counts()
