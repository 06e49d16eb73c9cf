"""Import a UTKFace directory (local or URI) into the common manifest.

UTKFace carries its labels in the file name, `<age>_<gender>_<race>_<datetime>.jpg.chip.jpg`
(the aligned-and-cropped release; the in-the-wild release drops `.chip.jpg`):
age in years, gender 0 = male / 1 = female, race 0..4, datetime yyyymmddHHMMSSfff.
Every file under the directory is either a manifest row or a rejected input with a reason,
so rows_in == rows_ok + rows_rejected; subdirectories are not inputs and are skipped.
UTKFace has no identity labels: each image is its own subject, so the "random" and "subject"
split protocols coincide.
"""

from __future__ import annotations

from agejobs import storage
from agejobs.datasets.manifest import (
    ImportResult,
    Rejected,
    SplitSpec,
    manifest_row,
    rows_to_table,
    validate_label,
    write_import,  # noqa: F401  (re-exported: `from agejobs.datasets.utkface import write_import`)
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


def import_utkface(src_dir: str, split: SplitSpec = SplitSpec()) -> ImportResult:
    """One manifest row per well-named, non-empty image in src_dir; everything else rejected."""
    spec = split
    src_dir = storage.absolute(src_dir)
    rows: list[dict] = []
    rejected: list[Rejected] = []
    file_name_of_id: dict[str, str] = {}
    for uri, size in storage.list_files(src_dir):
        file_name = uri.rsplit("/", 1)[-1]
        try:
            labels = parse_utkface_name(file_name)
        except ValueError as error:
            rejected.append(Rejected(uri, STAGE, str(error), "label"))
            continue
        if size == 0:
            rejected.append(Rejected(uri, STAGE, "empty file", "decode"))
            continue
        image_id = image_id_of(file_name)
        if image_id in file_name_of_id:
            # `x.jpg` and `x.jpg.chip.jpg` side by side would share an id; keep the first.
            reason = f"duplicate image_id {image_id!r}, already imported from {file_name_of_id[image_id]}"
            rejected.append(Rejected(uri, STAGE, reason, "duplicate"))
            continue
        file_name_of_id[image_id] = file_name
        rows.append(manifest_row(image_id, uri, labels["age"], labels["gender"], image_id, spec, DATASET))
    rows.sort(key=lambda row: row["image_id"])
    return ImportResult(table=rows_to_table(rows), rejected=rejected, split=spec)
