"""Sharded outputs that a reader never counts half of, and the plan a rerun must keep to.

    OUT/PLAN                        the plan (pack.json, score's inputs.json)   (before any shard)
    OUT/shard-00000.errors.parquet  shard 0's inputs that failed, with reasons  (1st)
    OUT/shard-00000.parquet         shard 0's rows                              (2nd)
    OUT/shard-00000.parquet.done    shard 0's counts, JSON with "rows_in"       (LAST)

Each file is written atomically, in this order: a data table never exists without its errors
table, and a shard is done only once its marker exists, so a killed job leaves nothing that
counts and a rerun redoes exactly the shards without a marker. The marker's counts cover both
tables (rows_in = data rows + error rows), so totals come from the markers alone.
An import's errors.parquet + manifest.parquet are the same pair without a marker: there the
manifest itself is the last file, and readers look for nothing else (`write_tables`).

The plan fixes how inputs are cut into shards. A rerun must keep the recorded one (its done
shards were cut by it), and one whose inputs differ is refused: `load_or_record_plan`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from typing import TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from agejobs import storage

Plan = TypeVar("Plan")


def shard_uri(out_uri: str, index: int) -> str:
    return storage.join(out_uri, storage.shard_name(index))


def errors_uri(out_uri: str, index: int) -> str:
    return storage.join(out_uri, storage.shard_name(index, ".errors.parquet"))


def write_table_atomic(table: pa.Table, uri: str, **write_options) -> None:
    """Write Parquet so that a reader never sees half a file (any local path or URI);
    `write_options` go to pyarrow's write_table (e.g. row_group_size)."""
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer, **write_options)
    storage.write_bytes_atomic(uri, buffer.getvalue().to_pybytes())


def write_tables(
    data_uri: str, data: pa.Table, errors_uri: str, errors: pa.Table, counts: dict | None = None, **write_options
) -> None:
    """The errors table, then the data table (`write_options` go to it), then, given `counts`,
    the data table's done-marker carrying them."""
    if counts is not None and counts.get("rows_in") != data.num_rows + errors.num_rows:
        # A marker that disagrees with its tables would make every total built from markers wrong.
        raise ValueError(
            f"{data_uri}: counts {counts} do not add up to {data.num_rows} rows + {errors.num_rows} errors"
        )
    write_table_atomic(errors, errors_uri)
    write_table_atomic(data, data_uri, **write_options)
    if counts is not None:
        storage.mark_done(data_uri, json.dumps(counts).encode())


def write_shard(out_uri: str, index: int, data: pa.Table, errors: pa.Table, counts: dict, **write_options) -> None:
    """Shard `index` under `out_uri`: errors table, data table, done-marker with `counts`."""
    write_tables(shard_uri(out_uri, index), data, errors_uri(out_uri, index), errors, counts, **write_options)


def not_done(out_uri: str, num_shards: int) -> list[int]:
    """Indices of the shards without a done-marker (one existence check each)."""
    return [index for index in range(num_shards) if not storage.is_done(shard_uri(out_uri, index))]


def done_counts(out_uri: str, num_shards: int) -> list[dict | None]:
    """Per shard, the counts its done-marker carries, or None where it is not done."""
    return [storage.done_summary(shard_uri(out_uri, index)) for index in range(num_shards)]


def read_plan(plan_uri: str, plan_type: type[Plan]) -> Plan:
    return plan_type(**json.loads(storage.read_bytes(plan_uri)))


def record_plan(plan_uri: str, plan, indent: int | None = None) -> None:
    """`indent`: None (one line) for a plan with per-shard lists, thousands of entries in score's."""
    storage.write_bytes_atomic(plan_uri, json.dumps(asdict(plan), indent=indent).encode())


def load_or_record_plan(
    plan_uri: str,
    plan_type: type[Plan],
    wanted: dict,
    make: Callable[[], Plan],
    refusal: Callable[[Plan], str],
    indent: int | None = None,
) -> Plan:
    """The plan recorded at `plan_uri` when its fields agree with `wanted`; with none recorded,
    `make()`'s, recorded first (`indent` as in record_plan). A recorded plan that disagrees is a
    ValueError(refusal(recorded)), whose message must name both: the job must not mix shards of
    two plans under one output."""
    if storage.exists(plan_uri):
        recorded = read_plan(plan_uri, plan_type)
        if {name: getattr(recorded, name) for name in wanted} != wanted:
            raise ValueError(refusal(recorded))
        return recorded
    plan = make()
    record_plan(plan_uri, plan, indent)
    return plan
