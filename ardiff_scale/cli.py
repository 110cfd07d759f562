"""`ardiff`: one command, a subcommand per job. Each is a thin call into the package's modules."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ardiff_scale.errors import PREEMPTED_EXIT, ArdiffError, Preempted
from ardiff_scale.logs import setup_logging

log = logging.getLogger("ardiff")

EPILOG = """Overrides are section.field=value pairs applied on top of the recipe, for example
  ardiff pretrain --recipe tiny-cpu train.lr=5e-4 train.max_steps=2000 model.preset=iwslt
Recipes: a YAML path, or the name of one shipped in ardiff_scale/recipes."""


def add_recipe_args(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument("--recipe", default=default, help="YAML recipe path or shipped recipe name"
                        + (f" (default: {default})" if default else ""))
    parser.add_argument("overrides", nargs="*", metavar="section.field=value", help="config overrides")


def cmd_model_info(args: argparse.Namespace) -> None:
    from ardiff_scale.commands import ModelInfoOptions, model_info
    model_info(ModelInfoOptions(preset=args.preset, recipe=args.recipe, overrides=args.overrides, batch=args.batch,
                                src_len=args.src_len, tgt_len=args.tgt_len))


def cmd_tokenizer_train(args: argparse.Namespace) -> None:
    from ardiff_scale.data.build import tokenizer_command
    from ardiff_scale.data.tokenizer import TokenizerOptions
    options = TokenizerOptions(vocab_size=args.vocab_size, model_type=args.model_type,
                               max_sentences=args.max_sentences)
    tokenizer_command(args.input, args.output, options, args.field)


def cmd_shards_build(args: argparse.Namespace) -> None:
    from ardiff_scale.data.build import ShardsOptions, shards_command
    shards_command(ShardsOptions(inputs=args.input, tokenizer=args.tokenizer, output=args.output, kind=args.kind,
                                 format=args.format, split=args.split, samples_per_shard=args.samples_per_shard,
                                 max_tokens=args.max_tokens, min_tokens=args.min_tokens, processes=args.processes,
                                 field=args.field))


def cmd_shards_inspect(args: argparse.Namespace) -> None:
    from ardiff_scale.data.build import inspect_command
    inspect_command(args.location, args.samples)


def cmd_shards_bench(args: argparse.Namespace) -> None:
    from ardiff_scale.data.bench import bench_shards, report
    result = bench_shards(args.location, workers=args.workers, batch=args.batch, seconds=args.seconds,
                          kind=args.kind, source_len=args.source_len, target_len=args.target_len,
                          open_shards=args.open_shards, prefetch_shards=args.prefetch_shards)
    print(report(result, args.json))


def cmd_pretrain(args: argparse.Namespace) -> None:
    from ardiff_scale.commands import pretrain
    flags = {"address": args.ray, "workers": args.workers, "gpus_per_worker": args.gpus_per_worker,
             "cpus_per_worker": args.cpus_per_worker, "max_failures": args.max_failures}
    pretrain(args.recipe, args.overrides, ray={name: value for name, value in flags.items() if value is not None})


def cmd_finetune(args: argparse.Namespace) -> None:
    from ardiff_scale.pipelines.finetune import finetune
    finetune(args.task, args.init, args.output, args.overrides, args.samples_per_shard)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from ardiff_scale.evaluation.evaluate import EvaluateOptions, evaluate
    index, _, parts = args.part.partition("/")
    evaluate(EvaluateOptions(task=args.task, model_dir=args.checkpoint, output=args.output, split=args.split,
                             limit=args.limit, part=(int(index), int(parts or 1)), steps=args.steps,
                             candidates=args.candidates, seed=args.seed, batch_sources=args.batch_sources))


def cmd_suite_run(args: argparse.Namespace) -> None:
    from ardiff_scale.pipelines.suite import SuiteOptions, run_suite
    run_suite(SuiteOptions(tasks=[t for t in args.tasks.split(",") if t], init=args.init, address=args.address,
                           output=args.output, overrides=args.overrides, limit=args.limit,
                           max_failures=args.max_failures, tracking_uri=args.tracking_uri or "", seed=args.seed,
                           gpus=args.gpus))


def cmd_reproduce(args: argparse.Namespace) -> None:
    from ardiff_scale.pipelines.reproduce import reproduce
    plan = "smoke" if args.smoke else args.plan
    name = os.path.splitext(os.path.basename(plan))[0]
    command = "ardiff " + " ".join(sys.argv[1:]) if sys.argv[1:] else "ardiff reproduce"
    reproduce(plan, args.output or f"eval/results/{name}", args.work or f"runs/reproduce-{name}",
              args.tracking_uri, args.fresh, command)


def cmd_export(args: argparse.Namespace) -> None:
    from ardiff_scale.train.consolidate import export_checkpoint
    export_checkpoint(args.run, args.output, args.tag, args.ema, args.tokenizer)


def cmd_import_official(args: argparse.Namespace) -> None:
    from ardiff_scale.interop.official import describe, import_official, official_tokenizer
    tokenizer = official_tokenizer(args.vocab, args.tokenizer, tuple(args.bpe) if args.bpe else None)
    official = import_official(args.checkpoint, args.config, args.output, tokenizer)
    logging.getLogger("ardiff").info("imported %s (%s) into %s", args.checkpoint, describe(official), args.output)


def cmd_generate(args: argparse.Namespace) -> None:
    from ardiff_scale.commands import GenerateOptions, generate
    generate(GenerateOptions(model_dir=args.model, sources=args.source, input_file=args.input, steps=args.steps,
                             candidates=args.candidates, seed=args.seed, bf16=args.bf16,
                             plot_trajectory=args.plot_trajectory))


def cmd_demo(args: argparse.Namespace) -> None:
    from ardiff_scale.commands import demo
    demo(args.corpus, args.output, args.minutes, args.overrides)


def cmd_submit(args: argparse.Namespace) -> None:
    from ardiff_scale.jobs.submit import submit
    status = submit(args.ardiff_args, args.address, args.working_dir, args.runtime_env_json, not args.no_wait,
                    args.num_cpus, args.num_gpus)
    if status:
        raise SystemExit(status)


def cmd_deepspeed_env(args: argparse.Namespace) -> None:
    from ardiff_scale.commands import deepspeed_env
    deepspeed_env(args.output, args.force)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ardiff", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Pretrain, fine-tune and evaluate AR-Diffusion text models (Wu et al., NeurIPS 2023).",
        epilog=EPILOG)
    # The `deepspeed` launcher passes --local_rank=N before the subcommand (LOCAL_RANK is in the environment too).
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
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
    p.add_argument("--input", nargs="+", required=True,
                   help="corpus files (.txt, .jsonl, .jsonl.gz) or shard locations, local or URLs")
    p.add_argument("--output", required=True, help="where to write the .model file")
    p.add_argument("--vocab-size", type=int, default=8000, help="vocabulary size (default 8000)")
    p.add_argument("--model-type", choices=["unigram", "bpe"], default="unigram", help="(default unigram)")
    p.add_argument("--max-sentences", type=int, default=200_000, help="lines sampled to train on")
    p.add_argument("--field", default="text", help="JSON field holding the text in .jsonl inputs")
    p.set_defaults(func=cmd_tokenizer_train)

    shards = sub.add_parser("shards", help="webdataset shards").add_subparsers(dest="action", required=True)
    p = shards.add_parser("build", help="tokenise documents or task pairs into webdataset shards",
                          description="Tokenise inputs in several processes into shard-NNNNNN.tar files with a "
                                      "manifest.json (per-shard counts and sha256, tokenizer sha256, inputs, "
                                      "command). Pretraining documents longer than --max-tokens are split into "
                                      "windows; windows shorter than --min-tokens are dropped and counted.")
    p.add_argument("--kind", choices=["pretrain", "seq2seq"], default="pretrain", help="(default pretrain)")
    p.add_argument("--input", nargs="+", required=True, help="files, directories or URLs to read")
    p.add_argument("--format", default="jsonl",
                   help="pretrain: text or jsonl; seq2seq: jsonl, xsum, xsum-lines, cnndm, iwslt, commongen")
    p.add_argument("--split", default="train", help="seq2seq split: train, valid or test (default train)")
    p.add_argument("--tokenizer", required=True, help="the tokenizer: a sentencepiece .model or a Hugging Face tokenizer.json (its card beside it)")
    p.add_argument("--output", required=True, help="shard directory: local path or URL (s3://, ...)")
    p.add_argument("--samples-per-shard", type=int, default=2000, help="(default 2000)")
    p.add_argument("--max-tokens", type=int, default=512, help="pretrain window length (default 512)")
    p.add_argument("--min-tokens", type=int, default=30, help="shortest pretrain window kept (default 30)")
    p.add_argument("--processes", type=int, default=2, help="tokenising processes (default 2)")
    p.add_argument("--field", default="text", help="JSON field holding a document's text (default text)")
    p.set_defaults(func=cmd_shards_build)
    p = shards.add_parser("inspect", help="print a shard set's manifest summary and first samples")
    p.add_argument("location", help="shard directory, manifest URL or shard URLs")
    p.add_argument("--samples", type=int, default=3, help="samples to show (default 3)")
    p.set_defaults(func=cmd_shards_inspect)
    p = shards.add_parser("bench", help="measure how fast the training data path serves a shard set",
                          description="Stream a shard set through exactly the training data path (DataLoader "
                                      "workers reading shards and making micro-batches with the training "
                                      "objective) and print samples/s, tokens/s, batches/s, the time to the first "
                                      "batch and the training process's CPU time per batch. Run it on the data "
                                      "host before renting GPUs: one GPU needs thousands of samples/s.")
    p.add_argument("location", help="shard directory, manifest URL or shard URLs (file, http(s), s3)")
    p.add_argument("--workers", type=int, default=-1,
                   help="DataLoader workers; -1 picks as training does (data.num_workers=-1) (default -1)")
    p.add_argument("--batch", type=int, default=8, help="samples per micro-batch (default 8)")
    p.add_argument("--seconds", type=float, default=30.0,
                   help="how long to measure after the first batch; 0 = one epoch (default 30)")
    p.add_argument("--kind", choices=["pretrain", "seq2seq"], default=None,
                   help="objective, for shards without a manifest (default: the manifest's kind)")
    p.add_argument("--source-len", type=int, default=512, help="source tokens, as data.source_len (default 512)")
    p.add_argument("--target-len", type=int, default=64, help="target tokens, as data.target_len (default 64)")
    p.add_argument("--open-shards", type=int, default=4, help="as data.open_shards (default 4)")
    p.add_argument("--prefetch-shards", type=int, default=2, help="as data.prefetch_shards (default 2)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=cmd_shards_bench)

    p = sub.add_parser("pretrain", help="pretrain on plain text with the span-denoising objective",
                       description="Train the model on pretraining shards with GENIE's continuous paragraph "
                                   "denoise (a span of each window is the target, the rest with one <mask> "
                                   "the source). Needs data.train (shards) and data.tokenizer. Writes the "
                                   "model directory (weights, config, tokenizer) and loss.png to "
                                   "train.output_dir.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_recipe_args(p, default="tiny-cpu")
    ray = p.add_argument_group(
        "on a Ray cluster", "Run the same training in Ray Train workers anywhere on a Ray cluster (the flags set "
        "the recipe's ray.* fields). Checkpoints, resume and the MLflow run are those of a deepspeed launch; a "
        "failed worker restarts the group from the last checkpoint. As a Ray job: ardiff submit -- pretrain "
        "--ray auto --workers 16 --gpus-per-worker 1 ... ; train.output_dir and the shards must be on storage "
        "every node sees (a shared filesystem or s3://).")
    ray.add_argument("--ray", metavar="ADDRESS", help="Ray address: auto (inside a Ray job or on a node of the "
                     "cluster), HOST:6379 or ray://HOST:10001")
    ray.add_argument("--workers", type=int, help="Ray Train workers, one rank each (ray.workers, default 1)")
    ray.add_argument("--gpus-per-worker", type=float, help="GPUs per worker; 0 trains on CPU with gloo "
                     "(ray.gpus_per_worker, default 0)")
    ray.add_argument("--cpus-per-worker", type=float, help="CPUs reserved per worker (ray.cpus_per_worker, "
                     "default 1)")
    ray.add_argument("--max-failures", type=int, help="restarts after worker failures (ray.max_failures, "
                     "default 3)")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("finetune", help="fine-tune a pretrained model on a task",
                       description="Build the task's train and valid splits into seq2seq shards with the init "
                                   "model's tokenizer, then train from the init weights (DeepSpeed, as pretrain: "
                                   "the same launchers, checkpoints, --resume, MLflow). Writes OUTPUT/model.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, help="a task name from eval/tasks (summ-debian, deen, ...) or a YAML path")
    p.add_argument("--init", required=True, help="pretrained model directory (OUTPUT/model of a pretrain run)")
    p.add_argument("--output", help="run directory (default runs/finetune-TASK)")
    p.add_argument("--samples-per-shard", type=int, default=1000, help="(default 1000)")
    p.add_argument("overrides", nargs="*", metavar="section.field=value", help="config overrides")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("evaluate", help="generate for a task's test split, select by MBR, score",
                       description="Sample k candidates per source with the skipping sampler (M steps), pick "
                                   "one by MBR (sentence BLEU among the candidates) and compute the task's "
                                   "metrics. Writes OUTPUT/predictions.jsonl and OUTPUT/metrics.json.")
    p.add_argument("--task", required=True, help="a task name from eval/tasks or a YAML path")
    p.add_argument("--checkpoint", required=True, help="model directory to evaluate")
    p.add_argument("--output", help="results directory (default runs/eval-TASK)")
    p.add_argument("--split", default="test", help="train, valid or test (default test)")
    p.add_argument("--limit", type=int, help="only the first N examples")
    p.add_argument("--steps", type=int, help="decoding steps M (default: the task's)")
    p.add_argument("--candidates", type=int, help="candidates k (default: the task's)")
    p.add_argument("--part", default="0/1", help="I/N: this worker's share of the examples (default 0/1)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--batch-sources", type=int, metavar="N",
                   help="sources per sampler call, on the GPU when there is one; the predictions do not depend "
                        "on it, 1 decodes one at a time (default: about 16 sampler rows per call on a CPU, 1024 "
                        "on a GPU, i.e. 16 // k or 1024 // k sources, at most 64)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("reproduce", help="the paper's claims at small scale: train three systems, sweep M and k",
                       description="Train a tokenizer, pretrain AR-Diffusion, fine-tune AR-Diffusion, uniform-timestep "
                                   "diffusion and an autoregressive baseline of the same size on each task of the "
                                   "plan with one training budget, then decode the test sources at every decode "
                                   "step count M and candidate count k of the plan (MBR, mean-of-k and oracle "
                                   "scores apart; greedy and beam search for the baseline) and time it. Writes "
                                   "results.md, results.json, quality_vs_steps.png and quality_vs_wallclock.png to "
                                   "OUTPUT and logs them to MLflow. Finished models in WORK are reused, so a "
                                   "stopped run continues.")
    p.add_argument("--plan", default="full",
                   help="a plan in eval/reproduce (full, smoke) or a YAML path (default full: about 2 hours on "
                        "2 CPU cores)")
    p.add_argument("--smoke", action="store_true", help="the smoke plan: every stage at toy size, a few minutes")
    p.add_argument("--output", help="report directory (default eval/results/PLAN)")
    p.add_argument("--work", help="models, shards and the default MLflow store (default runs/reproduce-PLAN)")
    p.add_argument("--tracking-uri", default="", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else a "
                                                      "SQLite store in WORK)")
    p.add_argument("--fresh", action="store_true", help="delete WORK first instead of reusing finished models")
    p.set_defaults(func=cmd_reproduce)

    suite = sub.add_parser("suite", help="fine-tune and evaluate on several tasks through Ray").add_subparsers(
        dest="action", required=True)
    p = suite.add_parser("run", help="a Ray driver: per task a fine-tune (Ray Train + DeepSpeed), then evaluation",
                         description="Schedule per task a fine-tune (Ray Train TorchTrainer workers with DeepSpeed "
                                     "inside, resources from the task YAML, retried from the last checkpoint on "
                                     "failure) and then its evaluation (Ray tasks over parts of the test set). "
                                     "Tasks run concurrently as far as the cluster allows. MLflow gets a parent "
                                     "run, a child run per task and stage, a results table and a bar chart; each "
                                     "task's model is registered as a pyfunc model.",
                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", required=True, help="comma-separated task names or YAML paths")
    p.add_argument("--init", required=True, help="pretrained model directory")
    p.add_argument("--address", help="Ray address (default: RAY_ADDRESS, else a new local Ray)")
    p.add_argument("--output", default="runs/suite", help="suite directory (default runs/suite)")
    p.add_argument("--limit", type=int, help="evaluate only the first N test examples per task")
    p.add_argument("--max-failures", type=int, default=2, help="fine-tune worker restarts allowed (default 2)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else a SQLite store in "
                                          "the suite dir on a one-node cluster; several nodes need a server)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--gpus", choices=("auto", "always", "never"), default="auto",
                   help="give tasks the GPUs their resources.gpus_per_worker asks for: auto when the cluster "
                        "has GPUs, always (an autoscaler adds GPU nodes), never (default auto)")
    p.add_argument("overrides", nargs="*", metavar="section.field=value", help="fine-tune config overrides")
    p.set_defaults(func=cmd_suite_run)

    p = sub.add_parser("export", help="a DeepSpeed checkpoint as one model directory (safetensors)",
                       description="Consolidate a checkpoint of a pretraining run (any ZeRO stage, any world "
                                   "size) into a model directory: model.safetensors, config.yaml and the "
                                   "tokenizer, which `ardiff generate` loads. Runs without a process group.")
    p.add_argument("--run", required=True, help="the run's output_dir (holding config.yaml and checkpoints/)")
    p.add_argument("--output", required=True, help="model directory to write")
    p.add_argument("--tag", help="checkpoint tag, e.g. step00001000 (default: the newest complete one)")
    p.add_argument("--ema", action="store_true", help="export the EMA of the weights instead of the weights")
    p.add_argument("--tokenizer", help="tokenizer path, if it moved since training (default: data.tokenizer)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import-official", help="an official AR-Diffusion checkpoint as a model directory",
                       description="Read a checkpoint of the official AR-Diffusion code (microsoft/ProphetNet,\n"
                                   "AR-diffusion/: model_checkpoint-N or ema_<rate>_checkpoint-N) with\n"
                                   "torch.load(weights_only=True), map it onto this model (BERT's token-type row\n"
                                   "folded into the source positions, the unused pooler dropped) and write a model\n"
                                   "directory that generate, evaluate, finetune --init and the MLflow pyfunc load.\n"
                                   "Settings without a counterpart here (self-conditioning, length prediction,\n"
                                   "rotary time attention, another encoder) are refused with the config key that\n"
                                   "asks for them.",
                       epilog="example:\n  ardiff import-official --checkpoint ema_0.9999_checkpoint-60000 "
                              "--config config.yaml --vocab vocab.txt --output models/xsum-official",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="the official checkpoint file")
    p.add_argument("--config", required=True, help="the official run's config.yaml, with the command line's "
                                                   "overrides merged in (sizes, tgt_len, schedule_sampler, ...)")
    p.add_argument("--vocab", help="BERT WordPiece vocab.txt (bert-base-uncased for XSum, CNN/DM, CommonGen)")
    p.add_argument("--tokenizer", help="a Hugging Face tokenizer.json")
    p.add_argument("--bpe", nargs=2, metavar=("VOCAB_JSON", "MERGES_TXT"), help="byte-level BPE files (IWSLT14)")
    p.add_argument("--output", required=True, help="model directory to write (new or empty)")
    p.set_defaults(func=cmd_import_official)

    p = sub.add_parser("generate", help="sample text from a trained model with the skipping sampler",
                       description="Generate targets for sources with M sampler steps and k candidates.")
    p.add_argument("--model", required=True, help="model directory written by pretrain or the demo")
    p.add_argument("--source", action="append", default=[], help="a source text (repeatable)")
    p.add_argument("--input", help="a file with one source per line")
    p.add_argument("--steps", type=int, help="decoding steps M (default: the model's diffusion.decode_steps)")
    p.add_argument("--candidates", type=int, default=1, help="candidates k per source (default 1)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--bf16", action="store_true", help="run the network under bf16 autocast")
    p.add_argument("--plot-trajectory", metavar="PATH.png",
                   help="also draw the paper's Figure 1 from one real sampler run (k=1, same seed) on the first "
                        "source: each target position's token timestep t (y, 0 = clean) against its position "
                        "(x), one line per decoding step from start to end: left tokens carry less noise and, "
                        "once the visited sentence steps fall below N, reach t = 0 first. A lower panel lists "
                        "the tokens generated at the first 30 positions. More than 25 steps are thinned to 25. "
                        "Written atomically; directories are created")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("demo", help="the whole pipeline on the bundled corpus in a few minutes",
                       description="Train a tokenizer on the bundled public-domain corpus, build shards, "
                                   "pretrain the tiny model on them for a few minutes, then fill masked spans "
                                   "of held-out text.")
    p.add_argument("--corpus", default=None, help="directory with train.jsonl.gz and valid.jsonl.gz "
                                                  "(default: the bundled data/demo)")
    p.add_argument("--output", default="runs/demo", help="run directory (default runs/demo)")
    p.add_argument("--minutes", type=float, default=6.0, help="training time budget; training stops at train.max_steps or after this long (default 6)")
    p.add_argument("overrides", nargs="*", metavar="section.field=value", help="config overrides")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("submit", help="run an ardiff command as a Ray job and follow it",
                       description="Submit `ardiff ARGS` (as `python -m ardiff_scale.cli ARGS`, with the\n"
                                   "cluster's python) through Ray's Job Submission API, stream its output and\n"
                                   "exit with its status: 0 when it succeeded, 1 when it failed or was stopped.\n"
                                   "See cluster/README.md for starting a cluster.",
                       epilog="example:\n  ardiff submit --working-dir . -- pretrain --recipe xsum train.max_steps=100",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", help="the cluster's dashboard/job API address (default: $RAY_ADDRESS, else "
                                     "http://127.0.0.1:8265)")
    p.add_argument("--working-dir", help="directory (or URL of a .zip) uploaded as the job's working directory; "
                                         "`--working-dir .` ships this checkout (default: none, the package "
                                         "installed on the cluster runs)")
    p.add_argument("--runtime-env-json", help='Ray runtime environment as JSON, e.g. '
                                              '\'{"env_vars": {"MLFLOW_TRACKING_URI": "http://HOST:5000"}}\'')
    p.add_argument("--num-cpus", type=float, help="CPUs reserved for the ardiff process (default: none)")
    p.add_argument("--num-gpus", type=float, help="GPUs reserved for the ardiff process; places it on a GPU node")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return without following it")
    p.add_argument("ardiff_args", nargs=argparse.REMAINDER, metavar="-- ARGS",
                   help="the ardiff command to run, after --")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("deepspeed-env", help="write the .deepspeed_env the hostfile launcher exports on every host",
                       description="Write this shell's AWS_*, MLFLOW_*, ARDIFF_*, HF_*, NCCL_*, GLOO_* and FSSPEC_*\n"
                                   "variables as NAME=value lines to a .deepspeed_env file (mode 0600): `deepspeed\n"
                                   "--hostfile` starts the ranks over SSH with only a few variables of its own and\n"
                                   "exports this file's lines on every host. Prints the names written, never the\n"
                                   "values.",
                       epilog="example:\n  ardiff deepspeed-env && deepspeed --hostfile cluster/hostfile "
                              "$(which ardiff) pretrain --recipe xsum ...",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=".deepspeed_env",
                   help="file to write (default .deepspeed_env in the current directory, where the launcher looks)")
    p.add_argument("--force", action="store_true", help="overwrite the file if it exists")
    p.set_defaults(func=cmd_deepspeed_env)
    return parser


def _leave_process_group() -> None:
    """Tear down a process group the command joined, before the interpreter exits. Left to the interpreter's
    exit, a rank whose peers already quit (a refused start, an error on every rank) could abort in the C++
    destructors ("terminate called without an active exception") and report status -6 instead of its own."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        try:
            distributed.destroy_process_group()
        except Exception as err:  # noqa: BLE001 - the exit status must stay the command's own
            log.debug("process group teardown: %s", err)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        args.func(args)
    except Preempted as err:
        log.warning("preempted: %s (exit status %d)", err, PREEMPTED_EXIT)
        return PREEMPTED_EXIT
    except ArdiffError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        _leave_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
