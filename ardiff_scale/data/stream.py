"""Streaming webdataset shards from any fsspec URL as ready micro-batches, split by rank and worker, with
exact resume.

How the order is made (and why it can be resumed):
- Each epoch, the shard list is permuted with (seed, epoch); rank r takes every world-th shard, and within a
  rank the shards are dealt to R *roles*, one per DataLoader worker (R = 1 without workers).
- A role keeps `open_shards` shards open. Each shard's samples are permuted with (seed, epoch, shard), and
  each next sample comes from an open shard chosen by the role's own RNG (seeded with seed, epoch, rank,
  role). This interleave plays the part of a shuffle buffer, with one property a FIFO buffer lacks: what a
  role has consumed of every shard is always a *prefix* of that shard's permuted order.
- A role turns every `batch_size` consecutive samples into one micro-batch (tensors, made by the caller's
  `make_batch`) in its own worker process; the training process only receives them.
- The training process takes one batch from each role in turn (role 0, 1, ..., R-1, 0, ...), whatever order
  the DataLoader delivers them in, so the stream is a pure function of (seed, rank, world, R, batch_size).

Each batch carries its role's *cursor* as it stood after the batch: the epoch, how far into the epoch's shard
list, the open shards, the RNG state and the samples consumed per shard. The reader state is the cursor of
every role at the last batch handed out, so
- resuming with the same layout (rank, world, R) restores each role's cursor: nothing is replayed or read
  beyond the open shards, and the stream continues exactly;
- resuming on another layout (another R or world size, given every saved rank's state) is a lookup: the
  cursors say which (epoch, shard) prefixes are consumed, the new roles skip them, so no sample is repeated or
  skipped, in a new but deterministic order. The work is proportional to the shards, never to the samples.

Each role fetches its next shards in background threads while it serves the current ones, so a slow GET
delays only that role, and only when it outlasts the open shards' samples.

Bad shards: a shard that cannot be read (missing, truncated, corrupt) is skipped whole, logged with its URL
and counted in `stats` (on_error="warn"), or raises DataError naming it (on_error="raise").
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ardiff_scale.data.shards import ShardSet, read_shard
from ardiff_scale.errors import DataError

log = logging.getLogger("ardiff.data")

CONSUMED = -1  # an offset meaning "the whole shard", for shards whose size the state does not need
MakeBatch = Callable[[list[dict]], tuple[dict[str, torch.Tensor], dict[str, int]]]


def _rng(*parts: Any) -> random.Random:
    return random.Random(":".join(str(p) for p in parts))


@dataclass
class StreamOptions:
    seed: int = 0
    shuffle: bool = True
    open_shards: int = 4  # shards a role interleaves: the width of the shuffle
    epochs: int = 1  # 0 = endless
    on_error: str = "warn"  # or "raise"
    prefetch_shards: int = 2  # shards a role fetches ahead of those it has open
    with_text: bool = False  # keep each sample's text (training never reads it)

    def __post_init__(self) -> None:
        if self.on_error not in ("warn", "raise"):
            raise DataError(f"on_error must be 'warn' or 'raise' (got {self.on_error!r})")
        if self.open_shards < 1 or self.epochs < 0 or self.prefetch_shards < 0:
            raise DataError(f"open_shards must be >= 1, epochs and prefetch_shards >= 0 (got {self.open_shards}, "
                            f"{self.epochs}, {self.prefetch_shards})")


@dataclass(frozen=True)
class Layout:
    """Who reads what: this rank among `world`, with `roles` readers."""

    rank: int
    world: int
    roles: int


@functools.lru_cache(maxsize=4)
def _epoch_order(num_shards: int, seed: int, shuffle: bool, epoch: int) -> tuple[int, ...]:
    # Cached: merging a 512-rank state builds thousands of cursors over the same epochs, and shuffling 10k
    # shards for each would cost seconds.
    order = list(range(num_shards))
    if shuffle:
        _rng(seed, "shards", epoch).shuffle(order)
    return tuple(order)


def shard_order(num_shards: int, options: StreamOptions, layout: Layout, role: int, epoch: int) -> list[int]:
    """The shards `role` of `layout` reads in `epoch`, in reading order."""
    order = _epoch_order(num_shards, options.seed, options.shuffle, epoch)
    return list(order[layout.rank::layout.world][role::layout.roles])


def sample_order(options: StreamOptions, epoch: int, shard: int, size: int) -> list[int]:
    order = list(range(size))
    if options.shuffle:
        _rng(options.seed, "samples", epoch, shard).shuffle(order)
    return order


class RoleCursor:
    """One role's walk through its shards: which sample comes next. Pure bookkeeping, no data.

    `size_of(epoch, shard)` opens a shard (the live reader loads it); a shard of size 0 (empty or unreadable)
    is passed over. `offsets` maps (epoch, shard) to samples consumed (or CONSUMED), for this epoch and later.
    """

    def __init__(self, num_shards: int, options: StreamOptions, layout: Layout, role: int,
                 size_of: Callable[[int, int], int]):
        self.num_shards, self.options, self.layout, self.role = num_shards, options, layout, role
        self.size_of = size_of
        self.offsets: dict[tuple[int, int], int] = {}
        self.start_epoch(0)

    def order(self, epoch: int) -> list[int]:
        return shard_order(self.num_shards, self.options, self.layout, self.role, epoch)

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.position = epoch, 0
        self.shards = self.order(epoch)
        self.open: list[int] = []
        self.sizes: dict[int, int] = {}
        self.rng = _rng(self.options.seed, "pick", epoch, self.layout.rank, self.layout.world, self.layout.roles,
                        self.role)
        self.offsets = {key: n for key, n in self.offsets.items() if key[0] >= epoch}

    def upcoming(self, count: int) -> list[tuple[int, int]]:
        """The next `count` (epoch, shard) this cursor will open, this epoch's and then the next's."""
        found: list[tuple[int, int]] = []
        epoch, shards, position = self.epoch, self.shards, self.position
        while len(found) < count:
            if position >= len(shards):
                epoch += 1
                if self.options.epochs and epoch >= self.options.epochs or epoch > self.epoch + 1:
                    break
                shards, position = self.order(epoch), 0
                continue
            if self.offsets.get((epoch, shards[position]), 0) != CONSUMED:
                found.append((epoch, shards[position]))
            position += 1
        return found

    def _fill(self) -> None:
        while len(self.open) < self.options.open_shards and self.position < len(self.shards):
            shard = self.shards[self.position]
            self.position += 1
            consumed = self.offsets.get((self.epoch, shard), 0)
            if consumed == CONSUMED:
                continue
            size = self.size_of(self.epoch, shard)
            if consumed < size:
                self.sizes[shard] = size
                self.open.append(shard)

    def next(self) -> tuple[int, int, int] | None:
        """(epoch, shard, position in the shard's permuted order) of the next sample; None at the end."""
        while True:
            self._fill()
            if self.open:
                break
            if self.options.epochs and self.epoch + 1 >= self.options.epochs or not self.order(self.epoch + 1):
                return None
            self.start_epoch(self.epoch + 1)
        shard = self.open[self.rng.randrange(len(self.open))]
        key = (self.epoch, shard)
        position = self.offsets.get(key, 0)
        self.offsets[key] = position + 1
        if position + 1 >= self.sizes[shard]:
            self.open.remove(shard)
        return self.epoch, shard, position

    # --- state: small, and JSON-ready -------------------------------------------------------------------
    def snapshot(self) -> dict:
        version, internal, gauss = self.rng.getstate()
        return {"epoch": self.epoch, "position": self.position, "open": [[s, self.sizes[s]] for s in self.open],
                "rng": [version, list(internal), gauss], "offsets": [[e, s, n] for (e, s), n in self.offsets.items()]}

    def restore(self, snapshot: dict) -> None:
        """Continue where `snapshot` stood. The open shards are opened again (through size_of): a shard whose
        size changed since is refused."""
        self.offsets = {(e, s): n for e, s, n in snapshot["offsets"]}
        self.start_epoch(snapshot["epoch"])
        self.position = snapshot["position"]
        version, internal, gauss = snapshot["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        for shard, size in snapshot["open"]:
            if self.size_of(self.epoch, shard) != size:
                raise DataError(f"shard {shard} of the stream changed since the reader state was saved "
                                f"({size} samples then)")
            self.sizes[shard] = size
            self.open.append(shard)

    def consumed(self, start_epoch: int) -> dict[tuple[int, int], int]:
        """Samples consumed per (epoch, shard) by this role from `start_epoch` on: every shard of the epochs it
        finished and every shard it has passed this epoch are CONSUMED; its open shards by their offsets."""
        consumed = dict(self.offsets)
        consumed.update({(e, s): CONSUMED for e in range(start_epoch, self.epoch) for s in self.order(e)})
        consumed.update({(self.epoch, s): CONSUMED for s in self.shards[:self.position] if s not in self.open})
        return consumed


class ShardFetcher:
    """Reads shards in background threads, ahead of need: `want` starts fetches, `take` waits for one."""

    def __init__(self, shard_set: ShardSet, options: StreamOptions):
        self.shard_set, self.options = shard_set, options
        self.pool = ThreadPoolExecutor(max(1, options.prefetch_shards), thread_name_prefix="shard-fetch")
        self.pending: dict[tuple[int, int], Future] = {}

    def want(self, keys: list[tuple[int, int]]) -> None:
        for key in keys:
            if key not in self.pending:
                url = self.shard_set.urls[key[1]]
                self.pending[key] = self.pool.submit(read_shard, url, self.shard_set.dtype, self.options.with_text)

    def take(self, key: tuple[int, int]) -> list[dict]:
        """The shard's samples; DataError if it cannot be read."""
        self.want([key])
        return self.pending.pop(key).result()

    def close(self) -> None:
        for future in self.pending.values():
            future.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)


class BatchStream(IterableDataset):
    """Lists of items, one item per micro-batch of a role plus a last item when the role ends; use through
    BatchLoader.

    An item: {"role", "tensors" (None on the last item), "keys" (shard/key of each sample), "cursor" (after the
    batch), "events" (shards opened or failed since the previous item), "notes" (make_batch's counts)}.
    """

    def __init__(self, shard_set: ShardSet, options: StreamOptions, rank: int, world: int, batch_size: int,
                 make_batch: MakeBatch):
        if len(shard_set.urls) < world:
            raise DataError(f"{len(shard_set.urls)} shards cannot be split over {world} ranks: build at least "
                            f"{world} shards (ardiff shards build --samples-per-shard)")
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1 (got {batch_size})")
        self.shard_set, self.options, self.rank, self.world = shard_set, options, rank, world
        self.batch_size, self.make_batch = batch_size, make_batch
        self.resume: dict | None = None  # set by BatchLoader before each iteration

    def layout(self, roles: int) -> Layout:
        return Layout(self.rank, self.world, roles)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        role, roles = (info.id, info.num_workers) if info else (0, 1)
        resume = self.resume or {"cursors": [None] * roles, "offsets": []}
        fetcher = ShardFetcher(self.shard_set, self.options)
        loaded: dict[tuple[int, int], list[dict]] = {}  # (epoch, shard) -> samples in permuted order
        events: list[dict] = []
        cursor: RoleCursor

        def size_of(epoch: int, shard: int) -> int:
            # Start the fetches of the shards that fill the open set and of the next prefetch_shards, so that
            # they download while this one is served; then wait for this one.
            ahead = self.options.open_shards - len(cursor.open) - 1 + self.options.prefetch_shards
            fetcher.want(cursor.upcoming(ahead))
            url = self.shard_set.urls[shard]
            try:
                samples = fetcher.take((epoch, shard))
            except DataError as err:
                if self.options.on_error == "raise":
                    raise
                events.append({"event": "shard_failed", "shard": shard, "url": url, "error": str(err)})
                return 0
            loaded[(epoch, shard)] = [samples[i] for i in sample_order(self.options, epoch, shard, len(samples))]
            events.append({"event": "shard_open", "shard": shard, "url": url, "size": len(samples)})
            return len(samples)

        cursor = RoleCursor(len(self.shard_set.urls), self.options, self.layout(roles), role, size_of)
        try:
            if resume["cursors"][role] is not None:
                cursor.restore(resume["cursors"][role])
            else:
                base = {(e, s): n for e, s, n in resume["offsets"]}
                if base:
                    cursor.start_epoch(min(e for e, _ in base))
                    mine = {e: set(cursor.order(e)) for e in {e for e, _ in base}}
                    cursor.offsets = {(e, s): n for (e, s), n in base.items() if s in mine[e]}
            # A worker sends its batches a few at a time: the DataLoader's cost per message, paid by the
            # training process, then falls on several batches (about 64 samples a message).
            per_message = max(1, min(8, 64 // self.batch_size)) if info else 1
            message: list[dict] = []
            for item in self._batches(role, cursor, loaded, events):
                message.append(item)
                if len(message) >= per_message or item["tensors"] is None:
                    yield message
                    message = []
        finally:
            fetcher.close()

    def _batches(self, role: int, cursor: RoleCursor, loaded: dict, events: list[dict]) -> Iterator[dict]:
        in_worker = get_worker_info() is not None
        while True:
            samples: list[dict] = []
            while len(samples) < self.batch_size:
                position = cursor.next()
                if position is None:
                    break
                epoch, shard, index = position
                sample = loaded[(epoch, shard)][index]
                if index + 1 >= cursor.sizes[shard]:
                    del loaded[(epoch, shard)]
                samples.append({**sample, "__epoch__": epoch})
            tensors, notes = self.make_batch(samples) if samples else (None, {})
            if tensors is not None and in_worker:
                # As numpy arrays, pickled into the worker's pipe: a torch tensor would travel as a shared-memory
                # file and a descriptor each, which costs the training process about 0.5 ms per tensor to take.
                tensors = {name: value.numpy() for name, value in tensors.items()}
            keys = [f"{s['__url__'].rsplit('/', 1)[-1]}/{s['__key__']}" for s in samples]
            # The cursor as text: one string to pickle, decoded only when a checkpoint asks for the state.
            item = {"role": role, "tensors": tensors, "keys": keys, "cursor": json.dumps(cursor.snapshot()),
                    "events": list(events), "notes": notes}
            events.clear()
            if tensors is not None:
                yield item
            if len(samples) < self.batch_size:  # the end of a finite stream: a last, shorter batch at most
                done = tensors is not None  # its events and notes travelled with that batch
                yield {**item, "tensors": None, "keys": [], "events": [] if done else item["events"],
                       "notes": {} if done else notes}
                return


def _worker_init(worker_id: int) -> None:
    """Workers leave SIGTERM/SIGUSR1 to the training process: a scheduler signals the whole process group,
    and a worker that died of it would break the loader while the trainer is still writing its checkpoint.

    And a worker dies with its training process: a rank killed outright (OOM killer, SIGKILL) would otherwise
    leave its workers blocked for ever on a full pipe to it, holding the job's output open."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        parent = os.getppid()
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)


def _as_is(item: dict) -> dict:
    return item


@dataclass
class StreamStats:
    samples: int = 0
    batches: int = 0
    opened: set[int] = field(default_factory=set)
    failed: dict[int, str] = field(default_factory=dict)  # shard index -> URL
    notes: dict[str, int] = field(default_factory=dict)  # what make_batch counted (truncations, ...)

    def as_dict(self) -> dict:
        return {"samples": self.samples, "batches": self.batches, "shards_opened": len(self.opened),
                "shards_failed": len(self.failed), "failed_urls": sorted(self.failed.values()), **self.notes}


@dataclass
class Batch:
    tensors: dict[str, torch.Tensor]
    keys: list[str]  # "shard-000012.tar/000004711" of each sample, in row order
    role: int


def default_workers(cpus: int | None = None, local_ranks: int | None = None, gpu: bool | None = None) -> int:
    """DataLoader workers per rank when data.num_workers is -1 (auto).

    On a GPU host each rank gets the CPUs the node has per local rank, less one for the training process
    itself, at most 8 (more only adds start-up time and memory). A CPU run trains on those same cores, so it
    gets one worker where a rank has 4 cores or more and reads in-process otherwise.
    """
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local_ranks = local_ranks or int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    gpu = torch.cuda.is_available() if gpu is None else gpu
    per_rank = max(1, cpus // max(1, local_ranks))
    if gpu:
        return max(1, min(8, per_rank - 1))
    return 1 if per_rank >= 4 else 0


class BatchLoader:
    """Iterates the micro-batches of a BatchStream through DataLoader workers in a deterministic order.

    `state_dict()` may be called between batches; `load_state_dict()` before iterating. With CUDA present the
    batches arrive in page-locked memory, so the trainer's copy to the GPU can be asynchronous.
    """

    def __init__(self, stream: BatchStream, num_workers: int = 0, prefetch_factor: int = 4):
        if num_workers < 0:
            num_workers = default_workers()
        self.stream, self.num_workers, self.prefetch_factor = stream, num_workers, prefetch_factor
        self.roles = max(1, num_workers)
        self.pin = torch.cuda.is_available()
        self.stats = StreamStats()
        self._reset()

    def _reset(self) -> None:
        self.cursors: list[str | None] = [None] * self.roles  # each role's cursor (JSON) at its last batch out
        self.next_role = 0
        self.base_offsets: list[list[int]] = []  # consumed before the current layout: [[epoch, shard, n]]

    # --- state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"version": 2, "seed": self.stream.options.seed, "rank": self.stream.rank,
                "world": self.stream.world, "roles": self.roles, "next_role": self.next_role,
                "cursors": [json.loads(c) if c else None for c in self.cursors],
                "offsets": list(self.base_offsets), "stats": self.stats.as_dict()}

    def load_state_dict(self, state: dict | list[dict]) -> None:
        """Continue from a saved state. Given the states of *all* ranks of an earlier job (a list), the
        reader continues that job's epoch on this layout whatever the earlier world size was."""
        states = state if isinstance(state, list) else [state]
        for saved in states:
            if saved.get("version") != 2:
                raise DataError(f"data reader state version {saved.get('version')} is not supported by this "
                                "reader (version 2): resume with the ardiff-scale version that saved it")
            if saved.get("seed") != self.stream.options.seed:
                raise DataError(f"data state was saved with seed {saved.get('seed')}, the reader has seed "
                                f"{self.stream.options.seed}")
        self._reset()
        layout = (self.roles, self.stream.world, self.stream.rank)
        mine = [s for s in states if (s["roles"], s["world"], s["rank"]) == layout]
        if mine and all(s["world"] == self.stream.world for s in states):
            saved = mine[0]
            self.cursors = [json.dumps(c) if c else None for c in saved["cursors"]]
            self.next_role = saved["next_role"]
            self.base_offsets = [list(o) for o in saved["offsets"]]
            return
        offsets = merged_offsets(states, len(self.stream.shard_set.urls), self.stream.options)
        self.base_offsets = [[e, s, n] for (e, s), n in sorted(offsets.items())]
        log.info("data reader resumed on a new layout (rank %d of %d, %d roles; saved by %d rank(s)): %d shard "
                 "prefixes already consumed are skipped", self.stream.rank, self.stream.world, self.roles,
                 len(states), len(offsets))

    # --- iteration --------------------------------------------------------------------------------------
    def _source(self) -> Iterator[dict]:
        self.stream.resume = {"cursors": [json.loads(c) if c else None for c in self.cursors],
                              "offsets": list(self.base_offsets)}
        if self.num_workers == 0:
            return iter(self.stream)
        # Its own generator: by default a DataLoader seeds its workers from the global torch RNG, which would
        # shift the training's dropout stream whenever a resumed job starts its reader.
        generator = torch.Generator().manual_seed(self.stream.options.seed)
        return iter(DataLoader(self.stream, batch_size=None, collate_fn=_as_is, num_workers=self.num_workers,
                               generator=generator, worker_init_fn=_worker_init,
                               prefetch_factor=self.prefetch_factor, persistent_workers=False,
                               multiprocessing_context="fork" if os.name == "posix" else None))

    def _note(self, item: dict) -> None:
        for event in item["events"]:
            if event["event"] == "shard_open":
                self.stats.opened.add(event["shard"])
            elif event["event"] == "shard_failed":
                if event["shard"] not in self.stats.failed:
                    log.warning("skipping unreadable shard %s: %s", event["url"], event["error"])
                self.stats.failed[event["shard"]] = event["url"]
        for name, value in item["notes"].items():
            self.stats.notes[name] = self.stats.notes.get(name, 0) + value

    def __iter__(self) -> Iterator[Batch]:
        queues: list[deque] = [deque() for _ in range(self.roles)]
        ended = [False] * self.roles
        source = self._source()
        while not all(ended) or any(queues):  # a role's end may arrive while its last batches wait in its queue
            role = self.next_role
            while not queues[role] and not ended[role]:
                for item in next(source):
                    self._note(item)
                    if item["tensors"] is None:
                        ended[item["role"]] = True
                    else:
                        queues[item["role"]].append(item)
            self.next_role = (role + 1) % self.roles
            if queues[role]:
                item = queues[role].popleft()
                self.cursors[role] = item["cursor"]
                tensors = {k: torch.from_numpy(v) if not isinstance(v, torch.Tensor) else v
                           for k, v in item["tensors"].items()}
                if self.pin:
                    tensors = {k: v.pin_memory() for k, v in tensors.items()}
                self.stats.batches += 1
                self.stats.samples += len(item["keys"])
                yield Batch(tensors, item["keys"], role)

    def tensors(self) -> Iterator[dict[str, torch.Tensor]]:
        """The batches' tensors alone: what the trainer consumes."""
        for batch in self:
            yield batch.tensors


def merged_offsets(states: list[dict], num_shards: int, options: StreamOptions) -> dict[tuple[int, int], int]:
    """Samples consumed per (epoch, shard) by every role of every saved rank, from the earliest epoch any role
    is still in: a walk over shard lists, never over samples."""
    cursors = []
    for saved in states:
        layout = Layout(saved["rank"], saved["world"], saved["roles"])
        for role, snapshot in enumerate(saved["cursors"]):
            cursor = RoleCursor(num_shards, options, layout, role, size_of=lambda e, s: 0)
            if snapshot is not None:
                cursor.offsets = {(e, s): n for e, s, n in snapshot["offsets"]}
                cursor.start_epoch(snapshot["epoch"])
                cursor.position = snapshot["position"]
                cursor.open = [shard for shard, _ in snapshot["open"]]
            else:
                base = [(e, s, n) for e, s, n in saved["offsets"]]
                if base:  # this role never handed out a batch: it stands where the saved layout began
                    cursor.offsets = {(e, s): n for e, s, n in base if s in set(cursor.order(e))}
                    cursor.start_epoch(min(e for e, _, _ in base))
            cursors.append(cursor)
    start = min(cursor.epoch for cursor in cursors)
    offsets: dict[tuple[int, int], int] = {}
    for cursor in cursors:
        offsets.update(cursor.consumed(start))
    return offsets
