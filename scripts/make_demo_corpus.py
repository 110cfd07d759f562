"""Build the bundled demo corpus data/demo/{train,valid}.jsonl.gz from the shared pretraining corpus.

Keeps only the public-domain sources (Project Gutenberg novels and plays, US-government State of the Union
addresses), so the files can ship with the repository and the demo runs on a machine without ../shared:

    python scripts/make_demo_corpus.py                     # the committed files
    python scripts/make_demo_corpus.py --train-text-bytes 2000000 --out-dir /tmp/demo

train: documents are taken round-robin across the sources, each source in a fixed pseudo-random order
(sha256 of a salt and the id, so the picks spread over all novels, plays and decades rather than the first
chapters of one book), until the next document would push the UTF-8 text past --train-text-bytes.
valid: every valid document of those sources, at most --max-valid-docs (taken the same way).
Output: the input's records (id, source, title, text), sorted by id, gzip with mtime 0: byte-identical on rebuild.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

FIELDS = ("id", "source", "title", "text")
PUBLIC_DOMAIN = ("austen", "moby-dick", "shakespeare", "sotu", "tidytext-books")
ORDER_SALT = "ardiff-demo"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    repo = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src-dir", type=Path, default=repo.parent / "shared" / "data" / "pretrain",
                        help="folder with the shared train.jsonl.gz and valid.jsonl.gz "
                             "(default: ../shared/data/pretrain)")
    parser.add_argument("--out-dir", type=Path, default=repo / "data" / "demo",
                        help="where to write train.jsonl.gz and valid.jsonl.gz (default: data/demo)")
    parser.add_argument("--sources", default=",".join(PUBLIC_DOMAIN),
                        help="comma-separated values of the `source` field to keep (default: %(default)s)")
    parser.add_argument("--train-text-bytes", type=int, default=6_800_000,
                        help="budget of UTF-8 bytes of `text` in train "
                             "(default: %(default)s, about 2.5 MB gzipped)")
    parser.add_argument("--max-valid-docs", type=int, default=40, help="cap on valid documents (default: 40)")
    return parser.parse_args(argv)


def read_records(path: Path, sources: set[str]) -> list[dict]:
    """The records of a .jsonl.gz whose `source` is in `sources`, fields in FIELDS order."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    return [{key: r[key] for key in FIELDS} for r in records if r["source"] in sources]


def spread_order(record: dict) -> str:
    return hashlib.sha256(f"{ORDER_SALT}:{record['id']}".encode()).hexdigest()


def round_robin(records: list[dict], sources: list[str], max_bytes: int | None,
                max_docs: int | None) -> list[dict]:
    """One document per source in turn, each source in spread order, within the byte and document caps."""
    queues = defaultdict(list)
    for r in sorted(records, key=spread_order):
        queues[r["source"]].append(r)
    queues = [queues[s] for s in sources if queues[s]]
    picked, total = [], 0
    while any(queues):
        for queue in queues:
            if not queue:
                continue
            size = len(queue[0]["text"].encode("utf-8"))
            over_bytes = max_bytes is not None and total + size > max_bytes
            over_docs = max_docs is not None and len(picked) >= max_docs
            if over_bytes or over_docs:
                return picked
            picked.append(queue.pop(0))
            total += size
    return picked


def write_jsonl_gz(path: Path, records: list[dict]) -> bytes:
    """Sorted by id; gzip without name or timestamp so the bytes depend only on the records."""
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in sorted(records, key=lambda r: r["id"]))
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=9, mtime=0) as gz:
        gz.write(lines.encode("utf-8"))
    data = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def summary(name: str, records: list[dict], data: bytes) -> str:
    words = sum(len(r["text"].split()) for r in records)
    text_bytes = sum(len(r["text"].encode("utf-8")) for r in records)
    per_source = Counter(r["source"] for r in records)
    return (f"{name}: {len(records):,} docs, {words:,} words, {text_bytes:,} text bytes, "
            f"{len(data):,} bytes gzip, sha256 {hashlib.sha256(data).hexdigest()}\n  per source: "
            + ", ".join(f"{s} {n}" for s, n in sorted(per_source.items())))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    for split in ("train", "valid"):
        if not (args.src_dir / f"{split}.jsonl.gz").is_file():
            print(f"error: {args.src_dir / f'{split}.jsonl.gz'} not found (give --src-dir)", file=sys.stderr)
            return 2
    train = round_robin(read_records(args.src_dir / "train.jsonl.gz", set(sources)), sources,
                        args.train_text_bytes, None)
    valid = round_robin(read_records(args.src_dir / "valid.jsonl.gz", set(sources)), sources,
                        None, args.max_valid_docs)
    for name, records in (("train", train), ("valid", valid)):
        path = args.out_dir / f"{name}.jsonl.gz"
        print(summary(str(path), records, write_jsonl_gz(path, records)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
