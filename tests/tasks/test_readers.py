"""Task adapters against the frozen task files, the original-format fixtures and small trees built here."""

import gzip
import hashlib
import itertools
import json
import logging
import shutil
import uuid
from collections import Counter
from pathlib import Path

import fsspec
import pytest

from ardiff_scale.errors import DataError
from ardiff_scale.tasks.readers import FORMATS, Pair, ReadStats, read_pairs

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
FIXTURES = SHARED / "fixtures"
TASKS = SHARED / "tasks"
IWSLT = FIXTURES / "iwslt2017" / "de-en"

NHS_FIRST_SENTENCE = ('It\'s being called "evil" and a "death panel" where bureaucrats decide who lives and who dies. '
                      'Any ideas what it could be?')


def pairs(location, fmt, split, **kwargs) -> list[Pair]:
    return list(read_pairs(str(location), fmt, split, **kwargs))


def test_formats_are_the_documented_six():
    assert FORMATS == ("jsonl", "xsum", "xsum-lines", "cnndm", "iwslt", "commongen")


# --- jsonl -------------------------------------------------------------------------------------------------

def test_jsonl_concept2text_valid_has_refs_with_tgt_first():
    valid = pairs(TASKS / "concept2text", "jsonl", "valid")
    assert len(valid) == 1000
    assert valid[0] == Pair("c2t-set-003610c83a7d", "day friend spend", "He spent the day among friends.",
                            ["He spent the day among friends."])
    assert all(p.refs[0] == p.tgt for p in valid)
    assert sum(len(p.refs) == 2 for p in valid) == 1  # README: {'1': 999, '2': 1}


def test_jsonl_summ_debian_first_record_and_direct_file():
    first = next(read_pairs(str(TASKS / "summ-debian"), "jsonl", "train"))
    assert first.id == "summ-debian-0ad-d943033b"
    assert first.src.startswith('0 A.D. (pronounced "zero ey-dee") is a free, open-source')
    assert first.refs == [first.tgt]
    direct = list(itertools.islice(read_pairs(str(TASKS / "summ-debian" / "test.jsonl.gz"), "jsonl", "test"), 1))
    assert direct[0].id == "summ-debian-0install-516b2c2e"


def test_jsonl_record_without_tgt_names_file_and_line(tmp_path):
    with gzip.open(tmp_path / "train.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"id": "a", "src": "x", "tgt": "y"}) + "\n" + json.dumps({"id": "b", "src": "x"}) + "\n")
    with pytest.raises(DataError, match=r"train\.jsonl\.gz:2: record has no 'tgt' field"):
        pairs(tmp_path, "jsonl", "train")


def test_jsonl_missing_split_file_lists_the_folder(tmp_path):
    (tmp_path / "train.jsonl").write_text("")
    with pytest.raises(DataError, match=r"no valid\.jsonl\.gz or valid\.jsonl .*holds: train\.jsonl"):
        read_pairs(str(tmp_path), "jsonl", "valid")


# --- xsum (raw BBC files) -------------------------------------------------------------------------------

@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_xsum_split_file_lists_only_the_stub(split):
    # The fixture's split JSON names only 29750031 (the stub) in every split; the real article is in none.
    assert pairs(FIXTURES / "xsum" / "raw", "xsum", split) == [
        Pair("29750031", "some-body", "some-sentence", ["some-sentence"])]


def test_xsum_all_reads_the_real_bbc_article():
    article, stub = pairs(FIXTURES / "xsum" / "raw", "xsum", "all")
    assert (article.id, stub.id) == ("10000983", "29750031")
    assert article.tgt == NHS_FIRST_SENTENCE
    assert article.src.startswith("Well, it's how the idea of Britain's NHS is being described over in America. "
                                  "It's all part of a backlash")
    assert article.src.endswith('"The NHS just want to fob people off with tablets rather than actually care '
                                'for their illnesses."')
    assert "\n" not in article.src and "Anger over" not in article.src  # title is not body


def test_xsum_skips_and_counts_missing_and_empty_files(tmp_path, caplog):
    shutil.copytree(FIXTURES / "xsum" / "raw" / "bbc-summary-data", tmp_path / "bbc-summary-data")
    (tmp_path / "bbc-summary-data" / "777.summary").write_text(
        "[SN]URL[SN]\nu\n\n[SN]TITLE[SN]\nt\n\n[SN]FIRST-SENTENCE[SN]\nA summary.\n\n[SN]RESTBODY[SN]\n\n")
    (tmp_path / "XSum-TRAINING-DEV-TEST-SPLIT-90-5-5.json").write_text(
        json.dumps({"train": ["10000983", "404", "777", "29750031"], "validation": [], "test": []}))
    stats = ReadStats()
    with caplog.at_level(logging.WARNING, logger="ardiff.data"):
        got = pairs(tmp_path, "xsum", "train", stats=stats)
    assert [p.id for p in got] == ["10000983", "29750031"]
    assert stats.records == 2
    assert stats.skipped == {"no .summary file": 1, "empty RESTBODY": 1}
    assert stats.examples == {"no .summary file": ["404"], "empty RESTBODY": ["777"]}
    assert "2 records skipped" in caplog.text


def test_xsum_file_without_restbody_is_an_error(tmp_path):
    (tmp_path / "bbc-summary-data").mkdir()
    (tmp_path / "bbc-summary-data" / "1.summary").write_text("[SN]URL[SN]\nu\n[SN]FIRST-SENTENCE[SN]\nS.\n")
    with pytest.raises(DataError, match=r"1\.summary: no \[SN\]RESTBODY\[SN\] section"):
        pairs(tmp_path, "xsum", "all")


# --- xsum-lines ---------------------------------------------------------------------------------------------

def test_xsum_lines_fixture_each_split():
    lines = FIXTURES / "xsum" / "lines"
    (train,) = pairs(lines, "xsum-lines", "train")
    assert train.id == "train-1"
    assert train.src == "The problem is affecting people using the older versions of the PlayStation 3."
    assert train.tgt.startswith("Sony has told owners of older models of its PlayStation 3 console")
    (valid,) = pairs(lines, "xsum-lines", "valid")  # valid -> val.source / val.target
    assert valid.src == "Burberry reported pre-tax profits of £166m for the year to March."  # trailing space gone
    (test,) = pairs(lines, "xsum-lines", "test")
    assert test.tgt == ("N-Dubz have told Newsbeat they are shocked to have picked up four nominations "
                        "for the Mobo awards.")


def test_xsum_lines_unequal_counts_name_both_files(tmp_path):
    (tmp_path / "train.source").write_text("one\ntwo\nthree\n")
    (tmp_path / "train.target").write_text("uno\ndos\n")
    with pytest.raises(DataError, match=r"train\.source has 3 lines but .*train\.target has 2"):
        pairs(tmp_path, "xsum-lines", "train")


# --- cnndm ------------------------------------------------------------------------------------------------

def write_story(folder: Path, url: str, text: str) -> str:
    key = hashlib.sha1(url.encode()).hexdigest()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{key}.story").write_text(text)
    return key


def test_cnndm_url_lists_select_stories_by_sha1(tmp_path):
    a = write_story(tmp_path / "cnn" / "stories", "http://cnn.com/a",
                    "(CNN) -- First paragraph.\n\nSecond paragraph.\n\n@highlight\n\nNo period here\n\n"
                    "@highlight\n\nAsks a question?\n")
    b = write_story(tmp_path / "dailymail" / "stories", "http://dailymail.co.uk/b",
                    "Body of b.\n\n@highlight\n\nDone.\n")
    (tmp_path / "url_lists").mkdir()
    (tmp_path / "url_lists" / "all_train.txt").write_text(
        "http://dailymail.co.uk/b\nhttp://gone.com/x\nhttp://cnn.com/a\n")
    stats = ReadStats()
    got = pairs(tmp_path, "cnndm", "train", stats=stats)
    assert got == [Pair(b, "Body of b.", "Done.", ["Done."]),
                   Pair(a, "(CNN) -- First paragraph. Second paragraph.", "No period here. Asks a question?",
                        ["No period here. Asks a question?"])]
    assert stats.skipped == {"no story for URL": 1}
    assert stats.examples["no story for URL"] == ["http://gone.com/x"]


def test_cnndm_url_list_matching_no_story_is_an_error(tmp_path):
    write_story(tmp_path / "cnn" / "stories", "http://cnn.com/a", "Text.\n\n@highlight\n\nH.\n")
    (tmp_path / "url_lists").mkdir()
    (tmp_path / "url_lists" / "all_val.txt").write_text("val_url_x\nval_url_y\n")
    with pytest.raises(DataError, match=r"all_val\.txt: none of the 2 URLs match a story file .*sha1"):
        pairs(tmp_path, "cnndm", "valid")


@pytest.mark.parametrize("split, leading_digits", [("train", "234"), ("valid", "56"), ("test", "01")])
def test_cnndm_fixture_url_lists(split, leading_digits):
    # Despite README section D, the fixture's placeholder URLs do hash to its story names (sha1("train_url1")
    # = 5e7fa7ca...), and the stories are numbered by split: 0-1 test, 2-4 train, 5-6 val.
    got = pairs(FIXTURES / "cnn_dailymail", "cnndm", split)
    assert "".join(p.src[0] for p in got) == leading_digits
    assert got[0].id == hashlib.sha1(f"{split.replace('valid', 'val')}_url1".encode()).hexdigest()


def test_cnndm_fixture_all_reads_every_story():
    got = pairs(FIXTURES / "cnn_dailymail", "cnndm", "all")
    stories = sorted((FIXTURES / "cnn_dailymail" / "cnn" / "stories").glob("*.story")) + \
        sorted((FIXTURES / "cnn_dailymail" / "dailymail" / "stories").glob("*.story"))
    assert [p.id for p in got] == [s.stem for s in stories]
    assert got[0] == Pair("4a3e4cbfaa28b1b37428a54adc321aaa43509d69", "6 Article text. Another line.",
                          "This is a highlight. This is another highlight.",
                          ["This is a highlight. This is another highlight."])


# --- iwslt ------------------------------------------------------------------------------------------------

def test_iwslt_train_skips_tags_and_pairs_lines():
    got = pairs(IWSLT, "iwslt", "train")
    assert len(got) == 9
    assert got[0] == Pair("train-1-1", "Vielen Dank, Chris.", "Thank you so much, Chris.",
                          ["Thank you so much, Chris."])
    assert (got[4].src, got[4].tgt) == ("Versetzen Sie sich mal in meine Lage!", "Put yourselves in my position.")
    assert not any(p.src.startswith("<") or p.tgt.startswith("<") for p in got)


def test_iwslt_valid_is_dev2010():
    got = pairs(IWSLT, "iwslt", "valid")
    assert [p.id for p in got] == [f"dev2010-535-{i}" for i in range(1, 6)]
    assert (got[3].src, got[3].tgt) == ("Sie wächst im Winter und schrumpft im Sommer.",
                                        "It expands in winter and contracts in summer.")


def test_iwslt_test_concatenates_tst2010_to_2015_and_one_set_alone():
    got = pairs(IWSLT, "iwslt", "test")
    sets = Counter(p.id.split("-")[0] for p in got)
    assert list(sets.items()) == [("tst2010", 5), ("tst2011", 7), ("tst2012", 7), ("tst2013", 7), ("tst2014", 7),
                                  ("tst2015", 6)]
    tst2014 = pairs(IWSLT, "iwslt", "tst2014")
    assert len(tst2014) == 7
    assert (tst2014[2].src, tst2014[2].tgt) == ("Sie war eine 26-jährige Frau namens Alex.",
                                                "She was a 26-year-old woman named Alex.")


def test_iwslt_reverse_direction_and_bad_direction():
    (first, *_) = pairs(IWSLT, "iwslt", "valid", src_lang="en")
    assert first.src.startswith("Last year I showed these two slides so that demonstrate")  # double spaces gone
    assert first.tgt.startswith("Letztes Jahr habe ich diese beiden Folien gezeigt")
    with pytest.raises(DataError, match=r"direction fr->en does not fit the pair de-en"):
        pairs(IWSLT, "iwslt", "valid", src_lang="fr", tgt_lang="en")


def test_iwslt_unequal_train_files_name_talk_and_counts(tmp_path):
    folder = tmp_path / "de-en"
    folder.mkdir()
    (folder / "train.tags.de-en.de").write_text('<doc docid="7" genre="lectures">\n<talkid>7</talkid>\nEins.\nZwei.\n')
    (folder / "train.tags.de-en.en").write_text('<doc docid="7" genre="lectures">\n<talkid>7</talkid>\nOne.\n')
    with pytest.raises(DataError, match=r"talk 7: .*de has 2 segments but .*en has 1"):
        pairs(folder, "iwslt", "train")


def test_iwslt_missing_set_lists_sets_present():
    with pytest.raises(DataError, match=r"sets present: dev2010, tst2010"):
        pairs(IWSLT, "iwslt", "tst2009")


# --- commongen --------------------------------------------------------------------------------------------

def test_commongen_train_one_pair_per_scene():
    got = pairs(FIXTURES / "common_gen", "commongen", "train")
    assert [p.tgt for p in got] == ["Skier skis down the mountain", "A skier is skiing down a mountain.",
                                    "Three skiers are skiing on a snowy mountain."]
    assert {p.src for p in got} == {"mountain ski skier"}
    assert [p.id for p in got] == ["train-1-0", "train-1-1", "train-1-2"]


def test_commongen_dev_one_pair_per_set_with_all_scenes():
    (dev,) = pairs(FIXTURES / "common_gen", "commongen", "valid")
    assert dev.src == "field look stand"
    assert dev.tgt == "The player stood in the field looking at the batter."
    assert len(dev.refs) == 4 and dev.refs[0] == dev.tgt


def test_commongen_fixture_test_noref_is_malformed_json():
    # The fixture line is {"concept_set": "drill#field#run#team", } -- a trailing comma.
    with pytest.raises(DataError, match=r"commongen\.test_noref\.jsonl:1: not valid JSON"):
        pairs(FIXTURES / "common_gen", "commongen", "test")


def test_commongen_test_noref_has_no_target(tmp_path):
    (tmp_path / "commongen.test_noref.jsonl").write_text('{"concept_set": "team#run#field#drill"}\n')
    assert pairs(tmp_path, "commongen", "test") == [Pair("test_noref-1", "drill field run team", "", [])]


def test_commongen_malformed_line_names_file_and_line(tmp_path):
    (tmp_path / "commongen.train.jsonl").write_text('{"concept_set": "a#b", "scene": ["A b."]}\n\n{"concept_set": \n')
    with pytest.raises(DataError, match=r"commongen\.train\.jsonl:3: not valid JSON"):
        pairs(tmp_path, "commongen", "train")


def test_fsspec_url_location():
    root = f"memory://tasks-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    fs.pipe({f"{root}/val.source": b"A long text.\n", f"{root}/val.target": b"Short.\n"})
    try:
        assert pairs(root, "xsum-lines", "valid") == [Pair("val-1", "A long text.", "Short.", ["Short."])]
        assert pairs(f"file://{FIXTURES / 'common_gen'}", "commongen", "valid")[0].src == "field look stand"
    finally:
        fs.rm(root, recursive=True)


# --- arguments --------------------------------------------------------------------------------------------

def test_unknown_format_lists_formats():
    with pytest.raises(DataError, match=r"unknown task format 'gigaword' \(valid: jsonl, xsum, xsum-lines, cnndm"):
        read_pairs(str(TASKS / "deen"), "gigaword", "train")


def test_unknown_split_lists_splits():
    with pytest.raises(DataError, match=r"unknown split 'dev' for format 'xsum' \(valid: train, valid, test, all\)"):
        read_pairs(str(FIXTURES / "xsum" / "raw"), "xsum", "dev")


def test_missing_location_is_an_error(tmp_path):
    with pytest.raises(DataError, match=r"cnndm data folder not found: .*nowhere"):
        read_pairs(str(tmp_path / "nowhere"), "cnndm", "train")
    with pytest.raises(DataError, match=r"not found: .*nowhere"):
        read_pairs(str(tmp_path / "nowhere"), "jsonl", "train")


def test_languages_only_for_iwslt():
    with pytest.raises(DataError, match=r"only to fmt='iwslt'"):
        read_pairs(str(TASKS / "deen"), "jsonl", "train", src_lang="de")
