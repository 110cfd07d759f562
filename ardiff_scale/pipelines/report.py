"""The reproduction report: results.json, results.md and two plots, also logged on an MLflow parent run.

- quality_vs_steps.png: per task, the primary metric of MBR's pick against decode steps M (log axis), one
  line per diffusion system and k; the baseline's greedy and beam results as horizontal lines.
- quality_vs_wallclock.png: the same points against decode seconds per source (batched), so a system that
  buys quality with time is seen paying for it.
"""

from __future__ import annotations

import json
from pathlib import Path

from ardiff_scale.io import write_bytes
from ardiff_scale.tasks.spec import REPO_ROOT
from ardiff_scale.tracking.registry import ReportRun

SYSTEM_NAMES = {"ar-diffusion": "AR-Diffusion", "uniform-diffusion": "uniform diffusion",
                "autoregressive": "autoregressive"}


def _relative(path: str) -> str:
    """A path inside the repository as a repository path, so a committed report names no machine's folders."""
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return path


def _label(row: dict) -> str:
    return row["decoding"] if row["steps"] is None else f"M={row['steps']}, k={row['k']}"


def markdown(results: dict) -> str:
    plan, lines = results["plan"], []
    lines += ["# AR-Diffusion at small scale: quality against decoding steps", "",
              f"Command: `{results['command']}`  ", f"Plan: `{_relative(plan['path'])}`; this call took {results['minutes']} min on "
              f"{results['machine']['cores']} CPU cores (torch {results['machine']['torch']}); models it found "
              "finished were reused, and their training wall-clock is in the first table.", "",
              "Scores are percentages on the first "
              f"{plan['test_sources']} test sources of each task. **MBR** is the selected candidate (the number to "
              "compare), **mean-of-k** the average over the k candidates, **oracle** the best candidate by the task's "
              "metric against the reference (what GENIE reported; it looks at the answer). Seconds per source are "
              "batched decoding (about "
              f"{plan['rows_per_batch']} decoder rows per call) on this machine; single-source latency is below.", "",
              "## Training (same budget for every system of a task)", "",
              "| run | parameters | steps | wall-clock | loss first -> last |", "|---|---:|---:|---:|---|"]
    for name, info in results["training"].items():
        task, _, system = name.partition("/")
        params = results["models"].get(task, {}).get(system, {}).get("parameters")
        lines.append(f"| {name} | {f'{params / 1e6:.2f} M' if params else ''} | {info['steps']} | "
                     f"{info['seconds'] / 60:.1f} min | {info['first_loss']} -> {info['final_loss']} |")
    for task, key in results["primary"].items():
        rows = [r for r in results["rows"] if r["task"] == task]
        steps = sorted({r["steps"] for r in rows if r["steps"] is not None})
        lines += ["", f"## {task}: {key} of the MBR pick against decode steps M", "",
                  "| system | k | " + " | ".join(f"M={m}" for m in steps) + " |",
                  "|---|---:|" + "---:|" * len(steps)]
        full = max(r["sources"] for r in rows)
        for system in ("ar-diffusion", "uniform-diffusion"):
            for k in sorted({r["k"] for r in rows if r["system"] == system}):
                by_m = {r["steps"]: r for r in rows if r["system"] == system and r["k"] == k}
                cells = [(f"{by_m[m]['mbr'][key]:.2f}" + ("" if by_m[m]["sources"] == full
                                                           else f" ({by_m[m]['sources']} sources)"))
                         if m in by_m else "" for m in steps]
                lines.append(f"| {SYSTEM_NAMES[system]} | {k} | " + " | ".join(cells) + " |")
        for r in rows:
            if r["steps"] is None:
                lines.append(f"| {SYSTEM_NAMES[r['system']]} ({r['decoding']}) | - | {r['mbr'][key]:.2f} (any M) |"
                             + " |" * (len(steps) - 1))
        lines += ["", f"### {task}: every metric", "",
                  "| system | decoding | sources | MBR | mean-of-k | oracle | s/source (batched) | MBR s/source |",
                  "|---|---|---:|---|---|---|---:|---:|"]
        for r in sorted(rows, key=lambda r: (r["system"], r["k"], r["steps"] or 0)):
            fmt = (lambda d: ", ".join(f"{k} {v:.2f}" for k, v in d.items()) if d else "")
            lines.append(f"| {SYSTEM_NAMES[r['system']]} | {_label(r)} | {r['sources']} | {fmt(r['mbr'])} | "
                         f"{fmt(r.get('mean_of_k'))} | {fmt(r.get('oracle'))} | {r['seconds_per_source']:.4f} | "
                         f"{r['mbr_seconds_per_source']:.4f} |")
        lines += ["", f"### {task}: wall-clock per source, one source at a time", "",
                  "| system | decoding | mean s | median s |", "|---|---|---:|---:|"]
        for system, info in results["models"][task].items():
            for point in info.get("latency", []):
                label = (("greedy" if point["k"] == 1 else f"beam {point['k']}") if point["steps"] is None
                         else f"M={point['steps']}, k={point['k']}")
                lines.append(f"| {SYSTEM_NAMES[system]} | {label} | {point['mean_seconds']:.4f} | "
                             f"{point['median_seconds']:.4f} |")
        lines += ["", f"### {task}: what the systems wrote (first test sources; M=20, k=1 / greedy)", ""]
        shown = [r for r in rows if (r["steps"], r["k"]) == (20, 1) or r["decoding"] == "greedy"]
        for i, example in enumerate(shown[0]["examples"] if shown else []):
            lines += [f"- source: {example['source'][:200]}", f"  - reference: {example['reference']}"]
            lines += [f"  - {SYSTEM_NAMES[r['system']]}: {r['examples'][i]['prediction']}" for r in shown]
    lines += ["", "Plots: `quality_vs_steps.png`, `quality_vs_wallclock.png`; raw numbers: `results.json`.", ""]
    return "\n".join(lines)


def plot(results: dict, path: Path, x_axis: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(results["primary"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.8), squeeze=False)
    # Colour says k, line style and marker say the system: the two diffusion systems at the same k compare
    # at a glance.
    styles = {"ar-diffusion": ("-", "o"), "uniform-diffusion": ("--", "s")}
    for ax, task in zip(axes[0], tasks):
        key = results["primary"][task]
        rows = [r for r in results["rows"] if r["task"] == task]
        full = max(r["sources"] for r in rows)
        ks = sorted({r["k"] for r in rows if r["steps"] is not None})
        for system, (line_style, marker) in styles.items():
            for k in ks:
                line = sorted((r for r in rows if r["system"] == system and r["k"] == k), key=lambda r: r["steps"])
                if not line:
                    continue
                xs = [r["steps"] if x_axis == "steps" else r["seconds_per_source"] for r in line]
                ys = [r["mbr"][key] for r in line]
                colour = f"C{ks.index(k)}"
                label = f"{SYSTEM_NAMES[system]}, k={k}" + (f", M={line[0]['steps']}" if len(line) == 1 else "")
                if len(line) == 1:  # a lone extra point (M=20, k=50)
                    ax.scatter(xs, ys, marker="*" if system == "ar-diffusion" else "P", s=120, color=colour,
                               zorder=3, label=label)
                else:
                    ax.plot(xs, ys, line_style, marker=marker, color=colour, label=label)
                for r, x, y in zip(line, xs, ys):
                    if r["sources"] < full:
                        ax.annotate(f"{r['sources']} src", (x, y), fontsize=6)
        for i, r in enumerate(r for r in rows if r["steps"] is None):
            if x_axis == "steps":
                ax.axhline(r["mbr"][key], color=f"C{7 + i}", linestyle=":", label=f"autoregressive, {r['decoding']}")
            else:
                ax.scatter([r["seconds_per_source"]], [r["mbr"][key]], marker="D", color=f"C{7 + i}", zorder=3,
                           label=f"autoregressive, {r['decoding']}")
        ax.set_xscale("log")
        ax.set_xlabel("decode steps M" if x_axis == "steps" else "decode seconds per source (batched, log)")
        ax.set_ylabel(f"{key} (MBR pick)")
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("quality against decoding steps" if x_axis == "steps" else "quality against decode wall-clock")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def write_report(results: dict, out: Path, run: ReportRun) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "results.json", out / "results.md", out / "quality_vs_steps.png", out / "quality_vs_wallclock.png"]
    write_bytes(str(files[0]), json.dumps(results, indent=2, ensure_ascii=False).encode())
    write_bytes(str(files[1]), markdown(results).encode())
    plot(results, files[2], "steps")
    plot(results, files[3], "wallclock")
    run.finish(results, files)
    return files
