"""The streaming reader against real shards, real processes and real servers on 127.0.0.1."""

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ardiff_scale.data.shards import ShardSet
from ardiff_scale.data.stream import ShardLoader, ShardStream, StreamOptions
from ardiff_scale.errors import DataError
from ardiff_scale.jobs.cluster import free_port

READER = Path(__file__).with_name("read_stream.py")


def keys(location, seed=0, workers=0, rank=0, world=1, epochs=1, on_error="warn"):
    options = StreamOptions(seed=seed, epochs=epochs, on_error=on_error)
    loader = ShardLoader(ShardStream(ShardSet.open(location), options, rank, world), num_workers=workers)
    return [f"{s['__url__'].rsplit('/', 1)[-1]}/{s['__key__']}" for s in loader], loader


def read_in_process(location, seed, workers, limit=0, state_in="-", state_out="-", rank=0, world=1):
    out = subprocess.run([sys.executable, str(READER), str(location), str(seed), str(workers), str(rank), str(world),
                          str(limit), str(state_in), str(state_out)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def all_keys(shard_dir):
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    return manifest["totals"]["samples"]



def wait_for_port(port, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


def test_one_epoch_is_every_sample_once_and_seeded(shard_dir):
    got, loader = keys(str(shard_dir), seed=1)
    assert len(got) == len(set(got)) == all_keys(shard_dir)
    assert keys(str(shard_dir), seed=1)[0] == got
    assert keys(str(shard_dir), seed=2)[0] != got
    assert loader.stats.as_dict()["shards_failed"] == 0


@pytest.mark.integration
@pytest.mark.parametrize("workers", [1, 2])
def test_two_ranks_by_two_workers_are_disjoint_and_cover_the_epoch(shard_dir, workers):
    per_rank = [read_in_process(shard_dir, 3, workers, rank=rank, world=2) for rank in range(2)]
    assert not set(per_rank[0]) & set(per_rank[1])
    union = per_rank[0] + per_rank[1]
    assert len(union) == len(set(union)) == all_keys(shard_dir)


@pytest.mark.integration
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_in_a_new_process_continues_the_exact_stream(shard_dir, tmp_path, workers):
    full = read_in_process(shard_dir, 5, workers)
    state = tmp_path / "state.json"
    head = read_in_process(shard_dir, 5, workers, limit=37, state_out=state)
    tail = read_in_process(shard_dir, 5, workers, state_in=state)
    assert head + tail == full


@pytest.mark.integration
@pytest.mark.parametrize("before, after", [(2, 1), (1, 2), (0, 2)])
def test_resume_with_another_worker_count_repeats_and_skips_nothing(shard_dir, tmp_path, before, after):
    state = tmp_path / "state.json"
    head = read_in_process(shard_dir, 7, before, limit=61, state_out=state)
    tail = read_in_process(shard_dir, 7, after, state_in=state)
    assert len(head) + len(tail) == len(set(head + tail)) == all_keys(shard_dir)


def test_resume_on_another_world_size_covers_the_rest_of_the_epoch(shard_dir):
    # Two ranks each read part of the epoch; one rank then continues from both ranks' states.
    seen, states = [], []
    for rank in range(2):
        loader = ShardLoader(ShardStream(ShardSet.open(str(shard_dir)), StreamOptions(seed=4), rank, 2))
        for _, sample in zip(range(20 + rank), loader):  # range first: zip must not pull one sample more
            seen.append(sample["__key__"] + sample["__url__"])
        states.append(loader.state_dict())
    single = ShardLoader(ShardStream(ShardSet.open(str(shard_dir)), StreamOptions(seed=4), 0, 1))
    single.load_state_dict(states)
    rest = [s["__key__"] + s["__url__"] for s in single]
    assert len(seen) + len(rest) == len(set(seen + rest)) == all_keys(shard_dir)


@pytest.mark.integration
def test_http_server_gives_the_same_samples_as_disk(shard_dir):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(shard_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        over_http, _ = keys(f"http://127.0.0.1:{port}/", seed=9, workers=2)
        on_disk, _ = keys(str(shard_dir), seed=9, workers=2)
        assert over_http == on_disk and len(on_disk) == all_keys(shard_dir)
        braces, _ = keys(f"http://127.0.0.1:{port}/shard-{{000000..000001}}.tar", seed=9)
        assert len(braces) == 100
        with pytest.raises(DataError, match="do not exist, first: http://127.0.0.1"):
            ShardSet.open(f"http://127.0.0.1:{port}/shard-000777.tar")
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.integration
def test_http_streams_shards_larger_than_a_fetch_block(tmp_path):
    """http.server serves no byte ranges: a shard bigger than fsspec's 5 MB block must be streamed."""
    import io

    import numpy as np
    from webdataset import TarWriter

    from ardiff_scale.data.shards import read_shard
    ids = np.arange(4_000_000, dtype=np.uint32).astype(np.uint16)  # 8 MB of token ids
    data = io.BytesIO()
    with TarWriter(data, encoder=False) as writer:
        writer.write({"__key__": "000000000", "ids.u16": ids.tobytes(), "txt": b"big"})
        writer.write({"__key__": "000000001", "ids.u16": ids[:5].tobytes(), "txt": b"small"})
    (tmp_path / "shard-000000.tar").write_bytes(data.getvalue())
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        samples = read_shard(f"http://127.0.0.1:{port}/shard-000000.tar", "uint16")
        assert [s["text"] for s in samples] == ["big", "small"]
        assert np.array_equal(samples[0]["ids"], ids)
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.integration
def test_s3_compatible_server_gives_the_same_samples_as_disk(shard_dir, monkeypatch):
    """moto's S3 server on 127.0.0.1: a real HTTP S3 endpoint, reached through s3fs like AWS or MinIO."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        for name, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
                            "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(name, value)
        import s3fs
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir("corpus")
        fs.put(f"{shard_dir}/", "corpus/shards/", recursive=True)
        over_s3, _ = keys("s3://corpus/shards", seed=9)
        on_disk, _ = keys(str(shard_dir), seed=9)
        assert over_s3 == on_disk and len(on_disk) == all_keys(shard_dir)
    finally:
        server.terminate()
        server.wait(timeout=10)


def corrupt_copy(shard_dir, tmp_path):
    copy = tmp_path / "shards"
    shutil.copytree(shard_dir, copy)
    data = (copy / "shard-000001.tar").read_bytes()
    (copy / "shard-000001.tar").write_bytes(data[: len(data) // 2])
    return copy


def test_truncated_shard_is_counted_and_skipped(shard_dir, tmp_path, caplog):
    copy = corrupt_copy(shard_dir, tmp_path)
    got, loader = keys(str(copy), seed=0, workers=0)
    stats = loader.stats.as_dict()
    assert stats["shards_failed"] == 1 and stats["failed_urls"] == [str(copy / "shard-000001.tar")]
    assert len(got) == all_keys(shard_dir) - 50 and not any(k.startswith("shard-000001") for k in got)
    assert "skipping unreadable shard" in caplog.text and "shard-000001.tar" in caplog.text


def test_truncated_shard_raises_with_its_url_when_asked(shard_dir, tmp_path):
    copy = corrupt_copy(shard_dir, tmp_path)
    with pytest.raises(DataError, match=r"unreadable shard .*shard-000001.tar"):
        keys(str(copy), on_error="raise")


def test_endless_stream_keeps_going_with_fresh_epochs(shard_dir):
    loader = ShardLoader(ShardStream(ShardSet.open(str(shard_dir)), StreamOptions(seed=0, epochs=0), 0, 1))
    total = all_keys(shard_dir)
    taken = [s["__key__"] + s["__url__"] for s, _ in zip(loader, range(2 * total + 5))]
    first, second = taken[:total], taken[total:2 * total]
    assert sorted(first) == sorted(second) and first != second


def test_fewer_shards_than_ranks_is_refused(shard_dir):
    shard_set = ShardSet.open(f"{shard_dir}/shard-{{000000..000002}}.tar")
    with pytest.raises(DataError, match="3 shards cannot be split over 4 ranks"):
        ShardStream(shard_set, StreamOptions(), 0, 4)
