"""Import the All-Age-Faces (AAF) dataset into the common manifest.

Layout (source = the "All-Age-Faces Dataset" directory):

    <source>/original images/00000A02.jpg ...   the photos
    <source>/aglined faces/00000A02.jpg ...     aligned crops (the archive's own spelling;
                                                "aligned faces", as the README writes it, is
                                                accepted too)
    <source>/image sets/train.txt, val.txt      lines `<file name> <gender code>`

What the dataset's README says (github.com/JingchunCheng/All-Age-Faces-Dataset, README.md):
13,322 images, 7,381 female and 5,941 male; "each image contains a different individual" and is
named `%05dA%02d.jpg` (serial number, 'A', age); "individuals from serial number 00000 to 07380
are all female, from 07381 to 13321 are male"; the image-set lines are `%05dA%02d %d` (person
id, age, gender) "where for gender, 0 stands for female and 1 stands for male". Public loaders
match the lines as `\\d{5}A(\\d{2})\\.jpg (0|1)`, so the name is read with or without `.jpg`.

Conventions:
- one input per non-blank line of train.txt then val.txt; images no line names are not inputs;
- age = the two digits after 'A' in the name;
- gender: list code 0 -> ours 1 (female), 1 -> ours 0 (male); a code that contradicts the
  README's serial ranges is rejected as inconsistent rather than guessed;
- subject = the 5-digit serial (one individual per image), image_id = `00000A02`;
- `images="aligned"` (default, like UTKFace's aligned crops) or `"original"`;
- the published train/val partition is not the manifest's split: SplitSpec assigns that;
- rejected: malformed line, name not `%05dA%02d[.jpg]`, unknown or inconsistent gender code,
  bad age, image missing or empty, duplicate image_id.
"""

from __future__ import annotations

import re

from agejobs import storage
from agejobs.datasets.importing import ManifestBuilder, source_root, text_lines
from agejobs.datasets.manifest import ImportResult, SplitSpec

DATASET = "aaf"
IMAGE_SETS = ("train.txt", "val.txt")
IMAGE_DIRS = {"aligned": ("aglined faces", "aligned faces"), "original": ("original images",)}
NAME_PATTERN = re.compile(r"(?P<serial>\d{5})A(?P<age>\d{2})(?:\.jpg)?")
GENDER_OF_CODE = {"0": 1, "1": 0}  # AAF 0 = female, 1 = male -> ours 0 = male, 1 = female
LAST_FEMALE_SERIAL = 7380  # README: 00000..07380 female, 07381..13321 male


def image_directory(root: str, images: str) -> str:
    if images not in IMAGE_DIRS:
        raise ValueError(f"images must be one of {sorted(IMAGE_DIRS)}, got {images!r}")
    for name in IMAGE_DIRS[images]:
        directory = storage.join(root, name)
        if storage.exists(directory):
            return directory
    raise storage.StorageError(f"{root}: no image directory {' or '.join(map(repr, IMAGE_DIRS[images]))}")


def gender_problem(serial: str, gender: int) -> str | None:
    expected = 1 if int(serial) <= LAST_FEMALE_SERIAL else 0
    if gender == expected:
        return None
    return (
        f"gender code says {'female' if gender else 'male'} but serial {serial} is in the README's "
        f"{'female 00000..07380' if expected else 'male 07381..13321'} range"
    )


def import_aaf(source: str, split: SplitSpec = SplitSpec(), images: str = "aligned") -> ImportResult:
    """One manifest row per usable image-set line; every other line is a rejected input."""
    root = source_root(source)
    directory = image_directory(root, images)
    builder = ManifestBuilder(split, DATASET)
    for image_set in IMAGE_SETS:
        for input_name, line in text_lines(storage.join(root, "image sets", image_set)):
            fields = line.split()
            if len(fields) != 2:
                builder.reject(input_name, f"expected '<file name> <gender code>', got {line!r}", "label")
                continue
            name, code = fields
            match = NAME_PATTERN.fullmatch(name)
            if match is None:
                builder.reject(input_name, f"file name {name!r} is not %05dA%02d.jpg", "label")
                continue
            gender = GENDER_OF_CODE.get(code)
            if gender is None:
                builder.reject(input_name, f"gender code {code!r} is not 0 (female) or 1 (male)", "label")
                continue
            problem = gender_problem(match["serial"], gender)
            if problem is not None:
                builder.reject(input_name, problem, "label")
                continue
            image_id = f"{match['serial']}A{match['age']}"
            image_uri = storage.join(directory, f"{image_id}.jpg")
            builder.add(input_name, image_id, image_uri, int(match["age"]), gender, match["serial"])
    return builder.result()
