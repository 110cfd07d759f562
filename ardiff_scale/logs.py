"""Logging set-up for every process of a job: the CLI, launcher ranks and Ray workers alike (layer 0)."""

from __future__ import annotations

import logging
import os


def setup_logging(replace: bool = False) -> None:
    """INFO on rank 0, warnings only on the other ranks, every line tagged with its rank.

    replace: drop the handlers a host process installed first (a Ray worker's), which would otherwise keep
    every rank's INFO lines, untagged."""
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s", datefmt="%H:%M:%S",
                        force=replace)
