"""A run's output directory, the same to every rank: a shared filesystem path or an object-store URL.

Local paths are used directly. For a URL (s3://, gs://, ... through fsspec) files are written to a local
directory first and published: config.yaml and the shared-directory check at once, checkpoints by the
checkpoint store as each completes, metrics.jsonl, the exported models and the loss plot at the end. Nothing
is ever written to a relative path that merely looks like the URL.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import fsspec

from ardiff_scale.io import is_local, local_path, write_bytes
from ardiff_scale.train.checkpoint import CheckpointStore, staging_dir


class RunDir:
    def __init__(self, output_dir: str, rank: int, staging: str = ""):
        self.url = output_dir.rstrip("/")
        self.remote = not is_local(self.url)
        if self.remote:
            self.fs, self.path = fsspec.core.url_to_fs(self.url)
            self.local = staging_dir(self.url, rank, staging).parent / "run"
        else:
            self.fs, self.path = None, local_path(self.url)
            self.local = Path(self.path)
        if rank == 0:
            self.local.mkdir(parents=True, exist_ok=True)
        self.checkpoints = CheckpointStore(f"{self.url}/checkpoints",
                                           staging_dir(f"{self.url}/checkpoints", rank, staging))

    def url_of(self, name: str) -> str:
        return f"{self.url}/{name}"

    def read_text(self, name: str) -> str | None:
        try:
            if self.remote:
                self.fs.invalidate_cache()
                return self.fs.cat_file(f"{self.path}/{name}").decode()
            return (self.local / name).read_text()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def write_text(self, text: str, name: str) -> None:
        if self.remote:
            self.fs.pipe_file(f"{self.path}/{name}", text.encode())
        else:
            write_bytes(str(self.local / name), text.encode())

    def saved_config_path(self, text: str) -> Path:
        """A local file holding `text` (the run's saved config.yaml), for the recipe loader."""
        if not self.remote:
            return self.local / "config.yaml"
        path = Path(tempfile.mkdtemp(prefix="ardiff-config-")) / "config.yaml"
        path.write_text(text)
        return path

    def publish(self, names: list[str]) -> None:
        """Object store: upload these files or directories of the local run directory (rank 0)."""
        if not self.remote:
            return
        for name in names:
            source = self.local / name
            files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
            for path in files:
                if path.exists():
                    self.fs.put_file(str(path), f"{self.path}/{path.relative_to(self.local).as_posix()}")
