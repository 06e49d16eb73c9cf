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


def test_local_find_files_lists_what_fsspec_lists(tmp_path):
    """The local fast path (os.scandir) against fsspec's find: same files, sizes, order; hidden
    names left out at any depth; a file is its own listing; a missing prefix names itself."""
    import fsspec

    for name, size in (
        ("a/b/c.jpg", 3),
        ("a/d.jpg", 1),
        ("z.jpg", 0),
        ("a/.tmp.jpg", 5),
        (".git/x", 2),
        ("a/.hidden/e.jpg", 4),
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x" * size)
    fs = fsspec.filesystem("file")
    expected = sorted(
        (path, info["size"])
        for path, info in fs.find(str(tmp_path), detail=True).items()
        if not any(part.startswith(".") for part in path[len(str(tmp_path)) :].split("/"))
    )
    assert (
        storage.find_files(str(tmp_path))
        == expected
        == [(str(tmp_path / "a/b/c.jpg"), 3), (str(tmp_path / "a/d.jpg"), 1), (str(tmp_path / "z.jpg"), 0)]
    )
    assert storage.find_files(str(tmp_path / "a/d.jpg")) == [(str(tmp_path / "a/d.jpg"), 1)]
    with pytest.raises(storage.StorageError, match="no_such_dir"):
        storage.find_files(str(tmp_path / "no_such_dir"))
