"""CPU, memory and GPUs of every node of a job, once per logging window, reported by rank 0.

One process per node samples the node: the CPU and memory are the node's, and NVML
sees every GPU of the node whatever CUDA_VISIBLE_DEVICES says. The samples travel to rank 0 over the
host-side control group, and rank 0 publishes them as `system/<hostname>/<metric>`, so that a slow or
starved node shows up beside the others instead of being averaged away.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import psutil
import torch.distributed as dist

from ardiff_scale.train.distributed import control_group
from ardiff_scale.train.trainer import Callback, Trainer

log = logging.getLogger("ardiff.tracking")

_MB = 1e6  # as MLflow's own system metrics count megabytes


def host_metrics() -> dict[str, float]:
    """This machine's CPU use since the previous call, its memory in use and this process's RSS."""
    memory = psutil.virtual_memory()
    return {"cpu_utilization_percentage": psutil.cpu_percent(),
            "system_memory_usage_megabytes": (memory.total - memory.available) / _MB,
            "system_memory_usage_percentage": memory.percent,
            "process_rss_megabytes": psutil.Process(os.getpid()).memory_info().rss / _MB}


class NvmlGpus:
    """Every GPU of this machine through NVML (the `nvidia-ml-py` package), read as MLflow's GPUMonitor
    reads them. Without the package, or when NVML does not start (no driver, no GPU), it reports nothing."""

    def __init__(self) -> None:
        self.nvml: Any = None
        self.handles: list[Any] = []
        try:
            import pynvml
        except ImportError:
            return
        try:
            pynvml.nvmlInit()
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except pynvml.NVMLError as err:
            log.info("no GPU metrics: NVML did not start (%s)", err)
            return
        self.nvml = pynvml

    def metrics(self) -> dict[str, float]:
        """Per GPU i: gpu_<i>_utilization_percentage, gpu_<i>_memory_usage_megabytes and _percentage,
        gpu_<i>_power_watts and gpu_<i>_power_percentage (of its enforced limit). A reading that fails
        (a GPU without power sensors) is left out; the others still count."""
        nvml, out = self.nvml, {}
        for i, handle in enumerate(self.handles):
            try:
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                out[f"gpu_{i}_memory_usage_megabytes"] = memory.used / _MB
                out[f"gpu_{i}_memory_usage_percentage"] = 100 * memory.used / memory.total
            except nvml.NVMLError:
                pass
            try:
                out[f"gpu_{i}_utilization_percentage"] = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            except nvml.NVMLError:
                pass
            try:
                milliwatts = nvml.nvmlDeviceGetPowerUsage(handle)
                out[f"gpu_{i}_power_watts"] = milliwatts / 1000
                out[f"gpu_{i}_power_percentage"] = 100 * milliwatts / nvml.nvmlDeviceGetEnforcedPowerLimit(handle)
            except nvml.NVMLError:
                pass
        return out

    def close(self) -> None:
        if self.nvml is not None:
            self.nvml.nvmlShutdown()
            self.nvml, self.handles = None, []


class SystemMetrics(Callback):
    """On every rank (it runs a collective): at the end of each logging window, every node's host and GPU
    metrics, published by rank 0 as `system/<hostname>/<metric>` at the window's last step.

    `samples_node`: this rank samples its node, true for one rank per node: the node's first rank in
    `node_names()`. Not LOCAL_RANK == 0: a Ray Train worker's LOCAL_RANK is its GPU's index among those it
    sees, 0 on every worker of a node when each sees one GPU."""

    def __init__(self, samples_node: bool) -> None:
        self.samples_node = samples_node
        self.host = socket.gethostname()
        self.gpus = NvmlGpus() if self.samples_node else None
        if self.samples_node:
            psutil.cpu_percent()  # starts the CPU clock: the first window's reading covers the window

    def on_log(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        # Only the trainer's end-of-window row carries tokens_per_s. That is also what keeps this from
        # re-entering: what it publishes below comes back to on_log without it.
        if "tokens_per_s" not in metrics:
            return
        sample = {**host_metrics(), **self.gpus.metrics()} if self.samples_node else None
        nodes = self._gather((self.host, sample), trainer)
        published = {f"system/{host}/{key}": value for host, values in nodes if values
                     for key, value in values.items()}
        if published:  # rank 0's list alone is not empty
            trainer.publish(published)

    def _gather(self, item: tuple[str, dict | None], trainer: Trainer) -> list[tuple[str, dict | None]]:
        """Collective: every rank's item, on rank 0 (an empty list elsewhere)."""
        if trainer.world == 1:
            return [item]
        items: list[Any] = [None] * trainer.world if trainer.is_main else []
        # dst is a global rank even with a group: rank 0 is in the control group.
        dist.gather_object(item, items if trainer.is_main else None, dst=0, group=control_group())
        return items

    def on_train_end(self, trainer: Trainer) -> None:
        if self.gpus is not None:
            self.gpus.close()
