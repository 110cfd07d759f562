"""The environment variables a job's remote ranks need and no launcher sends on its own.

Object-store credentials and endpoints (`AWS_*`), MLflow's tracking URI and credentials (`MLFLOW_*`), ardiff's
own knobs (`ARDIFF_*`), Hugging Face's cache and token (`HF_*`) and the collective libraries' network settings
(`NCCL_*`, `GLOO_*`) are read on every rank. The `deepspeed` launcher passes only a fixed few variables to the
hosts of its hostfile (the rest come from a `.deepspeed_env` file), and Ray workers see the environment their
node was started with, not the driver's. Both paths take their list from here, so they never disagree.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping

TRAVELLING_PREFIXES = ("AWS_", "MLFLOW_", "ARDIFF_", "HF_", "NCCL_", "GLOO_", "FSSPEC_")
# Set per process by the launcher or per host by its own setup: copying the submitting shell's value would be
# wrong on the remote side.
STAYING = frozenset({"MLFLOW_RUN_ID"})


def travelling_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables of `environ` (default: this process's) that remote ranks must see, sorted by name."""
    environ = os.environ if environ is None else environ
    return {k: environ[k] for k in sorted(environ) if k.startswith(TRAVELLING_PREFIXES) and k not in STAYING}


def deepspeed_env_file(environ: Mapping[str, str] | None = None) -> str:
    """The text of a `.deepspeed_env` file: one NAME=value per line, which the `deepspeed` launcher exports on
    every host of its hostfile. Values are written as they are: the launcher puts a value with unusual
    characters in double quotes, which the remote shell still expands ($, `, \\ and " survive only escaped;
    `ardiff deepspeed-env` warns about them), and a value with a newline cannot travel this way at all."""
    lines = []
    for name, value in travelling_environment(environ).items():
        if "\n" in value:
            raise ValueError(f"{name} holds a newline, which a .deepspeed_env line cannot carry")
        lines.append(f"{name}={value}")
    return "".join(line + "\n" for line in lines)


def describe(environment: Mapping[str, str]) -> str:
    """Names only, for logs: values may be secrets."""
    return " ".join(shlex.quote(k) for k in environment) or "(none)"
