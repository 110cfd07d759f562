"""The shipped DeepSpeed configs (ds_configs/) and the engine that `build_engine` makes of them: ZeRO-Offload
with DeepSpeed's CPU AdamW, gradients summed in fp32 under bf16, overlapped communication under ZeRO-2/3.

The engine logs what its optimizer wrapper really does ("DeepSpeed ZeRO-N, <wrapper> over <optimizer>: ...
weights, gradients accumulated in ... and reduced in ..."), read from the wrapper's own attributes: the
integration tests check that line, so a precision key DeepSpeed ignored would fail them.

Run times on 2 CPU cores: the unit tests ~10 s (importing deepspeed most of it), plus the first compile of
cpu_adam (80 s on idle cores, 5 min on busy ones; cached under TORCH_EXTENSIONS_DIR afterwards); the three
integration tests 35-50 s each, 2.5 min in all.
"""

import json
import os
import subprocess

import pytest
import torch

from ardiff_scale.config import load_config
from ardiff_scale.errors import ConfigError
from ardiff_scale.train.engine import resolve_ds_config, zero_stage
from launching import BIN, launch, losses
from test_pretrain_distributed import run_args

SHIPPED = ["zero0", "zero1", "zero2", "zero3", "zero3-offload"]


@pytest.fixture(scope="module")
def cpu_adam():
    """DeepSpeedCPUAdam with its C++ op built: compiled here when TORCH_EXTENSIONS_DIR does not hold it yet
    (~80 s on 2 idle cores), so the offload test's processes load it rather than both compile it, inside the
    launch's time limit."""
    from deepspeed.ops.adam import DeepSpeedCPUAdam
    from deepspeed.ops.op_builder import CPUAdamBuilder

    CPUAdamBuilder().load()
    return DeepSpeedCPUAdam


def test_cpu_adam_in_adamw_mode_takes_the_steps_of_torch_adamw(cpu_adam):
    """The optimizer build_engine makes for ZeRO-Offload (DeepSpeedCPUAdam, adamw_mode=True, lr and weight
    decay as configured, default betas and eps) moves parameters as torch.optim.AdamW does, through a LambdaLR
    as in training. torch's Adam with the same weight decay (L2, coupled) ends far off: the test tells them apart."""
    generator = torch.Generator().manual_seed(0)
    shapes = [(7, 13), (1031,), (3,)]  # sizes off the op's SIMD widths, so its tail loops run too
    start = [torch.randn(shape, generator=generator) for shape in shapes]
    grads = [[torch.randn(shape, generator=generator) for shape in shapes] for _ in range(8)]
    lr, weight_decay = 1e-2, 0.1

    def final_params(make_optimizer) -> list[torch.Tensor]:
        params = [torch.nn.Parameter(t.clone()) for t in start]
        optimizer = make_optimizer(params)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 3))
        for step_grads in grads:
            for param, grad in zip(params, step_grads):
                param.grad = grad.clone()
            optimizer.step()
            schedule.step()
        return [p.detach() for p in params]

    want = final_params(lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=weight_decay))
    got = final_params(lambda p: cpu_adam(p, lr=lr, weight_decay=weight_decay, adamw_mode=True))
    coupled = final_params(lambda p: torch.optim.Adam(p, lr=lr, weight_decay=weight_decay))
    for shape, w, g, c in zip(shapes, want, got, coupled):
        # The C++ op rounds differently (vectorised, its own order of operations): a few float32 ulps apart.
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6, msg=lambda m: f"{shape}: {m}")
        assert (c - w).abs().max() > 1e-4, shape


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_sum_bf16_gradients_in_fp32(name):
    config = load_config("tiny-cpu", [f"train.deepspeed={name}", "train.precision=bf16"])
    ds = resolve_ds_config(config, world=2)
    stage = zero_stage(ds)
    assert ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False
    assert ds["communication_data_type"] == "fp32"  # the reduction across ranks
    # Across micro-batches: DeepSpeed 0.19 accumulates bf16 gradients in fp32 only in its ZeRO optimizers.
    assert ds.get("data_types", {}).get("grad_accum_dtype") == ("fp32" if stage >= 1 else None)
    assert ds["zero_optimization"].get("overlap_comm", False) is (stage >= 2)


def test_fp32_accumulation_without_zero_is_refused_before_deepspeed(tmp_path):
    path = tmp_path / "ddp-fp32-sums.json"
    path.write_text(json.dumps({"data_types": {"grad_accum_dtype": "fp32"}, "zero_optimization": {"stage": 0}}))
    config = load_config("tiny-cpu", [f"train.deepspeed={path}", "train.precision=bf16"])
    with pytest.raises(ConfigError, match=r"grad_accum_dtype='fp32' with train.precision='bf16' needs ZeRO stage"):
        resolve_ds_config(config, world=2)
    resolve_ds_config(load_config("tiny-cpu", [f"train.deepspeed={path}"]), world=2)  # fp32 weights: nothing to do


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("tok") / "tok.model"
    tokenizer.save(str(path))
    return path


def assert_loss_falls(curve: dict[int, float], steps: int, what: str) -> None:
    assert sorted(curve) == list(range(1, steps + 1))
    # Per-step losses are noisy (random timesteps per sample): compare window means, not single steps.
    first, last = sum(curve[s] for s in range(1, 6)) / 5, sum(curve[s] for s in range(steps - 9, steps + 1)) / 10
    assert last < 0.85 * first, f"{what}: loss {first:.3f} -> {last:.3f}"


@pytest.mark.integration
def test_zero3_offload_two_processes_lower_the_loss_with_cpu_adam(cpu_adam, shard_dir, tok_path, tmp_path):
    out = tmp_path / "offload"
    log = launch(2, run_args(shard_dir, tok_path, out, "train.deepspeed=zero3-offload", "train.max_steps=50"))
    assert ("DeepSpeed ZeRO-3, DeepSpeedZeroOptimizer_Stage3 over DeepSpeedCPUAdam: fp32 weights, gradients "
            "accumulated in fp32 and reduced in fp32") in log
    assert_loss_falls(losses(out), 50, "ZeRO-3 offload")


@pytest.mark.integration
@pytest.mark.parametrize("stage, wrapper", [(1, "BF16_Optimizer"), (2, "DeepSpeedZeroOptimizer")])
def test_bf16_two_processes_sum_gradients_in_fp32_and_lower_the_loss(stage, wrapper, shard_dir, tok_path, tmp_path):
    """Two micro-batches a step, so gradients are accumulated as well as reduced. force_precision: this CPU
    emulates bf16 (far slower than fp32), which the trainer otherwise refuses."""
    out = tmp_path / f"bf16-zero{stage}"
    log = launch(2, run_args(shard_dir, tok_path, out, f"train.deepspeed=zero{stage}", "train.precision=bf16",
                             "train.force_precision=true", "train.grad_accum=2", "train.max_steps=40"))
    assert (f"DeepSpeed ZeRO-{stage}, {wrapper} over AdamW: bf16 weights, gradients accumulated in fp32 and "
            "reduced in fp32") in log
    assert_loss_falls(losses(out), 40, f"bf16 ZeRO-{stage}")
    # Offline export reads these optimizer files too (BF16_Optimizer's through the universal form): its fp32
    # master weights round to the bf16 weights training exported.
    done = subprocess.run([str(BIN / "ardiff"), "export", "--run", str(out), "--output", str(tmp_path / "export")],
                          capture_output=True, text=True, env={**os.environ, "DS_ACCELERATOR": "cpu"})
    assert done.returncode == 0, done.stderr[-3000:]
    from safetensors.torch import load_file
    exported, trained = load_file(tmp_path / "export" / "model.safetensors"), load_file(out / "model" / "model.safetensors")
    assert exported.keys() == trained.keys()
    for key in trained:
        assert torch.equal(exported[key].bfloat16().float(), trained[key].float()), key
