"""Fine-tuning/evaluation task definitions: `eval/tasks/<name>.yaml` read into a `TaskSpec` tree.

A task file names its data (location and format for `ardiff_scale.tasks.readers.read_pairs`), the lengths,
the fine-tuning recipe and overrides, the decoding (M steps, k MBR candidates), the metrics and the
resources. `read_task` checks the file before anything runs: unknown or missing fields, bad values, unknown
metrics and formats are `ConfigError`s naming the file and field. The run config a task fine-tunes with is
the config layer's (`ardiff_scale.config.task_config`); `ardiff_scale.config.load_task` checks both.

`data.location` may refer to environment variables, `${NAME}` or `${NAME:-default}` (shell meaning: the
default applies when NAME is unset or empty); a variable without a default that is unset is a `DataError`
naming it. After expansion a relative location is taken from the repository root (the folder that holds
`eval/`), whatever the working directory, so the shipped tasks' default `../shared/data` means the frozen
data next to the checkout. Locations with a scheme (`s3://...`) are used as written.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ardiff_scale.errors import ConfigError, DataError
from ardiff_scale.loader import NOT_IN_FILES, build_dataclass, did_you_mean, read_mapping, shipped_or_path
from ardiff_scale.tasks.metric_names import check_metrics
from ardiff_scale.tasks.readers import FORMATS, SPLITS, Pair, ReadStats, read_pairs

REPO_ROOT = Path(__file__).resolve().parents[2]
TASKS_DIR = REPO_ROOT / "eval" / "tasks"
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_IWSLT_SET = re.compile(r"(?:dev|tst)\d{4}")
# What a location must hold, per format, for messages about unset or wrong locations.
LAYOUTS = {
    "jsonl": "train/valid/test.jsonl.gz",
    "xsum": "bbc-summary-data/ and XSum-TRAINING-DEV-TEST-SPLIT-90-5-5.json",
    "xsum-lines": "{train,val,test}.{source,target}",
    "cnndm": "cnn/stories/, dailymail/stories/ and url_lists/",
    "iwslt": "train.tags.<pair>.<lang> and IWSLT*.TED.<set>.<pair>.<lang>.xml, e.g. a de-en/ folder",
    "commongen": "commongen.{train,dev,test_noref}.jsonl",
}
@dataclass
class TaskData:
    location: str  # folder (or jsonl file) for read_pairs, after ${VAR} expansion; relative: from the repo root
    format: str  # one of ardiff_scale.tasks.readers.FORMATS
    train_split: str = "train"
    valid_split: str = "valid"
    test_split: str = "test"  # the split scored; CommonGen scores its dev set since test has no references
    src_lang: str = ""  # iwslt only: translation direction; "" = as the folder name says (de-en: de->en)
    tgt_lang: str = ""


@dataclass
class TaskLengths:
    source: int  # source tokens kept (data.source_len)
    target: int  # target tokens, padded or truncated (data.target_len)


@dataclass
class TaskFinetune:
    max_steps: int  # optimizer steps (train.max_steps)
    recipe: str = ""  # shipped recipe name or YAML path the run config starts from; "" = defaults
    overrides: list[str] = field(default_factory=list)  # dotted section.field=value, as on the command line


@dataclass
class TaskDecode:
    steps: int  # sentence-level decoding steps M (diffusion.decode_steps)
    candidates: int  # samples k per source, reranked by MBR when > 1 (diffusion.num_candidates)


@dataclass
class TaskResources:
    workers: int = 1  # parallel workers (processes or Ray actors)
    cpus_per_worker: int = 1
    gpus_per_worker: float = 0.0


@dataclass
class TaskSpec:
    name: str
    data: TaskData
    lengths: TaskLengths
    finetune: TaskFinetune
    decode: TaskDecode
    metrics: list[str]  # names for ardiff_scale.evaluation.metrics.compute_metrics
    resources: TaskResources = field(default_factory=TaskResources)
    description: str = ""
    path: str = field(default="", compare=False, metadata=NOT_IN_FILES)  # the task file, for messages

    def split_name(self, role: str) -> str:
        """The data split that plays `role` (train, valid or test)."""
        if role not in SPLITS:
            raise ConfigError(f"task {self.name}: unknown split role {role!r} (valid: {', '.join(SPLITS)})")
        return getattr(self.data, f"{role}_split")

    def pairs(self, split: str = "test", stats: ReadStats | None = None) -> Iterator[Pair]:
        """The task's pairs for `split` (train, valid or test, mapped through data.<split>_split)."""
        return read_pairs(self.data.location, self.data.format, self.split_name(split), stats=stats,
                          src_lang=self.data.src_lang or None, tgt_lang=self.data.tgt_lang or None)

    def to_dict(self) -> dict[str, Any]:
        tree = asdict(self)
        tree.pop("path")
        return tree


def shipped_tasks() -> list[str]:
    return sorted(path.stem for path in TASKS_DIR.glob("*.yaml"))


def read_task(path_or_name: str | Path) -> TaskSpec:
    """A task from a YAML file, or by name from eval/tasks/<name>.yaml, with every field checked (module
    docstring); `config.load_task` also checks the run config the task fine-tunes with."""
    path = shipped_or_path(path_or_name, TASKS_DIR, "task")
    where = str(path)
    spec = build_dataclass(TaskSpec, read_mapping(path, "task fields"), where)
    spec.path = where
    _validate(spec, where)
    spec.data.location = locate_data(spec.data.location, spec.data.format, where)
    return spec


def _check(ok: bool, key: str, value: Any, rule: str, where: str) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {rule} (got {value!r}) in {where}")


def _validate(spec: TaskSpec, where: str) -> None:
    _check(bool(spec.name.strip()), "name", spec.name, "a non-empty string", where)
    data = spec.data
    _check(bool(data.location.strip()), "data.location", data.location, "a non-empty path, URL or ${VAR}", where)
    if data.format not in FORMATS:
        raise ConfigError(f"data.format {data.format!r} is not a known format in {where}"
                          f"{did_you_mean(data.format, FORMATS)} (valid: {', '.join(FORMATS)})")
    for role in SPLITS:
        split = getattr(data, f"{role}_split")
        valid = SPLITS + (("all",) if data.format in ("xsum", "cnndm") else ())
        if split not in valid and not (data.format == "iwslt" and _IWSLT_SET.fullmatch(split)):
            extra = " or an IWSLT set name such as tst2013" if data.format == "iwslt" else ""
            raise ConfigError(f"data.{role}_split {split!r} is not a split of format {data.format} in {where} "
                              f"(valid: {', '.join(valid)}{extra})")
    if (data.src_lang or data.tgt_lang) and data.format != "iwslt":
        raise ConfigError(f"data.src_lang/tgt_lang apply only to format iwslt (format is {data.format}) in {where}")
    for key, value in (("lengths.source", spec.lengths.source), ("lengths.target", spec.lengths.target),
                       ("finetune.max_steps", spec.finetune.max_steps), ("decode.steps", spec.decode.steps),
                       ("decode.candidates", spec.decode.candidates), ("resources.workers", spec.resources.workers),
                       ("resources.cpus_per_worker", spec.resources.cpus_per_worker)):
        _check(value > 0, key, value, "> 0", where)
    _check(spec.resources.gpus_per_worker >= 0, "resources.gpus_per_worker", spec.resources.gpus_per_worker,
           ">= 0", where)
    if not spec.metrics:
        raise ConfigError(f"metrics must name at least one metric in {where}")
    try:
        check_metrics(spec.metrics)
    except ConfigError as err:
        raise ConfigError(f"{err} in {where}") from None


def locate_data(location: str, fmt: str, where: str) -> str:
    """A data location with ${VAR} and ${VAR:-default} expanded; a relative path is from the repository root."""
    def substitute(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name, "")
        if value:
            return value
        if default is not None:
            return default
        raise DataError(f"data.location in {where} refers to ${{{name}}}, which is not set; "
                        f"export {name}=<the {fmt} data folder, holding {LAYOUTS[fmt]}>")

    expanded = os.path.expanduser(_VARIABLE.sub(substitute, location))
    if "://" in expanded or os.path.isabs(expanded):
        return expanded
    return os.path.normpath(REPO_ROOT / expanded)
