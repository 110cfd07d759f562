"""Batched evaluation: many sources per sampler call give exactly the candidates of one source at a time,
whatever the batch size and the split over workers, on the device asked for."""

from pathlib import Path

import pytest
import torch
import yaml

from ardiff_scale.config import load_config
from ardiff_scale.data.objectives import collate, seq2seq_example
from ardiff_scale.decoding import decode
from ardiff_scale.errors import ConfigError
from ardiff_scale.evaluation import evaluate as evaluation
from ardiff_scale.evaluation.evaluate import (
    EvaluateOptions,
    auto_batch_sources,
    evaluate,
    example_seed,
    generate_batch,
    generate_candidates,
    predict,
)
from ardiff_scale.export import save_model_dir
from ardiff_scale.model import build_model

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
TINY = ["model.vocab_size=1000", "model.hidden_size=32", "model.num_heads=2", "model.encoder_layers=1",
        "model.decoder_layers=1", "model.embed_dim=16", "model.time_channels=16", "data.source_len=32",
        "data.target_len=16"]
SOURCES = 7  # 4 and 5 per call leave a short last call


def tiny_model_dir(root: Path, tokenizer, decoder: str) -> Path:
    config = load_config(None, [*TINY, f"model.decoder={decoder}"])
    torch.manual_seed(0)
    model = build_model(config.model)
    save_model_dir(str(root), model, config, tokenizer)
    return root


@pytest.fixture(scope="module")
def diffusion_dir(tmp_path_factory, tokenizer) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("diffusion"), tokenizer, "diffusion")


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("task") / "c2t.yaml"
    path.write_text(yaml.safe_dump({
        "name": "c2t-tiny", "data": {"location": str(SHARED / "tasks" / "concept2text"), "format": "jsonl"},
        "lengths": {"source": 32, "target": 16}, "finetune": {"max_steps": 1},
        "decode": {"steps": 4, "candidates": 3}, "metrics": ["rouge"]}))
    return str(path)


@pytest.fixture(scope="module")
def one_at_a_time(task, diffusion_dir) -> dict[int, list[dict]]:
    """The baseline, batch_sources=1, for k = 1 and k = 3."""
    return {k: predict(task, str(diffusion_dir), limit=SOURCES, candidates=k, batch_sources=1, device="cpu")
            for k in (1, 3)}


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("batch_sources", [4, 5, 16])
def test_batched_predictions_equal_one_source_at_a_time(task, diffusion_dir, one_at_a_time, k, batch_sources):
    batched = predict(task, str(diffusion_dir), limit=SOURCES, candidates=k, batch_sources=batch_sources,
                      device="cpu")
    alone = one_at_a_time[k]
    assert [r["index"] for r in batched] == list(range(SOURCES))
    assert all(len(r["candidates"]) == k for r in batched)
    assert [r["candidates"] for r in batched] == [r["candidates"] for r in alone]
    assert [r["prediction"] for r in batched] == [r["prediction"] for r in alone]


def test_candidates_differ_between_sources_and_slots(one_at_a_time):
    """Each source and each candidate slot has its own noise (a batch must not reuse one source's draws)."""
    texts = [t for r in one_at_a_time[3] for t in r["candidates"]]
    assert len(set(texts)) > len(texts) // 2


def test_a_split_over_two_workers_equals_the_whole(task, diffusion_dir, one_at_a_time):
    parts = [predict(task, str(diffusion_dir), limit=SOURCES, part=(i, 2), candidates=3, batch_sources=2,
                     device="cpu") for i in range(2)]
    assert [r["index"] for r in parts[0]] == [0, 2, 4, 6] and [r["index"] for r in parts[1]] == [1, 3, 5]
    merged = sorted(parts[0] + parts[1], key=lambda r: r["index"])
    assert [r["candidates"] for r in merged] == [r["candidates"] for r in one_at_a_time[3]]


def test_generate_batch_replays_the_samplers_own_draws(diffusion_dir):
    """The noise drawn per source equals what the sampler draws from that source's generator alone."""
    from ardiff_scale.export import load_model_dir
    model, config, tokenizer = load_model_dir(str(diffusion_dir))
    sources, seeds = ["dog run park", "cook dinner kitchen", "a b"], [example_seed(3, i) for i in range(3)]
    batched = generate_batch(model, config, tokenizer, sources, 4, 3, seeds, lengths=(32, 16))
    for source, seed, texts in zip(sources, seeds, batched):
        batch = collate([seq2seq_example(tokenizer.encode(source), [], 32, 16, tokenizer.specials)], 16,
                        source_len=32, specials=tokenizer.specials)
        out = decode(model, config, batch["src_ids"], batch["src_mask"], 16, 4, 3,
                     generator=torch.Generator().manual_seed(seed), specials=tokenizer.specials)
        assert texts == [" ".join(tokenizer.decode(row.tolist()).split()) for row in out.tokens[0]]
        assert generate_candidates(model, config, tokenizer, source, 4, 3, seed, lengths=(32, 16)) == texts


def test_autoregressive_batched_beam_search_equals_one_at_a_time(tmp_path, tokenizer, task):
    model_dir = str(tiny_model_dir(tmp_path / "ar", tokenizer, "autoregressive"))
    alone = predict(task, model_dir, limit=5, candidates=2, batch_sources=1, device="cpu")
    batched = predict(task, model_dir, limit=5, candidates=2, batch_sources=3, device="cpu")
    assert all(len(r["candidates"]) == 1 for r in batched)
    assert [r["candidates"] for r in batched] == [r["candidates"] for r in alone]


def test_the_device_argument_picks_where_the_model_loads(task, diffusion_dir, monkeypatch):
    asked = []
    load = evaluation.load_model_dir

    def spy(directory, device="cpu"):
        asked.append(device)
        return load(directory, device=device)

    monkeypatch.setattr(evaluation, "load_model_dir", spy)
    predict(task, str(diffusion_dir), limit=2, candidates=1, batch_sources=2, device="cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    predict(task, str(diffusion_dir), limit=2, candidates=1, batch_sources=2)
    assert asked == ["cpu", "cpu"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert evaluation.resolve_device(None) == "cuda" and evaluation.resolve_device("cpu") == "cpu"


def test_sampler_noise_is_candidate_minor_and_bounded_per_call():
    noise = evaluation.sampler_noise([5, 9], candidates=3, steps=4, length=6, dim=2)
    assert noise.start.shape == (6, 6, 2) and noise.steps.shape == (4, 6, 6, 2)
    generator = torch.Generator().manual_seed(9)
    assert torch.equal(noise.start[3:], torch.randn(3, 6, 2, generator=generator))
    for m in range(4):
        assert torch.equal(noise.steps[m, 3:], torch.randn(3, 6, 2, generator=generator))


@pytest.mark.parametrize("bad", [0, -2])
def test_batch_sources_below_one_is_a_config_error(task, diffusion_dir, bad):
    with pytest.raises(ConfigError, match=rf"batch_sources.*>= 1 \(got {bad}\)"):
        predict(task, str(diffusion_dir), limit=2, batch_sources=bad)


@pytest.mark.parametrize(("k", "device", "expected"), [(1, "cpu", 16), (3, "cpu", 5), (10, "cpu", 1), (50, "cpu", 1),
                                                      (1, "cuda", 64), (10, "cuda", 64), (50, "cuda", 20),
                                                      (10, "cuda:1", 64)])
def test_the_default_batch_fills_about_a_devices_worth_of_sampler_rows(k, device, expected):
    assert auto_batch_sources(k, device) == expected


def test_the_default_batch_is_recorded_with_the_results(task, diffusion_dir, tmp_path):
    info = evaluate(EvaluateOptions(str(task), str(diffusion_dir), str(tmp_path / "eval"), limit=3, steps=2,
                                    candidates=3, device="cpu"))
    assert info["batch_sources"] == 5 and info["device"] == "cpu" and info["examples"] == 3
