"""Verify that every image of an import decodes, before anything trains on it.

    import (labels) -> verify (decode each image once) -> manifest.parquet + errors.parquet

An importer judges labels and file listings; only decoding finds corrupt, truncated or
non-image files. `agejobs ingest --verify` (and the experiment's import) runs this stage so that
the manifest holds only usable faces and errors.parquet holds every other input with its reason:
rows_in == rows_ok + rows_rejected over labels and pixels together.

On Ray (`runner="ray"`) the check is a Ray Data stage (`CheckDecodable`, a callable class for
`map_batches`) so a cluster's CPU nodes share it; `runner="inline"` runs the same class here.
Each image is read and decoded by images.decode_or_reason, the loop data.DecodeFaces and pack use:
an unreadable or undecodable one becomes its message and reason class.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from agejobs import storage
from agejobs.datasets.manifest import ImportResult, Rejected
from agejobs.images import decode_image, decode_or_reason

log = logging.getLogger(__name__)

STAGE = "decode"
BATCH_ROWS = 256


class CheckDecodable:
    """Ray Data stage: rows with a `path` -> {"image_id", "path", "error", "error_class"} ("" when
    the image decodes)."""

    def __call__(self, batch: dict) -> dict:
        errors, classes = [], []
        for outcome in decode_or_reason(batch["path"], storage.read_bytes, decode_image):
            errors.append(outcome.reason)  # the decoded pixels are dropped here, one image at a time
            classes.append(outcome.reason_class)
        return {
            "image_id": np.asarray(batch["image_id"]),
            "path": np.asarray(batch["path"]),
            "error": np.asarray(errors, dtype=object),
            "error_class": np.asarray(classes, dtype=object),
        }


def undecodable(table: pa.Table, runner: str = "ray", concurrency: int = 1) -> dict[str, tuple[str, str, str]]:
    """image_id -> (path, reason, reason class) for every row of a manifest table whose image does not decode."""
    rows = table.select(["image_id", "path"])
    if runner == "inline":
        check = CheckDecodable()
        outputs = [check(batch.to_pydict()) for batch in rows.to_batches(max_chunksize=BATCH_ROWS)]
    elif runner == "ray":
        import ray
        from ray.data import ActorPoolStrategy

        # Blocks of a few batches each, so that every actor of the pool gets work.
        blocks = [rows.slice(start, 4 * BATCH_ROWS) for start in range(0, max(rows.num_rows, 1), 4 * BATCH_ROWS)]
        ds = ray.data.from_arrow(blocks).map_batches(
            CheckDecodable,
            batch_size=BATCH_ROWS,
            batch_format="numpy",
            compute=ActorPoolStrategy(size=concurrency),
            num_cpus=0.5,
        )
        outputs = list(ds.iter_batches(batch_format="numpy", batch_size=None))
    else:
        raise ValueError(f"runner must be 'ray' or 'inline', got {runner!r}")
    failed = {}
    for out in outputs:
        for image_id, path, error, error_class in zip(out["image_id"], out["path"], out["error"], out["error_class"]):
            if error:
                failed[str(image_id)] = (str(path), str(error), str(error_class))
    return failed


def verify_import(result: ImportResult, runner: str = "ray", concurrency: int = 1) -> ImportResult:
    """The import with undecodable images moved from the table to the rejected list."""
    failed = undecodable(result.table, runner, concurrency)
    if not failed:
        return result
    keep = pc.invert(pc.is_in(result.table.column("image_id"), value_set=pa.array(sorted(failed))))
    rejected = result.rejected + [Rejected(path, STAGE, *why) for _, (path, *why) in sorted(failed.items())]
    log.info("verify: %d of %d images do not decode", len(failed), result.table.num_rows)
    return dataclasses.replace(result, table=result.table.filter(keep), rejected=rejected)
