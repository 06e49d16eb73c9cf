"""Import MegaAge-Asian into the common manifest.

Layout (source = the `megaage_asian` directory):

    <source>/list/train_name.txt   one image file name a line ("1.jpg")
    <source>/list/train_age.txt    the age of the image on the same line of train_name.txt
    <source>/list/test_name.txt, <source>/list/test_age.txt   the same for the test part
    <source>/train/1.jpg ...       <source>/test/1.jpg ...

Public MegaAge loaders read it this way: name file and age file zipped line by line, image at
`<part>/<name>`. (The archive's other lists, e.g. `*_dis.txt`, are not used.)

Conventions:
- one input per line of a name file (trailing blank lines are not inputs); line N of the age
  file labels line N of the name file, so a name file and its age file with different numbers
  of lines is a malformed layout (ValueError naming both files);
- age = the age file's value, whole years ("22" or "22.0"; fractional or out of range: rejected);
- MegaAge-Asian has no gender labels: gender = GENDER_UNLABELLED (-1);
- no identity labels: subject = image_id, so both split protocols split per image;
- image_id = `<part>/<file name without extension>` ("train/1", "test/1": the two parts may
  reuse file names);
- the published train/test partition is not the manifest's split: SplitSpec assigns that;
- rejected: blank name, missing or bad age, name with a directory part, image missing or empty, duplicate image_id.
"""

from __future__ import annotations

import posixpath

from agejobs import storage
from agejobs.datasets.importing import ManifestBuilder, parse_number, read_text, source_root
from agejobs.datasets.manifest import GENDER_UNLABELLED, ImportResult, SplitSpec

DATASET = "megaage"
PARTS = ("train", "test")


def lines_of(uri: str) -> list[str]:
    """Stripped lines of a list file, trailing blank lines dropped (line N stays index N-1)."""
    lines = [line.strip() for line in read_text(uri).splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def import_megaage(source: str, split: SplitSpec = SplitSpec(), parts: tuple[str, ...] = PARTS) -> ImportResult:
    """One manifest row per usable (name, age) line pair of each part; others rejected."""
    root = source_root(source)
    builder = ManifestBuilder(split, DATASET, gender_labelled=False)
    for part in parts:
        names_uri = storage.join(root, "list", f"{part}_name.txt")
        ages_uri = storage.join(root, "list", f"{part}_age.txt")
        names, ages = lines_of(names_uri), lines_of(ages_uri)
        if len(names) != len(ages):
            raise ValueError(f"{names_uri} has {len(names)} lines but {ages_uri} has {len(ages)}")
        for line_number, (file_name, age_text) in enumerate(zip(names, ages), 1):
            input_name = f"{names_uri}:{line_number}"
            if not file_name:
                builder.reject(input_name, "image name missing (blank line)", "label")
                continue
            if "/" in file_name or "\\" in file_name:
                builder.reject(input_name, f"image name {file_name!r} has a directory part", "label")
                continue
            image_id = f"{part}/{posixpath.splitext(file_name)[0]}"
            image_uri = storage.join(root, part, file_name)
            builder.add(input_name, image_id, image_uri, parse_number(age_text), GENDER_UNLABELLED, image_id)
    return builder.result()
