"""Import MORPH II (the 2008 non-commercial release, "Album2") into the common manifest.

Layout (source = the directory that holds the CSV):

    <source>/morph_2008_nonCommercial.csv
    <source>/Album2/003055_1M64.JPG ...

The CSV has a header row `id_num,picture_num,dob,doa,race,gender,facial_hair,age,age_diff,
glasses,photo` (the column order public MORPH loaders rely on); `photo` is the image path
relative to the source, e.g. `Album2/003055_1M64.JPG`. Columns are found by name.

Conventions:
- one input per CSV row; image files that no row names are not inputs;
- age = the `age` column (whole years; a fractional, missing or out-of-range age is rejected,
  never rounded);
- gender: `M` -> 0 (male), `F` -> 1 (female), case-insensitive; any other code is rejected;
- subject = `id_num` (MORPH has ~4 images per person: the "subject" split keeps them together);
- image_id = the photo's file name without extension (`003055_1M64`);
- rejected: row with a wrong field count, missing id_num, bad age or gender, photo path outside
  the source, image missing from its directory's listing or empty, duplicate image_id.
"""

from __future__ import annotations

import posixpath

from agejobs import storage
from agejobs.datasets.importing import ManifestBuilder, parse_number, relative_image_path, source_root
from agejobs.datasets.manifest import ImportResult, SplitSpec

DATASET = "morph"
DEFAULT_CSV_NAME = "morph_2008_nonCommercial.csv"
REQUIRED_COLUMNS = ("id_num", "gender", "age", "photo")
GENDER_OF_CODE = {"M": 0, "F": 1}


def import_morph(source: str, split: SplitSpec = SplitSpec(), csv_name: str = DEFAULT_CSV_NAME) -> ImportResult:
    """One manifest row per usable CSV row; every other CSV row is a rejected input."""
    root = source_root(source)
    builder = ManifestBuilder(split, DATASET)
    for input_name, fields in builder.csv_rows(storage.join(root, csv_name), REQUIRED_COLUMNS):
        subject_id = fields["id_num"]
        if not subject_id:
            builder.reject(input_name, "id_num missing", "label")
            continue
        gender = GENDER_OF_CODE.get(fields["gender"].upper())
        if gender is None:
            builder.reject(input_name, f"gender code {fields['gender']!r} is not M or F", "label")
            continue
        photo = relative_image_path(fields["photo"])
        if photo is None:
            builder.reject(
                input_name, f"photo path {fields['photo']!r} is empty or leaves the source directory", "label"
            )
            continue
        image_id = posixpath.splitext(posixpath.basename(photo))[0]
        image_uri = storage.join(root, *photo.split("/"))
        builder.add(input_name, image_id, image_uri, parse_number(fields["age"]), gender, subject_id)
    return builder.result()
