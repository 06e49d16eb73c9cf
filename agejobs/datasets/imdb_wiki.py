"""Import IMDB-WIKI (the cropped-face releases imdb_crop / wiki_crop) into the common manifest.

Layout (source = the directory that holds the extracted archive):

    <source>/imdb_crop/imdb.mat   or   <source>/wiki_crop/wiki.mat
    <source>/imdb_crop/01/nm0000001_rm124825600_1899-5-10_1968.jpg ...   (00..99 subdirectories)

The .mat file holds a 1x1 struct (`imdb` or `wiki`) whose fields are 1xN arrays, one column per
image, as the dataset page and its readers (`meta[db][0, 0]["full_path"][0]`) describe:
dob (MATLAB serial date number), photo_taken (year), full_path (cell of paths relative to the
.mat's directory), gender (1 = male, 0 = female, NaN = unknown), name (cell), face_location,
face_score (-inf: no face found), second_face_score (NaN: no second face).

Age: the dataset page (data.vision.ee.ethz.ch/cvl/rrothe/imdb-wiki, quoted in many readers)
assumes "the photo was taken in the middle of the year" and computes
`[age,~]=datevec(datenum(photo_taken,7,1)-dob)`. We use the integer form of that convention
from the widely used Python reader (yu4u/age-gender-estimation, `calc_age`): birth date =
`date.fromordinal(dob - 366)` (MATLAB day 1 is 0000-01-01, Python's ordinal 1 is 0001-01-01),
age = photo_taken - birth year, minus 1 when born in July or later. (It differs from the MATLAB
line only for birthdays on 1 July: 1 year less.)

Conventions:
- one input per column of the struct, named `<mat file>:<1-based column>`;
- gender: 1 -> 0 (male), 0 -> 1 (female); NaN or another code is rejected;
- subject = the name (a celebrity's images share it), the image_id when the name is empty;
- image_id = `<db>/<full_path without .jpg>` ("imdb/01/nm0000001_rm124825600_1899-5-10_1968");
- rejected, with the reason: no face (face_score not finite), a second face (second_face_score
  not NaN; `reject_second_face=False` keeps those), missing/unknown gender, invalid dob or
  photo_taken, age outside 0..120, empty path, image missing or empty, duplicate image_id.
"""

from __future__ import annotations

import io
import math
import posixpath
from datetime import date

import numpy as np
import scipy.io

from agejobs import storage
from agejobs.datasets.importing import ManifestBuilder, relative_image_path, source_root
from agejobs.datasets.manifest import ImportResult, SplitSpec

DATASET = "imdb-wiki"
DATABASES = ("imdb", "wiki")
REQUIRED_FIELDS = ("dob", "photo_taken", "full_path", "gender", "name", "face_score", "second_face_score")
GENDER_OF_CODE = {1.0: 0, 0.0: 1}  # IMDB-WIKI 1 = male, 0 = female -> ours 0 = male, 1 = female
MATLAB_TO_PYTHON_ORDINAL = 366  # datenum(1, 1, 1) == 367, date(1, 1, 1).toordinal() == 1


def birth_date(dob: float) -> date | None:
    """The date of a MATLAB serial date number, or None when it is not a valid date."""
    if not math.isfinite(dob):
        return None
    ordinal = int(dob) - MATLAB_TO_PYTHON_ORDINAL
    return date.fromordinal(ordinal) if 1 <= ordinal <= date.max.toordinal() else None


def age_at_photo(photo_taken: int, born: date) -> int:
    """Age in whole years, the photo assumed taken on 1 July of its year (the dataset's convention)."""
    return photo_taken - born.year - (1 if born.month >= 7 else 0)


def cell_text(cell) -> str:
    """The string in a MATLAB cell as loadmat returns it (array(['text']) or an empty array)."""
    if isinstance(cell, str):
        return cell
    array = np.asarray(cell)
    return str(array.flat[0]).strip() if array.size else ""


def choose_database(root: str, db: str | None) -> str:
    if db is not None:
        if db not in DATABASES:
            raise ValueError(f"db must be one of {DATABASES}, got {db!r}")
        return db
    found = [name for name in DATABASES if storage.exists(storage.join(root, f"{name}_crop", f"{name}.mat"))]
    if len(found) != 1:
        candidates = " and ".join(storage.join(root, f"{name}_crop", f"{name}.mat") for name in DATABASES)
        what = "both" if found else "neither"
        raise ValueError(f"{root}: found {what} of {candidates}; pass db='imdb' or db='wiki'")
    return found[0]


def load_columns(mat_uri: str, db: str) -> dict[str, np.ndarray]:
    """{field: 1-D array over the images} of the struct `db` in a .mat file (errors name the file)."""
    data = storage.read_bytes(mat_uri)
    try:
        struct = scipy.io.loadmat(io.BytesIO(data))[db]
        record = struct[0, 0]
        names = record.dtype.names or ()
    except Exception as error:  # loadmat raises many kinds on a bad file (v7.3 HDF5, truncated...)
        reason = f"{type(error).__name__}: {error}"
        raise ValueError(f"{mat_uri}: not a MATLAB file with a 1x1 struct {db!r} ({reason})") from error
    missing = [name for name in REQUIRED_FIELDS if name not in names]
    if missing:
        raise ValueError(f"{mat_uri}: struct {db!r} lacks field(s) {missing}; it has {list(names)}")
    columns = {name: np.asarray(record[name]).ravel() for name in REQUIRED_FIELDS}
    lengths = {name: len(column) for name, column in columns.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{mat_uri}: fields of struct {db!r} differ in length: {lengths}")
    return columns


def row_problem(column: dict, reject_second_face: bool) -> tuple[str, str] | None:
    """(why, reason class) one image's metadata is unusable before its age is computed, or None."""
    if not math.isfinite(column["face_score"]):
        return f"no face detected (face_score {column['face_score']})", "no_face"
    if reject_second_face and not math.isnan(column["second_face_score"]):
        return f"second face detected (second_face_score {column['second_face_score']:.3f})", "other"
    if math.isnan(column["gender"]):
        return "gender missing (NaN)", "label"
    if column["gender"] not in GENDER_OF_CODE:
        return f"gender code {column['gender']} is not 1 (male) or 0 (female)", "label"
    if birth_date(column["dob"]) is None:
        return f"invalid dob {column['dob']} (not a MATLAB date number of a real date)", "label"
    if not math.isfinite(column["photo_taken"]):
        return f"invalid photo_taken {column['photo_taken']}", "label"
    return None


def import_imdb_wiki(
    source: str, split: SplitSpec = SplitSpec(), db: str | None = None, reject_second_face: bool = True
) -> ImportResult:
    """One manifest row per usable image column of imdb.mat or wiki.mat; every other is rejected."""
    root = source_root(source)
    db = choose_database(root, db)
    crop_dir = storage.join(root, f"{db}_crop")
    mat_uri = storage.join(crop_dir, f"{db}.mat")
    columns = load_columns(mat_uri, db)
    builder = ManifestBuilder(split, DATASET)
    for index in range(len(columns["full_path"])):
        input_name = f"{mat_uri}:{index + 1}"
        path = relative_image_path(cell_text(columns["full_path"][index]))
        if path is None:
            builder.reject(input_name, "full_path is empty or leaves the crop directory", "label")
            continue
        column = {name: float(columns[name][index]) for name in REQUIRED_FIELDS if name not in ("full_path", "name")}
        problem = row_problem(column, reject_second_face)
        if problem is not None:
            builder.reject(input_name, *problem)
            continue
        age = age_at_photo(int(column["photo_taken"]), birth_date(column["dob"]))
        image_id = f"{db}/{posixpath.splitext(path)[0]}"
        subject_id = cell_text(columns["name"][index]) or image_id
        image_uri = storage.join(crop_dir, *path.split("/"))
        builder.add(input_name, image_id, image_uri, age, GENDER_OF_CODE[column["gender"]], subject_id)
    return builder.result()
