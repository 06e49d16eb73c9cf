"""Import FG-NET into the common manifest.

Layout (source = the FG-NET directory):

    <source>/images/001A02.JPG, 001A43a.JPG, ...

The labels are in the file name: 3-digit subject, 'A', 2-digit age, an optional letter telling
apart several photos of one subject at one age (`001A43a`, `001A43b`), then `.JPG`. Names are
matched case-insensitively (copies exist with `.jpg` and lower-case letters).

Conventions:
- every file directly under images/ is an input (as for UTKFace): a manifest row or a rejected
  input; subdirectories are not inputs;
- age = the two digits after 'A';
- FG-NET has no gender labels: gender = GENDER_UNLABELLED (-1);
- subject = the 3-digit id (82 people, ~12 images each: the "subject" split keeps them
  together, which is FG-NET's usual leave-subjects-out protocol);
- image_id = the file name without extension, as written (`001A43a`);
- rejected: a name not of that form, an empty file, a duplicate image_id (`001A02.JPG` beside
  `001A02.jpg`: the first in listing order is kept).
"""

from __future__ import annotations

import re

from agejobs import storage
from agejobs.datasets.importing import ManifestBuilder, source_root
from agejobs.datasets.manifest import GENDER_UNLABELLED, ImportResult, SplitSpec

DATASET = "fgnet"
NAME_PATTERN = re.compile(r"(?P<image_id>(?P<subject>\d{3})A(?P<age>\d{2})[a-z]?)\.jpe?g", re.IGNORECASE)


def import_fgnet(source: str, split: SplitSpec = SplitSpec(), images_dir: str = "images") -> ImportResult:
    """One manifest row per well-named, non-empty image; every other file is rejected."""
    root = source_root(source)
    builder = ManifestBuilder(split, DATASET, gender_labelled=False)
    # Listed once: add() checks each file's size in this same (cached) listing.
    for uri in builder.listings.files_in(storage.join(root, images_dir), required=True):
        file_name = uri.rsplit("/", 1)[-1]
        match = NAME_PATTERN.fullmatch(file_name)
        if match is None:
            builder.reject(
                uri, "not an FG-NET image name: expected <3-digit subject>A<2-digit age>[letter].JPG", "label"
            )
            continue
        builder.add(uri, match["image_id"], uri, int(match["age"]), GENDER_UNLABELLED, match["subject"])
    return builder.result()
