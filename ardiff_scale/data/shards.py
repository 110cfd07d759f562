"""Webdataset tar shards of pre-tokenised samples, with a manifest, written and read through fsspec.

A shard `shard-000042.tar` holds samples as tar members sharing a key:
    pretrain:  <key>.ids.u16 (or .u32)  token ids, little-endian     <key>.txt   the text
    seq2seq:   <key>.src.u16, <key>.tgt.u16                          <key>.json  {"id", "src", "tgt", "refs"}
`manifest.json` beside the shards records, per shard, its sample and token counts, bytes and sha256; the
tokenizer's sha256, size and special ids; the inputs and the command line that built it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import multiprocessing
import posixpath
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import fsspec
import numpy as np
from braceexpand import braceexpand
from tqdm.auto import tqdm
from webdataset import TarWriter

from ardiff_scale.data.objectives import require_mask, split_document
from ardiff_scale.data.tokenizer import Tokenizer, tokenizer_from_bytes
from ardiff_scale.errors import DataError
from ardiff_scale.io import read_bytes, write_bytes
from ardiff_scale.vocab import SENTENCEPIECE_SPECIALS, SpecialIds

if TYPE_CHECKING:
    from ardiff_scale.tasks.readers import Pair

log = logging.getLogger("ardiff.data")

KINDS = ("pretrain", "seq2seq")
MANIFEST = "manifest.json"
FORMAT = "ardiff-shards/1"


def _ext(dtype: str) -> str:
    return {"uint16": "u16", "uint32": "u32"}[dtype]


# --- reading ---------------------------------------------------------------------------------------------

_KEY = re.compile(r"^((?:.*/|)[^./]+)[.]([^/]*)$")  # webdataset's rule: the key ends at the name's first dot
_ZERO_BLOCK = bytes(512)


def _tar_members(data: bytes) -> Iterator[tuple[str, memoryview]]:
    """(name, bytes) of each regular file in an in-memory tar, in order.

    Shards are small and read whole, so their headers are parsed here directly: `tarfile` spends most of a
    shard's decoding time validating each header in Python, which on a GPU host is CPU time taken from the
    reader. Checksums are still verified; a missing end-of-archive marker (a cut-off shard), an impossible
    size or a member type this format does not use raises ValueError, and `read_shard` says which shard.
    """
    view, offset, total = memoryview(data), 0, len(data)
    override: dict[str, str] = {}  # from a PAX or GNU long-name record: applies to the next member
    while True:
        if offset + 512 > total:
            raise ValueError(f"truncated at byte {offset} of {total}: no end-of-archive marker")
        header = data[offset:offset + 512]
        if header == _ZERO_BLOCK:
            return
        stored = header[148:156].split(b"\0", 1)[0].strip()
        if not stored or int(stored, 8) != sum(header) - sum(header[148:156]) + 8 * 32:
            raise ValueError(f"bad tar header checksum at byte {offset}")
        name = header[:100].split(b"\0", 1)[0].decode("utf-8")
        if header[257:262] == b"ustar" and header[345] != 0:
            name = header[345:500].split(b"\0", 1)[0].decode("utf-8") + "/" + name
        size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        kind = header[156:157]
        offset += 512
        if kind in (b"0", b"\0"):
            name = override.get("path", name)
            size = int(override.get("size", size))
            override = {}
        if offset + size > total:
            raise ValueError(f"truncated in member {name!r}: {size} bytes announced, {total - offset} left")
        payload = view[offset:offset + size]
        if kind in (b"0", b"\0"):
            yield name, payload
        elif kind == b"x":  # PAX extended header (tarfile writes one for float mtimes): "LEN key=value\n"...
            override.update(_pax_records(bytes(payload)))
        elif kind == b"L":  # GNU long name
            override["path"] = bytes(payload).split(b"\0", 1)[0].decode("utf-8")
        elif kind not in (b"5", b"g"):  # directories and global headers carry no member
            raise ValueError(f"unsupported tar member type {kind!r} ({name!r}): rebuild with ardiff shards build")
        offset += (size + 511) // 512 * 512


def _pax_records(payload: bytes) -> dict[str, str]:
    records, position = {}, 0
    while position < len(payload):
        length = int(payload[position:payload.index(b" ", position)])
        key, _, value = payload[payload.index(b" ", position) + 1:position + length - 1].partition(b"=")
        records[key.decode("utf-8")] = value.decode("utf-8")
        position += length
    return records


def _grouped(data: bytes) -> Iterator[dict[str, Any]]:
    """Members sharing a key, as {"__key__": key, ext: bytes, ...}, in the order the tar holds them."""
    current: dict[str, Any] | None = None
    for name, payload in _tar_members(data):
        match = _KEY.match(name)
        if not match:
            continue
        key, ext = match.groups()
        if current is None or current["__key__"] != key:
            if current is not None:
                yield current
            current = {"__key__": key}
        current[ext] = payload
    if current is not None:
        yield current


def _fetch(url: str) -> bytes:
    # A shard is read once, front to back: over http(s) stream it (block_size=0) instead of fetching byte
    # ranges, which plain web servers such as `python -m http.server` do not serve.
    options = {"block_size": 0} if url.startswith(("http://", "https://")) else {}
    with fsspec.open(url, "rb", **options) as f:
        return f.read()


def read_shard(url: str, dtype: str, with_text: bool = True) -> list[dict[str, Any]]:
    """All samples of one shard, decoded; DataError naming the URL if it is missing, truncated or corrupt.

    `with_text=False` leaves out what training never reads (a window's text, a pair's json: its texts and
    references), which saves decoding and memory in the reader.
    """
    ext = _ext(dtype)
    samples = []
    try:
        data = _fetch(url)
        for raw in _grouped(data):
            sample: dict[str, Any] = {"__key__": raw["__key__"], "__url__": url}
            if f"ids.{ext}" in raw:
                sample["ids"] = np.frombuffer(raw[f"ids.{ext}"], dtype=dtype)
                if with_text:
                    sample["text"] = bytes(raw["txt"]).decode("utf-8")
            else:
                sample["src_ids"] = np.frombuffer(raw[f"src.{ext}"], dtype=dtype)
                sample["tgt_ids"] = np.frombuffer(raw[f"tgt.{ext}"], dtype=dtype)
                if with_text:
                    sample.update(json.loads(bytes(raw["json"])))
            samples.append(sample)
    except FileNotFoundError:
        raise DataError(f"shard not found: {url}") from None
    except (EOFError, OSError, KeyError, ValueError, UnicodeDecodeError) as err:
        raise DataError(f"unreadable shard {url}: {type(err).__name__}: {err}") from None
    return samples


@dataclass
class ShardSet:
    """The shards one reader streams, and what the manifest (if any) says of them."""

    urls: list[str]
    dtype: str = "uint16"
    manifest: dict | None = None

    @classmethod
    def open(cls, location: str, check_exists: bool = True) -> "ShardSet":
        """`location`: a shard directory (holding manifest.json), a manifest URL, or brace-expanded shard URLs
        (`s3://bucket/c/shard-{000000..000099}.tar`), several separated by commas."""
        manifest, urls = None, []
        if location.endswith((".jsonl", ".jsonl.gz", ".txt", ".txt.gz")):
            raise DataError(f"{location} is a corpus file, not shards: build shards from it with "
                            "`ardiff shards build --input FILE --tokenizer TOK --output DIR` and give DIR")
        if location.endswith(MANIFEST) or not location.rstrip("/").endswith(".tar") and "{" not in location:
            manifest_url = location if location.endswith(MANIFEST) else location.rstrip("/") + "/" + MANIFEST
            try:
                manifest = json.loads(read_bytes(manifest_url))
            except (FileNotFoundError, NotADirectoryError):
                raise DataError(f"no {MANIFEST} at {manifest_url}: give a shard directory built by "
                                "`ardiff shards build`, or shard URLs like dir/shard-{000000..000009}.tar") from None
            base = manifest_url[: -len(MANIFEST)]
            urls = [base + entry["name"] for entry in manifest["shards"]]
        else:
            for part in location.split(","):
                urls.extend(braceexpand(part.strip()))
            try:
                manifest = json.loads(read_bytes(posixpath.dirname(urls[0]) + "/" + MANIFEST))
            except (FileNotFoundError, OSError):
                manifest = None
        if not urls:
            raise DataError(f"no shards at {location}")
        dtype = manifest["dtype"] if manifest else ("uint32" if urls[0].endswith(".u32.tar") else "uint16")
        shard_set = cls(urls=urls, dtype=dtype, manifest=manifest)
        if check_exists:
            shard_set.check_exists()
        return shard_set

    def check_exists(self) -> None:
        """Fail before training starts, naming the first missing shard.

        One listing per directory, not one request per shard: 10k shards on S3 are a few LIST pages instead
        of 10k HEADs. Where a directory cannot be listed (a web server without an index) the shards of that
        directory are asked for one by one, 16 at a time."""
        by_directory: dict[str, list[str]] = {}
        for url in self.urls:
            by_directory.setdefault(posixpath.dirname(url), []).append(url)
        missing = []
        for directory, urls in by_directory.items():
            fs, path = fsspec.core.url_to_fs(directory)
            try:
                listed = {posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False)}
            except Exception:  # noqa: BLE001 - any failure to list means: ask shard by shard
                listed = set()
            unlisted = [url for url in urls if posixpath.basename(url) not in listed]
            with ThreadPoolExecutor(16) as pool:
                missing += [url for url, found in zip(unlisted, pool.map(_exists, unlisted)) if not found]
        if missing:
            raise DataError(f"{len(missing)} of {len(self.urls)} shards do not exist, first: {missing[0]}")

    def check_tokenizer(self, tokenizer: Tokenizer) -> None:
        if not self.manifest:
            log.warning("shards have no manifest: cannot check they were built with tokenizer %s",
                        tokenizer.sha256[:12])
            return
        expected = self.manifest["tokenizer"]["sha256"]
        if expected != tokenizer.sha256:
            raise DataError(f"tokenizer mismatch: shards were built with tokenizer sha256 {expected[:12]}..., "
                            f"the given tokenizer is {tokenizer.sha256[:12]}...; use the tokenizer named in "
                            "the shards' manifest.json or rebuild the shards")

    @property
    def kind(self) -> str | None:
        return self.manifest.get("kind") if self.manifest else None

    @property
    def specials(self) -> SpecialIds:
        """The special ids of the tokenizer the shards were built with, from the manifest. Shards without them
        predate other tokenizers than sentencepiece, so theirs are sentencepiece's."""
        recorded = (self.manifest or {}).get("tokenizer", {}).get("special_ids")
        return SpecialIds(**recorded) if recorded else SENTENCEPIECE_SPECIALS


def _exists(url: str) -> bool:
    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(path)


# --- writing ---------------------------------------------------------------------------------------------

_WORKER_TOKENIZER: Tokenizer | None = None


def _init_worker(tokenizer_data: bytes) -> None:
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = tokenizer_from_bytes(tokenizer_data)


def _encode_docs(args: tuple[list[str], int, int]) -> tuple[list[tuple[list[int], str]], dict[str, int]]:
    docs, max_tokens, min_tokens = args
    tok = _WORKER_TOKENIZER
    out, stats = [], {"documents": 0, "documents_split": 0, "documents_dropped": 0, "tokens_dropped": 0}
    for doc in docs:
        ids = tok.encode(doc)
        windows = list(split_document(ids, max_tokens, min_tokens))
        stats["documents"] += 1
        stats["documents_split"] += len(windows) > 1
        stats["documents_dropped"] += not windows
        stats["tokens_dropped"] += len(ids) - sum(len(w) for w in windows)
        out.extend((w, doc if len(windows) == 1 and len(w) == len(ids) else tok.decode(w))
                   for w in windows)
    return out, stats


def _encode_pairs(args: tuple[list[Pair], int, int]) -> tuple[list[tuple[list[int], list[int], Pair]], dict]:
    pairs, _, _ = args
    tok = _WORKER_TOKENIZER
    return [(tok.encode(p.src), tok.encode(p.tgt), p) for p in pairs], {"documents": len(pairs)}


@dataclass
class ShardWriter:
    output: str
    dtype: str
    samples_per_shard: int
    shards: list[dict] = field(default_factory=list)
    _buffer: list[dict[str, bytes]] = field(default_factory=list)
    _tokens: int = 0

    def add(self, members: dict[str, bytes], tokens: int) -> None:
        self._buffer.append(members)
        self._tokens += tokens
        if len(self._buffer) >= self.samples_per_shard:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        name = f"shard-{len(self.shards):06d}.tar"
        data = io.BytesIO()
        # mtime fixed: the same inputs give byte-identical shards (and sha256s).
        with TarWriter(data, encoder=False, mtime=0.0) as writer:
            for members in self._buffer:
                writer.write(members)
        payload = data.getvalue()
        write_bytes(self.output.rstrip("/") + "/" + name, payload)
        self.shards.append({"name": name, "samples": len(self._buffer), "tokens": self._tokens,
                            "bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()})
        self._buffer, self._tokens = [], 0


def build_shards(records: Iterable[str] | Iterable[Pair], kind: str, output: str, tokenizer: Tokenizer,
                 samples_per_shard: int = 2000, max_tokens: int = 512, min_tokens: int = 30, processes: int = 2,
                 inputs: list[str] | None = None, chunk: int = 64) -> dict:
    """Tokenise `records` (document texts for "pretrain", Pairs for "seq2seq") in `processes` processes and
    write shards plus manifest.json to `output` (any fsspec URL). Returns the manifest.

    Pretraining documents longer than max_tokens are split into consecutive windows (never truncated);
    tail windows shorter than min_tokens are dropped; both are counted in the manifest.
    """
    if kind not in KINDS:
        raise DataError(f"shard kind must be one of {KINDS} (got {kind!r})")
    if samples_per_shard < 1:
        raise DataError(f"samples_per_shard must be >= 1 (got {samples_per_shard})")
    if kind == "pretrain":
        require_mask(tokenizer.specials)  # refused now rather than when training starts
    started = time.perf_counter()
    dtype = "uint16" if tokenizer.vocab_size <= 65536 else "uint32"
    ext = _ext(dtype)
    writer = ShardWriter(output, dtype, samples_per_shard)
    totals: dict[str, int] = {}
    encode = _encode_docs if kind == "pretrain" else _encode_pairs

    def chunks() -> Iterator[tuple[list, int, int]]:
        batch: list = []
        for record in records:
            batch.append(record)
            if len(batch) == chunk:
                yield batch, max_tokens, min_tokens
                batch = []
        if batch:
            yield batch, max_tokens, min_tokens

    index = 0
    # Spawned, not forked: a fork of a process with threads (a Ray worker, a DataLoader) can deadlock.
    pool = (multiprocessing.get_context("spawn").Pool(processes, initializer=_init_worker,
                                                      initargs=(tokenizer.data,)) if processes > 1 else None)
    if pool is None:
        _init_worker(tokenizer.data)
    with contextlib.ExitStack() as stack, tqdm(desc=f"shards ({kind})", unit="doc", dynamic_ncols=True) as bar:
        if pool is not None:
            stack.enter_context(pool)
        for encoded, stats in (pool.imap(encode, chunks()) if pool else map(encode, chunks())):
            for name, value in stats.items():
                totals[name] = totals.get(name, 0) + value
            bar.update(stats["documents"])
            for item in encoded:
                key = f"{index:09d}"
                index += 1
                if kind == "pretrain":
                    ids, text = item
                    writer.add({"__key__": key, f"ids.{ext}": np.asarray(ids, dtype=dtype).tobytes(),
                                "txt": text.encode("utf-8")}, len(ids))
                else:
                    src, tgt, pair = item
                    meta = {"id": pair.id, "src": pair.src, "tgt": pair.tgt, "refs": pair.refs}
                    writer.add({"__key__": key, f"src.{ext}": np.asarray(src, dtype=dtype).tobytes(),
                                f"tgt.{ext}": np.asarray(tgt, dtype=dtype).tobytes(),
                                "json": json.dumps(meta, ensure_ascii=False).encode("utf-8")}, len(src) + len(tgt))
    writer.flush()
    if not writer.shards:
        raise DataError(f"no samples to write: every input record was empty or shorter than {min_tokens} tokens")
    manifest = {
        "format": FORMAT, "kind": kind, "dtype": dtype,
        "tokenizer": {"sha256": tokenizer.sha256, "vocab_size": tokenizer.vocab_size,
                      "special_ids": tokenizer.specials.as_dict()},
        "rules": {"max_tokens": max_tokens, "min_tokens": min_tokens} if kind == "pretrain" else {},
        "totals": {"samples": sum(s["samples"] for s in writer.shards),
                   "tokens": sum(s["tokens"] for s in writer.shards), "shards": len(writer.shards), **totals},
        "shards": writer.shards, "inputs": list(inputs or []), "command": " ".join(sys.argv),
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_bytes(output.rstrip("/") + "/" + MANIFEST, json.dumps(manifest, indent=2).encode())
    log.info("%d samples (%d tokens) in %d shards -> %s", manifest["totals"]["samples"],
             manifest["totals"]["tokens"], len(writer.shards), output)
    return manifest
