"""Learning-curve plots from run folders' ``metrics.csv`` (host side, matplotlib)."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def read_metrics(path: Path) -> list[dict[str, str]]:
    """Rows of a metrics.csv as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def curves(
    rows: list[dict[str, str]],
    group_by: Sequence[str] = (),
    metric: str = "episode_return",
) -> dict[tuple[str, ...], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Mean and spread over seeds of ``metric`` against env steps.

    Rows are grouped by the values of ``group_by`` columns (one curve per
    configuration). Seeds log at different steps when episodes vary in length
    (REINFORCE), so each seed's curve is interpolated onto a common step grid.

    Returns:
      ``{config: (steps, mean, low, high)}`` with low/high the min and max over
      seeds.
    """
    per_config: dict[tuple[str, ...], dict[str, list[tuple[float, float]]]] = (
        defaultdict(lambda: defaultdict(list))
    )
    for row in rows:
        value = float(row[metric]) if row.get(metric) not in (None, "") else math.nan
        if not math.isfinite(value):
            continue
        key = tuple(row[name] for name in group_by)
        per_config[key][row["seed"]].append((float(row["step"]), value))
    result = {}
    for key, seeds in per_config.items():
        series = [np.asarray(sorted(points)) for points in seeds.values()]
        start = max(s[0, 0] for s in series)
        stop = min(s[-1, 0] for s in series)
        if stop <= start:
            grid = np.asarray(series[0][:, 0])
            values = np.stack([np.interp(grid, s[:, 0], s[:, 1]) for s in series])
        else:
            grid = np.linspace(start, stop, 200)
            values = np.stack([np.interp(grid, s[:, 0], s[:, 1]) for s in series])
        result[key] = (grid, values.mean(0), values.min(0), values.max(0))
    return result


def plot_runs(
    run_dirs: Sequence[Path],
    out: Path,
    metric: str = "episode_return",
    group_by: Sequence[str] = (),
    title: str | None = None,
) -> Path:
    """Draws one line per run (and per configuration) with the seed spread."""
    # matplotlib is set up here, not at module level: train.py imports this
    # module at start-up and plots only at the end (0.3-0.6 s of start-up).
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for run_dir in run_dirs:
        rows = read_metrics(Path(run_dir) / "metrics.csv")
        present = [g for g in group_by if rows and g in rows[0]]
        for key, (steps, mean, low, high) in curves(rows, present, metric).items():
            label = Path(run_dir).name
            if key:
                label += " " + ", ".join(
                    f"{g}={v}" for g, v in zip(present, key, strict=True)
                )
            (line,) = ax.plot(steps, mean, label=label, linewidth=1.5)
            ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("environment steps (per seed)")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(title or "learning curve (mean, min–max over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out
