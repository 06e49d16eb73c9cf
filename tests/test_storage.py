import pytest

from agejobs import storage


def test_atomic_write_round_trip_leaves_no_temp_files(tmp_path):
    target = tmp_path / "a" / "b" / "report.json"
    storage.write_bytes_atomic(str(target), b'{"mae": 1.5}')
    assert storage.read_bytes(str(target)) == b'{"mae": 1.5}'
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]


def test_file_uri_and_plain_path_agree(tmp_path):
    path = tmp_path / "x.bin"
    storage.write_bytes_atomic(f"file://{path}", b"abc")
    assert storage.read_bytes(str(path)) == b"abc"
    assert storage.exists(str(path)) and not storage.exists(str(tmp_path / "nope"))


def test_failed_write_leaves_nothing_behind(tmp_path):
    with pytest.raises(TypeError):
        storage.write_bytes_atomic(str(tmp_path / "y.bin"), object())  # not bytes: the write fails
    assert list(tmp_path.iterdir()) == []
