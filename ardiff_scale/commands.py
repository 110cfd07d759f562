"""What the `ardiff` subcommands do; cli.py only parses arguments and calls these."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ardiff_scale.config import derive, load_config
from ardiff_scale.data.build import ShardsOptions, shards_command, tokenizer_command
from ardiff_scale.data.tokenizer import TokenizerOptions
from ardiff_scale.errors import ArdiffError, ConfigError, DataError
from ardiff_scale.export import load_model_dir
from ardiff_scale.loader import did_you_mean
from ardiff_scale.model import PRESETS, build_model, parameter_breakdown
from ardiff_scale.model.flops import training_step_flops
from ardiff_scale.pipelines.pretrain import run_pretraining

log = logging.getLogger("ardiff")

BUNDLED_CORPUS = Path(__file__).resolve().parents[1] / "data" / "demo"


@dataclass
class ModelInfoOptions:
    """Which model `ardiff model-info` sizes, and the training step whose FLOPs it counts."""

    preset: str | None = None  # a model preset, over the recipe's model; None: the recipe's model as it is
    recipe: str | None = None  # a YAML path or a shipped recipe's name; None: the defaults
    overrides: Sequence[str] = ()  # command-line section.field=value strings, over the preset
    batch: int = 8
    src_len: int = 256
    tgt_len: int = 50


def model_info(options: ModelInfoOptions) -> None:
    preset = options.preset
    if preset and preset not in PRESETS:  # here, to name the flag: config.py would blame the recipe
        raise ConfigError(f"unknown model preset {preset!r} in --preset{did_you_mean(preset, list(PRESETS))} "
                          f"(valid: {', '.join(PRESETS)})")
    config = load_config(options.recipe, options.overrides, **({"model": {"preset": preset}} if preset else {}))
    with torch.device("meta"):  # counts without allocating: the 1b preset would take 4 GB
        model = build_model(config.model)
    counts = parameter_breakdown(model)
    total = sum(counts.values())
    name = config.model_preset or "custom"
    print(f"model {name}: {total:,} parameters ({total / 1e6:.1f} M)")
    for module, count in counts.items():
        print(f"  {module:<16} {count:>14,}  {100 * count / total:5.1f}%")
    if config.model.decoder != "diffusion":
        return  # the FLOP count is AR-Diffusion's (model/flops.py)
    flops = training_step_flops(config.model, options.batch, options.src_len, options.tgt_len)
    print(f"training step (forward + backward), batch {options.batch}, source {options.src_len}, "
          f"target {options.tgt_len}: {flops / 1e9:,.1f} GFLOP")


def pretrain(recipe: str | None, overrides: Sequence[str], ray: dict[str, Any] | None = None) -> None:
    """Here (or in the ranks a launcher started), or, with ray.address set, in Ray Train workers.

    ray: fields of the ray section set by the command's own flags (--workers, ...), which win over `overrides`."""
    config = load_config(recipe, overrides)
    if ray:
        config = derive(config, ray=ray)
    if config.ray.address:
        from ardiff_scale.pipelines.pretrain_ray import pretrain_on_ray  # imports ray: only for Ray runs

        pretrain_on_ray(config)
    else:
        run_pretraining(config)


@dataclass
class GenerateOptions:
    """What `ardiff generate` samples, from which model, and how."""

    model_dir: str  # a model directory written by pretrain, export or the demo
    sources: Sequence[str] = ()
    input_file: str | None = None  # a file with one source per line, after `sources`
    steps: int | None = None  # decoding steps M; None: the model's diffusion.decode_steps
    candidates: int = 1  # candidates k per source
    seed: int = 0
    bf16: bool = False  # run the network under bf16 autocast
    plot_trajectory: str | None = None  # a .png for the paper's Figure 1 of one sampler run on the first source


def generate(options: GenerateOptions) -> None:
    model_dir, steps, candidates, seed = options.model_dir, options.steps, options.candidates, options.seed
    plot_trajectory = options.plot_trajectory
    texts = list(options.sources)
    if options.input_file:
        texts += [line.rstrip("\n") for line in Path(options.input_file).read_text(encoding="utf-8").splitlines()
                  if line.strip()]
    if not texts:
        raise ConfigError("nothing to generate: give --source TEXT or --input FILE")
    if candidates < 1:
        raise ConfigError(f"--candidates must be >= 1 (got {candidates})")
    from ardiff_scale.evaluation.evaluate import (
        generate_candidates,  # not at start-up: it loads the metrics
    )
    from ardiff_scale.evaluation.plots import check_png_path

    if plot_trajectory is not None:
        check_png_path(plot_trajectory, "--plot-trajectory")  # before the model loads
    model, config, tokenizer = load_model_dir(model_dir)
    if plot_trajectory is not None and config.model.decoder != "diffusion":
        raise ConfigError(f"--plot-trajectory draws the diffusion sampler's timesteps, but {model_dir} is an "
                          f"{config.model.decoder} model")
    steps = steps or config.diffusion.decode_steps
    autocast_dtype = torch.bfloat16 if options.bf16 else None
    started = time.perf_counter()
    for i, text in enumerate(texts):
        print(f"source: {text}")
        rows = generate_candidates(model, config, tokenizer, text, steps, candidates, seed * 1_000_003 + i,
                                   autocast_dtype=autocast_dtype)
        for k, row in enumerate(rows):
            print(f"  [{k}] {row}")
    seconds = time.perf_counter() - started
    log.info("%d sources x %d candidates in %.2f s (M = %d)", len(texts), candidates, seconds, steps)
    if plot_trajectory is not None:
        _plot_sampler_trajectory(plot_trajectory, model, config, tokenizer, texts[0], steps, seed * 1_000_003,
                                 autocast_dtype)


def _plot_sampler_trajectory(path: str, model, config, tokenizer, source: str, steps: int, seed: int,
                             autocast_dtype: torch.dtype | None) -> None:
    """One k=1 sampler run for `source`, seeded as generate seeds it, drawn as the paper's Figure 1.

    With --candidates 1 its sample is the printed candidate [0]; with k > 1 the noise after the first draw
    is laid out differently, so it is another sample from the same seed.
    """
    from ardiff_scale.data.objectives import collate, seq2seq_example
    from ardiff_scale.diffusion import make_schedule, sample
    from ardiff_scale.evaluation.plots import plot_trajectory

    source_len, target_len = config.data.source_len, config.data.target_len
    specials = tokenizer.specials
    batch = collate([seq2seq_example(tokenizer.encode(source), [], source_len, target_len, specials)], target_len,
                    specials=specials)
    out = sample(model, batch["src_ids"], batch["src_mask"], target_len,
                 make_schedule(config.diffusion.schedule, config.diffusion.num_steps), decode_steps=steps,
                 num_candidates=1, form=config.diffusion.timestep_form, clamp=config.diffusion.clamp,
                 generator=torch.Generator().manual_seed(seed), autocast_dtype=autocast_dtype,
                 return_trajectory=True)
    ids = out.tokens[0, 0].tolist()
    pieces = [tokenizer.id_to_piece(i).replace("\u2581", "") or "\u2581" for i in ids]
    plot_trajectory(path, out.trajectory.cpu(), config.diffusion.num_steps, config.diffusion.timestep_form,
                    pieces=pieces, text=" ".join(tokenizer.decode(ids).split()), source=source)
    log.info("sampler trajectory (N = %d, T = %d, M = %d) for the first source written to %s", target_len,
             config.diffusion.num_steps, steps, path)


def demo(corpus: str | None, output: str, minutes: float, overrides: Sequence[str]) -> None:
    corpus_dir = Path(corpus) if corpus else BUNDLED_CORPUS
    train_file, valid_file = corpus_dir / "train.jsonl.gz", corpus_dir / "valid.jsonl.gz"
    for path in (train_file, valid_file):
        if not path.exists():
            raise DataError(f"demo corpus file missing: {path} (give --corpus DIR with train.jsonl.gz and "
                            "valid.jsonl.gz)")
    out = Path(output)
    run_dir = {"output_dir": str(out)}
    config = load_config("tiny-cpu", overrides, train=run_dir)
    tokenizer_path = str(out / "tokenizer" / "demo.model")
    log.info("1/4 training a %d-piece sentencepiece tokenizer on %s", config.model.vocab_size, train_file)
    tokenizer_command([str(train_file)], tokenizer_path, TokenizerOptions(vocab_size=config.model.vocab_size), "text")
    log.info("2/4 building webdataset shards")
    for split, path in (("train", train_file), ("valid", valid_file)):
        shards_command(ShardsOptions(inputs=[str(path)], tokenizer=tokenizer_path, output=str(out / "shards" / split),
                                     kind="pretrain", format="jsonl", split=split, samples_per_shard=500,
                                     max_tokens=config.data.source_len - 2, min_tokens=config.data.min_tokens,
                                     processes=2, field="text"))
    shards = {"train": str(out / "shards" / "train"), "valid": str(out / "shards" / "valid"),
              "tokenizer": tokenizer_path}
    config = load_config("tiny-cpu", overrides, train=run_dir, data=shards)
    log.info("3/4 pretraining the tiny model for at most %.1f minutes", minutes)
    result = run_pretraining(config, time_budget=60 * minutes)
    log.info("4/4 the model filled masked spans of held-out windows (M = %d sampler steps)",
             config.diffusion.decode_steps)
    for source, reference, generated in result.samples:
        print("\nsource   :", source[:400])
        print("reference:", reference)
        print("generated:", generated)
    if result.infill is not None:
        # What the samples alone cannot say: how much was learned, against writing the commonest token.
        scores = result.infill
        print(f"\nwhat it learned, on {scores.windows} held-out windows: "
              f"{scores.summary(result.tokenizer.decode([scores.unigram_token]))}")
        if scores.accuracy <= scores.unigram_accuracy:
            print("  (no better than the unigram baseline yet: the model needs more training (--minutes) before "
                  "the samples mean much; few distinct tokens means the sampler's nearest-embedding clamp "
                  "snapped uncertain estimates onto the shortest embeddings, see docs/SAMPLING.md)")
    rows = result.history.rows
    if rows:
        print(f"\nloss {rows[0]['loss']:.3f} -> {rows[-1]['loss']:.3f} over steps {rows[0]['step']}-{rows[-1]['step']}"
              f"{' (continued from ' + result.resumed_from + ')' if result.resumed_from else ''}; curve: {out / 'loss.png'}")
    else:
        print(f"\n{out} is trained to train.max_steps already; give another --output for a new run")
    print(f"model: {out / 'model'} (EMA weights: {out / 'model-ema'})")
    print(f"try:   ardiff generate --model {out / 'model'} --source 'It is a truth universally <mask> that a single man'")
    if result.tracking_uri:
        print(f"MLflow: mlflow ui --backend-store-uri {result.tracking_uri} --host 127.0.0.1 --port 5000  "
              "(then open http://127.0.0.1:5000)")


def deepspeed_env(output: str, force: bool) -> None:
    """Write the `.deepspeed_env` the hostfile launcher exports on every host; print names, never values."""
    from ardiff_scale.jobs.environment import deepspeed_env_file, describe, travelling_environment

    if os.path.lexists(output) and not force:
        raise ArdiffError(f"{output} exists; pass --force to overwrite it")
    environment = travelling_environment()
    try:
        text = deepspeed_env_file(environment)
    except ValueError as err:
        raise ArdiffError(str(err)) from err
    # Owner-only from the first byte: the file holds credentials (AWS_SECRET_ACCESS_KEY, MLFLOW_TRACKING_TOKEN).
    descriptor = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # an overwritten file keeps its old mode otherwise
    with os.fdopen(descriptor, "w") as f:
        f.write(text)
    print(f"wrote {len(environment)} variable(s) to {output}: {describe(environment)}")
    # The launcher wraps a value in double quotes on the remote shell's command line, where these still act.
    for name in (n for n, value in environment.items() if any(c in value for c in '"$`\\')):
        print(f"warning: {name}'s value holds a \", $, ` or \\, which the remote shell will interpret")
    print("deepspeed --hostfile HOSTFILE reads .deepspeed_env from its working directory or $HOME (or the file "
          "named by DS_ENV_FILE) and exports every line on each host before starting the ranks")
