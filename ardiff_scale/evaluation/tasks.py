"""Fine-tuning/evaluation task definitions: `eval/tasks/<name>.yaml` read into a `TaskSpec` tree.

A task file names its data (location and format for `ardiff_scale.data.tasks.read_pairs`), the lengths,
the fine-tuning recipe and overrides, the decoding (M steps, k MBR candidates), the metrics and the
resources. `load_task` checks all of it before anything runs: unknown or missing fields, bad values,
unknown metrics and formats and invalid overrides are `ConfigError`s naming the file and field.

`data.location` may refer to environment variables, `${NAME}` or `${NAME:-default}` (shell meaning: the
default applies when NAME is unset or empty); a variable without a default that is unset is a `DataError`
naming it. After expansion a relative location is taken from the repository root (the folder that holds
`eval/`), whatever the working directory, so the shipped tasks' default `../shared/data` means the frozen
data next to the checkout. Locations with a scheme (`s3://...`) are used as written.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from ardiff_scale.config import (
    Config,
    apply_overrides,
    coerce,
    did_you_mean,
    load_config,
    shipped_recipes,
)
from ardiff_scale.data.tasks import FORMATS, SPLITS, Pair, ReadStats, read_pairs
from ardiff_scale.errors import ConfigError, DataError
from ardiff_scale.evaluation.metrics import check_metrics

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
# Run-config fields a task sets through its own keys, which its overrides must therefore leave alone.
_OWNED = {"data.source_len": "lengths.source", "data.target_len": "lengths.target",
          "train.max_steps": "finetune.max_steps", "diffusion.decode_steps": "decode.steps",
          "diffusion.num_candidates": "decode.candidates"}


@dataclass
class TaskData:
    location: str  # folder (or jsonl file) for read_pairs, after ${VAR} expansion; relative: from the repo root
    format: str  # one of ardiff_scale.data.tasks.FORMATS
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
    path: str = field(default="", compare=False)  # the task file, for messages

    def split_name(self, role: str) -> str:
        """The data split that plays `role` (train, valid or test)."""
        if role not in SPLITS:
            raise ConfigError(f"task {self.name}: unknown split role {role!r} (valid: {', '.join(SPLITS)})")
        return getattr(self.data, f"{role}_split")

    def pairs(self, split: str = "test", stats: ReadStats | None = None) -> Iterator[Pair]:
        """The task's pairs for `split` (train, valid or test, mapped through data.<split>_split)."""
        return read_pairs(self.data.location, self.data.format, self.split_name(split), stats=stats,
                          src_lang=self.data.src_lang or None, tgt_lang=self.data.tgt_lang or None)

    def finetune_overrides(self) -> list[str]:
        """The run-config overrides this task means: its own, then lengths, steps and decoding."""
        return [*self.finetune.overrides,
                f"data.source_len={self.lengths.source}", f"data.target_len={self.lengths.target}",
                f"train.max_steps={self.finetune.max_steps}",
                f"diffusion.decode_steps={self.decode.steps}",
                f"diffusion.num_candidates={self.decode.candidates}"]

    def run_config(self, extra_overrides: Sequence[str] = ()) -> Config:
        """The validated run config: finetune.recipe with `finetune_overrides()` and then `extra_overrides`."""
        return load_config(self.finetune.recipe or None, [*self.finetune_overrides(), *extra_overrides])

    def to_dict(self) -> dict[str, Any]:
        tree = asdict(self)
        tree.pop("path")
        return tree


def shipped_tasks() -> list[str]:
    return sorted(path.stem for path in TASKS_DIR.glob("*.yaml"))


def load_task(path_or_name: str | Path) -> TaskSpec:
    """A task from a YAML file, or by name from eval/tasks/<name>.yaml, checked (module docstring)."""
    path = _resolve(path_or_name)
    where = str(path)
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{where} is not valid YAML: {err}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{where} must hold a mapping of task fields (got {type(tree).__name__})")
    spec = _build(TaskSpec, tree, "", where)
    spec.path = where
    _validate(spec, where)
    spec.data.location = locate_data(spec.data.location, spec.data.format, where)
    return spec


def _resolve(path_or_name: str | Path) -> Path:
    path = Path(path_or_name)
    if path.is_file():
        return path
    shipped = TASKS_DIR / f"{path_or_name}.yaml"
    if isinstance(path_or_name, str) and "/" not in path_or_name and shipped.is_file():
        return shipped
    names = shipped_tasks()
    raise ConfigError(f"task {str(path_or_name)!r} is neither a file nor a shipped task"
                      f"{did_you_mean(str(path_or_name), names)} (shipped: {', '.join(names) or 'none'})")


def _build(cls: type, values: Any, prefix: str, where: str) -> Any:
    """`cls` from a YAML mapping: unknown keys, missing required fields and wrong types are ConfigErrors."""
    section = prefix.rstrip(".") or "the task"
    if not isinstance(values, dict):
        raise ConfigError(f"{section} must be a mapping of fields (got {values!r}) in {where}")
    hints = get_type_hints(cls)
    known = [f.name for f in fields(cls) if f.name != "path"]
    for key in values:
        if key not in known:
            raise ConfigError(f"unknown field '{prefix}{key}' in {where}{did_you_mean(str(key), known)} "
                              f"(valid in {section}: {', '.join(known)})")
    required = [f.name for f in fields(cls)
                if f.name in known and f.default is MISSING and f.default_factory is MISSING]
    missing = [name for name in required if name not in values]
    if missing:
        raise ConfigError(f"{prefix}{missing[0]} is required but missing in {where} "
                          f"(required in {section}: {', '.join(prefix + name for name in required)})")
    typed = {}
    for key, value in values.items():
        kind = hints[key]
        if is_dataclass(kind):
            typed[key] = _build(kind, value, f"{prefix}{key}.", where)
        else:
            typed[key] = coerce(value, kind, f"{prefix}{key}", where)
    return cls(**typed)


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
        _check_finetune(spec)
    except ConfigError as err:
        raise ConfigError(f"{err} in {where}") from None


def _check_finetune(spec: TaskSpec) -> None:
    recipe = spec.finetune.recipe
    if recipe and recipe not in shipped_recipes() and not Path(recipe).is_file():
        names = shipped_recipes()
        raise ConfigError(f"finetune.recipe {recipe!r} is neither a file nor a shipped recipe"
                          f"{did_you_mean(recipe, names)} (shipped: {', '.join(names)})")
    tree = apply_overrides({}, spec.finetune.overrides)
    for section, values in tree.items():
        for name in values:
            owner = _OWNED.get(f"{section}.{name}")
            if owner:
                raise ConfigError(f"finetune.overrides sets {section}.{name}, which the task sets with {owner}; "
                                  f"set it there")
    spec.run_config()


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
