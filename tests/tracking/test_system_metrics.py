"""Node metrics: NVML read through a fake `pynvml` with known values (no GPU here), and the callback in a
world of one. The 2-process gather is in tests/train/test_tracking_distributed.py."""

import socket
import sys
import types
from types import SimpleNamespace

import pytest

from ardiff_scale.tracking.system_metrics import NvmlGpus, SystemMetrics, host_metrics


class FakeNvmlError(Exception):
    pass


def fake_pynvml(init_fails: bool = False) -> types.ModuleType:
    """Two GPUs: GPU 0 with 40 of 80 GB used, 75 % busy, drawing 350 of 700 W; GPU 1 without a power
    sensor (its power readings fail, as on some boards)."""
    nvml = types.ModuleType("pynvml")
    nvml.NVMLError = FakeNvmlError
    nvml.shut_down = False

    def init():
        if init_fails:
            raise FakeNvmlError("Driver Not Loaded")

    def power(handle):
        if handle == 1:
            raise FakeNvmlError("Not Supported")
        return 350_000  # milliwatts

    def shutdown():
        nvml.shut_down = True

    nvml.nvmlInit = init
    nvml.nvmlShutdown = shutdown
    nvml.nvmlDeviceGetCount = lambda: 2
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i
    nvml.nvmlDeviceGetMemoryInfo = lambda h: SimpleNamespace(used=(40 - 30 * h) * 10**9, total=80 * 10**9)
    nvml.nvmlDeviceGetUtilizationRates = lambda h: SimpleNamespace(gpu=75 - 50 * h, memory=10)
    nvml.nvmlDeviceGetPowerUsage = power
    nvml.nvmlDeviceGetEnforcedPowerLimit = lambda h: 700_000
    return nvml


def test_nvml_readings_become_per_gpu_metrics(monkeypatch):
    nvml = fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    gpus = NvmlGpus()
    assert gpus.metrics() == {
        "gpu_0_memory_usage_megabytes": 40_000, "gpu_0_memory_usage_percentage": 50,
        "gpu_0_utilization_percentage": 75, "gpu_0_power_watts": 350, "gpu_0_power_percentage": 50,
        "gpu_1_memory_usage_megabytes": 10_000, "gpu_1_memory_usage_percentage": 12.5,
        "gpu_1_utilization_percentage": 25}  # GPU 1's power readings failed: left out, the rest kept
    gpus.close()
    assert nvml.shut_down and gpus.metrics() == {}


@pytest.mark.parametrize("module", [None, "init fails"])
def test_without_nvml_there_are_no_gpu_metrics(module, monkeypatch):
    # None in sys.modules makes `import pynvml` raise ImportError: the package is not installed.
    monkeypatch.setitem(sys.modules, "pynvml", module and fake_pynvml(init_fails=True))
    assert NvmlGpus().metrics() == {}


def test_host_metrics_are_plausible():
    metrics = host_metrics()
    assert 0 <= metrics["cpu_utilization_percentage"] <= 100 and 0 < metrics["system_memory_usage_percentage"] < 100
    assert 0 < metrics["process_rss_megabytes"] < metrics["system_memory_usage_megabytes"]


class Publisher:
    """What SystemMetrics needs of a trainer, in a world of one; `publish` feeds every callback, as the
    trainer's does."""

    def __init__(self, callbacks):
        self.is_main, self.world, self.step, self.callbacks, self.published = True, 1, 7, callbacks, []

    def publish(self, metrics):
        self.published.append(metrics)
        for callback in self.callbacks:
            callback.on_log(self, {"step": self.step, **metrics})


def test_each_window_end_publishes_this_nodes_metrics_once(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml())
    system = SystemMetrics(samples_node=True)
    trainer = Publisher([system])
    system.on_log(trainer, {"step": 6, "loss": 1.0, "tokens": 10})  # not a window's end: nothing
    system.on_log(trainer, {"step": 7, "loss": 1.0, "tokens": 10, "tokens_per_s": 100.0})
    (published,) = trainer.published  # what it published came back to it and was not published again
    node = f"system/{socket.gethostname()}/"
    assert published[node + "gpu_0_power_watts"] == 350 and published[node + "gpu_1_utilization_percentage"] == 25
    assert {node + "cpu_utilization_percentage", node + "process_rss_megabytes"} <= published.keys()
    assert all(key.startswith(node) for key in published)


def test_a_rank_that_does_not_sample_publishes_nothing():
    system = SystemMetrics(samples_node=False)
    trainer = Publisher([system])
    system.on_log(trainer, {"step": 7, "loss": 1.0, "tokens": 10, "tokens_per_s": 100.0})
    assert trainer.published == []
