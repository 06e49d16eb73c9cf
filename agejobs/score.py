"""`agejobs score`: nightly batch scoring of an image archive against a gallery, resumable.

    ARCHIVE: a prefix of loose images, or a pack (`agejobs pack`), local or s3://
      -> input shards: a pack's own shards; loose files sorted by name, `score.shard_images` each
      -> Ray Data: read row groups (tasks) -> DecodeFaces (actors) -> Embedder (actors, GPU if given)
                   -> SearchGallery (actors, each loading the ScaNN index from the gallery directory)
      -> driver: rows grouped by input shard; a complete shard is written by shards.write_shard

    OUT/RUN_ID/inputs.json                  the plan: source, kind, rows per shard    (written first)
    OUT/RUN_ID/inputs.parquet               loose archives only: input_shard, image_id, path; one
                                            row group per input shard
    OUT/RUN_ID/shard-00000.parquet          input_shard, image_id, path, predicted_age, age_spread,
                                            predicted_gender, gender_vote_share, face_outcome,
                                            faces_found, model_version, gallery_version, run_id,
                                            scored_at
    OUT/RUN_ID/shard-00000.errors.parquet   input_shard, image_id, path, stage, reason, reason_class,
                                            face_outcome
    OUT/RUN_ID/shard-00000.parquet.done     {"rows_in", "scored", "errors"}            (LAST)
    OUT/RUN_ID/run.json                     totals, once every shard is done

Exactly once: a shard's files are written whole (atomically, errors table, shard, done-marker:
shards.py) only when all of its input rows have arrived, and it counts as done only once its
marker exists. A killed run leaves whole shards and no marker-less half-shards that count; a rerun
(same RUN_ID) skips done shards and redoes the rest, so each input lands in exactly one output or
error row. The plan is fixed at the first run (shards.load_or_record_plan): a rerun scores the
same archive snapshot even if files were added since, and a rerun on another archive is refused.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from agejobs import metrics, pack, shards, storage
from agejobs.checkpoint import checkpoint_identity
from agejobs.config import Config, ResourcesConfig
from agejobs.data import DecodeFaces, read_row_groups, row_group_reads
from agejobs.gallery import Embedder, check_gallery_matches, load_gallery, read_gallery_manifest
from agejobs.images import Preprocessing

log = logging.getLogger(__name__)

PLAN_FILE = "inputs.json"
INPUTS_FILE = "inputs.parquet"
RUN_FILE = "run.json"
STAGE_DECODE = "decode"
PREDICTION_COLUMNS = ("predicted_age", "age_spread", "predicted_gender", "gender_vote_share")


@dataclass(frozen=True)
class ScorePlan:
    source: str
    kind: str  # "pack" | "loose"
    files: list[str]  # per input shard: the Parquet file its rows are read from
    row_groups: list[list[int]]  # per input shard: row groups of that file
    shard_rows: list[int]

    @property
    def num_shards(self) -> int:
        return len(self.shard_rows)


def default_run_id() -> str:
    """Nightly runs are named by their UTC date: rerunning the same night resumes the same run."""
    return time.strftime("%Y-%m-%d", time.gmtime())


def _row_group_rows(uri: str) -> list[int]:
    fs, path = storage.filesystem_for(uri)
    with fs.open(path, "rb") as handle:
        metadata = pq.ParquetFile(handle).metadata
    return [metadata.row_group(index).num_rows for index in range(metadata.num_row_groups)]


def make_plan(source_uri: str, run_uri: str, shard_images: int) -> ScorePlan:
    """Input shards of an archive. Loose files are listed once and recorded in inputs.parquet."""
    if pack.is_pack(source_uri):
        files, groups, rows = [], [], []
        for shard in pack.done_shards(source_uri):
            per_group = _row_group_rows(shard)
            files.append(shard)
            groups.append(list(range(len(per_group))))
            rows.append(sum(per_group))
        return ScorePlan(source_uri, "pack", files, groups, rows)
    if shard_images < 1:
        raise ValueError(f"score.shard_images must be >= 1, got {shard_images}")
    listing = [uri for uri, _ in storage.find_files(source_uri)]
    if not listing:
        raise ValueError(f"{source_uri}: no files to score")
    prefix = source_uri.rstrip("/") + "/"
    table = pa.table(
        {
            "input_shard": pa.array([index // shard_images for index in range(len(listing))], pa.int32()),
            "image_id": pa.array([uri.removeprefix(prefix) for uri in listing]),
            "path": pa.array(listing),
        }
    )
    # Row groups of at most pack.ROW_GROUP_ROWS, none crossing a shard: one Ray Data block each,
    # so the stages pipeline in small blocks whatever the shard size (as they do for packs).
    buffer = pa.BufferOutputStream()
    shard_rows, row_groups, next_group = [], [], 0
    with pq.ParquetWriter(buffer, table.schema) as writer:
        for start in range(0, len(listing), shard_images):
            rows = min(shard_images, len(listing) - start)
            groups = -(-rows // pack.ROW_GROUP_ROWS)
            writer.write_table(table.slice(start, rows), row_group_size=pack.ROW_GROUP_ROWS)
            shard_rows.append(rows)
            row_groups.append(list(range(next_group, next_group + groups)))
            next_group += groups
    inputs_uri = storage.join(run_uri, INPUTS_FILE)
    storage.write_bytes_atomic(inputs_uri, buffer.getvalue().to_pybytes())
    return ScorePlan(source_uri, "loose", [inputs_uri] * len(shard_rows), row_groups, shard_rows)


def load_or_make_plan(source_uri: str, run_uri: str, shard_images: int) -> ScorePlan:
    """The run's recorded plan (an archive snapshot), or a new one, recorded."""
    return shards.load_or_record_plan(
        storage.join(run_uri, PLAN_FILE),
        ScorePlan,
        {"source": source_uri},
        lambda: make_plan(source_uri, run_uri, shard_images),
        lambda recorded: f"run {run_uri} scores {recorded.source}, not {source_uri}: use another run id or output",
    )


# Output files are named like a pack's: shard-NNNNN.parquet, .errors.parquet, .parquet.done.
output_uri, errors_uri = shards.shard_uri, shards.errors_uri


def read_input_rows(batch: dict, columns: list[str]):
    """Ray Data stage (a task): one {"shard", "row_group", "input_shard"} descriptor -> its rows."""
    table = read_row_groups({"shard": batch["shard"], "row_group": batch["row_group"]}, columns)
    shard = int(batch["input_shard"][0])
    return table.append_column("input_shard", pa.array(np.full(len(table), shard, dtype=np.int32)))


class EmbedFaces(Embedder):
    """The gallery's Embedder as a scoring stage: the same model code, timed for the metrics."""

    def __call__(self, batch: dict) -> dict:
        started = time.perf_counter()
        out = super().__call__(batch)
        metrics.observe("score_batch_latency_seconds", time.perf_counter() - started, stage="embed")
        return out


class SearchGallery:
    """Ray Data stage: embeddings -> estimates from the gallery. Each actor loads the gallery
    (ScaNN searchers do not pickle) for the model with this fingerprint, and only for it."""

    def __init__(self, gallery_uri: str, checkpoint: str, fingerprint: str):
        self.gallery = load_gallery(gallery_uri, checkpoint, fingerprint)

    def __call__(self, batch: dict) -> dict:
        started = time.perf_counter()
        ok = np.asarray(batch["error"]) == ""
        out = {
            name: batch[name]
            for name in ("input_shard", "image_id", "path", "error", "error_class", "face_outcome", "faces_found")
        }
        estimates = self.gallery.estimate(batch["age_embedding"][ok], batch["gender_embedding"][ok]) if ok.any() else {}
        for name, dtype in zip(PREDICTION_COLUMNS, (np.float32, np.float32, np.int8, np.float32)):
            column = np.full(len(ok), -1 if dtype == np.int8 else np.nan, dtype=dtype)
            if ok.any():
                column[ok] = estimates[name]
            out[name] = column
        metrics.observe("score_batch_latency_seconds", time.perf_counter() - started, stage="search")
        metrics.inc("score_images", int(ok.sum()))
        for reason_class, count in zip(*np.unique(batch["error_class"][~ok].astype(str), return_counts=True)):
            metrics.inc("score_errors", int(count), reason=reason_class)
        return out


class ShardWriter:
    """Driver side: collects rows by input shard; writes a shard whole when all its rows are in.

    Rows are kept as the arriving batches' column slices (numpy), not one Python object per row:
    at a million faces per-row dicts made the driver's memory churn and grow with the run."""

    def __init__(self, run_uri: str, plan: ScorePlan, pending: list[int], stamp: dict, fail_after: int = 0):
        self.run_uri, self.plan, self.stamp, self.fail_after = run_uri, plan, stamp, fail_after
        self.parts: dict[int, list[dict[str, np.ndarray]]] = {index: [] for index in pending}
        self.seen: dict[int, set[str]] = {index: set() for index in pending}
        self.written: list[int] = []
        for index in pending:
            if plan.shard_rows[index] == 0:
                self._write(index)

    def add(self, batch: dict) -> None:
        shards, ids = np.asarray(batch["input_shard"]), np.asarray(batch["image_id"]).astype(str)
        for index in (int(value) for value in np.unique(shards)):
            if index not in self.parts:
                raise RuntimeError(f"rows of input shard {index} arrived, which this run did not ask for")
            selected = np.flatnonzero(shards == index)
            seen = self.seen[index]
            # Keyed by image_id: a row delivered twice (a retried task) is kept once.
            fresh = [position for position in selected if ids[position] not in seen]
            seen.update(ids[fresh])
            if fresh:
                self.parts[index].append({name: np.asarray(values)[fresh] for name, values in batch.items()})
            if len(seen) == self.plan.shard_rows[index]:
                self._write(index)

    def _write(self, index: int) -> None:
        parts = self.parts.pop(index)
        self.seen.pop(index)
        columns = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]} if parts else {}
        ok = columns["error"].astype(str) == "" if parts else np.zeros(0, dtype=bool)
        predictions, errors = _prediction_table(columns, ok, index, self.stamp), _error_table(columns, ok, index)
        counts = {"rows_in": len(ok), "scored": predictions.num_rows, "errors": errors.num_rows}
        shards.write_shard(self.run_uri, index, predictions, errors, counts)
        self.written.append(index)
        metrics.inc("score_shards_done")
        metrics.set_gauge("score_run_shards_done", self.plan.num_shards - len(self.parts))
        metrics.set_gauge("score_last_shard_done_timestamp_seconds", time.time())
        log.info("scored shard %d/%d: %s", index + 1, self.plan.num_shards, counts)
        if self.fail_after and len(self.written) >= self.fail_after:
            print(f"[score] fault drill: the driver exits after writing {len(self.written)} shards", flush=True)
            os._exit(3)


def _column(columns: dict[str, np.ndarray], name: str, mask: np.ndarray, dtype) -> pa.Array:
    values = columns[name][mask] if columns else []
    return pa.array(np.asarray(values).astype(str) if dtype == pa.string() else values, dtype)


def _prediction_table(columns: dict[str, np.ndarray], ok: np.ndarray, index: int, stamp: dict) -> pa.Table:
    """Input shard `index`'s scored rows (`ok`) as an output shard, stamped with model, gallery and run."""
    scored = int(ok.sum())
    scored_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return pa.table(
        {
            "input_shard": pa.array(np.full(scored, index, dtype=np.int32)),
            "image_id": _column(columns, "image_id", ok, pa.string()),
            "path": _column(columns, "path", ok, pa.string()),
            "predicted_age": _column(columns, "predicted_age", ok, pa.float32()),
            "age_spread": _column(columns, "age_spread", ok, pa.float32()),
            "predicted_gender": _column(columns, "predicted_gender", ok, pa.int8()),
            "gender_vote_share": _column(columns, "gender_vote_share", ok, pa.float32()),
            "face_outcome": _column(columns, "face_outcome", ok, pa.string()),
            "faces_found": _column(columns, "faces_found", ok, pa.int16()),
            **{name: pa.array([value] * scored, pa.string()) for name, value in stamp.items()},
            "scored_at": pa.array([scored_at] * scored, pa.string()),
        }
    )


def _error_table(columns: dict[str, np.ndarray], ok: np.ndarray, index: int) -> pa.Table:
    """Input shard `index`'s failed rows (not `ok`) as its errors table."""
    failed = ~ok
    return pa.table(
        {
            "input_shard": pa.array(np.full(int(failed.sum()), index, dtype=np.int32)),
            "image_id": _column(columns, "image_id", failed, pa.string()),
            "path": _column(columns, "path", failed, pa.string()),
            "stage": pa.array([STAGE_DECODE] * int(failed.sum()), pa.string()),
            "reason": _column(columns, "error", failed, pa.string()),
            "reason_class": _column(columns, "error_class", failed, pa.string()),
            "face_outcome": _column(columns, "face_outcome", failed, pa.string()),
        }
    )


def finished_run(run_uri: str, stamp: dict) -> dict | None:
    """The stored totals of a run whose every shard is done, or None if it never finished. A
    finished run scored by another model or gallery is refused: its rows carry the other stamp."""
    run_file = storage.join(run_uri, RUN_FILE)
    if not storage.exists(run_file):
        return None
    stored = json.loads(storage.read_bytes(run_file))
    theirs = {key: stored.get(key) for key in stamp}
    if theirs != stamp:
        raise ValueError(f"run {run_uri} was scored with {theirs}, not {stamp}: use another run id or output")
    return stored


def scoring_pipeline(
    plan: ScorePlan,
    pending: list[int],
    checkpoint: str,
    gallery_uri: str,
    fingerprint: str,
    preprocessing: Preprocessing,
    resources: ResourcesConfig,
):
    """The Ray Dataset of the pending input shards' rows through read -> decode -> embed -> search,
    each stage sized by its `resources` block; None when no pending shard has rows."""
    from ray.data import ActorPoolStrategy

    descriptors = [
        {"shard": plan.files[index], "row_group": group, "input_shard": index}
        for index in pending
        if plan.shard_rows[index]
        for group in plan.row_groups[index]
    ]
    if not descriptors:
        return None
    read, decode, embed, search = resources.read, resources.decode, resources.embed, resources.search
    columns = ["image_id", "path"] + (["image_bytes"] if plan.kind == "pack" else [])
    ds = row_group_reads(descriptors, columns, read, reader=read_input_rows)
    ds = ds.map_batches(
        DecodeFaces,
        fn_constructor_kwargs={"preprocessing": preprocessing},
        batch_size=decode.batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(min_size=1, max_size=decode.concurrency),
        num_cpus=decode.cpus,
    )
    ds = ds.map_batches(
        EmbedFaces,
        fn_constructor_kwargs={"checkpoint_dir": checkpoint, "torch_threads": embed.torch_threads},
        batch_size=embed.batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(min_size=1, max_size=embed.concurrency),
        num_cpus=0 if embed.gpus else embed.cpus,
        num_gpus=embed.gpus,
    )
    return ds.map_batches(
        SearchGallery,
        fn_constructor_kwargs={"gallery_uri": gallery_uri, "checkpoint": checkpoint, "fingerprint": fingerprint},
        batch_size=search.batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(min_size=1, max_size=search.concurrency),
        num_cpus=search.cpus,
    )


def write_scored_rows(ds, writer: ShardWriter, started: float) -> float | None:
    """Every row of the pipeline into its shard's writer; returns seconds to the first output."""
    first_output_s = None
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        if first_output_s is None:  # actors started, model and index loaded, a block through every stage
            first_output_s = round(time.perf_counter() - started, 2)
            log.info("first scored rows after %.1f s", first_output_s)
        writer.add(batch)
    return first_output_s


def start_run_gauges(plan: ScorePlan, pending: list[int]) -> None:
    for name, value in (
        ("score_run_shards", plan.num_shards),
        ("score_run_shards_done", plan.num_shards - len(pending)),
        ("score_run_started_timestamp_seconds", time.time()),
        ("score_last_shard_done_timestamp_seconds", time.time()),
    ):
        metrics.set_gauge(name, value)


def score_archive(source_uri: str, out_uri: str, run_id: str, checkpoint: str, gallery_uri: str, cfg: Config) -> dict:
    """Score every unfinished input shard of the archive; returns the run's totals."""
    started = time.perf_counter()
    # One spelling per input: output paths are absolute, so they join with manifests' paths.
    source_uri, out_uri = storage.absolute(source_uri), storage.absolute(out_uri)
    run_uri = storage.join(out_uri, run_id)
    model_cfg, fingerprint = checkpoint_identity(checkpoint)
    preprocessing = Preprocessing.of(model_cfg.data)  # the model's own, never the job config's
    gallery_manifest = read_gallery_manifest(gallery_uri)
    check_gallery_matches(gallery_manifest, gallery_uri, checkpoint, fingerprint)  # before any work
    plan = load_or_make_plan(source_uri, run_uri, cfg.score.shard_images)
    pending = shards.not_done(run_uri, plan.num_shards)
    done = plan.num_shards - len(pending)
    log.info("score %s -> %s: %d input shards, %d already done", source_uri, run_uri, plan.num_shards, done)
    stamp = {
        "model_version": fingerprint[:16],
        "gallery_version": gallery_manifest["gallery_version"],
        "run_id": run_id,
    }
    finished = finished_run(run_uri, stamp) if not pending else None
    if finished is not None:  # a rerun of a finished night writes nothing, run.json included
        return {
            **finished,
            "shards_skipped": plan.num_shards,
            "shards_written": 0,
            "first_output_s": None,
            "seconds": round(time.perf_counter() - started, 2),
        }
    start_run_gauges(plan, pending)
    writer = ShardWriter(run_uri, plan, pending, stamp, cfg.score.fail_after_shards)
    ds = scoring_pipeline(plan, pending, checkpoint, gallery_uri, fingerprint, preprocessing, cfg.resources)
    first_output_s = write_scored_rows(ds, writer, started) if ds is not None else None
    if writer.parts:
        missing = sorted(writer.parts)
        raise RuntimeError(f"run {run_uri}: input shards {missing[:5]} did not receive all their rows")
    counts = shards.done_counts(run_uri, plan.num_shards)
    totals = {key: sum(c[key] for c in counts) for key in ("rows_in", "scored", "errors")}
    summary = {
        "run_id": run_id,
        "source": source_uri,
        "shards": plan.num_shards,
        "shards_skipped": plan.num_shards - len(pending),
        "shards_written": len(writer.written),
        **totals,
        **stamp,
        "first_output_s": first_output_s,
        "seconds": round(time.perf_counter() - started, 2),
    }
    storage.write_bytes_atomic(storage.join(run_uri, RUN_FILE), json.dumps(summary, indent=1).encode())
    return summary


def read_scored(run_uri: str) -> tuple[pa.Table, pa.Table]:
    """(predictions, errors) of a finished run, every shard."""
    summary = json.loads(storage.read_bytes(storage.join(run_uri, RUN_FILE)))
    predictions, errors = [], []
    for index in range(summary["shards"]):
        for uris, parts in ((output_uri(run_uri, index), predictions), (errors_uri(run_uri, index), errors)):
            fs, path = storage.filesystem_for(uris)
            parts.append(pq.read_table(path, filesystem=fs))
    # promote: shards of a run resumed across the reason_class change have two error schemas
    return pa.concat_tables(predictions), pa.concat_tables(errors, promote_options="default")
