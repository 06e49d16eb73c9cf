"""images.decode_or_reason, the one read -> decode loop of DecodeFaces, CheckDecodable and pack."""

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from agejobs import pack, storage
from agejobs.data import DecodeFaces
from agejobs.datasets.manifest import rows_to_table
from agejobs.images import DECODE, READ, NoFaceError, Preprocessing, decode_image, decode_or_reason
from agejobs.verify import CheckDecodable


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((10, 12, 3), 200, dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture
def inputs(tmp_path):
    """(good, undecodable, missing) image paths."""
    (tmp_path / "good.jpg").write_bytes(jpeg())
    (tmp_path / "notes.jpg").write_bytes(b"shopping list: eggs")
    return [str(tmp_path / name) for name in ("good.jpg", "notes.jpg", "missing.jpg")]


def test_a_good_image_an_undecodable_one_and_an_unreadable_one(inputs):
    good, bad, missing = decode_or_reason(inputs, storage.read_bytes, decode_image)
    assert good.error is None and good.stage == good.reason == good.reason_class == ""
    assert good.data == jpeg() and good.value.shape == (10, 12, 3)
    assert bad.stage == DECODE and bad.data == b"shopping list: eggs" and bad.value is None
    assert bad.reason.startswith(f"{inputs[1]}: cannot decode image") and bad.reason_class == "decode"
    assert missing.stage == READ and missing.data is None and missing.value is None
    assert inputs[2] in missing.reason and missing.reason_class == "missing"


def test_bytes_at_hand_are_used_as_given_and_only_read_without_a_process():
    sources, data = ["p/0.jpg", "p/1.jpg"], np.asarray([jpeg(), b""], dtype=object)
    only_read = list(decode_or_reason(sources, data))
    assert [outcome.data for outcome in only_read] == list(data) and all(o.error is None for o in only_read)
    decoded = list(decode_or_reason(sources, data, decode_image))
    assert decoded[0].error is None and decoded[1].reason == "p/1.jpg: empty file"


def test_the_exception_is_kept_so_a_caller_can_tell_no_face():
    def no_face(data, source):
        raise NoFaceError(f"{source}: no face found")

    (outcome,) = decode_or_reason(["wall.jpg"], [jpeg()], no_face)
    assert isinstance(outcome.error, NoFaceError) and outcome.reason_class == "no_face" and outcome.stage == DECODE


def test_a_bug_in_process_is_not_an_error_row():
    def buggy(data, source):
        raise KeyError("a bug, not a bad image")

    with pytest.raises(KeyError):
        list(decode_or_reason(["a.jpg"], [jpeg()], buggy))


def test_its_three_callers_report_the_same_reasons(inputs, tmp_path):
    batch = {"image_id": np.asarray(["g", "n", "m"]), "path": np.asarray(inputs)}
    decoded, checked = DecodeFaces(Preprocessing(16))(batch), CheckDecodable()(batch)
    expected = [(o.reason, o.reason_class) for o in decode_or_reason(inputs, storage.read_bytes, decode_image)]
    for out in (decoded, checked):
        assert list(zip(out["error"], out["error_class"])) == expected
    assert list(decoded["face_outcome"]) == ["not_searched", "", ""]
    rows = rows_to_table(
        [
            {
                "image_id": name,
                "path": path,
                "age": 1,
                "gender": 0,
                "subject_id": name,
                "split": "test",
                "dataset": "test",
            }
            for name, path in zip("gnm", inputs)
        ]
    )
    out = str(tmp_path / "packed")
    plan = pack.PackPlan(str(tmp_path), 3, 3, 1, 0, verify_images=True)
    assert pack.pack_shard(rows, out, plan, 0) == {"rows_in": 3, "rows_ok": 1, "rows_rejected": 2}
    errors = pq.read_table(pack.errors_uri(out, 0)).to_pylist()
    assert [(e["stage"], e["reason"], e["reason_class"]) for e in errors] == [
        (pack.STAGE_DECODE, *expected[1]),
        (pack.STAGE_READ, *expected[2]),
    ]
