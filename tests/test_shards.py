"""The one sharded-output writer (errors table -> data table -> done-marker) and the one plan rule
(keep the recorded plan, refuse one that does not match), as pack and score use them."""

import io
import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from agejobs import pack, score, shards, storage
from agejobs.datasets.manifest import rows_to_table, write_table_atomic

DATA = pa.table({"image_id": ["a", "b"], "x": [1, 2]})
ERRORS = pa.table({"input": ["c"], "reason": ["c: broken"]})
COUNTS = {"rows_in": 3, "rows_ok": 2, "rows_rejected": 1}


@pytest.fixture
def writes(monkeypatch):
    """Every file written through storage.write_bytes_atomic, in order (and then really written)."""
    order, write = [], storage.write_bytes_atomic

    def recording(uri, data):
        order.append(uri)
        write(uri, data)

    monkeypatch.setattr(storage, "write_bytes_atomic", recording)
    return order


def test_errors_table_then_data_table_then_marker_with_counts(tmp_path, writes):
    out = str(tmp_path)
    shards.write_shard(out, 7, DATA, ERRORS, COUNTS)
    assert writes == [
        f"{out}/{name}" for name in ("shard-00007.errors.parquet", "shard-00007.parquet", "shard-00007.parquet.done")
    ]
    assert pq.read_table(writes[0]).equals(ERRORS) and pq.read_table(writes[1]).equals(DATA)
    assert json.loads(storage.read_bytes(writes[2])) == COUNTS
    assert shards.done_counts(out, 8) == [None] * 7 + [COUNTS] and shards.not_done(out, 8) == list(range(7))


def test_a_failed_data_write_leaves_its_errors_table_and_no_marker(tmp_path, monkeypatch):
    out, write = str(tmp_path), storage.write_bytes_atomic

    def failing(uri, data):
        if uri.endswith("shard-00000.parquet"):
            raise OSError(f"{uri}: disk full")
        write(uri, data)

    monkeypatch.setattr(storage, "write_bytes_atomic", failing)
    with pytest.raises(OSError, match="disk full"):
        shards.write_shard(out, 0, DATA, ERRORS, COUNTS)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["shard-00000.errors.parquet"]
    assert shards.not_done(out, 1) == [0] and shards.done_counts(out, 1) == [None]


def test_counts_that_miss_a_row_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="do not add up to 2 rows \\+ 1 errors"):
        shards.write_shard(str(tmp_path), 0, DATA, ERRORS, {**COUNTS, "rows_in": 2})
    assert list(tmp_path.iterdir()) == []


def test_an_import_pair_has_no_marker_and_the_manifest_comes_last(tmp_path, writes):
    manifest, errors = str(tmp_path / "manifest.parquet"), str(tmp_path / "errors.parquet")
    shards.write_tables(manifest, DATA, errors, ERRORS)
    assert writes == [errors, manifest]


@dataclass(frozen=True)
class Plan:
    source: str
    shards: int


def test_a_recorded_plan_is_kept_and_one_for_other_inputs_refused_naming_both(tmp_path):
    plan_uri, made = str(tmp_path / "plan.json"), []

    def load(source, shards_wanted):
        return shards.load_or_record_plan(
            plan_uri,
            Plan,
            {"source": source},
            lambda: made.append(source) or Plan(source, shards_wanted),
            lambda recorded: f"recorded {recorded.source}, asked {source}",
        )

    assert load("archive-a", 3) == Plan("archive-a", 3)
    assert load("archive-a", 5) == Plan("archive-a", 3)  # the recorded sharding, not a new one
    assert made == ["archive-a"]
    with pytest.raises(ValueError, match="recorded archive-a, asked archive-b"):
        load("archive-b", 3)
    assert shards.read_plan(plan_uri, Plan) == Plan("archive-a", 3)


def _manifest(directory, names) -> str:
    rows = []
    for name in names:
        buffer = io.BytesIO()
        Image.fromarray(np.full((8, 8, 3), 100, dtype=np.uint8)).save(buffer, format="JPEG")
        storage.write_bytes_atomic(str(directory / name), buffer.getvalue())
        rows.append(
            {
                "image_id": name,
                "path": str(directory / name),
                "age": 30,
                "gender": 0,
                "subject_id": name,
                "split": "train",
                "dataset": "test",
            }
        )
    write_table_atomic(rows_to_table(rows), str(directory / "manifest.parquet"))
    return str(directory / "manifest.parquet")


def test_pack_refuses_a_plan_for_another_manifest_or_target_naming_both(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first, second = _manifest(tmp_path / "one", ["a.jpg", "b.jpg"]), _manifest(tmp_path / "two", ["c.jpg"])
    out = str(tmp_path / "packed")
    assert pack.pack(first, out, 10_000, runner="inline")["rows_ok"] == 2
    assert pack.pack(first, out, 10_000, runner="inline")["shards_skipped"] == 1
    with pytest.raises(ValueError, match=f"pack of {first} \\(2 rows.*refusing to mix it with {second} \\(1 rows"):
        pack.pack(second, out, 10_000, runner="inline")
    with pytest.raises(ValueError, match="target 10000 B.*refusing to mix.*target 20000 B"):
        pack.pack(first, out, 20_000, runner="inline")


def test_a_score_run_refuses_another_archive_naming_both(tmp_path):
    for name in ("x.jpg", "y.jpg"):
        (tmp_path / "night" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "night" / name).write_bytes(b"jpeg")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "z.jpg").write_bytes(b"jpeg")
    run = str(tmp_path / "scores" / "run")
    plan = score.load_or_make_plan(str(tmp_path / "night"), run, 1)
    assert plan.shard_rows == [1, 1] and score.load_or_make_plan(str(tmp_path / "night"), run, 5) == plan
    with pytest.raises(ValueError, match=f"scores {tmp_path}/night, not {tmp_path}/other"):
        score.load_or_make_plan(str(tmp_path / "other"), run, 1)
