"""The common manifest every importer writes and every later stage reads.

A manifest is one Parquet table, one row per face image:

| column       | type   | meaning                                                        |
|--------------|--------|----------------------------------------------------------------|
| image_id     | string | unique id within the dataset                                   |
| path         | string | absolute path or URI of the encoded image                      |
| age          | int16  | age in years, 0..120                                           |
| gender       | int8   | 0 = male, 1 = female, -1 = the dataset has no gender labels    |
| subject_id   | string | identity; images of one subject never straddle splits          |
| split        | string | "train" or "test"                                              |
| dataset      | string | source layout ("synthetic", "utkface", ...)                    |

Rejected inputs go to an errors table (input, stage, reason) so that
rows_in == rows_ok + rows_rejected always holds.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from agejobs import metrics, storage
from agejobs.shards import write_table_atomic, write_tables  # noqa: F401  (write_table_atomic: re-exported)

log = logging.getLogger(__name__)

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
ERRORS_SCHEMA = pa.schema(
    [("input", pa.string()), ("stage", pa.string()), ("reason", pa.string()), ("reason_class", pa.string())]
)

MIN_AGE, MAX_AGE = 0, 120
# Layouts without gender labels (MegaAge-Asian, FG-NET) import as -1; the gender loss and the
# gender accuracy skip those faces. A layout that HAS gender labels never writes -1: a missing
# or unknown code there is a rejected row.
GENDER_UNLABELLED = -1
SPLITS = ("train", "test")
# "random": each image drawn into the test split on its own (the paper's protocol);
# "subject": all images of one subject land in the same split (no identity leaks into test).
SPLIT_PROTOCOLS = ("random", "subject")
# The split protocol is recorded in the manifest's Parquet metadata under this key.
SPLIT_METADATA_KEY = b"agejobs.split"


@dataclass
class Rejected:
    input: str
    stage: str
    reason: str  # for a person: the message, naming the input
    reason_class: str  # for metrics and queries: one of metrics.REJECT_REASONS, set where it was rejected


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


def assign_split(image_id: str, subject_id: str, protocol: str, test_fraction: float, seed: int) -> str:
    """Split of one image under a protocol; seeded and stable under added or reordered rows."""
    if protocol not in SPLIT_PROTOCOLS:
        raise ValueError(f"unknown split protocol {protocol!r}, expected one of {SPLIT_PROTOCOLS}")
    return subject_split(image_id if protocol == "random" else subject_id, test_fraction, seed)


@dataclass(frozen=True)
class SplitSpec:
    protocol: str = "random"
    test_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self):
        assign_split("", "", self.protocol, self.test_fraction, self.seed)  # fail on bad arguments now

    def split_of(self, image_id: str, subject_id: str) -> str:
        return assign_split(image_id, subject_id, self.protocol, self.test_fraction, self.seed)


@dataclass
class ImportResult:
    """What an importer returns: manifest rows (sorted by image_id) and every rejected input."""

    table: pa.Table
    rejected: list[Rejected] = field(default_factory=list)
    split: SplitSpec = field(default_factory=SplitSpec)

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


def record_rows(stage: str, rows_read: int, rejected: list[Rejected]) -> None:
    """Ingestion metrics: rows read by a stage, and its rejections by (stage, reason class)."""
    metrics.inc("ingest_rows_read", rows_read, stage=stage)
    by_class = collections.Counter((row.stage, row.reason_class) for row in rejected)
    for (row_stage, reason), count in by_class.items():
        metrics.inc("ingest_rows_rejected", count, stage=row_stage, reason=reason)


def write_import(result: ImportResult, out_dir: str) -> dict:
    """Write OUT/errors.parquet then OUT/manifest.parquet (local path or URI); return the counts.

    The manifest goes last so that a reader who finds it also finds its complete errors table
    (shards.write_tables; no done-marker: the manifest is the last file). The split protocol,
    fraction and seed are recorded in the manifest's metadata.
    """
    split = {"protocol": result.split.protocol, "test_fraction": result.split.test_fraction, "seed": result.split.seed}
    metadata = dict(result.table.schema.metadata or {})
    metadata[SPLIT_METADATA_KEY] = json.dumps(split).encode()
    write_tables(
        storage.join(out_dir, "manifest.parquet"),
        result.table.replace_schema_metadata(metadata),
        storage.join(out_dir, "errors.parquet"),
        errors_to_table(result.rejected),
    )
    counts = result.counts()
    record_rows("import", counts["rows_in"], result.rejected)
    log.info("import -> %s: %s; rejected by stage %s", out_dir, counts, rejected_by_stage(result.rejected))
    return counts


def rejected_by_stage(rejected: list[Rejected]) -> dict[str, int]:
    return dict(collections.Counter(r.stage for r in rejected))


def split_protocol_of(manifest_uri: str) -> dict:
    """The split protocol a manifest was written with ({} for manifests without the record)."""
    fs, path = storage.filesystem_for(manifest_uri)
    with fs.open(path, "rb") as handle:
        metadata = pq.read_schema(handle).metadata or {}
    return json.loads(metadata[SPLIT_METADATA_KEY]) if SPLIT_METADATA_KEY in metadata else {}


def manifest_row(
    image_id: str, path: str, age: int, gender: int, subject_id: str, split: SplitSpec, dataset: str
) -> dict:
    return {
        "image_id": image_id,
        "path": path,
        "age": int(age),
        "gender": int(gender),
        "subject_id": subject_id,
        "split": split.split_of(image_id, subject_id),
        "dataset": dataset,
    }


def validate_label(age, gender, gender_labelled: bool = True) -> str | None:
    """Reason a label is unusable, or None when it is fine.

    `gender_labelled=False` is for layouts without gender labels: gender must then be -1.
    """
    if age is None or isinstance(age, float) and age != age:
        return "age missing"
    try:
        float(age)
    except (TypeError, ValueError):
        return f"age {age!r} is not a number"
    if not float(age).is_integer():
        return f"age {age!r} is not a whole number of years"
    if not MIN_AGE <= int(age) <= MAX_AGE:
        return f"age {age} outside {MIN_AGE}..{MAX_AGE}"
    if not gender_labelled:
        return None if gender == GENDER_UNLABELLED else f"gender {gender!r} given for a layout without gender labels"
    if gender is None or isinstance(gender, float) and gender != gender:
        return "gender missing"
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


def read_manifest(path: str) -> pa.Table:
    fs, inner = storage.filesystem_for(path)
    table = pq.read_table(inner, filesystem=fs)
    missing = set(MANIFEST_SCHEMA.names) - set(table.column_names)
    if missing:
        raise ValueError(f"{path}: not an agejobs manifest, missing columns {sorted(missing)}")
    return table.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA)
