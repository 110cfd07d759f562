"""`ardiff`: one command, a subcommand per job. Each is a thin call into the package's modules."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ardiff_scale.errors import ArdiffError

log = logging.getLogger("ardiff")

EPILOG = """Overrides are section.field=value pairs applied on top of the recipe, for example
  ardiff pretrain --recipe tiny-cpu train.lr=5e-4 train.max_steps=2000 model.preset=iwslt
Recipes: a YAML path, or the name of one shipped in ardiff_scale/recipes."""


def setup_logging() -> None:
    """INFO on rank 0, warnings only on the other ranks, every line tagged with its rank."""
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s", datefmt="%H:%M:%S")


def add_recipe_args(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument("--recipe", default=default, help="YAML recipe path or shipped recipe name"
                        + (f" (default: {default})" if default else ""))
    parser.add_argument("overrides", nargs="*", metavar="section.field=value", help="config overrides")


def cmd_model_info(args: argparse.Namespace) -> None:
    from ardiff_scale.commands import model_info
    model_info(args.preset, args.recipe, args.overrides, args.batch, args.src_len, args.tgt_len)


def cmd_tokenizer_train(args: argparse.Namespace) -> None:
    from ardiff_scale.commands import train_tokenizer_cmd
    train_tokenizer_cmd(args.input, args.output, args.vocab_size, args.model_type, args.max_sentences, args.field)


def cmd_pretrain(args: argparse.Namespace) -> None:
    from ardiff_scale.commands import pretrain
    pretrain(args.recipe, args.overrides)


def cmd_generate(args: argparse.Namespace) -> None:
    from ardiff_scale.commands import generate
    generate(args.model, args.source, args.input, args.steps, args.candidates, args.seed, args.bf16)


def cmd_demo(args: argparse.Namespace) -> None:
    from ardiff_scale.commands import demo
    demo(args.corpus, args.output, args.minutes, args.overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ardiff", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Pretrain, fine-tune and evaluate AR-Diffusion text models (Wu et al., NeurIPS 2023).",
        epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("model-info", help="parameter counts by module and FLOPs per training step",
                       description="Print a model size's parameter counts by module and the FLOPs of one "
                                   "training step, without allocating the weights.")
    p.add_argument("--preset", help="model preset (tiny, commongen, iwslt, xsum, genie-base, 1b)")
    p.add_argument("--batch", type=int, default=8, help="batch size for the FLOP estimate (default 8)")
    p.add_argument("--src-len", type=int, default=256, help="source length for the FLOP estimate (default 256)")
    p.add_argument("--tgt-len", type=int, default=50, help="target length for the FLOP estimate (default 50)")
    add_recipe_args(p)
    p.set_defaults(func=cmd_model_info)

    tok = sub.add_parser("tokenizer", help="sentencepiece tokenizer").add_subparsers(dest="action", required=True)
    p = tok.add_parser("train", help="train a tokenizer with the reserved <pad>=0 ... <mask>=4 ids",
                       description="Train a sentencepiece tokenizer on text, .jsonl or .jsonl.gz files (any "
                                   "fsspec URL), sampling at most --max-sentences lines. Writes OUTPUT and "
                                   "OUTPUT.json (the card: vocabulary size, options, sha256).")
    p.add_argument("--input", nargs="+", required=True, help="corpus files or URLs")
    p.add_argument("--output", required=True, help="where to write the .model file")
    p.add_argument("--vocab-size", type=int, default=8000, help="vocabulary size (default 8000)")
    p.add_argument("--model-type", choices=["unigram", "bpe"], default="unigram", help="(default unigram)")
    p.add_argument("--max-sentences", type=int, default=200_000, help="lines sampled to train on")
    p.add_argument("--field", default="text", help="JSON field holding the text in .jsonl inputs")
    p.set_defaults(func=cmd_tokenizer_train)

    p = sub.add_parser("pretrain", help="pretrain on plain text with the span-denoising objective",
                       description="Train the model on documents with GENIE's continuous paragraph denoise "
                                   "(a span of each window is the target, the rest with one <mask> the "
                                   "source). Needs data.train and data.tokenizer. Writes the model directory "
                                   "(weights, config, tokenizer) and loss.png to train.output_dir.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_recipe_args(p, default="tiny-cpu")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("generate", help="sample text from a trained model with the skipping sampler",
                       description="Generate targets for sources with M sampler steps and k candidates.")
    p.add_argument("--model", required=True, help="model directory written by pretrain or the demo")
    p.add_argument("--source", action="append", default=[], help="a source text (repeatable)")
    p.add_argument("--input", help="a file with one source per line")
    p.add_argument("--steps", type=int, help="decoding steps M (default: the model's diffusion.decode_steps)")
    p.add_argument("--candidates", type=int, default=1, help="candidates k per source (default 1)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--bf16", action="store_true", help="run the network under bf16 autocast")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("demo", help="the whole pipeline on the bundled corpus in a few minutes",
                       description="Train a tokenizer on the bundled public-domain corpus, pretrain the tiny "
                                   "model on it for a few minutes, then fill masked spans of held-out text.")
    p.add_argument("--corpus", default=None, help="directory with train.jsonl.gz and valid.jsonl.gz "
                                                  "(default: the bundled data/demo)")
    p.add_argument("--output", default="runs/demo", help="run directory (default runs/demo)")
    p.add_argument("--minutes", type=float, default=4.0, help="training time budget (default 4)")
    p.add_argument("overrides", nargs="*", metavar="section.field=value", help="config overrides")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        args.func(args)
    except ArdiffError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
