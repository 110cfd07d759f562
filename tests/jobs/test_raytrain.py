"""What the suite and `pretrain --ray` ask Ray for, built without starting Ray; paths and knobs."""

from pathlib import Path

import pytest

from ardiff_scale.config import load_task
from ardiff_scale.errors import ConfigError
from ardiff_scale.jobs.raytrain import blind_nodes, gpus_to_request
from ardiff_scale.pipelines.suite import SuiteOptions, eval_options, finetune_scaling, run_suite
from ardiff_scale.tasks.spec import TaskResources

PACKAGE = Path(__file__).resolve().parents[2] / "ardiff_scale"


@pytest.mark.parametrize(("asked", "cluster", "policy", "expected"), [
    (1, 8, "auto", 1.0), (1, 0, "auto", 0.0), (1, 0, "always", 1.0), (1, 8, "never", 0.0), (0, 8, "always", 0.0),
    (0.5, 4, "auto", 0.5)])
def test_gpus_requested_follow_the_task_and_the_cluster(asked, cluster, policy, expected):
    assert gpus_to_request(asked, cluster, policy) == expected


def test_an_unknown_gpu_policy_is_refused():
    with pytest.raises(ConfigError, match="auto, always, never.*'sometimes'"):
        gpus_to_request(1, 1, "sometimes")


def test_a_task_asking_for_gpus_gets_gpu_workers_and_gpu_eval_tasks():
    task = load_task("concept2text")  # resources: 2 workers, 8 CPUs, 1 GPU each
    gpus = gpus_to_request(task.resources.gpus_per_worker, cluster_gpus=16)
    scaling = finetune_scaling(task.resources, gpus)
    assert scaling.use_gpu and scaling.num_workers == 2
    assert scaling.resources_per_worker == {"CPU": 8, "GPU": 1.0}
    assert eval_options(task.resources, gpus) == {"num_cpus": 8, "num_gpus": 1.0}


def test_on_a_cpu_cluster_the_same_task_asks_for_no_gpu():
    resources = TaskResources(workers=2, cpus_per_worker=1, gpus_per_worker=1)
    gpus = gpus_to_request(resources.gpus_per_worker, cluster_gpus=0)
    scaling = finetune_scaling(resources, gpus)
    assert not scaling.use_gpu and scaling.resources_per_worker == {"CPU": 1}
    assert eval_options(resources, gpus) == {"num_cpus": 1}


def test_no_production_module_sets_ray_test_knobs():
    """Ray Train's timing knobs (health checks, timeouts) belong to the tests that need them, never the package."""
    from ray.train.v2._internal import constants

    knobs = {v for k, v in vars(constants).items() if k.endswith("_ENV_VAR") and isinstance(v, str)}
    assert "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S" in knobs  # the list is the real one
    found = [(path.relative_to(PACKAGE.parent), knob) for path in PACKAGE.rglob("*.py")
             for knob in knobs | {"RAY_TRAIN_"} if knob in path.read_text()]
    assert not found


def test_a_node_that_reads_another_file_or_none_is_named():
    readings = {"10.0.0.1": ("head", "tok"), "10.0.0.2": ("gpu-1", "ERROR FileNotFoundError: /runs/x/.probe"),
                "10.0.0.3": ("gpu-2", "old")}
    assert blind_nodes(readings, "tok") == ["gpu-1 (10.0.0.2): ERROR FileNotFoundError: /runs/x/.probe",
                                            "gpu-2 (10.0.0.3): another file"]
    assert blind_nodes({"10.0.0.1": ("head", "tok")}, "tok") == []


@pytest.mark.parametrize("override", ["train.resume=never", "train.threads=4"])
def test_the_suite_refuses_overrides_of_what_it_sets_itself(override):
    with pytest.raises(ConfigError, match=rf"an override of the suite sets {override.split('=')[0]}, which the "
                                          r"suite sets itself .*; leave it out"):
        run_suite(SuiteOptions(tasks=["deen"], init="unused", overrides=[override]))
