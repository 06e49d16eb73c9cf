"""The common manifest every importer writes and every later stage reads.

A manifest is one Parquet table, one row per face image:

| column       | type   | meaning                                                        |
|--------------|--------|----------------------------------------------------------------|
| image_id     | string | unique id within the dataset                                   |
| path         | string | absolute path or URI of the encoded image                      |
| age          | int16  | age in years, 0..120                                           |
| gender       | int8   | 0 = male, 1 = female                                           |
| subject_id   | string | identity; images of one subject never straddle splits          |
| split        | string | "train" or "test"                                              |
| dataset      | string | source layout ("synthetic", "utkface", ...)                    |

Rejected inputs go to an errors table (input, stage, reason) so that
rows_in == rows_ok + rows_rejected always holds.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from agejobs import storage

MANIFEST_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("path", pa.string()),
        ("age", pa.int16()),
        ("gender", pa.int8()),
        ("subject_id", pa.string()),
        ("split", pa.string()),
        ("dataset", pa.string()),
    ]
)
ERRORS_SCHEMA = pa.schema([("input", pa.string()), ("stage", pa.string()), ("reason", pa.string())])

MIN_AGE, MAX_AGE = 0, 120
SPLITS = ("train", "test")


@dataclass
class Rejected:
    input: str
    stage: str
    reason: str


def subject_split(subject_id: str, test_fraction: float, seed: int) -> str:
    """Deterministic subject-exclusive split: a subject's images share one split.

    Hashing (seed, subject) instead of shuffling keeps the assignment stable when rows are
    added or reordered, which a re-import of a growing archive needs.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    digest = hashlib.sha256(f"{seed}:{subject_id}".encode()).digest()
    unit = int.from_bytes(digest[:8], "big") / 2**64
    return "test" if unit < test_fraction else "train"


def validate_label(age, gender) -> str | None:
    """Reason a label is unusable, or None when it is fine."""
    if age is None or isinstance(age, float) and age != age:
        return "age missing"
    if not float(age).is_integer():
        return f"age {age!r} is not a whole number of years"
    if not MIN_AGE <= int(age) <= MAX_AGE:
        return f"age {age} outside {MIN_AGE}..{MAX_AGE}"
    if gender not in (0, 1):
        return f"gender {gender!r} is not 0 (male) or 1 (female)"
    return None


def rows_to_table(rows: list[dict]) -> pa.Table:
    """Build a manifest table from dicts, enforcing column set and types."""
    for row in rows:
        if set(row) != set(MANIFEST_SCHEMA.names):
            raise ValueError(f"manifest row has columns {sorted(row)}, expected {MANIFEST_SCHEMA.names}")
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)


def errors_to_table(rejected: list[Rejected]) -> pa.Table:
    return pa.Table.from_pylist([r.__dict__ for r in rejected], schema=ERRORS_SCHEMA)


def write_table_atomic(table: pa.Table, uri: str) -> None:
    """Write Parquet so that a reader never sees half a file (any local path or URI)."""
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    storage.write_bytes_atomic(uri, buffer.getvalue().to_pybytes())


def read_manifest(path: str) -> pa.Table:
    table = pq.read_table(path)
    missing = set(MANIFEST_SCHEMA.names) - set(table.column_names)
    if missing:
        raise ValueError(f"{path}: not an agejobs manifest, missing columns {sorted(missing)}")
    return table.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA)
