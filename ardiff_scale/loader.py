"""YAML to typed dataclasses: the one loader behind run configs, task files and reproduction plans.

`build_dataclass(cls, values, where)` turns a mapping into `cls`, recursing into fields whose type is itself
a dataclass. Every mistake is a ConfigError that names the dotted field, the value, what would be valid and
where the value came from (`where`: a file name, or a function from dotted key to origin when values were
merged from several places, e.g. a recipe and command-line overrides):

    unknown field 'decode.candiates' in eval/tasks/x.yaml; did you mean 'candidates'? (valid in decode: ...)
    train.lr must be a float (got 'abc') in command line override 'train.lr=abc'
    data.format is required but missing in eval/tasks/x.yaml (required in data: data.location, data.format)

Fields whose metadata is `NOT_IN_FILES` (provenance such as a task's own path) are set by the program, never
read from a file, and are reported as unknown when a file names them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, fields, is_dataclass
from difflib import get_close_matches
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

import yaml

from ardiff_scale.errors import ConfigError

T = TypeVar("T")
Where = str | Callable[[str], str]
# dataclasses.field(metadata=NOT_IN_FILES): the loader neither reads nor lists the field.
NOT_IN_FILES = {"not_in_files": True}


def did_you_mean(name: str, valid: Sequence[str]) -> str:
    close = get_close_matches(name, valid, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def origin(where: Where, key: str) -> str:
    return where(key) if callable(where) else where


def file_fields(cls: type) -> list[str]:
    """The names a file may set in `cls`, in declaration order."""
    return [f.name for f in fields(cls) if not f.metadata.get("not_in_files")]


def coerce(value: Any, kind: Any, key: str, where: Where) -> Any:
    """`value` as a `kind` (int, float, str, bool or list[...]), or a ConfigError naming key, value and origin."""
    if get_origin(kind) is list:
        (item_kind,) = get_args(kind)
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list of {item_kind.__name__}s (got {value!r}) in {origin(where, key)}")
        return [coerce(item, item_kind, f"{key}[{i}]", where) for i, item in enumerate(value)]
    # YAML 1.1 reads 3e-4 (no dot) as a string, so float fields take numeric strings too.
    if kind is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            value = float(value)
        except ValueError:
            pass
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
        article = "an" if kind is int else "a"
        raise ConfigError(f"{key} must be {article} {kind.__name__} (got {value!r}) in {origin(where, key)}")
    return value


def unknown_field(prefix: str, key: str, known: Sequence[str], where: Where) -> ConfigError:
    section = prefix.rstrip(".") or "the file"
    return ConfigError(f"unknown field '{prefix}{key}' in {origin(where, prefix + key)}{did_you_mean(key, known)} "
                       f"(valid in {section}: {', '.join(known)})")


def build_dataclass(cls: type[T], values: Any, where: Where, prefix: str = "") -> T:
    """`cls` from a mapping, recursively: unknown keys (with a close match), missing required fields and values
    of the wrong type are ConfigErrors. `prefix` is the dotted path of `values` inside the whole file."""
    section = prefix.rstrip(".") or "the file"
    if not isinstance(values, Mapping):
        raise ConfigError(f"{section} must be a mapping of fields (got {values!r}) in {origin(where, section)}")
    hints = get_type_hints(cls)
    known = file_fields(cls)
    for key in values:
        if key not in known:
            raise unknown_field(prefix, str(key), known, where)
    required = [f.name for f in fields(cls)
                if f.name in known and f.default is MISSING and f.default_factory is MISSING]
    missing = [name for name in required if name not in values]
    if missing:
        raise ConfigError(f"{prefix}{missing[0]} is required but missing in {origin(where, prefix + missing[0])} "
                          f"(required in {section}: {', '.join(prefix + name for name in required)})")
    typed = {}
    for key, value in values.items():
        kind = hints[key]
        if is_dataclass(kind):
            if value is None and key not in required:
                continue  # a section whose keys are all commented out reads as null: its defaults
            typed[key] = build_dataclass(kind, {} if value is None else value, where, f"{prefix}{key}.")
        else:
            typed[key] = coerce(value, kind, f"{prefix}{key}", where)
    return cls(**typed)


def read_mapping(path: Path, what: str) -> dict[str, Any]:
    """The top-level mapping of a YAML file (empty for an empty file); `what` names its keys in messages."""
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path} must hold a mapping of {what} (got {type(tree).__name__})")
    return tree


def shipped_or_path(name_or_path: str | Path, folder: Path, what: str, suffix: str = ".yaml",
                   key: str = "") -> Path:
    """An existing file, or `folder/<name><suffix>` for a bare shipped name; else a ConfigError with the closest
    shipped name and the list. `what` names the kind ("recipe", "task"), `key` the field that named it."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = folder / f"{name_or_path}{suffix}"
    if isinstance(name_or_path, str) and "/" not in name_or_path and shipped.is_file():
        return shipped
    names = sorted(p.stem for p in folder.glob(f"*{suffix}"))
    raise ConfigError(f"{key or what} {str(name_or_path)!r} is neither a file nor a shipped {what}"
                      f"{did_you_mean(str(name_or_path), names)} (shipped: {', '.join(names) or 'none'})")
