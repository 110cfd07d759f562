from dataclasses import replace

import pytest
import yaml

from ardiff_scale.config import (Config, apply_overrides, config_to_yaml, derive, flatten, load_config,
                                 shipped_recipes)
from ardiff_scale.errors import ConfigError
from ardiff_scale.model.config import PRESETS


def test_defaults_validate():
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.model_preset == "" and cfg.recipe == ""
    cfg.validate()


def test_shipped_recipes_are_the_documented_ones():
    assert set(shipped_recipes()) >= {"tiny-cpu", "xsum", "iwslt", "commongen"}


@pytest.mark.parametrize("name", shipped_recipes())
def test_shipped_recipe_loads_and_validates(name):
    cfg = load_config(name)
    assert cfg.model == PRESETS[cfg.model_preset]
    assert cfg.recipe == name
    cfg.validate()


def test_tiny_cpu_recipe_values():
    cfg = load_config("tiny-cpu")
    assert cfg.model_preset == "tiny"
    assert (cfg.data.source_len, cfg.data.target_len) == (128, 32)
    assert (cfg.train.max_steps, cfg.train.micro_batch_size, cfg.train.warmup_steps) == (2500, 16, 200)
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.diffusion == Config().diffusion


def test_unknown_recipe_lists_shipped_ones():
    with pytest.raises(ConfigError, match=r"did you mean 'xsum'.*tiny-cpu"):
        load_config("xsun")


def test_overrides_are_typed():
    cfg = load_config("tiny-cpu", ["train.lr=3e-4", "diffusion.clamp=false", "train.max_steps=2.0",
                                   "tracking.run_name="])
    assert cfg.train.lr == 0.0003 and type(cfg.train.lr) is float
    assert cfg.diffusion.clamp is False
    assert cfg.train.max_steps == 2 and type(cfg.train.max_steps) is int
    assert cfg.tracking.run_name == ""


def test_preset_override_then_explicit_model_field_wins():
    cfg = load_config("tiny-cpu", ["model.preset=xsum"])
    assert cfg.model_preset == "xsum" and cfg.model.hidden_size == 512
    cfg = load_config("tiny-cpu", ["model.preset=xsum", "model.hidden_size=256"])
    assert cfg.model.hidden_size == 256
    assert cfg.model.vocab_size == PRESETS["xsum"].vocab_size


def test_apply_overrides_leaves_input_alone():
    tree = {"train": {"lr": 1.0}}
    merged = apply_overrides(tree, ["train.lr=2", "data.target_len=16"])
    assert merged == {"train": {"lr": 2}, "data": {"target_len": 16}}
    assert tree == {"train": {"lr": 1.0}}


@pytest.mark.parametrize("override, pattern", [
    ("train.lrr=1", r"unknown field 'train\.lrr' in command line override 'train\.lrr=1'; did you mean 'lr'"),
    ("trian.lr=1", r"unknown field 'trian' in command line override 'trian\.lr=1'; did you mean 'train'"),
    ("model.presett=xsum", r"unknown field 'model\.presett' .*did you mean 'preset'"),
])
def test_unknown_names_suggest_close_match(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, [override])


@pytest.mark.parametrize("override", ["train.lr", "lr=1"])
def test_malformed_override(override):
    with pytest.raises(ConfigError, match=rf"override '{override}' must look like section\.field=value"):
        apply_overrides({}, [override])


@pytest.mark.parametrize("override, pattern", [
    ("train.micro_batch_size=0", r"train\.micro_batch_size must be > 0 \(got 0\)"),
    ("diffusion.timestep_form=foo", r"diffusion\.timestep_form must be one of code, paper, uniform \(got 'foo'\)"),
    ("train.precision=fp8", r"train\.precision must be one of .* \(got 'fp8'\)"),
    ("model.num_heads=3", r"model\.hidden_size must be divisible by model\.num_heads .*num_heads=3"),
    ("data.target_len=200",
     r"data\.target_len must be <= model\.max_target_len.*data\.target_len=200, model\.max_target_len=128"),
    ("train.ema_rate=1", r"train\.ema_rate must be in \[0, 1\) \(got 1\.0\)"),
    ("data.mask_fraction=0", r"data\.mask_fraction must be in \(0, 1\) \(got 0\.0\)"),
    ("model.preset=huge", r"unknown model preset 'huge'"),
])
def test_bad_values_name_field_and_value(override, pattern):
    with pytest.raises(ConfigError, match=pattern) as err:
        load_config("tiny-cpu", [override])
    assert override in str(err.value) or "command line override" in str(err.value)


@pytest.mark.parametrize("override, pattern", [
    ("train.lr=abc", r"train\.lr must be a float \(got 'abc'\) in command line override"),
    ("train.max_steps=2.5", r"train\.max_steps must be an int \(got 2\.5\)"),
    ("train.max_steps=true", r"train\.max_steps must be an int \(got True\)"),
    ("diffusion.clamp=1", r"diffusion\.clamp must be a bool \(got 1\)"),
    ("data.train=12", r"data\.train must be a str \(got 12\)"),
])
def test_wrong_types_from_overrides(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config("tiny-cpu", [override])


def test_wrong_type_in_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: abc\n")
    with pytest.raises(ConfigError, match=r"train\.lr must be a float \(got 'abc'\)") as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_override_is_blamed_not_the_file(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("train:\n  lr: 1.0e-3\n")
    with pytest.raises(ConfigError, match="in command line override"):
        load_config(path, ["train.lr=abc"])


def test_unknown_yaml_field_and_section_name_the_file(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("train:\n  warmup: 5\n")
    with pytest.raises(ConfigError, match=r"'train\.warmup'.*typo\.yaml.*did you mean 'warmup_steps'"):
        load_config(path)
    path.write_text("difusion:\n  clamp: false\n")
    with pytest.raises(ConfigError, match=r"'difusion'.*typo\.yaml.*did you mean 'diffusion'"):
        load_config(path)


def test_yaml_scientific_notation_is_a_float(tmp_path):
    path = tmp_path / "sci.yaml"
    path.write_text("train:\n  lr: 3e-4\n  weight_decay: 0\n")
    cfg = load_config(path)
    assert cfg.train.lr == 3e-4
    assert cfg.train.weight_decay == 0.0 and type(cfg.train.weight_decay) is float


@pytest.mark.parametrize("recipe, overrides", [
    (None, ()),
    ("xsum", ["model.hidden_size=256", "train.lr=1e-5", "diffusion.clamp=false"]),
    ("tiny-cpu", ["data.train=s3://bucket/shards/{000..009}.tar", "model.layer_norm_eps=1e-6"]),
])
def test_round_trip_through_yaml(tmp_path, recipe, overrides):
    cfg = load_config(recipe, overrides)
    path = tmp_path / "config.yaml"
    path.write_text(config_to_yaml(cfg))
    again = load_config(path)
    assert again == cfg
    assert again.model_preset == cfg.model_preset
    assert yaml.safe_load(path.read_text()) == cfg.to_dict()


def test_recipe_does_not_affect_equality():
    assert replace(Config(), recipe="elsewhere.yaml") == Config()


def test_flatten_gives_dotted_keys():
    flat = flatten(load_config("xsum").to_dict())
    assert flat["train.lr"] == 8e-4
    assert flat["model.preset"] == "xsum"
    assert flat["model.hidden_size"] == 512
    assert all(key.count(".") == 1 for key in flat)
    assert flatten({"a": {"b": {"c": 1}}, "d": 2}) == {"a.b.c": 1, "d": 2}


def test_uniform_timesteps_need_time_at_the_decoder_input():
    with pytest.raises(ConfigError, match=r"diffusion.timestep_form=uniform needs model.time_attention=false"):
        load_config(None, ["diffusion.timestep_form=uniform"])
    assert not load_config(None, ["diffusion.timestep_form=uniform", "model.time_attention=false"]).model.time_attention
    # The autoregressive baseline has no diffusion time at all.
    load_config(None, ["diffusion.timestep_form=uniform", "model.decoder=autoregressive"])


def test_sections_sit_between_the_recipe_and_the_command_line():
    """Typed field values from code (`train={...}`) override the recipe; command-line strings override both."""
    cfg = load_config("tiny-cpu", ["train.lr=0.5"], train={"lr": 0.1, "max_steps": 7}, data={"target_len": 16})
    assert (cfg.train.lr, cfg.train.max_steps, cfg.data.target_len) == (0.5, 7, 16)
    with pytest.raises(ConfigError, match=r"unknown field 'train\.lrr'.*did you mean 'lr'"):
        load_config("tiny-cpu", train={"lrr": 0.1})


def test_derive_replaces_typed_fields_and_validates():
    cfg = load_config("tiny-cpu")
    changed = derive(cfg, train={"max_steps": 5}, data={"target_len": 16})
    assert (changed.train.max_steps, changed.data.target_len) == (5, 16)
    assert cfg.train.max_steps != 5 and changed.model == cfg.model
    with pytest.raises(TypeError, match="lrr"):  # a misspelt field fails at the call
        derive(cfg, train={"lrr": 1.0})
    with pytest.raises(ConfigError, match=r"train\.max_steps must be > 0 \(got 0\)"):
        derive(cfg, train={"max_steps": 0})
