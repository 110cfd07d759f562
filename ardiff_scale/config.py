"""The run configuration: one dataclass tree, loaded from a YAML recipe plus dotted command-line overrides.

Recipes and overrides are merged as plain dicts first and typed afterwards, so an override can replace any
recipe value and every error can say which field was wrong, what would be valid and where the value came
from (`ConfigError: train.lr must be a float (got 'abc') in recipes/tiny-cpu.yaml`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Callable, Sequence, get_args, get_origin, get_type_hints

import yaml

from ardiff_scale.errors import ConfigError
from ardiff_scale.model.config import PRESETS, ModelConfig

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


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    model_preset: str = ""  # the preset `model` started from; "" when none
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    # Provenance, not content: a config saved and reloaded from elsewhere is still the same config.
    recipe: str = field(default="", compare=False)

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


def did_you_mean(name: str, valid: Sequence[str]) -> str:
    close = get_close_matches(name, valid, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _check_known(name: str, valid: Sequence[str], what: str, where: str) -> None:
    if name not in valid:
        raise ConfigError(f"unknown {what} {name!r} in {where}{did_you_mean(name, valid)} "
                          f"(valid: {', '.join(valid)})")


def _field_names(section: str) -> list[str]:
    names = [f.name for f in fields(SECTIONS[section])]
    return ["preset", *names] if section == "model" else names


def apply_overrides(tree: dict[str, dict[str, Any]], overrides: Sequence[str]) -> dict[str, dict[str, Any]]:
    """A copy of `tree` with each `section.field=value` set; values are parsed as YAML (`false`, `3e-4`, `12`)."""
    merged = {section: dict(values) for section, values in tree.items()}
    for text in overrides:
        key, sep, raw = text.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot:
            raise ConfigError(f"override {text!r} must look like section.field=value, e.g. train.lr=3e-4")
        _check_known(section, list(SECTIONS), "section", f"{OVERRIDE} {text!r}")
        _check_known(name, _field_names(section), f"{section} field", f"{OVERRIDE} {text!r}")
        try:
            # An empty value means the empty string, not YAML's null.
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override {text!r} has a value that is not valid YAML: {err}") from None
        merged.setdefault(section, {})[name] = value
    return merged


def coerce(value: Any, kind: Any, key: str, where: str) -> Any:
    """`value` as a `kind` (int, float, str, bool or list[...]), or a ConfigError naming key, value and origin."""
    if get_origin(kind) is list:
        (item_kind,) = get_args(kind)
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list of {item_kind.__name__}s (got {value!r}) in {where}")
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
        raise ConfigError(f"{key} must be {article} {kind.__name__} (got {value!r}) in {where}")
    return value


def _build(section: str, values: dict[str, Any], where: Callable[[str], str]) -> Any:
    cls = SECTIONS[section]
    hints = get_type_hints(cls)
    for name in values:
        _check_known(name, _field_names(section), f"{section} field", where(f"{section}.{name}"))
    typed = {name: coerce(value, hints[name], f"{section}.{name}", where(f"{section}.{name}"))
             for name, value in values.items()}
    return cls(**typed)


def _resolve_recipe(recipe: str | Path) -> Path:
    path = Path(recipe)
    if path.is_file():
        return path
    shipped = RECIPES_DIR / f"{recipe}.yaml"
    if isinstance(recipe, str) and shipped.is_file():
        return shipped
    names = shipped_recipes()
    raise ConfigError(f"recipe {str(recipe)!r} is neither a file nor a shipped recipe"
                      f"{did_you_mean(str(recipe), names)} (shipped: {', '.join(names)})")


def _read_recipe(path: Path) -> dict[str, dict[str, Any]]:
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (got {type(tree).__name__})")
    for section, values in tree.items():
        _check_known(str(section), list(SECTIONS), "section", str(path))
        if not isinstance(values, (dict, type(None))):
            raise ConfigError(f"section {section} must be a mapping of fields (got {values!r}) in {path}")
    # A section whose keys are all commented out reads as null.
    return {section: values or {} for section, values in tree.items()}


def load_config(recipe: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """Build and validate the Config from a recipe (a YAML path or a shipped name; None: defaults) and overrides.

    `model.preset: NAME` starts the model from that preset; any other model key given anywhere wins over it.
    """
    path = _resolve_recipe(recipe) if recipe is not None else None
    source = str(path) if path else "defaults"
    tree = apply_overrides(_read_recipe(path) if path else {}, overrides)
    overridden = {f"{section}.{name}" for section, values in apply_overrides({}, overrides).items()
                  for name in values}

    def where(key: str) -> str:
        return OVERRIDE if key in overridden else source

    model = dict(tree.pop("model", {}))
    preset_name = coerce(model.pop("preset", ""), str, "model.preset", where("model.preset"))
    if preset_name:
        _check_known(preset_name, list(PRESETS), "model preset", where("model.preset"))
        model = asdict(PRESETS[preset_name]) | model
    cfg = Config(model=_build("model", model, where), model_preset=preset_name,
                 **{section: _build(section, values, where) for section, values in tree.items()},
                 recipe=str(recipe) if recipe is not None else "")
    try:
        cfg.validate()
    except ConfigError as err:
        origin = f"{source} with overrides {' '.join(overrides)}" if overrides else source
        raise ConfigError(f"{err} in {origin}") from None
    return cfg
