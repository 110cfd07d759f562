"""The metric names a task may ask for, `bleu:intl:lc` options included, checked when a task file is read
(the scoring itself is `ardiff_scale.evaluation.metrics`).

A name may carry options after colons: a SacreBLEU tokenizer name (`bleu_tokenizers()`) and/or `lc` to
lower-case both sides. Its result key is the name with ":" as "_" (`bleu:intl` -> `bleu_intl`); `rouge`
gives three keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from difflib import get_close_matches
from functools import cache

from ardiff_scale.errors import ConfigError

METRICS = ("rouge", "bleu", "sacrebleu", "concept_coverage")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
LOWERCASE = "lc"
_TAKE_OPTIONS = ("bleu", "sacrebleu")  # a SacreBLEU tokenizer name and/or LOWERCASE


@cache
def bleu_tokenizers() -> tuple[str, ...]:
    """SacreBLEU's tokenizer names. Imported only when a metric name carries options: every process that loads
    a run config reads task files, and a training rank has no use for sacrebleu."""
    import sacrebleu

    return tuple(sacrebleu.BLEU.TOKENIZERS)


def parse_metric(name: str) -> tuple[str, tuple[str, ...]]:
    """`"bleu:intl:lc"` -> `("bleu", ("intl", "lc"))`, after checking both against what is valid."""
    base, *options = name.split(":")
    if base not in METRICS:
        close = get_close_matches(base, METRICS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown metric {name!r}{hint} (valid: {', '.join(METRICS)}; "
                          f"bleu and sacrebleu take options such as bleu:intl or bleu:lc)")
    valid = (*bleu_tokenizers(), LOWERCASE) if options and base in _TAKE_OPTIONS else ()
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
