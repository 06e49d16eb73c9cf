"""`agejobs pack`: a manifest of loose images -> sharded Parquet of image bytes + labels.

With millions of small files, one GET per image dominates a streaming pass; a few hundred
shards of ~64 MB are read in large sequential requests instead (bench/bench_streaming.py).

    OUT/pack.json                     the plan: source, rows, rows_per_shard, num_shards (first)
    OUT/shard-00000.errors.parquet    inputs of shard 0 that could not be packed (input, stage, reason,
                                      reason_class)
    OUT/shard-00000.parquet           image_id, path, image_bytes, age, gender, subject_id, split, dataset
    OUT/shard-00000.parquet.done      {"rows_in", "rows_ok", "rows_rejected"}  (written LAST)

Rows go into the shards in a seeded random permutation of the manifest (`row_order_seed`,
recorded in the plan), whatever the manifest's order: every shard and row group is then a
uniform sample of the faces, which is what training's streaming shuffle relies on (data.py).

Each shard is read and checked by images.decode_or_reason and written by shards.write_shard
(errors table, shard, done-marker, in that order). A shard is finished when its done-marker
exists, so a rerun (after a crash, or nightly on the same plan) skips finished shards and redoes
only the rest. The plan is fixed by the manifest and the target size, and a rerun refuses a plan
that no longer matches (shards.load_or_record_plan). Every manifest row ends in exactly one shard
or one errors table: rows_in == rows_ok + rows_rejected per shard and in total.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from agejobs import shards, storage
from agejobs.config import DatasetConfig
from agejobs.datasets.manifest import MANIFEST_SCHEMA, Rejected, errors_to_table, read_manifest, record_rows
from agejobs.images import READ, decode_image, decode_or_reason
from agejobs.shards import errors_uri, shard_uri  # pack.shard_uri / pack.errors_uri for its readers

log = logging.getLogger(__name__)

PLAN_FILE = "pack.json"
PLAN_INDENT = 1  # a few scalars: one per line, for people
SHARD_SCHEMA = MANIFEST_SCHEMA.insert(2, pa.field("image_bytes", pa.binary()))
STAGE_READ, STAGE_DECODE = "pack-read", "pack-decode"
# Row groups of a few hundred faces keep a streaming reader's memory flat within a 64 MB shard.
ROW_GROUP_ROWS = 256
SIZE_SAMPLE_ROWS = 32


@dataclass(frozen=True)
class PackPlan:
    source: str
    rows: int
    rows_per_shard: int
    num_shards: int
    target_shard_bytes: int
    verify_images: bool
    # None: the manifest's own order (plans written before rows were permuted).
    row_order_seed: int | None = None

    def shard_rows(self, index: int) -> range:
        """Positions in the permuted row order (`manifest_order`) that shard `index` holds."""
        start = index * self.rows_per_shard
        return range(start, min(start + self.rows_per_shard, self.rows))

    def manifest_order(self):
        """Manifest row of each packed position: a seeded permutation (or the identity)."""
        import numpy as np

        if self.row_order_seed is None:
            return np.arange(self.rows)
        return np.random.default_rng(self.row_order_seed).permutation(self.rows)


def is_pack(uri: str) -> bool:
    return storage.exists(storage.join(uri, PLAN_FILE))


def write_plan(out_uri: str, plan: PackPlan) -> None:
    shards.record_plan(storage.join(out_uri, PLAN_FILE), plan, PLAN_INDENT)


def read_plan(out_uri: str) -> PackPlan:
    return shards.read_plan(storage.join(out_uri, PLAN_FILE), PackPlan)


def _mean_file_bytes(paths: list[str]) -> float:
    """Mean encoded size from an evenly spaced sample (one HEAD each, not one per image)."""
    step = max(1, len(paths) // SIZE_SAMPLE_ROWS)
    sizes = []
    for path in paths[::step][:SIZE_SAMPLE_ROWS]:
        fs, inner = storage.filesystem_for(path)
        try:
            sizes.append(fs.size(inner))
        except (FileNotFoundError, PermissionError, OSError):
            continue  # a missing file is rejected when its shard is packed
    return sum(sizes) / len(sizes) if sizes else 1.0


def make_plan(
    manifest: pa.Table, source: str, target_shard_bytes: int, verify_images: bool, row_order_seed: int = 0
) -> PackPlan:
    rows = manifest.num_rows
    rows_per_shard = max(1, int(target_shard_bytes // _mean_file_bytes(manifest.column("path").to_pylist())))
    num_shards = max(1, math.ceil(rows / rows_per_shard))
    return PackPlan(source, rows, rows_per_shard, num_shards, target_shard_bytes, verify_images, row_order_seed)


def shard_slice(manifest: pa.Table, plan: PackPlan, index: int, order=None) -> pa.Table:
    """The manifest rows of shard `index`; `order` is plan.manifest_order(), passed in when
    slicing many shards so the permutation is drawn once."""
    rows = plan.shard_rows(index)
    order = plan.manifest_order() if order is None else order
    return manifest.take(order[rows.start : rows.stop])


def pack_shard(rows_table: pa.Table, out_uri: str, plan: PackPlan, index: int) -> dict:
    """Read and (verify) the images of one shard's manifest rows, then write it."""
    rows = rows_table.to_pylist()
    paths = [row["path"] for row in rows]
    packed, rejected = [], []
    outcomes = decode_or_reason(paths, storage.read_bytes, decode_image if plan.verify_images else None)
    for row, outcome in zip(rows, outcomes):
        if outcome.error is None:
            packed.append({**row, "image_bytes": outcome.data})
        else:
            stage = STAGE_READ if outcome.stage == READ else STAGE_DECODE
            rejected.append(Rejected(row["path"], stage, outcome.reason, outcome.reason_class))
    return write_shard(packed, rejected, out_uri, index)


def write_shard(packed: list[dict], rejected: list[Rejected], out_uri: str, index: int) -> dict:
    """Shard `index` of a pack from its rows (SHARD_SCHEMA) and its rejected inputs (see
    shards.write_shard). Also how a generator writes a pack without loose files."""
    counts = {"rows_in": len(packed) + len(rejected), "rows_ok": len(packed), "rows_rejected": len(rejected)}
    shard = pa.Table.from_pylist(packed, schema=SHARD_SCHEMA)
    shards.write_shard(out_uri, index, shard, errors_to_table(rejected), counts, row_group_size=ROW_GROUP_ROWS)
    record_rows("pack", counts["rows_in"], rejected)
    return counts


def load_or_make_plan(
    manifest: pa.Table, manifest_uri: str, out_uri: str, target_shard_bytes: int, verify_images: bool
) -> PackPlan:
    """The recorded plan (its sharding keeps finished shards valid), or a new one, recorded."""
    rows = manifest.num_rows

    def refusal(recorded: PackPlan) -> str:
        return (
            f"{out_uri} holds a pack of {recorded.source} ({recorded.rows} rows, target "
            f"{recorded.target_shard_bytes} B); refusing to mix it with {manifest_uri} ({rows} rows, "
            f"target {target_shard_bytes} B). Use a new output prefix."
        )

    return shards.load_or_record_plan(
        storage.join(out_uri, PLAN_FILE),
        PackPlan,
        {"source": manifest_uri, "rows": rows, "target_shard_bytes": target_shard_bytes},
        lambda: make_plan(manifest, manifest_uri, target_shard_bytes, verify_images),
        refusal,
        PLAN_INDENT,
    )


def _pack_on_ray(todo: list[int], arguments, num_shards: int, max_in_flight: int) -> dict[int, dict]:
    """pack_shard(*arguments(index)) for every index as Ray tasks, at most `max_in_flight` at
    once; a shard's rows are sliced only when its task starts, so the slices never all coexist."""
    import ray

    remote_pack = ray.remote(num_cpus=1, max_retries=3)(pack_shard)
    results, pending, queue = {}, {}, list(todo)
    while queue or pending:
        while queue and len(pending) < max_in_flight:
            index = queue.pop(0)
            pending[remote_pack.remote(*arguments(index))] = index
        ready, _ = ray.wait(list(pending), num_returns=1)
        index = pending.pop(ready[0])
        results[index] = ray.get(ready[0])
        log.info("shard %d/%d done: %s", index + 1, num_shards, results[index])
    return results


def pack(
    manifest_uri: str,
    out_uri: str,
    target_shard_bytes: int = int(DatasetConfig.pack_shard_mb * 2**20),
    verify_images: bool = DatasetConfig.verify_images,
    runner: str = "ray",
    max_in_flight: int = 8,
) -> dict:
    """Pack every unfinished shard (Ray tasks with `runner="ray"`, in this process with
    "inline"); returns totals and how many shards were skipped as already done."""
    manifest = read_manifest(manifest_uri)
    plan = load_or_make_plan(manifest, manifest_uri, out_uri, target_shard_bytes, verify_images)
    results = dict(enumerate(shards.done_counts(out_uri, plan.num_shards)))
    todo = [index for index, counts in results.items() if counts is None]
    skipped = plan.num_shards - len(todo)
    log.info("pack %s -> %s: %d shards, %d already done", manifest_uri, out_uri, plan.num_shards, skipped)
    order = plan.manifest_order()
    if runner == "inline":
        for index in todo:
            results[index] = pack_shard(shard_slice(manifest, plan, index, order), out_uri, plan, index)
    elif runner == "ray":

        def arguments(index: int) -> tuple:
            return shard_slice(manifest, plan, index, order), out_uri, plan, index

        results.update(_pack_on_ray(todo, arguments, plan.num_shards, max_in_flight))
    else:
        raise ValueError(f"runner must be 'ray' or 'inline', got {runner!r}")
    totals = {key: sum(counts[key] for counts in results.values()) for key in ("rows_in", "rows_ok", "rows_rejected")}
    return {**totals, "shards": plan.num_shards, "shards_skipped": skipped}


def done_shards(pack_uri: str) -> list[str]:
    """URIs of the shards of a COMPLETE pack; an unfinished pack is an error naming it."""
    plan = read_plan(pack_uri)
    missing = shards.not_done(pack_uri, plan.num_shards)
    if missing:
        raise ValueError(
            f"{pack_uri}: pack is unfinished ({len(missing)} of {plan.num_shards} shards not done, "
            f"first {storage.shard_name(missing[0])}); rerun `agejobs pack` to finish it"
        )
    return [shard_uri(pack_uri, index) for index in range(plan.num_shards)]


def read_errors(pack_uri: str) -> pa.Table:
    plan = read_plan(pack_uri)
    tables = []
    for index in range(plan.num_shards):
        fs, path = storage.filesystem_for(errors_uri(pack_uri, index))
        tables.append(pq.read_table(path, filesystem=fs))
    return pa.concat_tables(tables, promote_options="default")  # shards written before reason_class
