"""The streaming reader against real shards, real processes and real servers on 127.0.0.1, through the batched
path: batches made in the workers, one role's batch after another's."""

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ardiff_scale.data import stream as stream_module
from ardiff_scale.data.pipeline import BatchMaker
from ardiff_scale.data.shards import ShardSet, build_shards
from ardiff_scale.data.stream import BatchLoader, BatchStream, Layout, StreamOptions, shard_order
from ardiff_scale.errors import DataError
from ardiff_scale.jobs.cluster import free_port

READER = Path(__file__).with_name("read_stream.py")
SLOW_SERVER = Path(__file__).with_name("slow_http.py")
MAKER = BatchMaker("pretrain", source_len=160, target_len=48, mask_fraction=0.3, seed=0)


def loader_for(location, seed=0, workers=0, rank=0, world=1, epochs=1, on_error="warn", batch=4, **options):
    stream = BatchStream(ShardSet.open(location), StreamOptions(seed=seed, epochs=epochs, on_error=on_error, **options),
                         rank, world, batch, MAKER)
    return BatchLoader(stream, num_workers=workers)


def keys(location, **kwargs):
    loader = loader_for(location, **kwargs)
    return [key for batch in loader for key in batch.keys], loader


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
    stats = loader.stats.as_dict()
    assert stats["shards_failed"] == 0 and stats["samples"] == len(got) and stats["batches"] == -(-len(got) // 4)


@pytest.mark.parametrize("workers", [0, 2])
def test_what_the_workers_count_reaches_the_loader_once(shard_dir, workers):
    """Truncations counted in the workers add up to those of every sample read, the last batch's included."""
    from ardiff_scale.data.shards import read_shard
    shard_set = ShardSet.open(str(shard_dir))
    expected = sum(len(s["ids"]) > 60 - 2 for url in shard_set.urls for s in read_shard(url, shard_set.dtype))
    maker = BatchMaker("pretrain", source_len=60, target_len=16, mask_fraction=0.3, seed=0)
    loader = BatchLoader(BatchStream(shard_set, StreamOptions(seed=0), 0, 1, 5, maker), num_workers=workers)
    assert sum(len(b.keys) for b in loader) == all_keys(shard_dir)
    assert 0 < expected == loader.stats.as_dict()["truncated_sources"]


def test_batches_are_the_batch_makers_tensors_of_their_samples(shard_dir):
    """What a worker hands over is exactly BatchMaker over the batch's samples, read here directly."""
    shard_set = ShardSet.open(str(shard_dir))
    from ardiff_scale.data.shards import read_shard
    by_key = {f"{url.rsplit('/', 1)[-1]}/{s['__key__']}": s for url in shard_set.urls
              for s in read_shard(url, shard_set.dtype)}
    batches = list(loader_for(str(shard_dir), seed=3, workers=2))
    assert {b.role for b in batches} == {0, 1}
    for batch in batches[:6]:
        expected, _ = MAKER([{**by_key[k], "__epoch__": 0} for k in batch.keys])
        assert batch.tensors.keys() == expected.keys()
        for name in expected:
            assert torch.equal(batch.tensors[name], expected[name]), name
    assert batches[0].tensors["src_ids"].shape == (4, 160) and batches[0].tensors["tgt_ids"].shape == (4, 48)
    # Roles take turns while both have batches.
    assert [b.role for b in batches[:6]] == [0, 1, 0, 1, 0, 1]


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
    head = read_in_process(shard_dir, 5, workers, limit=9, state_out=state)
    tail = read_in_process(shard_dir, 5, workers, state_in=state)
    assert head + tail == full


@pytest.mark.integration
@pytest.mark.parametrize("before, after", [(2, 1), (1, 2), (0, 2)])
def test_resume_with_another_worker_count_repeats_and_skips_nothing(shard_dir, tmp_path, before, after):
    state = tmp_path / "state.json"
    head = read_in_process(shard_dir, 7, before, limit=15, state_out=state)
    tail = read_in_process(shard_dir, 7, after, state_in=state)
    assert len(head) + len(tail) == len(set(head + tail)) == all_keys(shard_dir)


def partial_states(shard_dir, batches, world=2, workers=0, seed=4, epochs=1):
    """Each of `world` ranks reads `batches` (+ its rank) batches; their keys and states."""
    seen, states = [], []
    for rank in range(world):
        loader = loader_for(str(shard_dir), seed=seed, rank=rank, world=world, workers=workers, epochs=epochs)
        for _, batch in zip(range(batches + rank), loader):  # range first: zip must not pull one batch more
            seen += batch.keys
        states.append(json.loads(json.dumps(loader.state_dict())))  # as a checkpoint stores it
    return seen, states


@pytest.mark.parametrize("world, workers", [(1, 0), (1, 2), (3, 1)])
def test_resume_on_another_world_size_covers_the_rest_of_the_epoch(shard_dir, world, workers):
    # Two ranks (one worker each) read part of the epoch; `world` ranks then continue from both ranks' states.
    seen, states = partial_states(shard_dir, 5, workers=1)
    rest = []
    for rank in range(world):
        loader = loader_for(str(shard_dir), seed=4, rank=rank, world=world, workers=workers)
        loader.load_state_dict(states)
        rest += [key for batch in loader for key in batch.keys]
    assert len(seen) + len(rest) == len(set(seen + rest)) == all_keys(shard_dir)


def test_resume_on_another_world_size_replays_nothing(shard_dir, monkeypatch):
    """The saved state is a cursor per role: loading it, on any layout, walks shard lists only. No sample
    choice is replayed and no shard is read, however far the saved job had got."""
    calls = {"next": 0, "read": 0}
    real_next, real_read = stream_module.RoleCursor.next, stream_module.read_shard

    def counted_next(self):
        calls["next"] += 1
        return real_next(self)

    def counted_read(*args, **kwargs):
        calls["read"] += 1
        return real_read(*args, **kwargs)

    sizes = []
    for batches in (2, 20):  # 8 and 80 samples per rank
        _, states = partial_states(shard_dir, batches, workers=0, epochs=0)
        monkeypatch.setattr(stream_module.RoleCursor, "next", counted_next)
        monkeypatch.setattr(stream_module, "read_shard", counted_read)
        for world in (1, 2, 3):  # another world size, and the same one
            loader = loader_for(str(shard_dir), seed=4, rank=0, world=world, epochs=0)
            loader.load_state_dict(states if world != 2 else states[0])
        monkeypatch.undo()
        sizes.append(len(json.dumps(states)))
        assert calls == {"next": 0, "read": 0}
    # The state does not grow with the samples read (each holds the RNG state and offsets of open shards).
    assert sizes[1] < 1.2 * sizes[0]


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
        # The directory listing shows the two shards; the third, not listed, is asked for and is missing.
        with pytest.raises(DataError, match="1 of 3 shards do not exist, first: .*shard-000777.tar"):
            ShardSet.open(f"http://127.0.0.1:{port}/shard-{{000000..000001}}.tar,"
                          f"http://127.0.0.1:{port}/shard-000777.tar")
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
    got, loader = keys(str(copy), seed=0, workers=2)
    stats = loader.stats.as_dict()
    assert stats["shards_failed"] == 1 and stats["failed_urls"] == [str(copy / "shard-000001.tar")]
    assert len(got) == all_keys(shard_dir) - 50 and not any(k.startswith("shard-000001") for k in got)
    assert "skipping unreadable shard" in caplog.text and "shard-000001.tar" in caplog.text


def test_truncated_shard_raises_with_its_url_when_asked(shard_dir, tmp_path):
    copy = corrupt_copy(shard_dir, tmp_path)
    with pytest.raises(DataError, match=r"unreadable shard .*shard-000001.tar"):
        keys(str(copy), on_error="raise")


def test_endless_stream_keeps_going_with_fresh_epochs(shard_dir):
    loader = loader_for(str(shard_dir), seed=0, epochs=0, batch=1)
    total = all_keys(shard_dir)
    taken = [b.keys[0] for b, _ in zip(loader, range(2 * total + 5))]
    first, second = taken[:total], taken[total:2 * total]
    assert sorted(first) == sorted(second) and first != second


def test_fewer_shards_than_ranks_is_refused(shard_dir):
    shard_set = ShardSet.open(f"{shard_dir}/shard-{{000000..000002}}.tar")
    with pytest.raises(DataError, match="3 shards cannot be split over 4 ranks"):
        BatchStream(shard_set, StreamOptions(), 0, 4, 8, MAKER)


def slow_shard_run(tmp_path, tokenizer, docs, prefetch_shards):
    """Two workers stream 16 shards of 30 samples over http while the consumer takes 30 ms a batch (a training
    step); one shard, sixth in worker 1's order, answers 1.5 s late. Returns the longest wait for a batch after
    the first. The DataLoader buffers one message (8 batches) per worker, so a stall is not hidden by buffering."""
    shards = tmp_path / "shards"
    if not shards.exists():
        build_shards(docs, "pretrain", str(shards), tokenizer, samples_per_shard=30, max_tokens=64, min_tokens=16,
                     processes=1)
    shard_set = ShardSet.open(f"{shards}/shard-{{000000..000015}}.tar")
    options = StreamOptions(seed=0, open_shards=2, prefetch_shards=prefetch_shards)
    slow = shard_order(len(shard_set.urls), options, Layout(rank=0, world=1, roles=2), role=1, epoch=0)[5]
    slow_name = shard_set.urls[slow].rsplit("/", 1)[-1]
    port = free_port()
    server = subprocess.Popen([sys.executable, str(SLOW_SERVER), str(shards), str(port), "1.5", slow_name])
    try:
        wait_for_port(port)
        stream = BatchStream(ShardSet.open(f"http://127.0.0.1:{port}/shard-{{000000..000015}}.tar"), options, 0, 1,
                             3, MAKER)
        waits, keys_read = [], []
        batches = iter(BatchLoader(stream, num_workers=2, prefetch_factor=1))
        keys_read += next(batches).keys
        while True:
            started = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            waits.append(time.perf_counter() - started)
            keys_read += batch.keys
            time.sleep(0.03)
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert any(k.startswith(slow_name) for k in keys_read) and len(keys_read) == len(set(keys_read)) == 16 * 30
    return max(waits)


@pytest.mark.integration
def test_a_slow_shard_does_not_stall_the_other_workers_batches(tmp_path, tokenizer, docs):
    # Without fetching ahead, the wait for the slow shard stops the whole stream once the batches worker 1 made
    # in advance are used up: the measurement sees it.
    assert slow_shard_run(tmp_path, tokenizer, docs, prefetch_shards=0) > 0.5
    # Fetched in the background while the worker serves its open shards, the delay is hidden.
    assert slow_shard_run(tmp_path, tokenizer, docs, prefetch_shards=4) < 0.3


@pytest.mark.parametrize("cpus, local_ranks, gpu, expected", [
    (96, 8, True, 8),           # 12 CPUs per GPU: 8 at most
    (32, 8, True, 3),           # 4 per GPU: one left for the training process
    (8, 8, True, 1),            # 1 per GPU: still one worker, so batches are made off the training process
    (2, 1, False, 0),           # a 2-core CPU run reads in-process
    (2, 2, False, 0),
    (16, 2, False, 1),
])
def test_default_workers_fit_the_host(cpus, local_ranks, gpu, expected):
    assert stream_module.default_workers(cpus, local_ranks, gpu) == expected


def test_auto_workers_come_from_the_host(shard_dir, monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert loader_for(str(shard_dir), workers=-1).num_workers == stream_module.default_workers(None, 2, None)
