"""Streaming webdataset shards from any fsspec URL, split by rank and worker, with exact resume.

How the order is made (and why it can be resumed):
- Each epoch, the shard list is permuted with (seed, epoch); rank r takes every world-th shard, and within a
  rank the shards are dealt to R *roles*, one per DataLoader worker (R = 1 without workers).
- A role keeps `open_shards` shards open. Each shard's samples are permuted with (seed, epoch, shard), and
  each next sample comes from an open shard chosen by the role's own RNG (seeded with seed, epoch, rank,
  role). This interleave plays the part of a shuffle buffer, with one property a FIFO buffer lacks: what a
  role has consumed of every shard is always a *prefix* of that shard's permuted order.
- The main process takes one sample from each role in turn (role 0, 1, ..., R-1, 0, ...), whatever order
  the DataLoader delivers them in, so the stream is a pure function of (seed, rank, world, R).

State is the number of samples consumed per role (plus the sizes of the shards opened so far, learned from
markers the workers send). Resuming with the same R replays each role's choices without reading any data and
continues exactly where it stopped. Resuming with another R (or another world size, after merging the ranks'
states) turns the state into consumed offsets per (epoch, shard); the new roles skip those prefixes, so no
sample is repeated or skipped, in a new but deterministic order.

Bad shards: a shard that cannot be read (missing, truncated, corrupt) is skipped whole, logged with its URL
and counted in `stats` (on_error="warn"), or raises DataError naming it (on_error="raise").
"""

from __future__ import annotations

import logging
import os
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ardiff_scale.data.shards import ShardSet, read_shard
from ardiff_scale.errors import DataError

log = logging.getLogger("ardiff.data")

EVENT = "__event__"


def _rng(*parts: Any) -> random.Random:
    return random.Random(":".join(str(p) for p in parts))


@dataclass
class StreamOptions:
    seed: int = 0
    shuffle: bool = True
    open_shards: int = 4  # shards a role interleaves: the width of the shuffle
    epochs: int = 1  # 0 = endless
    on_error: str = "warn"  # or "raise"

    def __post_init__(self) -> None:
        if self.on_error not in ("warn", "raise"):
            raise DataError(f"on_error must be 'warn' or 'raise' (got {self.on_error!r})")
        if self.open_shards < 1 or self.epochs < 0:
            raise DataError(f"open_shards must be >= 1 and epochs >= 0 (got {self.open_shards}, {self.epochs})")


@dataclass
class Layout:
    """Who reads what: this rank among `world`, with `roles` readers."""

    rank: int
    world: int
    roles: int


class RoleCursor:
    """One role's walk through its shards, shared by the live reader and the replay.

    `size_of(shard)` opens a shard: the live reader loads it, the replay looks its size up. A shard whose
    size is 0 (empty or unreadable) is passed over. `offsets` maps (epoch, shard) to samples consumed.
    """

    def __init__(self, shards_of_epoch: Callable[[int], list[int]], options: StreamOptions, layout: Layout,
                 role: int, epoch: int, offsets: dict[tuple[int, int], int], size_of: Callable[[int, int], int]):
        self.shards_of_epoch, self.options, self.layout, self.role = shards_of_epoch, options, layout, role
        self.offsets, self.size_of = offsets, size_of
        self.sizes: dict[int, int] = {}
        self._start_epoch(epoch)

    def _start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.queue = deque(self.shards_of_epoch(epoch))
        self.open: list[int] = []
        self.rng = _rng(self.options.seed, "pick", epoch, self.layout.rank, self.layout.world, self.layout.roles,
                        self.role)

    def _fill(self) -> None:
        while len(self.open) < self.options.open_shards and self.queue:
            shard = self.queue.popleft()
            size = self.sizes[shard] if shard in self.sizes else self.size_of(self.epoch, shard)
            self.sizes[shard] = size
            if self.offsets.get((self.epoch, shard), 0) < size:
                self.open.append(shard)

    def next(self) -> tuple[int, int, int] | None:
        """(epoch, shard, position in the shard's permuted order) of the next sample; None at the end."""
        while True:
            self._fill()
            if self.open:
                break
            last = self.options.epochs and self.epoch + 1 >= self.options.epochs
            if last:
                return None
            if not self.shards_of_epoch(self.epoch + 1):
                return None
            self._start_epoch(self.epoch + 1)
        shard = self.open[self.rng.randrange(len(self.open))]
        key = (self.epoch, shard)
        position = self.offsets.get(key, 0)
        self.offsets[key] = position + 1
        if position + 1 >= self.sizes[shard]:
            self.open.remove(shard)
        return self.epoch, shard, position


class ShardStream(IterableDataset):
    """Samples of a ShardSet as dicts; see the module docstring for the order. Use through ShardLoader."""

    def __init__(self, shard_set: ShardSet, options: StreamOptions, rank: int, world: int):
        if len(shard_set.urls) < world:
            raise DataError(f"{len(shard_set.urls)} shards cannot be split over {world} ranks: build at least "
                            f"{world} shards (ardiff shards build --samples-per-shard)")
        self.shard_set, self.options, self.rank, self.world = shard_set, options, rank, world
        self.resume: dict | None = None  # set by ShardLoader before each iteration

    def shards_of(self, epoch: int, role: int, roles: int) -> list[int]:
        order = list(range(len(self.shard_set.urls)))
        if self.options.shuffle:
            _rng(self.options.seed, "shards", epoch).shuffle(order)
        return order[self.rank::self.world][role::roles]

    def permutation(self, epoch: int, shard: int, size: int) -> list[int]:
        order = list(range(size))
        if self.options.shuffle:
            _rng(self.options.seed, "samples", epoch, shard).shuffle(order)
        return order

    def cursor(self, role: int, roles: int, epoch: int, offsets: dict, size_of: Callable[[int, int], int]) -> RoleCursor:
        layout = Layout(self.rank, self.world, roles)
        return RoleCursor(lambda e: self.shards_of(e, role, roles), self.options, layout, role, epoch, offsets,
                          size_of)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        role, roles = (info.id, info.num_workers) if info else (0, 1)
        resume = self.resume or {"epoch_start": [0] * roles, "picks": [0] * roles, "sizes": {}, "offsets": {}}
        known_sizes = resume["sizes"]
        loaded: dict[tuple[int, int], list[dict]] = {}  # (epoch, shard) -> samples in permuted order
        events: list[dict] = []
        replaying = resume["picks"][role] > 0

        def load(epoch: int, shard: int) -> int:
            url = self.shard_set.urls[shard]
            try:
                samples = read_shard(url, self.shard_set.dtype)
            except DataError as err:
                if self.options.on_error == "raise":
                    raise
                events.append({EVENT: "shard_failed", "shard": shard, "url": url, "error": str(err)})
                return 0
            loaded[(epoch, shard)] = [samples[i] for i in self.permutation(epoch, shard, len(samples))]
            events.append({EVENT: "shard_open", "shard": shard, "url": url, "size": len(samples)})
            return len(samples)

        def size_of(epoch: int, shard: int) -> int:
            if not replaying:
                return load(epoch, shard)
            if shard not in known_sizes:
                raise DataError(f"data reader state does not know the size of shard {self.shard_set.urls[shard]}")
            return known_sizes[shard]

        cursor = self.cursor(role, roles, resume["epoch_start"][role], dict(resume["offsets"]), size_of)
        # Resuming in the same layout: replay this role's choices by shard sizes alone, then go on live.
        for _ in range(resume["picks"][role]):
            cursor.next()
        replaying = False
        while True:
            position = cursor.next()
            yield from events
            events.clear()
            if position is None:
                yield {EVENT: "role_end", "role": role}
                return
            epoch, shard, index = position
            if (epoch, shard) not in loaded:  # open since before the resume: known by size only until now
                if load(epoch, shard) != cursor.sizes[shard]:
                    raise DataError(f"shard {self.shard_set.urls[shard]} changed since the reader state was saved")
                yield from events
                events.clear()
            sample = loaded[(epoch, shard)][index]
            if index + 1 >= cursor.sizes[shard]:
                del loaded[(epoch, shard)]
            yield {**sample, "__role__": role, "__epoch__": epoch, "__shard__": shard}


def _ignore_stop_signals(worker_id: int) -> None:
    """Workers leave SIGTERM/SIGUSR1 to the training process: a scheduler signals the whole process group,
    and a worker that died of it would break the loader while the trainer is still writing its checkpoint."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)


def _as_is(sample: dict) -> dict:
    """DataLoader's default would turn the numpy id arrays into tensors; collation does its own."""
    return sample


@dataclass
class StreamStats:
    samples: int = 0
    opened: set[int] = field(default_factory=set)
    failed: dict[int, str] = field(default_factory=dict)  # shard index -> URL

    def as_dict(self) -> dict:
        return {"samples": self.samples, "shards_opened": len(self.opened), "shards_failed": len(self.failed),
                "failed_urls": sorted(self.failed.values())}


class ShardLoader:
    """Iterates samples of a ShardStream through DataLoader workers in a deterministic order; resumable.

    `state_dict()` may be called between samples; `load_state_dict()` before iterating.
    """

    def __init__(self, stream: ShardStream, num_workers: int = 0, prefetch_factor: int = 4):
        self.stream, self.num_workers, self.prefetch_factor = stream, num_workers, prefetch_factor
        self.roles = max(1, num_workers)
        self.stats = StreamStats()
        self._reset()

    def _reset(self) -> None:
        self.picks = [0] * self.roles
        self.epoch_start = [0] * self.roles
        self.next_role = 0
        self.sizes: dict[int, int] = {}
        self.offsets: dict[tuple[int, int], int] = {}  # consumed before the current layout

    # --- state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"version": 1, "seed": self.stream.options.seed, "rank": self.stream.rank,
                "world": self.stream.world, "roles": self.roles, "picks": list(self.picks),
                "epoch_start": list(self.epoch_start), "next_role": self.next_role,
                "sizes": {str(k): v for k, v in self.sizes.items()},
                "offsets": [[e, s, n] for (e, s), n in self.offsets.items()], "stats": self.stats.as_dict()}

    def consumed_offsets(self) -> dict[tuple[int, int], int]:
        """Samples consumed per (epoch, shard), replaying every role: the layout-independent form of state."""
        offsets = dict(self.offsets)
        for role in range(self.roles):
            replay = self.stream.cursor(role, self.roles, self.epoch_start[role], offsets,
                                        lambda e, s: self.sizes[s])
            for _ in range(self.picks[role]):
                replay.next()
        return offsets

    def load_state_dict(self, state: dict | list[dict]) -> None:
        """Continue from a saved state. Given the states of *all* ranks of an earlier job (a list), the
        reader continues that job's epoch on this layout whatever the earlier world size was."""
        states = state if isinstance(state, list) else [state]
        for saved in states:
            if saved.get("seed") != self.stream.options.seed:
                raise DataError(f"data state was saved with seed {saved.get('seed')}, the reader has seed "
                                f"{self.stream.options.seed}")
        self._reset()
        for saved in states:
            self.sizes.update({int(k): v for k, v in saved["sizes"].items()})
        mine = [s for s in states if (s["roles"], s["world"], s["rank"]) == (self.roles, self.stream.world,
                                                                            self.stream.rank)]
        if mine and all(s["world"] == self.stream.world for s in states):
            saved = mine[0]
            self.picks, self.epoch_start = list(saved["picks"]), list(saved["epoch_start"])
            self.next_role = saved["next_role"]
            self.offsets = {(e, s): n for e, s, n in saved["offsets"]}
            return
        for saved in states:
            replica = ShardLoader(ShardStream(self.stream.shard_set, self.stream.options, saved["rank"],
                                              saved["world"]))
            replica.roles, replica.picks, replica.epoch_start = saved["roles"], saved["picks"], saved["epoch_start"]
            replica.sizes = self.sizes
            replica.offsets = {(e, s): n for e, s, n in saved["offsets"]}
            self.offsets.update(replica.consumed_offsets())
        start = min(e for e, _ in self.offsets) if self.offsets else min(min(s["epoch_start"]) for s in states)
        self.epoch_start = [start] * self.roles
        log.info("data reader resumed on a new layout (rank %d of %d, %d roles; saved by %d rank(s)): %d samples "
                 "already consumed are skipped", self.stream.rank, self.stream.world, self.roles, len(states),
                 sum(self.offsets.values()))

    # --- iteration --------------------------------------------------------------------------------------
    def _source(self) -> Iterator[dict]:
        self.stream.resume = {"epoch_start": list(self.epoch_start), "picks": list(self.picks),
                              "sizes": dict(self.sizes), "offsets": dict(self.offsets)}
        if self.num_workers == 0:
            return iter(self.stream)
        # Its own generator: by default a DataLoader seeds its workers from the global torch RNG, which would
        # shift the training's dropout stream whenever a resumed job starts its reader.
        generator = torch.Generator().manual_seed(self.stream.options.seed)
        return iter(DataLoader(self.stream, batch_size=None, collate_fn=_as_is, num_workers=self.num_workers,
                               generator=generator, worker_init_fn=_ignore_stop_signals,
                               prefetch_factor=self.prefetch_factor, persistent_workers=False,
                               multiprocessing_context="fork" if os.name == "posix" else None))

    def _note(self, event: dict) -> None:
        kind = event[EVENT]
        if kind == "shard_open":
            self.sizes[event["shard"]] = event["size"]
            self.stats.opened.add(event["shard"])
        elif kind == "shard_failed":
            self.sizes[event["shard"]] = 0
            if event["shard"] not in self.stats.failed:
                log.warning("skipping unreadable shard %s: %s", event["url"], event["error"])
            self.stats.failed[event["shard"]] = event["url"]

    def __iter__(self) -> Iterator[dict]:
        queues: list[deque] = [deque() for _ in range(self.roles)]
        ended = [False] * self.roles
        source = self._source()
        while not all(ended):
            role = self.next_role
            while not queues[role] and not ended[role]:
                item = next(source)
                if EVENT in item:
                    if item[EVENT] == "role_end":
                        ended[item["role"]] = True
                    else:
                        self._note(item)
                    continue
                queues[item["__role__"]].append(item)
            self.next_role = (role + 1) % self.roles
            if queues[role]:
                item = queues[role].popleft()
                self.picks[role] += 1
                self.stats.samples += 1
                yield item
