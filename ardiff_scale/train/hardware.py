"""The accelerator's peak rate, for MFU, and whether the chosen precision suits it.

On GPUs the peak is a datasheet number (dense, no sparsity) looked up by device name; `train.peak_tflops`
overrides it for anything not in the table. On a CPU there is no datasheet to trust, so the peak is a
matmul rate measured once at start-up, in the training precision.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import torch

from ardiff_scale.errors import ConfigError

# Dense TFLOP/s per device (NVIDIA datasheets, SXM unless named): bf16/fp16 on tensor cores, fp32 without
# TF32 (torch leaves TF32 off for matmuls by default). More specific names first.
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    (r"H200", {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9}),
    (r"H100.*PCIe", {"bf16": 756.0, "fp16": 756.0, "fp32": 51.2}),
    (r"H100", {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9}),
    (r"A100", {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
    (r"L40S", {"bf16": 362.1, "fp16": 362.1, "fp32": 91.6}),
    (r"\bL4\b", {"bf16": 121.0, "fp16": 121.0, "fp32": 30.3}),
]

# bf16 more than this many times slower than fp32 means the CPU emulates it (no AMX/AVX512-BF16).
SLOW_BF16_FACTOR = 2.0


def datasheet_peak(device_name: str, precision: str) -> float | None:
    """TFLOP/s for a known GPU name (as torch.cuda.get_device_name gives it), else None."""
    for pattern, peaks in PEAK_TFLOPS:
        if re.search(pattern, device_name):
            return peaks[precision]
    return None


def matmul_tflops(dtype: torch.dtype, device: torch.device, size: int = 512, seconds: float = 0.25) -> float:
    """Measured square-matmul rate in TFLOP/s: repeated for about `seconds` after one warm-up."""
    # A private generator: drawing from the global one would shift the training's dropout stream.
    generator = torch.Generator(device).manual_seed(0)
    a = torch.randn(size, size, device=device, generator=generator).to(dtype)
    b = torch.randn(size, size, device=device, generator=generator).to(dtype)
    a @ b
    runs, started = 0, time.perf_counter()
    while True:
        a @ b
        runs += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return 2 * size**3 * runs / elapsed / 1e12


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Peak:
    tflops: float  # per device, in the training precision
    source: str  # "train.peak_tflops", "datasheet: NVIDIA H200" or "measured matmul (cpu)"


def peak_for(device: torch.device, precision: str, override: float = 0.0) -> Peak:
    if override:
        return Peak(override, "train.peak_tflops")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        tflops = datasheet_peak(name, precision)
        if tflops is not None:
            return Peak(tflops, f"datasheet: {name}")
        return Peak(matmul_tflops(_DTYPES[precision], device, size=4096, seconds=0.5), f"measured matmul ({name})")
    # Large enough to reach the CPU's best kernels (a 512^3 matmul ran at a fifth of the 2048^3 rate, and MFU
    # against it read over 100%); bf16 smaller, as an emulated bf16 matmul of 2048^3 would take ~15 s.
    size = 2048 if precision == "fp32" else 1024
    return Peak(matmul_tflops(_DTYPES[precision], device, size=size, seconds=0.3), f"measured matmul ({device.type})")


def check_precision(device: torch.device, precision: str, forced: bool) -> tuple[float, float] | None:
    """On a CPU, refuse bf16 when it is emulated: measured, not guessed (bf16 ran ~400x slower than fp32 on
    one CPU type and 4x faster on another). Returns the (fp32, bf16) TFLOP/s measured, or None if not checked."""
    if device.type != "cpu" or precision != "bf16":
        return None
    # 512: smaller matrices do not reach the fast kernels; an emulated bf16 matmul of 512^3 takes ~0.3 s.
    fp32 = matmul_tflops(torch.float32, device, size=512, seconds=0.1)
    bf16 = matmul_tflops(torch.bfloat16, device, size=512, seconds=0.1)
    if bf16 * SLOW_BF16_FACTOR < fp32 and not forced:
        raise ConfigError(
            f"train.precision=bf16 on this CPU is {fp32 / bf16:.0f}x slower than fp32 (measured matmul: fp32 "
            f"{fp32 * 1e3:.1f} GFLOP/s, bf16 {bf16 * 1e3:.2f} GFLOP/s; it has no native bf16 matrix units). Use "
            "train.precision=fp32, or set train.force_precision=true to train in bf16 anyway")
    return fp32, bf16
