"""Seq2seq task data as a stream of `Pair` records: our jsonl task files and the original formats of the
paper's datasets (XSum, CNN/DailyMail, IWSLT, CommonGen). Local paths and fsspec URLs alike.

`read_pairs(location, fmt, split)` checks the format, split and location when called and returns a lazy
stream; what is wrong inside the files (missing sections, unequal line counts, bad JSON) is raised as a
`DataError` when the stream reaches it. Records a format cannot use (an XSum id without its file, a URL
without a story, an empty segment) are skipped, counted in `ReadStats` and summed up in one warning when the
stream ends.

Splits are train/valid/test for every format; each reader maps them to the dataset's own names. Text from
the original formats has its whitespace collapsed to single spaces (lines joined, TED's double spaces gone);
jsonl task files are passed through as written.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import posixpath
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar, Iterable, Iterator

import fsspec

from ardiff_scale.errors import DataError

log = logging.getLogger("ardiff.data")

FORMATS = ("jsonl", "xsum", "xsum-lines", "cnndm", "iwslt", "commongen")
SPLITS = ("train", "valid", "test")


@dataclass
class Pair:
    id: str
    src: str
    tgt: str
    refs: list[str]  # all references, tgt first; [tgt] when the data has one, [] when it has none


@dataclass
class ReadStats:
    """Filled by `read_pairs` while its stream is consumed: pairs yielded and records skipped, by reason."""

    records: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> first ids (or URLs) skipped
    max_examples: ClassVar[int] = 20

    def skip(self, reason: str, item: str) -> None:
        self.skipped[reason] += 1
        kept = self.examples.setdefault(reason, [])
        if len(kept) < self.max_examples:
            kept.append(item)

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        reasons = ", ".join(f"{reason}: {n} (e.g. {self.examples[reason][0]})"
                            for reason, n in sorted(self.skipped.items()))
        return f"{self.records} pairs, {self.total_skipped} records skipped ({reasons or 'none'})"


def read_pairs(location: str, fmt: str, split: str, *, stats: ReadStats | None = None,
               src_lang: str | None = None, tgt_lang: str | None = None) -> Iterator[Pair]:
    """Pairs of `split` (train/valid/test; xsum and cnndm also take "all", iwslt a set name such as
    "tst2013") from `location`, a folder (or, for jsonl, a file) in format `fmt` (one of `FORMATS`).
    `src_lang`/`tgt_lang` choose the direction of an iwslt folder (default: as its name, de-en = de->en)."""
    if fmt not in FORMATS:
        raise DataError(f"unknown task format {fmt!r} (valid: {', '.join(FORMATS)})")
    if (src_lang or tgt_lang) and fmt != "iwslt":
        raise DataError(f"src_lang/tgt_lang apply only to fmt='iwslt' (got fmt={fmt!r})")
    valid = SPLITS + (("all",) if fmt in ("xsum", "cnndm") else ())
    if split not in valid and not (fmt == "iwslt" and _IWSLT_SET.fullmatch(split)):
        sets = ", or a set name such as dev2010 or tst2013" if fmt == "iwslt" else ""
        raise DataError(f"unknown split {split!r} for format {fmt!r} (valid: {', '.join(valid)}{sets})")
    stats = stats if stats is not None else ReadStats()
    if fmt == "jsonl":
        pairs = _read_jsonl(location, split)
    else:
        files = _Files(location)
        if not files.fs.isdir(files.root):
            raise DataError(f"{fmt} data folder not found: {location}")
        if fmt == "xsum":
            pairs = _read_xsum(files, split, stats)
        elif fmt == "xsum-lines":
            pairs = _read_xsum_lines(files, split, stats)
        elif fmt == "cnndm":
            pairs = _read_cnndm(files, split, stats)
        elif fmt == "iwslt":
            pairs = _read_iwslt(files, split, stats, src_lang, tgt_lang)
        else:
            pairs = _read_commongen(files, split, stats)
    return _counted(pairs, f"{fmt} {split} from {location}", stats)


def _counted(pairs: Iterable[Pair], what: str, stats: ReadStats) -> Iterator[Pair]:
    for pair in pairs:
        stats.records += 1
        yield pair
    if stats.skipped:
        log.warning("%s: %s", what, stats.summary())


class _Files:
    """A folder on any fsspec filesystem; paths are named in messages as the user wrote the location."""

    def __init__(self, location: str):
        self.fs, self.root = fsspec.core.url_to_fs(location)
        self.remote = "://" in location and not location.startswith("file://")

    def join(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def name(self, path: str) -> str:
        return self.fs.unstrip_protocol(path) if self.remote else path

    def glob(self, *parts: str) -> list[str]:
        return sorted(self.fs.glob(self.join(*parts)))

    def require(self, path: str, what: str) -> str:
        if not self.fs.isfile(path):
            raise DataError(f"{self.name(path)}: file not found ({what})")
        return path

    def lines(self, path: str) -> Iterator[tuple[int, str]]:
        """(line number from 1, line without its newline); .gz files are decompressed."""
        compression = "gzip" if path.endswith(".gz") else None
        try:
            with self.fs.open(path, "rt", encoding="utf-8", compression=compression) as f:
                for line_no, line in enumerate(f, 1):
                    yield line_no, line.rstrip("\n")
        except FileNotFoundError:
            raise DataError(f"{self.name(path)}: file not found") from None
        except UnicodeDecodeError as err:
            raise DataError(f"{self.name(path)}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def _squash(text: str) -> str:
    return " ".join(text.split())


def _json_line(files: _Files, path: str, line_no: int, line: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{files.name(path)}:{line_no}: not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict):
        raise DataError(f"{files.name(path)}:{line_no}: expected a JSON object, got {type(record).__name__}")
    return record


def _string_list(value, where: str, field_name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{where}: {field_name!r} must be a list of strings (got {json.dumps(value)[:80]})")
    return value


# --- jsonl: our task files -------------------------------------------------------------------------------

def _read_jsonl(location: str, split: str) -> Iterator[Pair]:
    """`<location>/<split>.jsonl.gz` (or .jsonl), or `location` itself when it names a .jsonl(.gz) file.
    Records: {"id", "src", "tgt"} and optional "refs" (list); refs are returned with tgt first."""
    files = _Files(location)
    if files.root.endswith((".jsonl", ".jsonl.gz")):
        path = files.require(files.root, "a jsonl task file")
    elif files.fs.isdir(files.root):
        candidates = [files.join(f"{split}.jsonl.gz"), files.join(f"{split}.jsonl")]
        path = next((p for p in candidates if files.fs.isfile(p)), None)
        if path is None:
            present = sorted(posixpath.basename(p) for p in files.fs.ls(files.root, detail=False))
            raise DataError(f"{location}: no {split}.jsonl.gz or {split}.jsonl for split {split!r} "
                            f"(folder holds: {', '.join(present) or 'nothing'})")
    else:
        raise DataError(f"jsonl task data not found: {location} (a folder with <split>.jsonl.gz or a .jsonl file)")
    return _jsonl_pairs(files, path)


def _jsonl_pairs(files: _Files, path: str) -> Iterator[Pair]:
    for line_no, line in files.lines(path):
        if not line.strip():
            continue
        record = _json_line(files, path, line_no, line)
        where = f"{files.name(path)}:{line_no}"
        for key in ("id", "src", "tgt"):
            if key not in record:
                raise DataError(f"{where}: record has no {key!r} field (expected id, src, tgt and optional refs; "
                                f"fields: {', '.join(sorted(record))})")
        if not isinstance(record["src"], str) or not isinstance(record["tgt"], str):
            raise DataError(f"{where}: 'src' and 'tgt' must be strings")
        tgt = record["tgt"]
        refs = _string_list(record["refs"], where, "refs") if "refs" in record else []
        yield Pair(str(record["id"]), record["src"], tgt, [tgt] + [r for r in refs if r != tgt])


# --- xsum: the raw BBC files -----------------------------------------------------------------------------

XSUM_SPLIT_FILE = "XSum-TRAINING-DEV-TEST-SPLIT-90-5-5.json"
XSUM_SPLIT_KEYS = {"train": "train", "valid": "validation", "test": "test"}
XSUM_SECTIONS = ("URL", "TITLE", "FIRST-SENTENCE", "RESTBODY")
# Share-widget lines of the BBC pages, dropped from articles as the Hugging Face `xsum` loader does.
XSUM_BOILERPLATE = frozenset({
    "Share this with", "Email", "Facebook", "Messenger", "Twitter", "Pinterest", "WhatsApp", "Linkedin",
    "LinkedIn", "Copy this link", "These are external links and will open in a new window",
})
_XSUM_MARKER = re.compile(r"\[SN\]([A-Z-]+)\[SN\]")


def _read_xsum(files: _Files, split: str, stats: ReadStats) -> Iterator[Pair]:
    """`bbc-summary-data/<id>.summary`; tgt = FIRST-SENTENCE, src = RESTBODY lines joined by spaces.
    Split membership from the split JSON (valid = its "validation" list); "all" = every .summary file."""
    summaries = {posixpath.basename(p)[:-len(".summary")]: p for p in files.glob("bbc-summary-data", "*.summary")}
    if split == "all":
        if not summaries:
            raise DataError(f"{files.name(files.join('bbc-summary-data'))}: no .summary files")
        ids = sorted(summaries)
    else:
        ids = _xsum_split_ids(files, XSUM_SPLIT_KEYS[split])
    for doc_id in ids:
        path = summaries.get(doc_id)
        if path is None:
            stats.skip("no .summary file", doc_id)
            continue
        sections = _xsum_sections(files, path)
        tgt = _squash(" ".join(sections["FIRST-SENTENCE"]))
        src = _squash(" ".join(line for line in sections["RESTBODY"] if line not in XSUM_BOILERPLATE))
        if not tgt:
            stats.skip("empty FIRST-SENTENCE", doc_id)
        elif not src:
            stats.skip("empty RESTBODY", doc_id)
        else:
            yield Pair(doc_id, src, tgt, [tgt])


def _xsum_split_ids(files: _Files, key: str) -> list[str]:
    path = files.require(files.join(XSUM_SPLIT_FILE), "the XSum split file")
    text = "\n".join(line for _, line in files.lines(path))
    try:
        splits = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{files.name(path)}:{err.lineno}: not valid JSON ({err.msg})") from None
    if not isinstance(splits, dict) or key not in splits:
        found = ", ".join(sorted(splits)) if isinstance(splits, dict) else type(splits).__name__
        raise DataError(f"{files.name(path)}: expected an object with a {key!r} list of ids (found: {found})")
    ids = splits[key]
    if not isinstance(ids, list) or not all(isinstance(i, (str, int)) for i in ids):
        raise DataError(f"{files.name(path)}: {key!r} must be a list of document ids")
    return [str(i) for i in ids]


def _xsum_sections(files: _Files, path: str) -> dict[str, list[str]]:
    """Section name -> its non-empty lines, stripped."""
    sections: dict[str, list[str]] = {}
    current = None
    for line_no, line in files.lines(path):
        line = line.strip()
        marker = _XSUM_MARKER.fullmatch(line)
        if marker:
            current = sections.setdefault(marker.group(1), [])
        elif line and current is None:
            raise DataError(f"{files.name(path)}:{line_no}: text before the first [SN]SECTION[SN] marker "
                            f"(expected {', '.join(f'[SN]{s}[SN]' for s in XSUM_SECTIONS)})")
        elif line:
            current.append(line)
    missing = [s for s in ("FIRST-SENTENCE", "RESTBODY") if s not in sections]
    if missing:
        raise DataError(f"{files.name(path)}: no {' or '.join(f'[SN]{s}[SN]' for s in missing)} section "
                        f"(an XSum .summary file has {', '.join(f'[SN]{s}[SN]' for s in XSUM_SECTIONS)})")
    return sections


# --- xsum-lines: line-aligned source/target files ------------------------------------------------------

def _read_xsum_lines(files: _Files, split: str, stats: ReadStats) -> Iterator[Pair]:
    """`{train,val,test}.{source,target}`, line n of one paired with line n of the other (valid -> val,
    or valid.* where there is no val.*). Ids are `<file split>-<line>`."""
    stem = {"train": "train", "valid": "val", "test": "test"}[split]
    if stem == "val" and not files.fs.isfile(files.join("val.source")) and files.fs.isfile(files.join("valid.source")):
        stem = "valid"
    what = f"xsum-lines reads {stem}.source and {stem}.target"
    src_path = files.require(files.join(f"{stem}.source"), what)
    tgt_path = files.require(files.join(f"{stem}.target"), what)
    # Count first, so that unequal files fail before any pair is used.
    n_src = sum(1 for _ in files.lines(src_path))
    n_tgt = sum(1 for _ in files.lines(tgt_path))
    if n_src != n_tgt:
        raise DataError(f"{files.name(src_path)} has {n_src} lines but {files.name(tgt_path)} has {n_tgt}; "
                        f"line-aligned source/target files must have equal line counts")
    for (line_no, src), (_, tgt) in zip(files.lines(src_path), files.lines(tgt_path)):
        pair_id = f"{stem}-{line_no}"
        src, tgt = _squash(src), _squash(tgt)
        if not src or not tgt:
            stats.skip("empty line", pair_id)
            continue
        yield Pair(pair_id, src, tgt, [tgt])


# --- cnndm: CNN / Daily Mail stories ---------------------------------------------------------------------

CNNDM_STORY_DIRS = ("cnn/stories", "dailymail/stories")
CNNDM_URL_LISTS = {"train": "all_train.txt", "valid": "all_val.txt", "test": "all_test.txt"}
# A highlight ending in none of these gets a period (See et al. 2017, make_datafiles.py).
CNNDM_END_TOKENS = (".", "!", "?", "'", "`", '"', "\u2019", "\u201d", ")")


def _read_cnndm(files: _Files, split: str, stats: ReadStats) -> Iterator[Pair]:
    """`cnn/stories/*.story`, `dailymail/stories/*.story`; a story's name is the sha1 hex of its URL, so
    split membership comes from `url_lists/all_{train,val,test}.txt`; "all" = every story, CNN first.
    src = the non-empty lines before the first @highlight, joined by spaces; tgt = the highlights, each
    given a "." if it ends in no end token, joined by spaces (as See et al., but untokenised: "." is
    appended without a space, and nothing is lower-cased)."""
    stories: dict[str, str] = {}
    for folder in CNNDM_STORY_DIRS:
        for path in files.glob(folder, "*.story"):
            stories[posixpath.basename(path)[:-len(".story")]] = path
    if not stories:
        raise DataError(f"{files.name(files.root)}: no .story files under {' or '.join(CNNDM_STORY_DIRS)}")
    if split == "all":
        wanted = [(key, key) for key in stories]
    else:
        wanted = _cnndm_split(files, CNNDM_URL_LISTS[split], stories)
    for url, key in wanted:
        path = stories.get(key)
        if path is None:
            stats.skip("no story for URL", url)
            continue
        article, highlights = _cnndm_story(files, path)
        if not article:
            stats.skip("empty article", key)
        elif not highlights:
            stats.skip("no highlights", key)
        else:
            tgt = " ".join(h if h.endswith(CNNDM_END_TOKENS) else h + "." for h in highlights)
            yield Pair(key, " ".join(article), tgt, [tgt])


def _cnndm_split(files: _Files, list_name: str, stories: dict[str, str]) -> list[tuple[str, str]]:
    """(URL, story name) in url-list order."""
    path = files.require(files.join("url_lists", list_name), "the url list of the split")
    urls = [line.strip() for _, line in files.lines(path) if line.strip()]
    if not urls:
        raise DataError(f"{files.name(path)}: no URLs")
    wanted = [(url, hashlib.sha1(url.encode("utf-8")).hexdigest()) for url in urls]
    if not any(key in stories for _, key in wanted):
        raise DataError(f"{files.name(path)}: none of the {len(urls)} URLs match a story file (story files are "
                        f"named by the sha1 hex of their URL; {len(stories)} stories found under "
                        f"{' and '.join(CNNDM_STORY_DIRS)}); split='all' reads every story")
    return wanted


def _cnndm_story(files: _Files, path: str) -> tuple[list[str], list[str]]:
    article, highlights, in_highlights = [], [], False
    for _, line in files.lines(path):
        line = _squash(line)
        if not line:
            continue
        if line.startswith("@highlight"):
            in_highlights = True
        elif in_highlights:
            highlights.append(line)
        else:
            article.append(line)
    return article, highlights


# --- iwslt: TED talks, train.tags + xml sets -------------------------------------------------------------

_IWSLT_SET = re.compile(r"(?:dev|tst)\d{4}")
_IWSLT_PAIR = re.compile(r"([a-z]{2,3})-([a-z]{2,3})")
_IWSLT_SET_FILE = re.compile(r"IWSLT\d+\.TED\.((?:dev|tst)\d{4})\.([a-z]{2,3}-[a-z]{2,3})\.([a-z]{2,3})\.xml")
_IWSLT_TRAIN_FILE = re.compile(r"train\.tags\.([a-z]{2,3}-[a-z]{2,3})\.([a-z]{2,3})")
_IWSLT_DOC = re.compile(r'<doc\s[^>]*docid="([^"]*)"')
_IWSLT_SEG = re.compile(r'<seg\s+id="\s*([^"]*?)\s*"\s*>(.*)</seg>')

# One document's text units: (doc id, [(unit id, text)]).
_Doc = tuple[str, list[tuple[str, str]]]


def _read_iwslt(files: _Files, split: str, stats: ReadStats, src_lang: str | None,
                tgt_lang: str | None) -> Iterator[Pair]:
    """A language-pair folder such as `de-en/`. train = `train.tags.<pair>.<lang>` (lines starting with "<"
    are TED metadata tags and skipped; text lines pair up in order, talk by talk); valid = dev2010;
    test = every tst20xx set present, in year order, concatenated (IWSLT17 ships tst2010..tst2015; the
    Hugging Face loader uses tst2010 alone, which split="tst2010" gives); a set name reads that set.
    Xml sets pair `<seg>`s by order within each talk. Ids: `<set>-<talk id>-<seg id>`."""
    pair_name, (src, tgt) = _iwslt_direction(files, src_lang, tgt_lang)
    available = sorted({m.group(1) for p in files.glob(f"IWSLT*.TED.*.{pair_name}.{src}.xml")
                        if (m := _IWSLT_SET_FILE.fullmatch(posixpath.basename(p)))})
    if split == "train":
        what = f"iwslt train reads train.tags.{pair_name}.{src} and .{tgt}"
        src_path = files.require(files.join(f"train.tags.{pair_name}.{src}"), what)
        tgt_path = files.require(files.join(f"train.tags.{pair_name}.{tgt}"), what)
        yield from _aligned(files, "train", src_path, _tagged_docs(files, src_path),
                            tgt_path, _tagged_docs(files, tgt_path), stats)
        return
    sets = {"valid": ["dev2010"], "test": [s for s in available if s.startswith("tst")]}.get(split, [split])
    if not sets or not set(sets) <= set(available):
        raise DataError(f"{files.name(files.root)}: no IWSLT*.TED.{'/'.join(sets) or 'tst20xx'}.{pair_name}.{src}.xml "
                        f"for split {split!r} (sets present: {', '.join(available) or 'none'})")
    for set_name in sets:
        paths = [files.glob(f"IWSLT*.TED.{set_name}.{pair_name}.{lang}.xml") for lang in (src, tgt)]
        if not paths[1]:
            raise DataError(f"{files.name(paths[0][0])}: no matching {tgt} file "
                            f"(IWSLT*.TED.{set_name}.{pair_name}.{tgt}.xml)")
        src_path, tgt_path = paths[0][0], paths[1][0]
        yield from _aligned(files, set_name, src_path, _xml_docs(files, src_path),
                            tgt_path, _xml_docs(files, tgt_path), stats)


def _iwslt_direction(files: _Files, src_lang: str | None, tgt_lang: str | None) -> tuple[str, tuple[str, str]]:
    """The folder's language pair ("de-en", from its name or its files) and the (src, tgt) languages."""
    match = _IWSLT_PAIR.fullmatch(posixpath.basename(files.root.rstrip("/")))
    if match:
        pair_name = match.group(0)
    else:
        names = [posixpath.basename(p) for p in files.fs.ls(files.root, detail=False)]
        found = {m.group(2) if m.re is _IWSLT_SET_FILE else m.group(1)
                 for n in names if (m := _IWSLT_SET_FILE.fullmatch(n) or _IWSLT_TRAIN_FILE.fullmatch(n))}
        if len(found) != 1:
            raise DataError(f"{files.name(files.root)}: cannot tell the language pair (expected a folder named "
                            f"like de-en or files of one pair; found pairs: {', '.join(sorted(found)) or 'none'})")
        pair_name = found.pop()
    first, second = pair_name.split("-")
    src = src_lang or (tgt_lang and (second if tgt_lang == first else first)) or first
    tgt = tgt_lang or (second if src == first else first)
    if {src, tgt} != {first, second}:
        raise DataError(f"{files.name(files.root)}: direction {src}->{tgt} does not fit the pair {pair_name} "
                        f"(valid: {first}->{second}, {second}->{first})")
    return pair_name, (src, tgt)


def _tagged_docs(files: _Files, path: str) -> list[_Doc]:
    """train.tags text lines grouped by talk; ids count lines within a talk from 1."""
    docs: list[_Doc] = []
    for _, line in files.lines(path):
        line = line.strip()
        if line.startswith("<"):
            doc = _IWSLT_DOC.match(line)
            if doc:
                docs.append((doc.group(1), []))
        elif line:
            if not docs:
                docs.append(("0", []))
            units = docs[-1][1]
            units.append((str(len(units) + 1), _squash(line)))
    return docs


def _xml_docs(files: _Files, path: str) -> list[_Doc]:
    docs: list[_Doc] = []
    for line_no, line in files.lines(path):
        doc = _IWSLT_DOC.search(line)
        if doc:
            docs.append((doc.group(1), []))
        seg = _IWSLT_SEG.search(line)
        if seg:
            if not docs:
                raise DataError(f"{files.name(path)}:{line_no}: <seg> outside a <doc docid=...> element")
            docs[-1][1].append((seg.group(1), _squash(html.unescape(seg.group(2)))))
        elif "<seg" in line:
            raise DataError(f"{files.name(path)}:{line_no}: expected one <seg id=\"N\">text</seg> on the line")
    return docs


def _aligned(files: _Files, set_name: str, src_path: str, src_docs: list[_Doc], tgt_path: str,
             tgt_docs: list[_Doc], stats: ReadStats) -> Iterator[Pair]:
    """Pairs the units of two parallel files talk by talk, after checking that talks and counts agree."""
    src_name, tgt_name = files.name(src_path), files.name(tgt_path)
    if [d for d, _ in src_docs] != [d for d, _ in tgt_docs]:
        raise DataError(f"{src_name} and {tgt_name} hold different talks ({len(src_docs)} vs {len(tgt_docs)}; "
                        f"first difference: {_first_difference([d for d, _ in src_docs], [d for d, _ in tgt_docs])})")
    for (doc_id, src_units), (_, tgt_units) in zip(src_docs, tgt_docs):
        if len(src_units) != len(tgt_units):
            raise DataError(f"talk {doc_id}: {src_name} has {len(src_units)} segments but {tgt_name} has "
                            f"{len(tgt_units)}; parallel files must pair up segment by segment")
        for (unit_id, src), (_, tgt) in zip(src_units, tgt_units):
            pair_id = f"{set_name}-{doc_id}-{unit_id}"
            if not src or not tgt:
                stats.skip("empty segment", pair_id)
                continue
            yield Pair(pair_id, src, tgt, [tgt])


def _first_difference(a: list[str], b: list[str]) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"talk #{i + 1} is {x} vs {y}"
    return f"talk #{min(len(a), len(b)) + 1} is missing in one file"


# --- commongen: concept sets -----------------------------------------------------------------------------

COMMONGEN_FILES = {"train": "commongen.train.jsonl", "valid": "commongen.dev.jsonl",
                   "test": "commongen.test_noref.jsonl"}


def _read_commongen(files: _Files, split: str, stats: ReadStats) -> Iterator[Pair]:
    """`commongen.{train,dev,test_noref}.jsonl` (valid = dev). src = the concepts of "concept_set"
    ("a#b#c"), sorted and space-separated as in our concept2text task. train: one pair per scene;
    dev/test: one pair per concept set with refs = its scenes and tgt = the first (test_noref has none:
    tgt "" and refs [])."""
    path = files.require(files.join(COMMONGEN_FILES[split]), f"commongen {split}")
    stem = COMMONGEN_FILES[split].split(".")[1]
    for line_no, line in files.lines(path):
        if not line.strip():
            continue
        record = _json_line(files, path, line_no, line)
        where = f"{files.name(path)}:{line_no}"
        concept_set = record.get("concept_set")
        concepts = sorted(c.strip() for c in concept_set.split("#") if c.strip()) \
            if isinstance(concept_set, str) else []
        if not concepts:
            raise DataError(f"{where}: expected a 'concept_set' string like \"field#look#stand\" "
                            f"(got {json.dumps(concept_set)})")
        if "scene" not in record and split != "test":
            raise DataError(f"{where}: record has no 'scene' list of sentences (required in {split})")
        scenes = [_squash(s) for s in _string_list(record.get("scene", []), where, "scene")]
        scenes = [s for s in scenes if s]
        src = " ".join(concepts)
        if split == "train":
            if not scenes:
                stats.skip("no scene", f"{stem}-{line_no}")
            for k, scene in enumerate(scenes):
                yield Pair(f"{stem}-{line_no}-{k}", src, scene, [scene])
        else:
            yield Pair(f"{stem}-{line_no}", src, scenes[0] if scenes else "", scenes)
