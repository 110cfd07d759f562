"""Evaluation: MBR selection among sampled candidates, corpus metrics, and task definitions (eval/tasks)."""

from ardiff_scale.evaluation.mbr import mbr_select
from ardiff_scale.evaluation.metrics import METRICS, compute_metrics

__all__ = ["METRICS", "compute_metrics", "mbr_select"]
