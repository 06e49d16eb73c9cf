"""Import APPA-REAL into the common manifest, with the REAL (biological) age.

Layout (source = the `appa-real-release` directory):

    <source>/gt_avg_{train,valid,test}.csv          file_name, num_ratings, apparent_age_avg,
                                                    apparent_age_std, real_age
    <source>/allcategories_{train,valid,test}.csv   file, gender (male/female), race, makeup,
                                                    time, happiness
    <source>/{train,valid,test}/000000.jpg          the photo
    <source>/{train,valid,test}/000000.jpg_face.jpg its aligned face crop

Public APPA-REAL loaders read `real_age` from gt_avg_*.csv and the crop as
`<file_name>_face.jpg`; gender comes from the allcategories_*.csv files released with it.

Conventions:
- one input per gt_avg_*.csv row; images no row names are not inputs;
- age = `real_age` (whole years in the release; a fractional one is rejected, not rounded);
  the apparent-age columns are not used;
- gender: `male` -> 0, `female` -> 1 (case-insensitive), looked up by file name in the part's
  allcategories file; a file with no category row, or another gender value, is rejected;
- no identity labels: subject = image_id;
- image_id = `<part>/<file_name without .jpg>` ("train/000000"; with the part, ids stay unique
  even if two parts reuse a file name);
- `image="face"` reads the aligned crop, `"original"` the photo; the default (None) takes the
  crop when any `*_face.jpg` file is listed in the part directories, else the photo;
- the published train/valid/test partition is not the manifest's split: SplitSpec assigns that;
- rejected: wrong field count, file name with a directory part, missing category or bad gender,
  bad age, image missing or empty, duplicate image_id.
"""

from __future__ import annotations

from agejobs import storage
from agejobs.datasets.importing import ManifestBuilder, parse_number, read_csv_rows, source_root
from agejobs.datasets.manifest import ImportResult, SplitSpec

DATASET = "appa-real"
PARTS = ("train", "valid", "test")
FACE_SUFFIX = "_face.jpg"
IMAGE_CHOICES = ("face", "original")
GENDER_OF_NAME = {"male": 0, "female": 1}


def gender_by_file(categories_uri: str) -> dict[str, str]:
    """{file name: gender text} of an allcategories file (the first row of a name wins).

    Its rows are not inputs of their own: a malformed one leaves its image without a gender,
    and that image's gt_avg row is rejected for it.
    """
    genders: dict[str, str] = {}
    for _input_name, fields in read_csv_rows(categories_uri, ("file", "gender"), reject=lambda *_: None):
        genders.setdefault(fields["file"], fields["gender"])
    return genders


def import_appa_real(source: str, split: SplitSpec = SplitSpec(), image: str | None = None) -> ImportResult:
    """One manifest row per usable gt_avg row of each part; every other row is rejected."""
    if image is not None and image not in IMAGE_CHOICES:
        raise ValueError(f"image must be one of {IMAGE_CHOICES} or None, got {image!r}")
    root = source_root(source)
    builder = ManifestBuilder(split, DATASET)
    if image is None:
        listed = [uri for part in PARTS for uri in builder.listings.files_in(storage.join(root, part))]
        image = "face" if any(uri.endswith(FACE_SUFFIX) for uri in listed) else "original"
    for part in PARTS:
        categories_name = f"allcategories_{part}.csv"
        genders = gender_by_file(storage.join(root, categories_name))
        for input_name, fields in builder.csv_rows(storage.join(root, f"gt_avg_{part}.csv"), ("file_name", "real_age")):
            file_name = fields["file_name"]
            if not file_name or "/" in file_name or "\\" in file_name:
                builder.reject(input_name, f"file_name {file_name!r} is empty or has a directory part", "label")
                continue
            if file_name not in genders:
                builder.reject(
                    input_name, f"no gender: {file_name} has no well-formed row in {categories_name}", "label"
                )
                continue
            gender = GENDER_OF_NAME.get(genders[file_name].lower())
            if gender is None:
                builder.reject(
                    input_name, f"gender {genders[file_name]!r} in {categories_name} is not male or female", "label"
                )
                continue
            image_id = f"{part}/{file_name.removesuffix('.jpg')}"
            image_name = file_name + FACE_SUFFIX if image == "face" else file_name
            image_uri = storage.join(root, part, image_name)
            builder.add(input_name, image_id, image_uri, parse_number(fields["real_age"]), gender, image_id)
    return builder.result()
