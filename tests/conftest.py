import gzip
import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ardiff_scale.data.shards import build_shards
from ardiff_scale.data.tokenizer import TokenizerOptions, train_tokenizer
from ardiff_scale.jobs.cluster import LocalHead, start_local_head

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def pretrain_docs(n: int) -> list[str]:
    with gzip.open(SHARED / "pretrain" / "train.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in itertools.islice(f, n)]


@pytest.fixture(scope="session")
def docs() -> list[str]:
    return pretrain_docs(40)


@pytest.fixture(scope="session")
def tokenizer(docs):
    return train_tokenizer(docs, TokenizerOptions(vocab_size=1000, model_type="bpe"))


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory, docs, tokenizer) -> Path:
    """~40 real documents cut into 128-token windows, 50 windows a shard."""
    out = tmp_path_factory.mktemp("shards")
    build_shards(docs, "pretrain", str(out), tokenizer, samples_per_shard=50, max_tokens=128, min_tokens=16,
                 processes=2)
    return out


# One local Ray head on 127.0.0.1 for every Ray test (jobs/ and pipelines/): started on free ports, stopped
# (every process) after.
TEST_KNOBS = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}


@pytest.fixture(scope="session")
def ray_head() -> Iterator[LocalHead]:
    """A head with 2 CPUs and a 200 MB object store; its `dashboard_url` is what `--address` takes."""
    # A killed Ray Train worker is noticed at the next health check: every 0.2 s here, not Ray's default.
    head = start_local_head(num_cpus=2, object_store_mb=200, env=TEST_KNOBS)
    try:
        yield head
    finally:
        head.stop()

