"""The package's layers (ARCHITECTURE.md, "Layers"): the import-linter contracts in pyproject.toml hold, they
cover every top-level module, and they catch an upward import when one is made."""

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ardiff_scale"
LINT = Path(sys.executable).parent / "lint-imports"
# The third-party packages only some layers may import, and those layers.
ONLY = {"mlflow": {"tracking"}, "deepspeed": {"train", "pipelines"}, "ray": {"pipelines", "jobs"},
        "webdataset": {"data"}, "sentencepiece": {"data"}, "tokenizers": {"data"}}


def _contracts() -> list[dict]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def _top_level_modules() -> set[str]:
    return {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"} | {
        p.parent.name for p in PACKAGE.glob("*/__init__.py")}


def _lint(cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_contracts_hold():
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 kept, 0 broken" in result.stdout


def test_every_top_level_module_has_a_layer():
    (layers,) = [c for c in _contracts() if c["type"] == "layers"]
    named = {name.strip() for layer in layers["layers"] for name in layer.replace(":", "|").split("|")}
    assert named == _top_level_modules()
    assert layers["exhaustive"]


def test_each_only_contract_names_every_other_module():
    """A module added later is forbidden mlflow, deepspeed, ray... unless it is one of the allowed layers."""
    forbidden = [c for c in _contracts() if c["type"] == "forbidden"]
    covered = set()
    for contract in forbidden:
        sources = {name.removeprefix("ardiff_scale.") for name in contract["source_modules"]}
        for external in contract["forbidden_modules"]:
            assert sources == _top_level_modules() - ONLY[external], (contract["name"], external)
            covered.add(external)
    assert covered == set(ONLY)


def test_mlflow_is_imported_only_under_tracking():
    importers = {path.relative_to(PACKAGE).parts[0] for path in PACKAGE.rglob("*.py")
                 if "import mlflow" in path.read_text() or "from mlflow" in path.read_text()}
    assert importers == {"tracking"}


def test_an_upward_import_breaks_the_build(tmp_path):
    """The same contracts over a copy of the package with two bad imports, inside functions (where lazy
    imports used to hide cycles): both are reported, with the module and line."""
    shutil.copytree(PACKAGE, tmp_path / "ardiff_scale", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    with (tmp_path / "ardiff_scale" / "model" / "layers.py").open("a") as f:
        f.write("\n\ndef _upward():\n    from ardiff_scale.pipelines import pretrain  # noqa: F401\n")
    with (tmp_path / "ardiff_scale" / "evaluation" / "mbr.py").open("a") as f:
        f.write("\n\ndef _tracked():\n    import mlflow  # noqa: F401\n")
    env = {"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(tmp_path), "HOME": str(tmp_path)}
    result = _lint(tmp_path, env)
    assert result.returncode != 0
    assert "Layers import only downward BROKEN" in result.stdout
    assert "ardiff_scale.model.layers -> ardiff_scale.pipelines.pretrain" in result.stdout
    assert "Only tracking imports mlflow BROKEN" in result.stdout
    assert "ardiff_scale.evaluation.mbr -> mlflow" in result.stdout
