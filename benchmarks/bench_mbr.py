"""MBR selection throughput: the vectorised `mbr_select` against the straightforward reference of the tests
(tests/evaluation/mbr_reference.py: every ordered pair scored from scratch in plain Python), on candidate
sets built around real sentences (task targets, with dropped, repeated, swapped and replaced words,
duplicates, case variants, 1-3 token and empty candidates), with how often the two pick the same candidate.

    .venv/bin/python benchmarks/bench_mbr.py            # 200 sets at k = 50, about 30 s on 2 busy cores
    .venv/bin/python benchmarks/bench_mbr.py --quick    # 20 sets, a smoke check in seconds
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import statistics
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import scipy
from bench_model import machine_info, table
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
from sacrebleu.tokenizers.tokenizer_re import TokenizerRegexp

from ardiff_scale.evaluation.mbr import mbr_select

log = logging.getLogger("bench_mbr")

REFERENCE = Path(__file__).resolve().parents[1] / "tests" / "evaluation" / "mbr_reference.py"
QUICK = {"sets": 20, "out": "benchmarks/results/mbr-quick.json"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", type=int, default=200, help="candidate sets, one per source (default: 200)")
    parser.add_argument("--k", type=int, default=50, help="candidates per set (default: 50)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the set construction (default: 0)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed runs of the vectorised selection, the median reported (default: 5); the "
                             "reference runs once")
    parser.add_argument("--out", default="benchmarks/results/mbr.json",
                        help="JSON results (default: benchmarks/results/mbr.json; mbr-quick.json with --quick)")
    parser.add_argument("--quick", action="store_true", help="20 sets: a smoke check")
    args = parser.parse_args(argv)
    if args.quick:
        # As defaults, so that flags given explicitly still win.
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    return args


def load_reference() -> ModuleType:
    """The tests' reference module, by path: benchmarks and tests are not packages of one another."""
    spec = importlib.util.spec_from_file_location("mbr_reference", REFERENCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cold_seconds(select, candidate_sets: list[list[str]]) -> tuple[list[int], float]:
    """One run from cold tokeniser caches: SacreBLEU's tokenisers memoise lines, which would hide the cost of
    tokenising in every run after the first (the vectorised path keeps no cache between calls)."""
    Tokenizer13a.__call__.cache_clear()
    TokenizerRegexp.__call__.cache_clear()
    start = time.perf_counter()
    picks = select(candidate_sets)
    return picks, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    reference = load_reference()
    candidate_sets = reference.candidate_sets(reference.real_sentences(), args.sets, [args.k], args.seed)
    candidates = sum(map(len, candidate_sets))
    distinct = len({text for texts in candidate_sets for text in texts})

    log.info("reference, %d sets at k=%d", args.sets, args.k)
    expected, reference_seconds = cold_seconds(reference.reference_mbr_select, candidate_sets)
    log.info("vectorised, %d runs", args.repeats)
    runs = [cold_seconds(mbr_select, candidate_sets) for _ in range(args.repeats)]
    picks, vectorised_seconds = runs[0][0], statistics.median(seconds for _, seconds in runs)
    agreeing = sum(a == b for a, b in zip(picks, expected))

    rows = [{"implementation": name, "sets": args.sets, "k": args.k, "seconds": seconds,
             "sets_per_s": args.sets / seconds, "ms_per_set": 1e3 * seconds / args.sets}
            for name, seconds in (("reference", reference_seconds), ("vectorised", vectorised_seconds))]
    speedup = reference_seconds / vectorised_seconds
    machine = {**machine_info(), "numpy": np.__version__, "scipy": scipy.__version__}
    print(f"\nMBR selection, {args.sets} sets at k={args.k} ({candidates} candidates, {distinct} distinct strings): "
          f"{machine['cpu_model']}")
    print(table(["implementation", "seconds", "sets/s", "ms/set"],
                [[r["implementation"], r["seconds"], r["sets_per_s"], r["ms_per_set"]] for r in rows]))
    print(f"\nspeed-up {speedup:.1f}x (vectorised: median of {args.repeats} runs); same pick on "
          f"{agreeing}/{args.sets} sets ({100 * agreeing / args.sets:.1f}%)")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": machine, "args": vars(args), "candidates": candidates, "distinct_strings": distinct,
        "results": rows, "vectorised_runs_seconds": [seconds for _, seconds in runs], "speedup": speedup,
        "agreeing_sets": agreeing, "agreement": agreeing / args.sets}, indent=2) + "\n")
    log.info("wrote %s", out)


if __name__ == "__main__":
    main()
