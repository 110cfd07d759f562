"""Plain-text corpora: documents from .jsonl(.gz) files (a "text" field) or .txt files (blank-line
separated paragraphs become documents). Any fsspec URL."""

from __future__ import annotations

import json
from typing import Iterator

import fsspec

from ardiff_scale.errors import DataError


def read_documents(url: str, field: str = "text") -> Iterator[str]:
    compression = "gzip" if url.endswith(".gz") else None
    stem = url[:-3] if url.endswith(".gz") else url
    try:
        with fsspec.open(url, "rt", encoding="utf-8", compression=compression) as f:
            if stem.endswith(".jsonl"):
                for line_no, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise DataError(f"{url}:{line_no}: not valid JSON ({err.msg})") from None
                    if field not in record:
                        raise DataError(f"{url}:{line_no}: record has no {field!r} field "
                                        f"(fields: {', '.join(sorted(record))})")
                    yield record[field]
            elif stem.endswith(".txt"):
                for block in f.read().split("\n\n"):
                    if block.strip():
                        yield block.strip()
            else:
                raise DataError(f"{url}: unknown corpus format (valid: .jsonl, .jsonl.gz, .txt, .txt.gz)")
    except FileNotFoundError:
        raise DataError(f"corpus not found: {url}") from None
