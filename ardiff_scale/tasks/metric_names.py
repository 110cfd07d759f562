"""The metric names a task may ask for, `bleu:intl:lc` options included, checked when a task file is read
(the scoring itself is `ardiff_scale.evaluation.metrics`).

A name may carry options after colons: a SacreBLEU tokenizer name (`BLEU_TOKENIZERS`) and/or `lc` to
lower-case both sides. Its result key is the name with ":" as "_" (`bleu:intl` -> `bleu_intl`); `rouge`
gives three keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from difflib import get_close_matches

import sacrebleu

from ardiff_scale.errors import ConfigError

METRICS = ("rouge", "bleu", "sacrebleu", "concept_coverage")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
BLEU_TOKENIZERS = tuple(sacrebleu.BLEU.TOKENIZERS)
LOWERCASE = "lc"
_OPTIONS = {"rouge": (), "bleu": (*BLEU_TOKENIZERS, LOWERCASE), "sacrebleu": (*BLEU_TOKENIZERS, LOWERCASE),
            "concept_coverage": ()}


def parse_metric(name: str) -> tuple[str, tuple[str, ...]]:
    """`"bleu:intl:lc"` -> `("bleu", ("intl", "lc"))`, after checking both against what is valid."""
    base, *options = name.split(":")
    if base not in METRICS:
        close = get_close_matches(base, METRICS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown metric {name!r}{hint} (valid: {', '.join(METRICS)}; "
                          f"bleu and sacrebleu take options such as bleu:intl or bleu:lc)")
    valid = _OPTIONS[base]
    for option in options:
        if option not in valid:
            allowed = f"valid: {', '.join(valid)}" if valid else f"{base} takes no options"
            raise ConfigError(f"metric {name!r}: unknown option {option!r} ({allowed})")
    tokenizers = [o for o in options if o != LOWERCASE]
    if len(tokenizers) > 1:
        raise ConfigError(f"metric {name!r} names {len(tokenizers)} tokenizers ({', '.join(tokenizers)}); give one")
    return base, tuple(options)


def check_metrics(names: Sequence[str]) -> None:
    """Raises ConfigError for the first invalid name, so a task fails before anything runs."""
    for name in names:
        parse_metric(name)


def metric_keys(name: str) -> list[str]:
    """The keys `compute_metrics` returns for `name`."""
    base, _ = parse_metric(name)
    return list(ROUGE_TYPES) if base == "rouge" else [name.replace(":", "_")]
