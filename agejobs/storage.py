"""URIs to filesystems, and atomic writes. Every path the project takes goes through here.

Local paths, `file://` and any fsspec protocol (s3:// via s3fs) resolve with `fsspec`.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import fsspec


def filesystem_for(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a local path or URI."""
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    """Absolute local path of a local path or file:// URI."""
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    return os.path.abspath(uri)


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


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
    with fs.open(tmp, "wb") as handle:
        handle.write(data)
    fs.mv(tmp, path)


def write_json_atomic(uri: str, payload: Any) -> None:
    write_bytes_atomic(uri, (json.dumps(payload, indent=2, sort_keys=False) + "\n").encode())


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))
