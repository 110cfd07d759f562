"""DeepSpeed: process group, config resolution and the engine. The only module that imports deepspeed.

One entry for every launch: a bare `ardiff pretrain` (one process), `deepspeed --num_gpus N` (with a
hostfile for several nodes) and `torchrun`. gloo on CPU, nccl on CUDA.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from ardiff_scale.config import Config
from ardiff_scale.errors import ConfigError
from ardiff_scale.loader import shipped_or_path

log = logging.getLogger("ardiff.train")

DS_CONFIG_DIR = Path(__file__).resolve().parents[2] / "ds_configs"


def init_distributed() -> tuple[int, int]:
    """Join (or, alone, create) the process group; returns (rank, world size)."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    import deepspeed
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if os.environ.get("MASTER_ADDR", "127.0.0.1") in ("127.0.0.1", "localhost"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # single-node jobs talk over loopback only
    # The CPU accelerator would compile a shared-memory comm op at first use (40-100 s on a fresh machine);
    # gloo does the job without it.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if not dist.is_initialized():
        # RANK alone (no rendezvous address) is what a bare process inherits from a parent that joined a
        # world of one itself (tests, notebooks): still a bare process.
        if "RANK" not in os.environ or ("MASTER_ADDR" not in os.environ and os.environ.get("WORLD_SIZE") == "1"):
            # A bare single process: a file store instead of a TCP store, so nothing listens on any port
            # (and DeepSpeed does not go looking for MPI).
            os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
            path = tempfile.mkstemp(prefix="ardiff-store-")[1]
            atexit.register(lambda: os.path.exists(path) and os.unlink(path))
            store = dist.FileStore(path, 1)
            dist.init_process_group(backend, store=store, rank=0, world_size=1)
        deepspeed.init_distributed(dist_backend=backend)
    return dist.get_rank(), dist.get_world_size()


def device() -> torch.device:
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def load_ds_config(name_or_path: str) -> tuple[dict, str]:
    """A shipped config by name (zero0 .. zero3, zero3-offload) or any JSON path."""
    path = shipped_or_path(name_or_path, DS_CONFIG_DIR, "DeepSpeed config", ".json", key="train.deepspeed")
    try:
        return json.loads(path.read_text()), str(path)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None


def resolve_ds_config(config: Config, world: int) -> dict:
    """Fill the DeepSpeed config's "auto" values from the run config and check the rest agree with it.

    The run config is the one source of truth: train_batch_size = micro x accumulation x world size.
    Under bf16 the shipped configs keep the gradients' sums in fp32 (`communication_data_type` for the
    reduction across ranks, `data_types.grad_accum_dtype` across micro-batches, ZeRO >= 1 only): without
    them DeepSpeed sums bf16 gradients in bf16, 8 bits of mantissa.
    """
    ds, source = load_ds_config(config.train.deepspeed)
    train = config.train
    wanted = {
        "train_micro_batch_size_per_gpu": (train.micro_batch_size, "train.micro_batch_size"),
        "gradient_accumulation_steps": (train.grad_accum, "train.grad_accum"),
        "train_batch_size": (train.micro_batch_size * train.grad_accum * world,
                             f"train.micro_batch_size ({train.micro_batch_size}) x train.grad_accum "
                             f"({train.grad_accum}) x world size ({world})"),
        "gradient_clipping": (float(train.grad_clip), "train.grad_clip"),
    }
    for key, (value, origin) in wanted.items():
        given = ds.get(key, "auto")
        if given == "auto":
            ds[key] = value
        elif given != value:
            raise ConfigError(f"{source}: {key} is {given} but {origin} = {value}; set it to \"auto\" or make "
                              "them agree")
    if train.precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.precision=fp16 needs a CUDA device (DeepSpeed's CPU accelerator has no fp16); "
                          "use bf16 on CPU")
    for precision in ("bf16", "fp16"):
        section = ds.setdefault(precision, {})
        enabled = train.precision == precision
        if section.get("enabled", "auto") not in ("auto", enabled):
            raise ConfigError(f"{source}: {precision}.enabled is {section['enabled']} but train.precision is "
                              f"{train.precision!r}; set it to \"auto\"")
        section["enabled"] = enabled
    ds.setdefault("zero_optimization", {"stage": 0})
    accumulate = ds.get("data_types", {}).get("grad_accum_dtype")
    if train.precision != "fp32" and zero_stage(ds) == 0 and accumulate in ("fp32", "float32", "float",
                                                                           "torch.float32"):
        # DeepSpeed would stop later with "unsupported mix of model_dtype and grad_accum_dtype".
        raise ConfigError(f"{source}: data_types.grad_accum_dtype={accumulate!r} with train.precision="
                          f"{train.precision!r} needs ZeRO stage >= 1 (DeepSpeed accumulates {train.precision} "
                          "gradients in another type only in its ZeRO optimizers); use zero1 or drop the key")
    return ds


def zero_stage(ds_config: dict) -> int:
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))


def build_engine(objective: nn.Module, config: Config, ds_config: dict, lr_lambda):
    """The DeepSpeed engine around `objective`, with an AdamW and our LR schedule (a LambdaLR over it).

    The AdamW is torch's (no op to compile) unless the config offloads the optimizer (ZeRO-Offload, to cpu
    or nvme): there DeepSpeed accepts only its own host optimizer, DeepSpeedCPUAdam, here in AdamW mode
    with torch's defaults (betas, eps, bias correction), so the update is the same. Its C++ op compiles
    at first use (1-3 min) and is cached under TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions).

    Under ZeRO-3 the parameters that the objective uses outside a submodule's own forward (the tied
    rounding head reads the target embedding's weight) are registered as external parameters, so they
    are gathered for the whole forward.
    """
    import deepspeed

    train = config.train
    stage = zero_stage(ds_config)
    if stage == 3:
        for param in objective.external_parameters():
            deepspeed.zero.register_external_parameter(objective, param)
    offload = ds_config.get("zero_optimization", {}).get("offload_optimizer") or {}
    if offload.get("device") in ("cpu", "nvme"):
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        optimizer = DeepSpeedCPUAdam(objective.parameters(), lr=train.lr, weight_decay=train.weight_decay,
                                     adamw_mode=True)
    else:
        optimizer = torch.optim.AdamW(objective.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    engine, _, _, _ = deepspeed.initialize(model=objective, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config)
    # What the optimizer wrapper that DeepSpeed chose really does with the precision keys (an ignored key
    # shows here): the type of its accumulation buffers and of its reduction; wrappers without their own
    # (no ZeRO) accumulate in the weights' type and reduce in the engine's.
    wrapper, (weights, _) = engine.optimizer, engine.get_data_types()
    accumulated = (getattr(wrapper, "grad_acc_dtype", None) or getattr(wrapper, "gradient_accumulation_dtype", None)
                   or weights)
    reduced = getattr(wrapper, "communication_data_type", None) or engine.communication_data_type
    short = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    log.info("DeepSpeed ZeRO-%d, %s over %s: %s weights, gradients accumulated in %s and reduced in %s", stage,
             type(wrapper).__name__, type(engine.basic_optimizer).__name__, short[weights], short[accumulated],
             short[reduced])
    return engine


def gathered(module: nn.Module, enabled: bool):
    """A context in which ZeRO-3's partitioned parameters of `module` are whole (for sampling and export)."""
    import contextlib

    if not enabled:
        return contextlib.nullcontext()
    import deepspeed
    return deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
