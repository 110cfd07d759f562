"""Metrics against the libraries' documented examples, hand-worked cases and the error messages."""

import pytest
import sacrebleu

from ardiff_scale.errors import ConfigError, DataError
from ardiff_scale.evaluation.metrics import (
    METRICS,
    compute_metrics,
    concept_coverage,
    concept_forms,
    metric_keys,
    parse_metric,
)

# SacreBLEU's README: two reference streams; printed "BLEU = 48.53 82.4/50.0/45.5/37.5 (BP = 0.943 ...)".
README_HYPS = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
README_STREAMS = [["The dog bit the man.", "It was not unexpected.", "The man bit him first."],
                  ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."]]
README_REFS = [list(refs) for refs in zip(*README_STREAMS)]  # per example, as compute_metrics takes them


def test_metric_names():
    assert METRICS == ("rouge", "bleu", "sacrebleu", "concept_coverage")
    assert parse_metric("sacrebleu:intl:lc") == ("sacrebleu", ("intl", "lc"))
    assert metric_keys("rouge") == ["rouge1", "rouge2", "rougeL"]
    assert metric_keys("bleu:intl") == ["bleu_intl"]


def test_bleu_matches_sacrebleu_readme_example():
    scores = compute_metrics(["bleu", "sacrebleu"], README_HYPS, README_REFS)
    assert scores["bleu"] == pytest.approx(48.53, abs=0.005)
    assert scores["sacrebleu"] == scores["bleu"]


def test_bleu_with_variable_reference_counts_equals_padding_with_a_repeat():
    # A repeated reference changes neither the clipping counts (max over references) nor the closest length,
    # so leaving the second reference out must score the same as repeating the first.
    refs = [README_REFS[0], README_REFS[1], README_REFS[2][:1]]
    padded = [[r[0] for r in refs], [r[-1] if len(r) > 1 else r[0] for r in refs]]
    got = compute_metrics(["bleu"], README_HYPS, refs)["bleu"]
    assert got == pytest.approx(sacrebleu.corpus_bleu(README_HYPS, padded).score)
    assert got < compute_metrics(["bleu"], README_HYPS, README_REFS)["bleu"]


def test_bleu_options_tokenizer_and_lowercase():
    hyps, refs = ["The Cat sat on the mat."], [["the cat sat on the mat."]]
    assert compute_metrics(["bleu:lc"], hyps, refs)["bleu_lc"] == pytest.approx(100.0)
    assert compute_metrics(["bleu"], hyps, refs)["bleu"] < 100.0
    # With no tokenisation "mat." is one token that "mat ." does not match.
    hyps, refs = ["the cat sat on the mat ."], [["the cat sat on the mat."]]
    assert compute_metrics(["bleu"], hyps, refs)["bleu"] == pytest.approx(100.0)
    assert compute_metrics(["sacrebleu:none"], hyps, refs)["sacrebleu_none"] < 100.0


def test_rouge_matches_rouge_score_readme_example():
    # rouge-score's README example, worked by hand with stemming (jumps -> jump): 8 hypothesis and 9 target
    # tokens share 6 unigrams (the x2, quick, brown, dog, jump); 2 of 7 vs 8 bigrams ("the quick",
    # "quick brown"); the LCS "the quick brown jump the" has 5 tokens. F1 = 2 * matches / (8 + 9) etc.
    scores = compute_metrics(["rouge"], ["The quick brown dog jumps on the log."],
                             [["The quick brown fox jumps over the lazy dog"]])
    assert scores == pytest.approx({"rouge1": 100 * 12 / 17, "rouge2": 100 * 4 / 15, "rougeL": 100 * 10 / 17})


def test_rouge_takes_the_best_reference_and_averages_examples():
    scores = compute_metrics(["rouge"], ["a cat sat", "completely unrelated"],
                             [["dogs run fast", "a cat sat"], ["the mat"]])
    assert scores == pytest.approx({"rouge1": 50.0, "rouge2": 50.0, "rougeL": 50.0})


def test_concept_forms_cover_regular_inflections():
    assert {"dances", "danced", "dancing"} <= concept_forms("dance")
    assert {"watches", "watched", "watching"} <= concept_forms("watch")
    assert {"carries", "carried"} <= concept_forms("carry")
    assert {"running", "stopped"} <= concept_forms("run") | concept_forms("stop")
    assert "ran" not in concept_forms("run")  # irregular forms are not covered


def test_concept_coverage_hand_cases():
    assert concept_coverage(["A dog runs across the field."], ["dog field run"]) == pytest.approx(100.0)
    assert concept_coverage(["The cat sleeps."], ["cat dog sleep"]) == pytest.approx(200 / 3)
    # Whole words only: "dogma" does not mention "dog"; case does not matter; hyphenated concepts match.
    assert concept_coverage(["DOGMA and a T-shirt"], ["dog t-shirt"]) == pytest.approx(50.0)
    got = compute_metrics(["concept_coverage"], ["she was making tea", "nothing"], [["x"], ["y"]],
                          sources=["make tea", "apple"])
    assert got == {"concept_coverage": pytest.approx(50.0)}


def test_unknown_metric_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown metric 'rogue'; did you mean 'rouge'\? "
                                          r"\(valid: rouge, bleu, sacrebleu, concept_coverage"):
        compute_metrics(["rogue"], ["a"], [["a"]])


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match=r"metric 'bleu:fancy': unknown option 'fancy' \(valid: .*intl.*lc"):
        parse_metric("bleu:fancy")
    with pytest.raises(ConfigError, match="rouge takes no options"):
        parse_metric("rouge:lc")
    with pytest.raises(ConfigError, match="names 2 tokenizers"):
        parse_metric("bleu:intl:13a")


def test_inconsistent_inputs_are_data_errors():
    with pytest.raises(DataError, match="2 hypotheses but 1 reference lists"):
        compute_metrics(["bleu"], ["a", "b"], [["a"]])
    with pytest.raises(DataError, match=r"1 examples have no reference \(first: #1\)"):
        compute_metrics(["rouge"], ["a", "b"], [["a"], []])
    with pytest.raises(DataError, match="concept_coverage needs one source"):
        compute_metrics(["concept_coverage"], ["a"], [["a"]])
    with pytest.raises(DataError, match="no hypotheses"):
        compute_metrics(["bleu"], [], [])


def test_empty_hypotheses_score_zero():
    scores = compute_metrics(["rouge", "bleu"], ["", ""], [["a b c"], ["d e f"]])
    assert scores == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0, "bleu": 0.0}
