"""`ardiff pretrain` with a recorder: run by the tests under the `deepspeed` launcher in place of `ardiff`.

Records, per rank, every torch.distributed collective called directly from ardiff_scale code (with the
calling module and the tensor's device) and every file torch.load reads, into $ARDIFF_RECORD/rank<R>.json.
With ARDIFF_RANK_OUTPUT=1 each rank appends `-rank<R>` to train.output_dir: two "nodes" whose local disks
differ, on one machine.
"""

import atexit
import functools
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

RANK = int(os.environ.get("RANK", "0"))
calls: list[dict] = []
loads: list[str] = []


def _caller_module() -> str:
    frame = sys._getframe(2)
    return frame.f_globals.get("__name__", "?")


def _wrap(name: str):
    original = getattr(dist, name)

    @functools.wraps(original)
    def recorded(*args, **kwargs):
        module = _caller_module()
        if module.startswith("ardiff_scale"):
            tensor = args[0] if args and isinstance(args[0], torch.Tensor) else kwargs.get("tensor")
            calls.append({"op": name, "module": module,
                          "device": tensor.device.type if isinstance(tensor, torch.Tensor) else None,
                          "default_group": kwargs.get("group") is None})
        return original(*args, **kwargs)

    setattr(dist, name, recorded)


for op in ("all_reduce", "broadcast", "all_gather", "reduce", "barrier", "all_gather_object",
           "broadcast_object_list"):
    _wrap(op)

_load = torch.load


def _recorded_load(f, *args, **kwargs):
    if isinstance(f, (str, Path)):
        loads.append(str(f))
    return _load(f, *args, **kwargs)


torch.load = _recorded_load


def _write() -> None:
    out = Path(os.environ["ARDIFF_RECORD"])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{RANK}.json").write_text(json.dumps({"calls": calls, "loads": loads}))


if __name__ == "__main__":
    atexit.register(_write)
    # The launcher's --local_rank=N goes before the subcommand, as for `ardiff` itself.
    local = [a for a in sys.argv[1:] if a.startswith("--local_rank")]
    argv = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    if os.environ.get("ARDIFF_RANK_OUTPUT"):
        argv = [f"{a}-rank{RANK}" if a.startswith("train.output_dir=") else a for a in argv]
    from ardiff_scale.cli import main

    code = main([*local, "pretrain", *argv])
    _write()
    sys.exit(code)
