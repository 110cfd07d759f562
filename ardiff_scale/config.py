"""The run configuration: one dataclass tree, loaded from a YAML recipe, typed section values from code and
dotted command-line overrides, in that order.

All three are merged as plain dicts first and typed afterwards by `loader.build_dataclass`, so an override can
replace any recipe value and every error can say which field was wrong, what would be valid and where the
value came from (`ConfigError: train.lr must be a float (got 'abc') in recipes/tiny-cpu.yaml`). Dotted strings
are for people (the command line, a task's `finetune.overrides`); code passes sections (`train={...}`) or
derives a changed config with `derive`. A task's fine-tuning config is built here too (`task_config`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Sequence

import yaml

from ardiff_scale.errors import ConfigError
from ardiff_scale.loader import (
    NOT_IN_FILES,
    build_dataclass,
    coerce,
    did_you_mean,
    read_mapping,
    shipped_or_path,
    unknown_field,
)
from ardiff_scale.model.config import PRESETS, ModelConfig
from ardiff_scale.tasks.spec import TaskSpec, read_task

RECIPES_DIR = Path(__file__).parent / "recipes"
OVERRIDE = "command line override"


def _check(prefix: str, name: str, value: Any, ok: bool, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{prefix}.{name} must be {rule} (got {value!r})")


def _positive(section: Any, prefix: str, *names: str) -> None:
    for name in names:
        value = getattr(section, name)
        _check(prefix, name, value, value > 0, "> 0")


def _non_negative(section: Any, prefix: str, *names: str) -> None:
    for name in names:
        value = getattr(section, name)
        _check(prefix, name, value, value >= 0, ">= 0")


def _one_of(section: Any, prefix: str, name: str, choices: Sequence[str]) -> None:
    value = getattr(section, name)
    _check(prefix, name, value, value in choices, f"one of {', '.join(choices)}")


@dataclass
class DiffusionConfig:
    num_steps: int = 2000  # T
    schedule: str = "sqrt"
    # "code" follows the official implementation (0-based, rounded); "paper" the formula as printed;
    # "uniform" puts every token at the same step (the Diffusion-LM / GENIE baseline).
    timestep_form: str = "code"
    decode_steps: int = 20  # M
    num_candidates: int = 1  # k, reranked by MBR when > 1
    # Snap x0-hat to the nearest word embedding at every sampling step (Diffusion-LM's rounding trick).
    clamp: bool = True

    def validate(self, prefix: str = "diffusion") -> None:
        _positive(self, prefix, "num_steps", "decode_steps", "num_candidates")
        _one_of(self, prefix, "schedule", ("sqrt",))
        _one_of(self, prefix, "timestep_form", ("code", "paper", "uniform"))
        if self.decode_steps > self.num_steps:
            raise ConfigError(f"{prefix}.decode_steps must be <= {prefix}.num_steps "
                              f"(got decode_steps={self.decode_steps}, num_steps={self.num_steps})")


@dataclass
class DataConfig:
    # Shards: a directory with manifest.json, or brace-expanded shard URLs (file, http(s), s3).
    train: str = ""
    valid: str = ""
    tokenizer: str = ""
    source_len: int = 128
    target_len: int = 64
    # Pretraining: the fraction of a window's tokens masked to form the target.
    mask_fraction: float = 0.3
    min_tokens: int = 30  # shorter windows are dropped when shards are built
    # DataLoader worker processes per rank, which read shards and make the batches; -1: auto (on a GPU host
    # the CPUs per local rank less one, at most 8; on a CPU run 1 with 4 or more cores per rank, else 0).
    num_workers: int = -1
    prefetch_shards: int = 2  # shards each worker fetches ahead of those it has open
    open_shards: int = 4  # shards each worker interleaves: the width of the shuffle
    on_error: str = "warn"  # an unreadable shard: "warn" (skip, log, count) or "raise"

    def validate(self, prefix: str = "data") -> None:
        _positive(self, prefix, "source_len", "target_len", "open_shards")
        _non_negative(self, prefix, "min_tokens", "prefetch_shards")
        _check(prefix, "num_workers", self.num_workers, self.num_workers >= -1, ">= 0, or -1 for auto")
        _check(prefix, "mask_fraction", self.mask_fraction, 0.0 < self.mask_fraction < 1.0, "in (0, 1)")
        _one_of(self, prefix, "on_error", ("warn", "raise"))


@dataclass
class TrainConfig:
    seed: int = 101
    max_steps: int = 1000  # optimizer steps, each of grad_accum micro-batches
    micro_batch_size: int = 8
    grad_accum: int = 1
    lr: float = 3e-4
    warmup_steps: int = 100
    lr_schedule: str = "linear"
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # 0 turns clipping off
    precision: str = "fp32"
    ema_rate: float = 0.9999  # the EMA decay, warmed up: step n uses min(ema_rate, (1 + n) / (10 + n))
    log_every: int = 10
    eval_every: int = 0  # 0: never
    save_every: int = 0  # 0: only at the end
    save_every_minutes: float = 0.0  # also save when this many minutes passed since the last save; 0: off
    sample_every: int = 0  # sample generations with the skipping sampler; 0: only at the end
    keep_checkpoints: int = 3  # complete checkpoints kept; older ones are deleted
    output_dir: str = "runs/default"
    threads: int = 0  # 0 keeps torch's default
    # DeepSpeed config: a name in ds_configs/ (zero0, zero1, zero2, zero3, zero3-offload) or a JSON path.
    deepspeed: str = "zero0"
    # "auto" continues from the newest complete checkpoint in output_dir, if any (a preempted or requeued job
    # reruns the same command); "never" starts fresh and refuses an output_dir that holds checkpoints;
    # a checkpoint directory continues from that one.
    resume: str = "auto"
    # Peak TFLOP/s per device for MFU; 0: the datasheet value for known GPUs, a measured matmul rate on CPU.
    peak_tflops: float = 0.0
    # Train in train.precision even where it is measured to be much slower than fp32 (emulated bf16 on CPU).
    force_precision: bool = False
    # Local directory for staging checkpoints of an object-store output_dir (s3://...); "": the temp dir.
    staging_dir: str = ""

    def validate(self, prefix: str = "train") -> None:
        _positive(self, prefix, "max_steps", "micro_batch_size", "grad_accum", "lr", "log_every")
        _non_negative(self, prefix, "seed", "warmup_steps", "weight_decay", "grad_clip",
                      "eval_every", "save_every", "sample_every", "threads", "save_every_minutes", "peak_tflops")
        _check(prefix, "resume", self.resume, bool(self.resume),
               "'auto', 'never' or a checkpoint directory")
        _positive(self, prefix, "keep_checkpoints")
        _one_of(self, prefix, "lr_schedule", ("linear", "constant"))
        _one_of(self, prefix, "precision", ("fp32", "bf16", "fp16"))
        _check(prefix, "ema_rate", self.ema_rate, 0.0 <= self.ema_rate < 1.0, "in [0, 1)")
        _check(prefix, "output_dir", self.output_dir, bool(self.output_dir), "a non-empty path")


@dataclass
class TrackingConfig:
    # Empty: $MLFLOW_TRACKING_URI, else a sqlite store inside the run directory.
    tracking_uri: str = ""
    experiment: str = ""
    run_name: str = ""
    enabled: bool = True
    parent_run_id: str = ""  # nests this run under another (a suite's parent run)

    def validate(self, prefix: str = "tracking") -> None:
        """Every value is acceptable here; an unreachable tracking server is reported when the run starts."""


@dataclass
class RayConfig:
    # Empty: train in this process, or in those the `deepspeed`/`torchrun` launcher started. A Ray cluster
    # ("auto" inside a Ray job, host:port of the GCS, ray://host:10001): the same trainer runs in `workers`
    # Ray Train workers placed anywhere on that cluster.
    address: str = ""
    workers: int = 1
    gpus_per_worker: float = 0.0  # 0: CPU workers (gloo); each worker drives one GPU when 1
    cpus_per_worker: float = 1.0
    max_failures: int = 3  # times Ray Train restarts the workers after a failure, from the last checkpoint
    # Ray Train's own run state; empty: OUTPUT_DIR/ray (checkpoints live in train.output_dir either way).
    storage_path: str = ""

    def validate(self, prefix: str = "ray") -> None:
        _positive(self, prefix, "workers", "cpus_per_worker")
        _non_negative(self, prefix, "gpus_per_worker", "max_failures")


SECTIONS: dict[str, type] = {"model": ModelConfig, "diffusion": DiffusionConfig, "data": DataConfig,
                             "train": TrainConfig, "tracking": TrackingConfig, "ray": RayConfig}
MODEL_KEYS = ["preset", *(f.name for f in fields(ModelConfig))]


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    model_preset: str = field(default="", metadata=NOT_IN_FILES)  # the preset `model` started from (model.preset)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    # Provenance, not content: a config saved and reloaded from elsewhere is still the same config.
    recipe: str = field(default="", compare=False, metadata=NOT_IN_FILES)

    def validate(self) -> None:
        for name in SECTIONS:
            getattr(self, name).validate(prefix=name)
        for kind in ("source", "target"):
            length, limit = getattr(self.data, f"{kind}_len"), getattr(self.model, f"max_{kind}_len")
            if length > limit:
                raise ConfigError(f"data.{kind}_len must be <= model.max_{kind}_len, the model's position table "
                                  f"(got data.{kind}_len={length}, model.max_{kind}_len={limit})")
        if (self.diffusion.timestep_form == "uniform" and self.model.time_attention
                and self.model.decoder == "diffusion"):
            # The combination trains a network that cannot see t: one step for every token makes the txl time
            # term the same for every key, and a softmax row ignores a constant.
            raise ConfigError("diffusion.timestep_form=uniform needs model.time_attention=false (time added to "
                              "the decoder input, as the official uniform baseline has it): with every token at "
                              "one step, time attention cannot see the step")

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The config in recipe form: loading it back gives an equal Config."""
        model = asdict(self.model)
        tree = {"model": {"preset": self.model_preset, **model} if self.model_preset else model}
        return tree | {name: asdict(getattr(self, name)) for name in SECTIONS if name != "model"}


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict to dotted keys, `{"train": {"lr": 3e-4}}` to `{"train.lr": 3e-4}`, as MLflow params want."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def shipped_recipes() -> list[str]:
    return sorted(path.stem for path in RECIPES_DIR.glob("*.yaml"))


def derive(config: Config, **sections: dict[str, Any]) -> Config:
    """`config` with fields of some sections replaced, validated: `derive(cfg, train={"max_steps": 5})`.

    Internal code changes configs this way, never through dotted strings: a misspelt field is a TypeError at
    the call, not a YAML error at run time."""
    changed = replace(config, **{name: replace(getattr(config, name), **values) for name, values in sections.items()})
    changed.validate()
    return changed


def merge_sections(*changes: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Section changes (`{"train": {"lr": 0.1}}`, as `load_config` and `task_config` take them) combined, later
    ones winning field by field."""
    out: dict[str, Any] = {}
    for change in changes:
        for section, values in change.items():
            values = {} if values is None else values  # a recipe section whose keys are all commented out
            previous = out.get(section, {})
            # A section that is not a mapping is kept as it is, for build_dataclass to report.
            out[section] = previous | values if isinstance(previous, dict) and isinstance(values, dict) else values
    return out


def parse_overrides(overrides: Sequence[str], origin: str = OVERRIDE
                    ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """`section.field=value` strings as a tree of sections (values parsed as YAML: `false`, `3e-4`, `12`) and,
    for each dotted key, the override that set it, after `origin` (for messages). Names are checked when the
    tree is built."""
    tree: dict[str, dict[str, Any]] = {}
    set_by: dict[str, str] = {}
    for text in overrides:
        key, sep, raw = text.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot:
            raise ConfigError(f"override {text!r} must look like section.field=value, e.g. train.lr=3e-4")
        try:
            # An empty value means the empty string, not YAML's null.
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override {text!r} has a value that is not valid YAML: {err}") from None
        tree.setdefault(section, {})[name] = value
        set_by[f"{section}.{name}"] = f"{origin} {text!r}"
    return tree, set_by


def apply_overrides(tree: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of `tree` (sections of fields) with each `section.field=value` set."""
    return _overridden(tree, parse_overrides(overrides)[0])


def _overridden(tree: dict[str, Any], parsed: dict[str, dict[str, Any]]) -> dict[str, Any]:
    merged = {section: dict(values or {}) if isinstance(values, dict) or values is None else values
              for section, values in tree.items()}
    for section, values in parsed.items():
        if not isinstance(merged.get(section, {}), dict):
            raise ConfigError(f"override of {section}.* needs {section} to be a section (got {merged[section]!r})")
        merged.setdefault(section, {}).update(values)
    return merged


def refuse_owned(overrides: Sequence[str], owned: dict[str, str], what: str, origin: str = OVERRIDE
                 ) -> dict[str, str]:
    """`parse_overrides(overrides, origin)`'s origins, after refusing any key in `owned` (dotted key -> who sets
    it instead and what to do): fields a caller sets itself, which an override would silently lose to or beat."""
    set_by = parse_overrides(overrides, origin)[1]
    for key in set_by:
        if key in owned:
            raise ConfigError(f"{what} sets {key}, which {owned[key]}")
    return set_by


def load_config(recipe: str | Path | None, overrides: Sequence[str] = (), **sections: dict[str, Any]) -> Config:
    """Build and validate the Config from a recipe (a YAML path or a shipped name; None: defaults), then
    `sections` (field values per section that the calling code sets: `data={"train": path}`), then
    command-line `overrides`, validated once at the end.

    `model.preset: NAME` starts the model from that preset; any other model key given anywhere wins over it.
    """
    path = shipped_or_path(recipe, RECIPES_DIR, "recipe") if recipe is not None else None
    source = str(path) if path else "defaults"
    tree = merge_sections(read_mapping(path, "sections") if path else {}, sections)
    cfg = replace(_from_tree(tree, overrides, source), recipe=str(recipe) if recipe is not None else "")
    return _validated(cfg, source, overrides)


def _from_tree(recipe_tree: dict[str, Any], overrides: Sequence[str], source: str,
               set_earlier: dict[str, str] | None = None) -> Config:
    """The Config of a recipe tree with overrides applied, not yet validated. `set_earlier`: origins of values
    already in the tree that did not come from `source` (dotted key -> origin)."""
    parsed, set_now = parse_overrides(overrides)
    tree = _overridden(recipe_tree, parsed)
    set_by = (set_earlier or {}) | set_now

    def where(key: str) -> str:
        return next((text for name, text in set_by.items() if key == name or name.startswith(f"{key}.")), source)

    model = tree.pop("model", None) or {}
    preset_name = ""
    if isinstance(model, dict):  # anything else is reported by build_dataclass
        model = dict(model)
        for key in model:  # "preset" sits beside ModelConfig's fields
            if key not in MODEL_KEYS:
                raise unknown_field("model.", str(key), MODEL_KEYS, where)
        preset_name = coerce(model.pop("preset", ""), str, "model.preset", where)
        if preset_name:
            if preset_name not in PRESETS:
                raise ConfigError(f"unknown model preset {preset_name!r} in {where('model.preset')}"
                                  f"{did_you_mean(preset_name, list(PRESETS))} (valid: {', '.join(PRESETS)})")
            model = asdict(PRESETS[preset_name]) | model
    return replace(build_dataclass(Config, {"model": model, **tree}, where), model_preset=preset_name)


def _validated(cfg: Config, source: str, overrides: Sequence[str]) -> Config:
    try:
        cfg.validate()
    except ConfigError as err:
        origin = f"{source} with overrides {' '.join(overrides)}" if overrides else source
        raise ConfigError(f"{err} in {origin}") from None
    return cfg


# --- a fine-tuning task's run config -------------------------------------------------------------------------

# Run-config fields a task sets through its own keys, which its overrides must therefore leave alone.
TASK_OWNED = {key: f"the task sets with {owner}; set it there" for key, owner in (
    ("data.source_len", "lengths.source"), ("data.target_len", "lengths.target"),
    ("train.max_steps", "finetune.max_steps"), ("diffusion.decode_steps", "decode.steps"),
    ("diffusion.num_candidates", "decode.candidates"))}


def task_config(task: TaskSpec, overrides: Sequence[str] = (), **sections: dict[str, Any]) -> Config:
    """The run config a task fine-tunes with: `finetune.recipe` with `finetune.overrides`, then the task's
    lengths, steps and decoding, then `sections` (as for `load_config`), then command-line `overrides`;
    validated once at the end."""
    recipe = task.finetune.recipe
    path = shipped_or_path(recipe, RECIPES_DIR, "recipe", key="finetune.recipe") if recipe else None
    source = str(path) if path else "defaults"
    task_set = refuse_owned(task.finetune.overrides, TASK_OWNED, "finetune.overrides", "finetune.overrides")
    owned = {"data": {"source_len": task.lengths.source, "target_len": task.lengths.target},
             "train": {"max_steps": task.finetune.max_steps},
             "diffusion": {"decode_steps": task.decode.steps, "num_candidates": task.decode.candidates}}
    tree = merge_sections(_overridden(read_mapping(path, "sections") if path else {},
                                      parse_overrides(task.finetune.overrides)[0]), owned, sections)
    cfg = replace(_from_tree(tree, overrides, source, task_set), recipe=recipe)
    return _validated(cfg, source, [*task.finetune.overrides, *overrides])


def load_task(path_or_name: str | Path) -> TaskSpec:
    """A task file (or a shipped task's name) read and checked whole, its run config included, so that a
    mistake anywhere in it fails before anything runs (`tasks.spec.read_task` checks the file alone)."""
    task = read_task(path_or_name)
    try:
        task_config(task)
    except ConfigError as err:
        raise ConfigError(f"{err} in {task.path}") from None
    return task
