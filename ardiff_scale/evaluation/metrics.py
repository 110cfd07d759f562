"""Corpus-level metrics for generated text, computed through the reference libraries.

Every value is a percentage in [0, 100], as the papers report them:
- `rouge`: Google's rouge-score (the library behind most ROUGE numbers reported from Python). Keys rouge1,
  rouge2, rougeL: F1, Porter stemming on, rouge-score's own tokenisation (lower-cased, letters and digits only);
  the best-scoring reference of each example counts (RougeScorer.score_multi); averaged over examples.
  The paper's numbers came from the Perl ROUGE-1.5.5 (files2rouge), which differs slightly.
- `bleu`: SacreBLEU `corpus_bleu` against all references of each example (variable counts are passed as
  missing references, which SacreBLEU drops per segment), its defaults otherwise: 13a tokenisation,
  case-sensitive, exponential smoothing. `sacrebleu` is the same metric under another key.
- `concept_coverage`: the share of each source's concepts that the hypothesis mentions (see
  `concept_coverage`), averaged over examples.

A metric name may carry options after colons, `bleu:intl`, `sacrebleu:13a:lc`: a SacreBLEU tokenizer name
and/or `lc` to lower-case both sides (`ardiff_scale.tasks.metric_names` checks them). Its result key is the
name with ":" as "_" (`bleu:intl` -> `bleu_intl`); `rouge` gives three keys.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import sacrebleu

from ardiff_scale.errors import ConfigError, DataError

# The names live with the task specs that ask for them; METRICS and metric_keys stay importable from here.
from ardiff_scale.tasks.metric_names import LOWERCASE, METRICS, ROUGE_TYPES, metric_keys, parse_metric  # noqa: F401

# Endings that make a lemma into a plural, 3rd person, past or gerund form ("dance" -> "danced").
_SUFFIXES = ("s", "es", "d", "ed", "ing")
_WORD = re.compile(r"[^\W_]+(?:['-][^\W_]+)*")
_VOWELS = set("aeiou")


def rouge(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 (x100); each example scores against its best reference."""
    # Imported here: rouge-score pulls in nltk, which takes seconds to import.
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for hypothesis, refs in zip(hypotheses, references):
        scores = scorer.score_multi(list(refs), hypothesis)
        for key in ROUGE_TYPES:
            totals[key] += scores[key].fmeasure
    return {key: 100.0 * total / len(hypotheses) for key, total in totals.items()}


def bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]], tokenize: str = "13a",
         lowercase: bool = False) -> float:
    """SacreBLEU corpus BLEU; `references[i]` holds example i's references, as many as it has."""
    # SacreBLEU wants reference streams (stream k = every example's k-th reference); None marks an
    # example with fewer references, and SacreBLEU leaves it out of that example's clipping and lengths.
    streams = [[refs[k] if k < len(refs) else None for refs in references]
               for k in range(max(len(refs) for refs in references))]
    return sacrebleu.corpus_bleu(list(hypotheses), streams, tokenize=tokenize, lowercase=lowercase).score


def concept_forms(concept: str) -> set[str]:
    """The concept and its regular inflections: +s/es/d/ed/ing; a final e dropped before -ing/-ed
    (make -> making); consonant+y -> ies/ied (carry -> carries); a final consonant doubled before
    -ing/-ed (run -> running). Irregular forms (ran, went, children) are not covered."""
    c = concept.lower()
    forms = {c} | {c + suffix for suffix in _SUFFIXES}
    if c.endswith("e"):
        forms |= {c[:-1] + "ing", c[:-1] + "ed"}
    if len(c) > 1 and c.endswith("y") and c[-2] not in _VOWELS:
        forms |= {c[:-1] + "ies", c[:-1] + "ied"}
    if len(c) > 1 and c[-1].isalpha() and c[-1] not in _VOWELS and c[-1] not in "wxy":
        forms |= {c + c[-1] + "ing", c + c[-1] + "ed"}
    return forms


def concept_coverage(hypotheses: Sequence[str], sources: Sequence[str]) -> float:
    """Mean over examples of the percentage of the source's concepts (whitespace-separated, as in
    concept2text and CommonGen sources) that occur in the hypothesis as a whole word, in the concept's
    form or a regular inflection (`concept_forms`); case-insensitive. Words are runs of letters and digits,
    with inner hyphens and apostrophes kept ("t-shirt")."""
    total = 0.0
    for i, (hypothesis, source) in enumerate(zip(hypotheses, sources)):
        concepts = sorted(set(source.lower().split()))
        if not concepts:
            raise DataError(f"concept_coverage: source #{i} has no concepts (got {source!r})")
        words = set(_WORD.findall(hypothesis.lower()))
        total += sum(bool(concept_forms(c) & words) for c in concepts) / len(concepts)
    return 100.0 * total / len(hypotheses)


def sentence_scores(key: str, hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
    """Per-example scores (x100) under one metric key, for oracle (best-of-k) selection: rouge1/rouge2/rougeL
    F1 against the best reference, or SacreBLEU's sentence BLEU (`bleu`, `sacrebleu`; 13a, exponential
    smoothing) against all references."""
    if key in ROUGE_TYPES:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer([key], use_stemmer=True)
        return [100.0 * scorer.score_multi(list(refs), h)[key].fmeasure for h, refs in zip(hypotheses, references)]
    if key in ("bleu", "sacrebleu"):
        return [sacrebleu.sentence_bleu(h, list(refs)).score for h, refs in zip(hypotheses, references)]
    raise ConfigError(f"no sentence-level form of metric {key!r} (valid: {', '.join((*ROUGE_TYPES, 'bleu'))})")


def compute_metrics(names: Sequence[str], hypotheses: Sequence[str], references: Sequence[Sequence[str]],
                    sources: Sequence[str] | None = None) -> dict[str, float]:
    """Corpus metrics (percentages) of `hypotheses[i]` against `references[i]` (one or more strings);
    `sources` are needed by concept_coverage only. Names as in the module docstring; the result maps each
    name's keys (`metric_keys`) to its value, in the order asked."""
    parsed = [(name, *parse_metric(name)) for name in names]
    if not hypotheses:
        raise DataError("no hypotheses to score")
    if len(references) != len(hypotheses):
        raise DataError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists; "
                        f"give one list of references per hypothesis")
    empty = [i for i, refs in enumerate(references) if not refs]
    if empty and any(base != "concept_coverage" for _, base, _ in parsed):
        raise DataError(f"{len(empty)} examples have no reference (first: #{empty[0]}); "
                        f"reference-based metrics need at least one per example")
    coverage = any(base == "concept_coverage" for _, base, _ in parsed)
    if coverage and (sources is None or len(sources) != len(hypotheses)):
        got = "none" if sources is None else len(sources)
        raise DataError(f"concept_coverage needs one source (concept set) per hypothesis "
                        f"({len(hypotheses)} hypotheses, sources: {got})")
    results: dict[str, float] = {}
    for name, base, options in parsed:
        if base == "rouge":
            results |= rouge(hypotheses, references)
        elif base in ("bleu", "sacrebleu"):
            tokenize = next((o for o in options if o != LOWERCASE), "13a")
            value = bleu(hypotheses, references, tokenize=tokenize, lowercase=LOWERCASE in options)
            results[name.replace(":", "_")] = value
        else:
            results[name] = concept_coverage(hypotheses, sources)
    return results
