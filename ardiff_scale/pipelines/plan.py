"""What `ardiff reproduce` runs: one typed plan, read from eval/reproduce/<name>.yaml.

Every field is checked on load, so a typo in a plan fails before any training with the file, the field
and what would be valid.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ardiff_scale.config import load_task
from ardiff_scale.errors import ConfigError
from ardiff_scale.loader import NOT_IN_FILES, build_dataclass, did_you_mean, read_mapping, shipped_or_path
from ardiff_scale.tasks.spec import REPO_ROOT

PLANS_DIR = REPO_ROOT / "eval" / "reproduce"
SYSTEMS = ("ar-diffusion", "uniform-diffusion", "autoregressive")
# How each system differs from AR-Diffusion: run-config fields per section (`config.derive`).
SYSTEM_CHANGES: dict[str, dict[str, dict]] = {
    "ar-diffusion": {},
    "uniform-diffusion": {"diffusion": {"timestep_form": "uniform"}, "model": {"time_attention": False}},
    "autoregressive": {"model": {"decoder": "autoregressive"}},
}


@dataclass
class Plan:
    tasks: list[str] = field(default_factory=lambda: ["summ-debian", "deen"])
    systems: list[str] = field(default_factory=lambda: list(SYSTEMS))
    # Tokenizer: sentencepiece BPE over pretraining documents plus the tasks' training pairs.
    vocab_size: int = 8000
    tokenizer_documents: int = 1500
    tokenizer_pairs: int = 20000  # per task
    # The model: model.* overrides on the "tiny" preset, shared by all systems.
    model: list[str] = field(default_factory=list)
    # Pretraining (AR-Diffusion, span denoising) on the first pretrain_documents of the corpus.
    pretrain_documents: int = 3000
    pretrain_steps: int = 1000
    pretrain_source_len: int = 128
    pretrain_target_len: int = 48
    # Fine-tuning, the same budget for every system: optimizer steps of micro_batch_size pairs.
    finetune_steps: int = 1500
    # Run-config overrides for every training run (pretraining and fine-tuning).
    train: list[str] = field(default_factory=list)
    # Per task: "source_len,target_len" in tokens (default: the task file's lengths).
    lengths: list[str] = field(default_factory=list)
    # Decoding: test sources scored, the sweep over decode steps M and candidates k, extra (M, k) points.
    test_sources: int = 200
    decode_steps: list[int] = field(default_factory=lambda: [1, 2, 3, 5, 10, 20, 50, 100, 1000])
    candidates: list[int] = field(default_factory=lambda: [1, 10])
    extra_points: list[str] = field(default_factory=lambda: ["20,50"])
    beams: list[int] = field(default_factory=lambda: [1, 4])  # the autoregressive baseline: 1 = greedy
    # Points dearer than this many decoder row-steps per source (M x k) decode only the first
    # costly_sources sources, and the report says so: M = 1000 with k = 10 is 10,000 per source.
    costly_row_steps: int = 5000
    costly_sources: int = 20
    rows_per_batch: int = 256  # decoder rows (sources x candidates) per sampler call
    latency_sources: int = 10  # sources timed one at a time for the wall-clock-per-source figures
    seed: int = 0
    path: str = field(default="", metadata=NOT_IN_FILES)

    def validate(self, where: str) -> None:
        for task in self.tasks:
            load_task(task)
        for system in self.systems:
            if system not in SYSTEMS:
                raise ConfigError(f"systems: unknown system {system!r} in {where} (valid: {', '.join(SYSTEMS)})"
                                  f"{did_you_mean(system, SYSTEMS)}")
        for name in ("vocab_size", "tokenizer_documents", "pretrain_documents", "pretrain_steps", "finetune_steps",
                     "test_sources", "rows_per_batch", "latency_sources", "costly_row_steps", "costly_sources"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0 (got {getattr(self, name)}) in {where}")
        for name in ("decode_steps", "candidates", "beams"):
            values = getattr(self, name)
            if not values or min(values) < 1:
                raise ConfigError(f"{name} must be a non-empty list of integers >= 1 (got {values}) in {where}")
        self.points()
        self.task_lengths()

    def points(self) -> list[tuple[int, int]]:
        """Every (M, k) the diffusion systems are decoded at."""
        grid = [(m, k) for k in self.candidates for m in self.decode_steps]
        for text in self.extra_points:
            parts = text.split(",")
            if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
                raise ConfigError(f"extra_points: {text!r} must be 'M,k' with positive integers in {self.path}")
            point = (int(parts[0]), int(parts[1]))
            if point not in grid:
                grid.append(point)
        return grid

    def task_lengths(self) -> dict[str, tuple[int, int]]:
        out = {}
        for text in self.lengths:
            name, _, value = text.partition("=")
            parts = value.split(",")
            if name not in self.tasks or len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
                raise ConfigError(f"lengths: {text!r} must be 'TASK=SOURCE,TARGET' for a task of this plan "
                                  f"({', '.join(self.tasks)}) in {self.path}")
            out[name] = (int(parts[0]), int(parts[1]))
        return out


def load_plan(name_or_path: str) -> Plan:
    path = shipped_or_path(name_or_path, PLANS_DIR, "reproduction plan")
    where = str(path)
    plan = replace(build_dataclass(Plan, read_mapping(path, "plan fields"), where), path=where)
    plan.validate(where)
    return plan
