"""Figures drawn from real runs: the paper's Figure 1, the token-level timesteps the sampler visits.

matplotlib is imported only when a figure is drawn, with the Agg backend (no display needed).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from ardiff_scale.errors import ConfigError
from ardiff_scale.io import write_bytes

TOKEN_PANEL_POSITIONS = 30


def check_png_path(path: str, what: str = "trajectory plot path") -> None:
    """Raises ConfigError unless `path` names a .png file; `what` is how the error names the setting."""
    if not str(path).lower().endswith(".png"):
        raise ConfigError(f"{what} must be a file name ending in .png (got {str(path)!r})")


def shown_steps(trajectory, max_lines: int = 25) -> list[int]:
    """Row indices of a (M + 1, N) trajectory to draw: all rows when at most max_lines, else at most max_lines
    spread evenly over the mean token timestep, first (start) and last (end) always included.

    Even spacing in the step index k would skip the last few steps, where the sentence step falls below N
    and the leftmost tokens become clean one after another; even spacing in mean timestep keeps them.
    """
    steps = np.asarray(trajectory, dtype=np.float64)
    if steps.shape[0] <= max_lines:
        return list(range(steps.shape[0]))
    means = steps.mean(axis=1)  # non-increasing in k
    targets = np.linspace(means[0], means[-1], max(max_lines, 2))
    return sorted({int(np.abs(means - target).argmin()) for target in targets} | {0, steps.shape[0] - 1})


def describe_order(trajectory) -> str:
    """One line saying what the trajectory shows about the order in which positions lose their noise."""
    steps = np.asarray(trajectory)
    length = steps.shape[1]
    clean = (steps == 0).sum(axis=1)
    partial = np.flatnonzero((clean > 0) & (clean < length))
    if partial.size:
        first, late = int(partial[0]), int(partial[-1])
        prefix = bool((steps[late, :clean[late]] == 0).all())
        where = f"positions 1-{clean[late]}" if prefix else f"{clean[late]} positions"
        return (f"left tokens reach t = 0 first: the first at step {first}; at step {late}, {where} of "
                f"{length} are clean")
    rising = np.diff(steps[:-1].astype(np.int64), axis=1)
    if (rising >= 0).all() and (rising > 0).any():
        return ("left tokens carry less noise at every step; all reach t = 0 in the last step "
                "(no visited sentence step falls below N)")
    return "every position follows the same timesteps"


def plot_trajectory(path: str, trajectory, num_steps: int, form: str, pieces: Sequence[str] | None = None,
                    text: str | None = None, source: str | None = None, max_lines: int = 25) -> None:
    """Draw how every target position's timestep falls during one sampler run and write it as a PNG.

    trajectory: (M + 1, N) int token step indices in [0, T - 1], one row per visited sentence-level step,
        row 0 the start and row M the end (`SampleOutput.trajectory`); a tensor or an array.
    num_steps: T. form: the timestep form ("code" or "paper"), shown in the title.
    pieces: the final sample's token pieces, one per position; the first 30 are written along a second
        panel. text: the final sample's decoded text; source: the source text (both shown, shortened).
    Lines are coloured by decoding step; more than max_lines rows are thinned (`shown_steps`) and the title
    says so. Written atomically (any fsspec URL; local parent directories are created).
    """
    check_png_path(path)
    steps = np.asarray(trajectory)
    if steps.ndim != 2 or steps.shape[0] < 2:
        raise ValueError(f"trajectory must have shape (M + 1, N) with M >= 1 (got {tuple(steps.shape)})")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    last, length = steps.shape[0] - 1, steps.shape[1]
    rows = shown_steps(steps, max_lines)
    positions = np.arange(1, length + 1)
    with_tokens = pieces is not None
    fig = plt.figure(figsize=(10, 7.5 if with_tokens else 5.5))
    grid = fig.add_gridspec(2 if with_tokens else 1, 2, width_ratios=[40, 1],
                            height_ratios=[4, 1.3] if with_tokens else [1])
    ax, colorbar_ax = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
    cmap = plt.get_cmap("viridis")
    norm = matplotlib.colors.Normalize(vmin=0, vmax=last)
    for k in rows:
        ends = k in (0, last)
        ax.plot(positions, steps[k], color=cmap(norm(k)), linewidth=1.8 if ends else 1.0,
                marker="." if length <= 64 else None, markersize=3, zorder=3 if ends else 2)
    label_box = {"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1}
    ax.text(length, steps[0, -1] + 0.01 * num_steps, "step 0 (start)", ha="right", va="bottom", fontsize=8,
            bbox=label_box, zorder=4)
    ax.text(length, steps[last, -1] + 0.02 * num_steps, f"step {last} (end)", ha="right", va="bottom",
            fontsize=8, bbox=label_box, zorder=4)
    subset = f"; {len(rows)} of {last + 1} steps drawn, evenly spaced in mean t" if len(rows) < last + 1 else ""
    ax.set_title(f"Token-level timesteps during sampling: N = {length}, T = {num_steps}, M = {last}, "
                 f"form '{form}'{subset}\n{describe_order(steps)}", fontsize=9.5)
    ax.set_xlabel("target position n")
    ax.set_ylabel("token timestep t (0 = clean)")
    ax.set_xlim(0.5, length + 0.5)
    ax.set_ylim(-0.03 * num_steps, 1.08 * num_steps)  # room for the start label above its line
    ax.grid(alpha=0.3)
    colorbar = fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), cax=colorbar_ax)
    colorbar.set_label(f"decoding step k (0 = start, {last} = end)")
    colorbar.ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    # Source and generated text are drawn with parse_math=False: a "$" in them is text, not TeX.
    if source:
        fig.suptitle(f"source: {shorten(source, 120)}", fontsize=9, x=0.01, ha="left", parse_math=False)
    if with_tokens:
        ax_tok = fig.add_subplot(grid[1, 0])
        shown = min(len(pieces), TOKEN_PANEL_POSITIONS)
        ax.axvspan(0.5, shown + 0.5, color="grey", alpha=0.08, linewidth=0)
        ax_tok.set_xlim(0.5, shown + 1.0)  # the last rotated piece leans right
        ax_tok.set_ylim(0, 1)
        ax_tok.set_xticks(range(1, shown + 1))
        ax_tok.tick_params(axis="x", labelsize=7)
        ax_tok.set_yticks([])
        for n, piece in enumerate(pieces[:shown], start=1):
            ax_tok.text(n, 0.05, shorten(piece, 14), rotation=60, ha="left", va="bottom", fontsize=8.5,
                        rotation_mode="anchor", clip_on=True, parse_math=False)
        ax_tok.set_xlabel(f"target position n (the first {shown} of {length}, shaded above)")
        ax_tok.set_title(f"final sample's tokens: {shorten(text or '', 110)}", fontsize=9, loc="left",
                         parse_math=False)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    write_bytes(str(path), buffer.getvalue())


def shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
