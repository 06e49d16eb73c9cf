from agejobs import storage


def test_atomic_json_round_trip_leaves_no_temp_files(tmp_path):
    target = tmp_path / "a" / "b" / "report.json"
    storage.write_json_atomic(str(target), {"mae": 1.5})
    assert storage.read_json(str(target)) == {"mae": 1.5}
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]


def test_file_uri_and_plain_path_agree(tmp_path):
    path = tmp_path / "x.bin"
    storage.write_bytes_atomic(f"file://{path}", b"abc")
    assert storage.read_bytes(str(path)) == b"abc"
    assert storage.exists(str(path)) and not storage.exists(str(tmp_path / "nope"))
    assert storage.local_path(f"file://{path}") == str(path)
    assert storage.is_local(str(path)) and not storage.is_local("s3://bucket/key")
