"""Checkpoints that survive being interrupted, scale with the rank count, and live on shared or object storage.

Layout under `<output_dir>/checkpoints/` (a shared path, or an fsspec URL such as s3://bucket/run/checkpoints):
    step00000120/                 DeepSpeed's files (model states, optimizer partitions, LR scheduler)
        ardiff-rank00000.pt       per-rank state, small: step, RNG states, data reader
        ema.pt                    the EMA, once per job: rank 0 writes it under ZeRO 0-2 ...
        ema-rank00000.pt          ... and each rank its partition under ZeRO-3
        COMPLETE                  written last, by rank 0, after every rank has finished
    latest                        the tag of the newest COMPLETE checkpoint, replaced after COMPLETE

On resume a rank reads only its own files (and rank 0 the EMA); after a world-size change every rank also
reads the other ranks' small state files, for their data readers' positions. Rank 0 chooses the checkpoint
and tells the others, so ranks never disagree about where they continue.

A write that is killed part way leaves a directory without COMPLETE: `latest` still names the previous
checkpoint, and resuming never picks an incomplete one. With an object-store URL, DeepSpeed writes into a
local staging directory per rank, each rank uploads its own files, and COMPLETE then `latest` are uploaded
only after every rank's upload has finished; resuming downloads just the files this rank needs.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path

import fsspec
import torch
import torch.distributed as dist

from ardiff_scale.io import is_local, local_path, write_bytes

log = logging.getLogger("ardiff.train")

COMPLETE = "COMPLETE"
LATEST = "latest"
EMA_FILE = "ema.pt"
TAG = re.compile(r"^step(\d{8})$")
# DeepSpeed's per-rank file names carry the data-parallel rank as "pp_rank_<r>" ("mp_rank_00" is the
# model-parallel rank, always 0 here); ours carry "-rank<r>".
_RANK_IN_NAME = re.compile(r"(?:pp_rank_|-rank)0*(\d+)")


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def rank_file(directory: Path, rank: int) -> Path:
    return directory / f"ardiff-rank{rank:05d}.pt"


def ema_file(directory: Path, rank: int, partitioned: bool) -> Path:
    return directory / (f"ema-rank{rank:05d}.pt" if partitioned else EMA_FILE)


def needed_by(name: str, rank: int, same_world: bool) -> bool:
    """Whether `rank` must read file `name` of a checkpoint to resume (other ranks' DeepSpeed partitions
    and EMA slices are never needed; other ranks' small state files are, after a world-size change)."""
    match = _RANK_IN_NAME.search(name)
    if name == EMA_FILE:
        return rank == 0
    if match is None or int(match.group(1)) == rank:
        return True
    return not same_world and name.startswith("ardiff-rank")


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


class CheckpointStore:
    """A run's checkpoint root: a directory every rank sees, or an object-store URL (fsspec)."""

    def __init__(self, root: str, staging: Path | None = None):
        self.root = root.rstrip("/")
        self.remote = not is_local(root)
        self.fs, self.path = fsspec.core.url_to_fs(self.root) if self.remote else (None, local_path(self.root))
        # Where DeepSpeed reads and writes: the root itself, or this rank's local staging directory.
        self.local = staging if self.remote else Path(self.path)

    def _url(self, *parts: str) -> str:
        return "/".join([self.path, *parts])

    def read_text(self, *parts: str) -> str | None:
        try:
            if self.remote:
                return self.fs.cat_file(self._url(*parts)).decode()
            return Path(self.path, *parts).read_text()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def write_text(self, text: str, *parts: str) -> None:
        if self.remote:
            self.fs.pipe_file(self._url(*parts), text.encode())  # an object appears whole or not at all
        else:
            write_bytes(str(Path(self.path, *parts)), text.encode())

    def complete_tags(self) -> list[str]:
        """Tags of complete checkpoints, oldest first."""
        if self.remote:
            try:
                names = [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.path, detail=False)]
            except FileNotFoundError:
                return []
            self.fs.invalidate_cache()
        else:
            root = Path(self.path)
            names = [d.name for d in root.iterdir()] if root.is_dir() else []
        return sorted(n for n in names if TAG.match(n) and self.read_text(n, COMPLETE) is not None)

    def find_resume(self) -> str | None:
        """The checkpoint to continue from: `latest` if it is complete, else the newest complete one."""
        tag = (self.read_text(LATEST) or "").strip()
        if tag and self.read_text(tag, COMPLETE) is not None:
            return tag
        if tag:
            log.warning("%s names %s, which is incomplete; looking for an older complete checkpoint",
                        self._url(LATEST), tag)
        tags = self.complete_tags()
        return tags[-1] if tags else None

    def info(self, tag: str) -> dict:
        return json.loads(self.read_text(tag, COMPLETE))

    def upload(self, tag: str) -> None:
        """Object store: this rank's staged files of `tag` (its staging directory holds only its own)."""
        if self.remote:
            for path in sorted((self.local / tag).rglob("*")):
                if path.is_file():
                    self.fs.put_file(str(path), self._url(tag, str(path.relative_to(self.local / tag))))

    def download(self, tag: str, rank: int, same_world: bool) -> list[str]:
        """Object store: the files of `tag` that `rank` needs, into its staging directory; returns them."""
        if not self.remote:
            return []
        fetched = []
        for remote in self.fs.find(self._url(tag)):
            relative = remote[len(self._url(tag)) + 1:]
            if needed_by(relative.rsplit("/", 1)[-1], rank, same_world):
                target = self.local / tag / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(remote, str(target))
                fetched.append(relative)
        return fetched

    def remove(self, tag: str) -> None:
        if self.remote:
            self.fs.rm(self._url(tag), recursive=True)
        else:
            shutil.rmtree(Path(self.path, tag), ignore_errors=True)


def staging_dir(root_url: str, rank: int, base: str = "") -> Path:
    """A local directory per rank for a remote root: DeepSpeed writes there before the upload."""
    key = sha256(root_url.encode()).hexdigest()[:12]
    return Path(base or tempfile.gettempdir()) / "ardiff-staging" / key / f"rank{rank:05d}"


@dataclass
class LoadedState:
    rank_state: dict  # this rank's step, RNGs and data reader (rank 0's after a world-size change)
    data_states: dict | list[dict]  # this rank's reader state, or every saved rank's after a world-size change
    ema: dict[str, torch.Tensor] | None  # what this rank keeps of the EMA, None when it keeps none
    seconds: float
    files_read: list[str]  # names of our own files this rank read (DeepSpeed reads its own)


def save(engine, store: CheckpointStore, step: int, rank_state: dict, ema_state: dict[str, torch.Tensor] | None,
         ema_partitioned: bool, world: int, keep: int) -> float:
    """Every rank calls this. Returns the seconds it took."""
    started = time.perf_counter()
    tag = tag_for(step)
    rank = dist.get_rank()
    directory = store.local / tag
    # universal_checkpoint_info lets DeepSpeed's ds_to_universal convert it for another world size.
    engine.save_checkpoint(str(store.local), tag=tag, save_latest=False,
                           client_state={"step": step, "universal_checkpoint_info": {"universal_checkpoint_version": 0.4}})
    _atomic_torch_save(rank_state, rank_file(directory, rank))
    if ema_state:
        _atomic_torch_save(ema_state, ema_file(directory, rank, ema_partitioned))
    store.upload(tag)
    dist.barrier()
    if rank == 0:
        info = {"step": step, "world_size": world, "zero_stage": rank_state["zero_stage"],
                "ema": "partitioned" if ema_partitioned else ("rank0" if ema_state else "none"), "time": time.time()}
        store.write_text(json.dumps(info), tag, COMPLETE)
        store.write_text(tag, LATEST)
        for old in store.complete_tags()[:-keep]:
            store.remove(old)
    dist.barrier()
    if store.remote:
        shutil.rmtree(directory, ignore_errors=True)  # staging holds one checkpoint at a time
    return time.perf_counter() - started


def load(engine, store: CheckpointStore, tag: str, rank: int, keeps_ema: bool, ema_partitioned: bool,
         ds_tag: str | None = None) -> LoadedState:
    """Load DeepSpeed's state (from `ds_tag`, e.g. the universal form, if given) and this rank's own."""
    started = time.perf_counter()
    info = store.info(tag)
    world = dist.get_world_size() if dist.is_initialized() else 1
    same_world = info["world_size"] == world
    store.download(tag, rank, same_world)
    directory = store.local / tag
    path, _ = engine.load_checkpoint(str(store.local), tag=ds_tag or tag, load_module_strict=True)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {store.root}/{tag}")
    read: list[str] = []

    def read_file(file: Path):
        read.append(file.name)
        # Our files hold tensors (RNG states included), numbers and strings: nothing that needs unpickling
        # code, so a tampered file on shared storage cannot run any.
        return torch.load(file, map_location="cpu", weights_only=True)

    if same_world:
        own = read_file(rank_file(directory, rank))
        data: dict | list[dict] = own["data"]
    else:
        states = [read_file(rank_file(directory, r)) for r in range(info["world_size"])]
        own, data = states[0], [s["data"] for s in states]
    ema = None
    if keeps_ema and (same_world or not ema_partitioned):
        ema_path = ema_file(directory, rank, ema_partitioned)
        if ema_path.exists():
            ema = read_file(ema_path)
        elif "ema" in own:  # a checkpoint written before the EMA was stored once
            ema = own.pop("ema")
    return LoadedState(own, data, ema, time.perf_counter() - started, read)
