"""Shared pieces of the label-file importers (MORPH, MegaAge, AAF, FG-NET, APPA-REAL, IMDB-WIKI).

- `source_root`: a local source made absolute, a URI left as it is.
- `read_text` / `text_lines` / `read_csv_rows`: a label file decoded as UTF-8, whole, as its
  non-blank lines, or as CSV rows; a missing file is a StorageError naming it, undecodable bytes
  or a CSV header without a required column a ValueError naming it.
- `ImageListings`: which image files exist and their sizes, listing each image directory ONCE
  (one LIST per directory instead of one HEAD request per image on S3).
- `ManifestBuilder`: collects manifest rows and rejected inputs; `add` checks the label, that
  the image is in its directory's listing and non-empty, and that the image id is new (the
  first row with an id wins), so every input ends as a row or a `Rejected` with a reason.

Inputs of a label-file layout are its label rows; an image file that no label row names is not
an input (it is not counted and not rejected). Rejected label rows are named `<file>:<line>`.
"""

from __future__ import annotations

import csv
import io
import posixpath

from agejobs import storage
from agejobs.datasets.manifest import ImportResult, Rejected, SplitSpec, manifest_row, rows_to_table, validate_label

STAGE = "import"


def source_root(source: str) -> str:
    """A local source as an absolute path (`file://` dropped), a URI without its trailing '/'."""
    return storage.absolute(source).rstrip("/") if storage.is_remote(source) else storage.absolute(source)


def read_text(uri: str) -> str:
    data = storage.read_bytes(uri)  # StorageError naming the URI when it is missing
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"{uri}: not UTF-8 text ({error})") from error


def text_lines(uri: str) -> list[tuple[str, str]]:
    """(input name `<uri>:<line>`, stripped line) of every non-blank line."""
    lines = read_text(uri).splitlines()
    return [(f"{uri}:{number}", line.strip()) for number, line in enumerate(lines, 1) if line.strip()]


def parse_number(text: str | None):
    """int or float of a label field; None when blank; the text itself when it is not a number
    (validate_label then names it)."""
    text = (text or "").strip()
    if not text:
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def relative_image_path(text: str) -> str | None:
    """A label's image path as a clean relative POSIX path, or None when it leaves the source."""
    path = posixpath.normpath(text.strip().replace("\\", "/")).lstrip("/")
    if not path or path == "." or path == ".." or path.startswith("../"):
        return None
    return path


def read_csv_rows(uri: str, required_columns: tuple[str, ...], reject) -> list[tuple[str, dict[str, str]]]:
    """(input name, {column: stripped value}) of each well-shaped row of a CSV with a header.

    A missing file or a header without a required column raises (naming the file); a row whose
    field count differs from the header's goes to `reject(input_name, reason, "label")`; blank lines are
    not inputs.
    """
    reader = csv.reader(io.StringIO(read_text(uri)))
    header = [name.strip() for name in next(reader, [])]
    missing = [name for name in required_columns if name not in header]
    if missing:
        raise ValueError(f"{uri}: missing required column(s) {missing}; header is {header}")
    records = []
    for fields in reader:
        if not any(field.strip() for field in fields):
            continue
        input_name = f"{uri}:{reader.line_num}"
        if len(fields) != len(header):
            reject(input_name, f"row has {len(fields)} fields, the header has {len(header)}", "label")
            continue
        records.append((input_name, {name: value.strip() for name, value in zip(header, fields)}))
    return records


class ImageListings:
    """Files under each image directory, listed once per directory."""

    def __init__(self):
        self._sizes: dict[str, dict[str, int]] = {}
        self._errors: dict[str, tuple[str, str]] = {}  # directory -> (why, reason class)

    def files_in(self, directory: str, required: bool = False) -> dict[str, int]:
        """{URI: size} of the files directly under `directory`, sorted by URI.

        A directory that cannot be listed is {} (its images are then rejected with the reason),
        or, when `required`, a StorageError naming it.
        """
        if directory not in self._sizes:
            try:
                self._sizes[directory] = dict(storage.list_files(directory))
            except storage.StorageError as error:
                if required:
                    raise
                self._sizes[directory] = {}
                self._errors[directory] = str(error), "missing" if isinstance(error, FileNotFoundError) else "other"
        return self._sizes[directory]

    def problem(self, image_uri: str) -> tuple[str, str] | None:
        """(why, reason class) the image cannot be used (missing, empty, directory unlistable), or None."""
        directory = image_uri.rsplit("/", 1)[0]
        size = self.files_in(directory).get(image_uri)
        if size is None:
            if directory in self._errors:
                why, reason_class = self._errors[directory]
                return f"image directory cannot be listed: {why}", reason_class
            return f"image file not found: {image_uri}", "missing"
        return (f"empty image file: {image_uri}", "decode") if size == 0 else None


class ManifestBuilder:
    """Manifest rows and rejected inputs of one import; `result()` sorts rows by image_id."""

    def __init__(self, split: SplitSpec, dataset: str, gender_labelled: bool = True):
        self.split, self.dataset, self.gender_labelled = split, dataset, gender_labelled
        self.listings = ImageListings()
        self.rows: list[dict] = []
        self.rejected: list[Rejected] = []
        self._input_of_id: dict[str, str] = {}

    def reject(self, input_name: str, reason: str, reason_class: str) -> None:
        self.rejected.append(Rejected(input_name, STAGE, reason, reason_class))

    def add(self, input_name: str, image_id: str, image_uri: str, age, gender: int, subject_id: str) -> None:
        label_problem = validate_label(age, gender, self.gender_labelled)
        problem = (label_problem, "label") if label_problem else self.listings.problem(image_uri)
        if problem is None and image_id in self._input_of_id:
            problem = (
                f"duplicate image_id {image_id!r}, already imported from {self._input_of_id[image_id]}",
                "duplicate",
            )
        if problem is not None:
            self.reject(input_name, *problem)
            return
        self._input_of_id[image_id] = input_name
        self.rows.append(manifest_row(image_id, image_uri, int(age), gender, subject_id, self.split, self.dataset))

    def csv_rows(self, uri: str, required_columns: tuple[str, ...]) -> list[tuple[str, dict[str, str]]]:
        """`read_csv_rows` with this import rejecting the malformed rows."""
        return read_csv_rows(uri, required_columns, self.reject)

    def result(self) -> ImportResult:
        rows = sorted(self.rows, key=lambda row: row["image_id"])
        return ImportResult(table=rows_to_table(rows), rejected=list(self.rejected), split=self.split)
