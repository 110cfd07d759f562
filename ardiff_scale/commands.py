"""What the `ardiff` subcommands do; cli.py only parses arguments and calls these."""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Iterator, Sequence

import torch

from ardiff_scale.config import Config, load_config
from ardiff_scale.data.corpus import read_documents
from ardiff_scale.data.objectives import collate, paragraph_denoise, seq2seq_example, split_document
from ardiff_scale.data.tokenizer import Tokenizer, TokenizerOptions, train_tokenizer
from ardiff_scale.diffusion import make_schedule, sample, training_loss
from ardiff_scale.errors import ConfigError, DataError
from ardiff_scale.export import load_model_dir, save_model_dir
from ardiff_scale.model import ARDiffusionModel, PRESETS, parameter_breakdown
from ardiff_scale.model.flops import training_step_flops
from ardiff_scale.train.callbacks import ConsoleProgress, LossHistory
from ardiff_scale.train.trainer import Trainer

log = logging.getLogger("ardiff")

BUNDLED_CORPUS = Path(__file__).resolve().parents[1] / "data" / "demo"


def model_info(preset: str | None, recipe: str | None, overrides: Sequence[str], batch: int, src_len: int,
               tgt_len: int) -> None:
    overrides = [*([f"model.preset={preset}"] if preset else []), *overrides]
    config = load_config(recipe, overrides)
    with torch.device("meta"):  # counts without allocating: the 1b preset would take 4 GB
        model = ARDiffusionModel(config.model)
    counts = parameter_breakdown(model)
    total = sum(counts.values())
    name = config.model_preset or "custom"
    print(f"model {name}: {total:,} parameters ({total / 1e6:.1f} M)")
    for module, count in counts.items():
        print(f"  {module:<16} {count:>14,}  {100 * count / total:5.1f}%")
    flops = training_step_flops(config.model, batch, src_len, tgt_len)
    print(f"training step (forward + backward), batch {batch}, source {src_len}, target {tgt_len}: "
          f"{flops / 1e9:,.1f} GFLOP")


def train_tokenizer_cmd(inputs: Sequence[str], output: str, vocab_size: int, model_type: str, max_sentences: int,
                        field: str) -> None:
    options = TokenizerOptions(vocab_size=vocab_size, model_type=model_type, max_sentences=max_sentences)
    started = time.perf_counter()
    tokenizer = train_tokenizer((doc for url in inputs for doc in read_documents(url, field)), options)
    tokenizer.save(output)
    log.info("tokenizer: %d pieces, sha256 %s, trained in %.1f s -> %s", tokenizer.vocab_size,
             tokenizer.sha256[:12], time.perf_counter() - started, output)


def _windows(url: str, tokenizer: Tokenizer, config: Config) -> list[list[int]]:
    """Every document cut into windows of at most data.source_len tokens (with <s> ... </s> room kept)."""
    data = config.data
    windows, dropped = [], 0
    for doc in read_documents(url):
        ids = tokenizer.encode(doc)
        pieces = list(split_document(ids, data.source_len, max(data.min_tokens, 2)))
        dropped += len(ids) - sum(len(p) for p in pieces)
        windows.extend(pieces)
    if not windows:
        raise DataError(f"{url}: no document has data.min_tokens={data.min_tokens} tokens")
    log.info("%s: %d windows of <= %d tokens (%d tokens in short tails dropped)", url, len(windows),
             data.source_len, dropped)
    return windows


def _pretraining_batches(windows: list[list[int]], config: Config, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """Endless epochs over the windows in a new order, each epoch masking fresh spans."""
    rng = random.Random(seed)
    size = config.train.micro_batch_size
    if len(windows) < size:
        raise DataError(f"only {len(windows)} training windows for train.micro_batch_size={size}")
    while True:
        order = rng.sample(range(len(windows)), len(windows))
        for start in range(0, len(order) - size + 1, size):
            examples = [paragraph_denoise(windows[i], config.data.target_len, config.data.mask_fraction, rng)
                        for i in order[start:start + size]]
            yield collate(examples, config.data.target_len, config.data.source_len)


class TimeBudget:
    """Stops training once `seconds` have passed (the demo's few minutes)."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds

    def on_train_start(self, trainer: Trainer) -> None:
        self.started = time.perf_counter()

    def on_step_end(self, trainer: Trainer, metrics) -> None:
        if self.seconds is not None and time.perf_counter() - self.started > self.seconds:
            log.info("time budget of %.0f s reached at step %d", self.seconds, trainer.step)
            trainer.should_stop = True

    def on_train_end(self, trainer: Trainer) -> None:
        pass


@torch.no_grad()
def validation_loss(model: ARDiffusionModel, windows: list[list[int]], config: Config, batches: int = 8) -> float:
    """Mean loss on fixed spans and fixed noise, so values are comparable across a run."""
    rng, generator = random.Random(0), torch.Generator().manual_seed(0)
    schedule = make_schedule(config.diffusion.schedule, config.diffusion.num_steps)
    model.eval()
    size, losses = config.train.micro_batch_size, []
    for start in range(0, min(len(windows), batches * size), size):
        batch = collate([paragraph_denoise(w, config.data.target_len, config.data.mask_fraction, rng)
                         for w in windows[start:start + size]], config.data.target_len)
        terms = training_loss(model, batch["src_ids"], batch["src_mask"], batch["tgt_ids"], schedule,
                              config.diffusion.timestep_form, generator)
        losses.append(terms.loss.item())
    return sum(losses) / len(losses)


def run_pretraining(config: Config, time_budget: float | None = None) -> tuple[ARDiffusionModel, Tokenizer, LossHistory]:
    data, train = config.data, config.train
    for name in ("train", "tokenizer"):
        if not getattr(data, name):
            raise ConfigError(f"data.{name} is empty: give data.{name}=PATH_OR_URL")
    tokenizer = Tokenizer.load(data.tokenizer)
    if tokenizer.vocab_size != config.model.vocab_size:
        raise ConfigError(f"model.vocab_size is {config.model.vocab_size} but tokenizer {data.tokenizer} has "
                          f"{tokenizer.vocab_size} pieces: set model.vocab_size={tokenizer.vocab_size}")
    torch.manual_seed(train.seed)
    if train.threads:
        torch.set_num_threads(train.threads)
    windows = _windows(data.train, tokenizer, config)
    valid = _windows(data.valid, tokenizer, config) if data.valid else []
    model = ARDiffusionModel(config.model)
    history = LossHistory()
    trainer = Trainer(config, model, callbacks=[ConsoleProgress(), history, TimeBudget(time_budget)])
    log.info("pretraining %s (%.1f M parameters) for up to %d steps, precision %s",
             config.model_preset or "model", sum(p.numel() for p in model.parameters()) / 1e6,
             train.max_steps, train.precision)
    trainer.fit(_pretraining_batches(windows, config, train.seed))
    if valid:
        log.info("validation loss: %.4f", validation_loss(model, valid, config))
    out = Path(train.output_dir)
    save_model_dir(str(out), model, config, tokenizer)
    history.plot(out / "loss.png", title=f"{config.model_preset or 'model'} pretraining")
    log.info("model written to %s (loss curve: %s)", out, out / "loss.png")
    return model, tokenizer, history


def pretrain(recipe: str | None, overrides: Sequence[str]) -> None:
    run_pretraining(load_config(recipe, overrides))


def _encode_sources(texts: Sequence[str], tokenizer: Tokenizer, config: Config) -> dict[str, torch.Tensor]:
    examples = [seq2seq_example(tokenizer.encode(t), [], config.data.source_len, config.data.target_len)
                for t in texts]
    return collate(examples, config.data.target_len)


def generate(model_dir: str, sources: Sequence[str], input_file: str | None, steps: int | None, candidates: int,
             seed: int, bf16: bool) -> None:
    texts = list(sources)
    if input_file:
        texts += [line.rstrip("\n") for line in Path(input_file).read_text(encoding="utf-8").splitlines()
                  if line.strip()]
    if not texts:
        raise ConfigError("nothing to generate: give --source TEXT or --input FILE")
    if candidates < 1:
        raise ConfigError(f"--candidates must be >= 1 (got {candidates})")
    model, config, tokenizer = load_model_dir(model_dir)
    steps = steps or config.diffusion.decode_steps
    batch = _encode_sources(texts, tokenizer, config)
    schedule = make_schedule(config.diffusion.schedule, config.diffusion.num_steps)
    started = time.perf_counter()
    out = sample(model, batch["src_ids"], batch["src_mask"], config.data.target_len, schedule, decode_steps=steps,
                 num_candidates=candidates, form=config.diffusion.timestep_form, clamp=config.diffusion.clamp,
                 generator=torch.Generator().manual_seed(seed), autocast_dtype=torch.bfloat16 if bf16 else None)
    seconds = time.perf_counter() - started
    for text, rows in zip(texts, out.tokens):
        print(f"source: {text}")
        for k, row in enumerate(rows):
            print(f"  [{k}] {tokenizer.decode(row.tolist())}")
    log.info("%d sources x %d candidates in %.2f s (M = %d)", len(texts), candidates, seconds, steps)


def demo(corpus: str | None, output: str, minutes: float, overrides: Sequence[str]) -> None:
    corpus_dir = Path(corpus) if corpus else BUNDLED_CORPUS
    train_file, valid_file = corpus_dir / "train.jsonl.gz", corpus_dir / "valid.jsonl.gz"
    for path in (train_file, valid_file):
        if not path.exists():
            raise DataError(f"demo corpus file missing: {path} (give --corpus DIR with train.jsonl.gz and "
                            "valid.jsonl.gz)")
    out = Path(output)
    tokenizer_path = out / "tokenizer" / "demo.model"
    vocab = PRESETS["tiny"].vocab_size
    log.info("1/3 training a %d-piece sentencepiece tokenizer on %s", vocab, train_file)
    train_tokenizer_cmd([str(train_file)], str(tokenizer_path), vocab, "unigram", 200_000, "text")
    config = load_config("tiny-cpu", [f"data.train={train_file}", f"data.valid={valid_file}",
                                      f"data.tokenizer={tokenizer_path}", f"train.output_dir={out}", *overrides])
    log.info("2/3 pretraining the tiny model for at most %.1f minutes", minutes)
    model, tokenizer, history = run_pretraining(config, time_budget=60 * minutes)
    log.info("3/3 filling masked spans of held-out documents (M = %d sampler steps)", config.diffusion.decode_steps)
    rng = random.Random(1)
    windows = _windows(str(valid_file), tokenizer, config)
    examples = [paragraph_denoise(w, config.data.target_len, config.data.mask_fraction, rng)
                for w in rng.sample(windows, min(4, len(windows)))]
    batch = collate(examples, config.data.target_len)
    schedule = make_schedule(config.diffusion.schedule, config.diffusion.num_steps)
    result = sample(model, batch["src_ids"], batch["src_mask"], config.data.target_len, schedule,
                    decode_steps=config.diffusion.decode_steps, generator=torch.Generator().manual_seed(0))
    for example, tokens in zip(examples, result.tokens[:, 0]):
        source = tokenizer.processor.decode(example.source).replace("<mask>", " [____] ")
        print("\nsource   :", " ".join(source.split())[:400])
        print("reference:", tokenizer.decode(example.target))
        print("generated:", tokenizer.decode(tokens.tolist()))
    first, last = history.rows[0]["loss"], history.rows[-1]["loss"]
    print(f"\nloss {first:.3f} -> {last:.3f} over {len(history.rows)} steps; curve: {out / 'loss.png'}")
    print(f"try: ardiff generate --model {out} --source 'It is a truth universally <mask> that a single man'")
