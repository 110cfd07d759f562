"""build_dataclass, the one YAML-to-dataclass loader (run configs, task files, reproduction plans)."""

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ardiff_scale.errors import ConfigError
from ardiff_scale.loader import NOT_IN_FILES, build_dataclass, coerce, read_mapping, shipped_or_path


@dataclass
class Inner:
    steps: int
    rate: float = 0.5
    names: list[str] = field(default_factory=list)


@dataclass
class Outer:
    name: str
    inner: Inner
    optional: Inner = field(default_factory=lambda: Inner(steps=1))
    flag: bool = False
    path: str = field(default="", metadata=NOT_IN_FILES)


def test_nested_mappings_become_nested_dataclasses_with_coerced_values():
    built = build_dataclass(Outer, {"name": "x", "inner": {"steps": 3.0, "rate": "3e-4", "names": ["a"]}}, "f.yaml")
    assert built == Outer(name="x", inner=Inner(steps=3, rate=3e-4, names=["a"]))
    assert isinstance(built.inner.steps, int) and isinstance(built.inner.rate, float)


def test_a_null_section_means_its_defaults():
    assert build_dataclass(Outer, {"name": "x", "inner": {"steps": 2}, "optional": None}, "f.yaml").optional == Inner(1)


def test_unknown_keys_name_the_dotted_field_the_origin_and_a_close_match():
    with pytest.raises(ConfigError, match=r"unknown field 'inner\.stpes' in f\.yaml; did you mean 'steps'\? "
                                          r"\(valid in inner: steps, rate, names\)"):
        build_dataclass(Outer, {"name": "x", "inner": {"stpes": 1}}, "f.yaml")


def test_fields_the_program_sets_cannot_come_from_a_file():
    with pytest.raises(ConfigError, match=r"unknown field 'path' in f\.yaml \(valid in the file: name, inner, "
                                          r"optional, flag\)"):
        build_dataclass(Outer, {"name": "x", "inner": {"steps": 1}, "path": "/elsewhere"}, "f.yaml")


def test_missing_required_fields_are_listed_with_their_section():
    with pytest.raises(ConfigError, match=r"inner\.steps is required but missing in f\.yaml "
                                          r"\(required in inner: inner\.steps\)"):
        build_dataclass(Outer, {"name": "x", "inner": {}}, "f.yaml")


@pytest.mark.parametrize("values, message", [
    ({"name": "x", "inner": {"steps": "many"}}, r"inner\.steps must be an int \(got 'many'\)"),
    ({"name": "x", "inner": {"steps": True}}, r"inner\.steps must be an int \(got True\)"),
    ({"name": "x", "inner": {"steps": 1, "names": "a"}}, r"inner\.names must be a list of strs \(got 'a'\)"),
    ({"name": "x", "inner": {"steps": 1, "names": ["a", 2]}}, r"inner\.names\[1\] must be a str \(got 2\)"),
    ({"name": "x", "inner": 5}, r"inner must be a mapping of fields \(got 5\)"),
])
def test_wrong_types_name_field_value_and_origin(values, message):
    with pytest.raises(ConfigError, match=message + " in f.yaml"):
        build_dataclass(Outer, values, "f.yaml")


def test_origin_can_differ_per_field():
    """Values merged from a file and the command line: each error blames where its value came from."""
    def where(key: str) -> str:
        return "command line override 'inner.steps=abc'" if key == "inner.steps" else "f.yaml"

    with pytest.raises(ConfigError, match=r"inner\.steps must be an int \(got 'abc'\) in command line override"):
        build_dataclass(Outer, {"name": "x", "inner": {"steps": "abc"}}, where)
    with pytest.raises(ConfigError, match=r"flag must be a bool \(got 'yes'\) in f\.yaml"):
        build_dataclass(Outer, {"name": "x", "inner": {"steps": 1}, "flag": "yes"}, where)


def test_coerce_keeps_bools_out_of_numbers_and_integral_floats_in_ints():
    assert coerce(2.0, int, "k", "f") == 2 and coerce(7, float, "k", "f") == 7.0
    with pytest.raises(ConfigError, match="k must be a float"):
        coerce(False, float, "k", "f")
    with pytest.raises(ConfigError, match="k must be an int"):
        coerce(2.5, int, "k", "f")


def test_yaml_files_must_hold_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=rf"{path} must hold a mapping of plan fields \(got list\)"):
        read_mapping(path, "plan fields")
    path.write_text("a: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"{path} is not valid YAML"):
        read_mapping(path, "plan fields")
    path.write_text("")
    assert read_mapping(path, "plan fields") == {}


def test_shipped_names_and_paths(tmp_path):
    folder = tmp_path / "shipped"
    folder.mkdir()
    (folder / "small.yaml").write_text("{}")
    assert shipped_or_path("small", folder, "recipe") == folder / "small.yaml"
    own = tmp_path / "own.yaml"
    own.write_text("{}")
    assert shipped_or_path(str(own), folder, "recipe") == own
    with pytest.raises(ConfigError, match=r"finetune\.recipe 'smal' is neither a file nor a shipped recipe; "
                                          r"did you mean 'small'\? \(shipped: small\)"):
        shipped_or_path("smal", folder, "recipe", key="finetune.recipe")
    with pytest.raises(ConfigError, match=r"recipe 'dir/small' is neither"):
        shipped_or_path("dir/small", folder, "recipe")
    assert isinstance(shipped_or_path(Path(own), folder, "recipe"), Path)
