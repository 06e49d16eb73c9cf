"""URIs to filesystems, and atomic writes. Every path the project takes goes through here.

Local paths, `file://` and any fsspec protocol (s3:// via s3fs) resolve with `fsspec`.
"""

from __future__ import annotations

import uuid

import fsspec


def filesystem_for(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a local path or URI."""
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def exists(uri: str) -> bool:
    fs, path = filesystem_for(uri)
    return fs.exists(path)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem_for(uri)
    with fs.open(path, "rb") as handle:
        return handle.read()


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write to a temporary sibling, then move it into place: readers never see half a file.

    On object stores a PUT is already atomic; the move keeps one code path for both.
    """
    fs, path = filesystem_for(uri)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with fs.open(tmp, "wb") as handle:
            handle.write(data)
        fs.mv(tmp, path)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp)
        raise
