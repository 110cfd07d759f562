"""Task files: every shipped task loads (or names its unset variable), yields pairs, and broken files fail
with messages that name the file, the field and what would be valid."""

import itertools
from pathlib import Path

import pytest
import yaml

from ardiff_scale.config import load_task, task_config
from ardiff_scale.errors import ConfigError, DataError
from ardiff_scale.tasks.readers import FORMATS
from ardiff_scale.tasks.spec import REPO_ROOT, TaskSpec, shipped_tasks

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
FIXTURES = SHARED / "fixtures"
OWN_TASKS = ("concept2text", "deen", "summ-debian")
# Paper tasks: the variable their location needs and the fixture folder in the dataset's original format.
PAPER_TASKS = {
    "xsum": ("ARDIFF_DATA_XSUM", FIXTURES / "xsum" / "raw"),
    "cnndm": ("ARDIFF_DATA_CNNDM", FIXTURES / "cnn_dailymail"),
    "iwslt14": ("ARDIFF_DATA_IWSLT14", FIXTURES / "iwslt2017" / "de-en"),
    "commongen": ("ARDIFF_DATA_COMMONGEN", FIXTURES / "common_gen"),
}
MINIMAL = {
    "name": "tiny",
    "data": {"location": str(SHARED / "tasks" / "concept2text"), "format": "jsonl"},
    "lengths": {"source": 16, "target": 24},
    "finetune": {"max_steps": 10},
    "decode": {"steps": 4, "candidates": 3},
    "metrics": ["rouge", "concept_coverage"],
}


def write_task(tmp_path, tree, name="task.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tree))
    return path


def edited(**changes) -> dict:
    """MINIMAL with nested keys (data__format="x") set, or removed when the value is None."""
    tree = yaml.safe_load(yaml.safe_dump(MINIMAL))
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        node = tree
        for parent in parents:
            node = node[parent]
        if value is None:
            del node[key]
        else:
            node[key] = value
    return tree


def test_shipped_tasks():
    assert shipped_tasks() == sorted([*OWN_TASKS, *PAPER_TASKS])


@pytest.mark.parametrize("name", OWN_TASKS)
def test_own_tasks_load_and_yield_pairs(name, monkeypatch):
    monkeypatch.delenv("ARDIFF_DATA", raising=False)
    task = load_task(name)
    assert task.name == name and task.path == str(REPO_ROOT / "eval" / "tasks" / f"{name}.yaml")
    assert Path(task.data.location).resolve() == (SHARED / "tasks" / name).resolve()
    assert task.data.format == "jsonl"
    for split in ("train", "valid", "test"):
        first = list(itertools.islice(task.pairs(split), 2))
        assert len(first) == 2 and all(p.src and p.tgt and p.refs[0] == p.tgt for p in first)
    config = task_config(task)
    assert (config.data.source_len, config.data.target_len) == (task.lengths.source, task.lengths.target)
    assert (config.diffusion.decode_steps, config.diffusion.num_candidates) == (task.decode.steps,
                                                                                task.decode.candidates)
    assert config.train.max_steps == task.finetune.max_steps


def test_ardiff_data_moves_the_own_tasks(monkeypatch, tmp_path):
    monkeypatch.setenv("ARDIFF_DATA", str(tmp_path))
    assert load_task("deen").data.location == str(tmp_path / "tasks" / "deen")


@pytest.mark.parametrize("name", sorted(PAPER_TASKS))
def test_paper_tasks_name_their_unset_variable(name, monkeypatch):
    variable, _ = PAPER_TASKS[name]
    monkeypatch.delenv(variable, raising=False)
    with pytest.raises(DataError, match=rf"data\.location in .*{name}\.yaml refers to \$\{{{variable}\}}, "
                                        rf"which is not set; export {variable}="):
        load_task(name)


@pytest.mark.parametrize("name", sorted(PAPER_TASKS))
def test_paper_tasks_load_the_original_format_fixtures(name, monkeypatch):
    variable, folder = PAPER_TASKS[name]
    monkeypatch.setenv(variable, str(folder))
    task = load_task(name)
    assert task.data.location == str(folder)
    scored = list(task.pairs("test"))
    assert scored and all(p.src and p.refs for p in scored)
    task_config(task)


def test_commongen_scores_the_dev_set(monkeypatch):
    monkeypatch.setenv("ARDIFF_DATA_COMMONGEN", str(FIXTURES / "common_gen"))
    task = load_task("commongen")
    assert task.split_name("test") == "valid"
    assert [p.id for p in task.pairs("test")] == [p.id for p in task.pairs("valid")]


def test_minimal_file_gets_defaults(tmp_path):
    task = load_task(write_task(tmp_path, MINIMAL))
    assert isinstance(task, TaskSpec)
    assert (task.data.train_split, task.data.test_split) == ("train", "test")
    assert (task.resources.workers, task.resources.gpus_per_worker) == (1, 0.0)
    assert task.finetune.overrides == [] and task.finetune.recipe == ""
    assert task.to_dict()["metrics"] == ["rouge", "concept_coverage"]


def test_missing_field_names_file_and_field(tmp_path):
    path = write_task(tmp_path, edited(data__format=None))
    with pytest.raises(ConfigError, match=rf"data\.format is required but missing in {path} "
                                          r"\(required in data: data\.location, data\.format\)"):
        load_task(path)
    with pytest.raises(ConfigError, match="metrics is required but missing"):
        load_task(write_task(tmp_path, edited(metrics=None)))


def test_unknown_metric_lists_valid_metrics(tmp_path):
    path = write_task(tmp_path, edited(metrics=["rouge", "blue"]))
    with pytest.raises(ConfigError, match=rf"unknown metric 'blue'; did you mean 'bleu'\? "
                                          rf"\(valid: rouge, bleu, sacrebleu, concept_coverage.* in {path}"):
        load_task(path)


def test_unknown_key_suggests_the_close_one(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown field 'metrcs' in .*; did you mean 'metrics'\?"):
        load_task(write_task(tmp_path, {**MINIMAL, "metrcs": ["rouge"]}))
    with pytest.raises(ConfigError, match=r"unknown field 'decode\.candiates' .*did you mean 'candidates'\? "
                                          r"\(valid in decode: steps, candidates\)"):
        load_task(write_task(tmp_path, edited(decode__candiates=3)))


def test_bad_format_lists_formats(tmp_path):
    with pytest.raises(ConfigError, match=rf"data\.format 'xsum-line' is not a known format .*"
                                          rf"did you mean 'xsum-lines'\? \(valid: {', '.join(FORMATS)}\)"):
        load_task(write_task(tmp_path, edited(data__format="xsum-line")))


@pytest.mark.parametrize("change, message", [
    ({"lengths__source": 0}, r"lengths\.source must be > 0 \(got 0\)"),
    ({"decode__steps": "many"}, r"decode\.steps must be an int \(got 'many'\)"),
    ({"data__test_split": "dev"}, r"data\.test_split 'dev' is not a split of format jsonl .*valid: train, valid, test"),
    ({"finetune__overrides": ["train.lr"]}, r"override 'train\.lr' must look like section\.field=value"),
    ({"finetune__overrides": ["train.max_steps=5"]},
     r"sets train\.max_steps, which the task sets with finetune\.max_steps"),
    ({"finetune__recipe": "xsun"}, r"finetune\.recipe 'xsun' is neither .*did you mean 'xsum'\?"),
    ({"lengths__source": 4096}, r"data\.source_len must be <= model\.max_source_len"),
    ({"metrics": []}, r"metrics must name at least one metric"),
])
def test_bad_values_are_config_errors_naming_the_field(tmp_path, change, message):
    path = write_task(tmp_path, edited(**change))
    with pytest.raises(ConfigError, match=message) as err:
        load_task(path)
    assert str(path) in str(err.value)


def test_unknown_task_name_lists_shipped_ones():
    with pytest.raises(ConfigError, match=r"task 'xsun' is neither a file nor a shipped task; "
                                          r"did you mean 'xsum'\? \(shipped: cnndm, commongen"):
        load_task("xsun")


def test_variable_default_and_relative_location(tmp_path, monkeypatch):
    monkeypatch.delenv("ARDIFF_TEST_NOWHERE", raising=False)
    tree = edited(data__location="${ARDIFF_TEST_NOWHERE:-../shared/data}/tasks/concept2text")
    task = load_task(write_task(tmp_path, tree))
    assert Path(task.data.location).resolve() == (SHARED / "tasks" / "concept2text").resolve()
    assert next(task.pairs("valid")).id.startswith("c2t-set-")


def test_the_run_config_layers_task_then_caller_then_command_line():
    task = load_task("deen")
    config = task_config(task, ["train.max_steps=9"], train={"max_steps": 8, "output_dir": "runs/x"},
                         data={"train": "shards/train"})
    assert (config.train.max_steps, config.train.output_dir, config.data.train) == (9, "runs/x", "shards/train")
    assert (config.data.source_len, config.diffusion.decode_steps) == (task.lengths.source, task.decode.steps)


def test_a_bad_override_value_in_a_task_names_the_override_and_the_file(tmp_path):
    path = write_task(tmp_path, edited(finetune__overrides=["train.lr=fast"]))
    with pytest.raises(ConfigError, match=rf"train\.lr must be a float \(got 'fast'\) in finetune\.overrides "
                                          rf"'train\.lr=fast' in {path}"):
        load_task(path)
