"""Local paths and remote URLs treated alike (fsspec), with atomic writes where the filesystem allows."""

from __future__ import annotations

import os
import tempfile

import fsspec


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> str:
    return url[len("file://"):] if url.startswith("file://") else url


def read_bytes(url: str) -> bytes:
    with fsspec.open(url, "rb") as f:
        return f.read()


def write_bytes(url: str, data: bytes) -> None:
    """Write all of `data` or nothing: locally via a temporary file renamed into place (a crash leaves the
    old file intact); object stores publish an upload only once it completes."""
    if not is_local(url):
        with fsspec.open(url, "wb") as f:
            f.write(data)
        return
    path = local_path(url)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
