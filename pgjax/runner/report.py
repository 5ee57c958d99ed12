"""What the host keeps and reports: counters, metrics.csv rows, summary.json.

:class:`Host` holds the counters the loop keeps on the host (steps, updates
and recent returns per row, seconds spent); it is saved with every checkpoint,
so a resumed run continues its counts and its wall time.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pgjax.checkpoints import CheckpointError
from pgjax.config import (
    TrainConfig,
)
from pgjax.runner.layout import Layout
from pgjax.train import TrainState


@dataclasses.dataclass
class RunResult:
    """What :func:`run` returns (also written to summary.json)."""

    summary: dict[str, Any]
    state: TrainState
    run_dir: Path
    signum: int | None = None  # the signal that interrupted the run, if any


@dataclasses.dataclass
class Host:
    """Host-side counters (saved in every checkpoint)."""

    steps: np.ndarray  # [R] env steps per row
    updates: np.ndarray  # [R]
    recent: np.ndarray  # [R] latest finite episode return (NaN: none yet)
    train_seconds: float = 0.0
    compile_seconds: float = 0.0
    checkpoint_seconds: float = 0.0  # training blocked by checkpoint saves
    wall_seconds: float = 0.0  # at the checkpoint, over all sessions
    csv_rows: int = 0
    chunks: int = 0
    sessions: int = 1

    @classmethod
    def fresh(cls, rows: int) -> Host:
        return cls(
            steps=np.zeros(rows, np.int64),
            updates=np.zeros(rows, np.int64),
            recent=np.full(rows, np.nan),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "steps": [int(x) for x in self.steps],
            "updates": [int(x) for x in self.updates],
            "recent": [finite_or_none(x) for x in self.recent],
            "train_seconds": self.train_seconds,
            "compile_seconds": self.compile_seconds,
            "checkpoint_seconds": self.checkpoint_seconds,
            "wall_seconds": self.wall_seconds,
            "csv_rows": self.csv_rows,
            "chunks": self.chunks,
            "sessions": self.sessions,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], rows: int) -> Host:
        host = cls(
            steps=np.asarray(data["steps"], np.int64),
            updates=np.asarray(data["updates"], np.int64),
            recent=np.asarray(
                [math.nan if x is None else x for x in data["recent"]], np.float64
            ),
            train_seconds=float(data["train_seconds"]),
            compile_seconds=float(data["compile_seconds"]),
            checkpoint_seconds=float(data.get("checkpoint_seconds", 0.0)),
            wall_seconds=float(data["wall_seconds"]),
            csv_rows=int(data["csv_rows"]),
            chunks=int(data["chunks"]),
            sessions=int(data.get("sessions", 1)) + 1,
        )
        if host.steps.shape != (rows,):
            raise CheckpointError(
                f"checkpoint has {host.steps.shape[0]} rows, expected {rows}"
            )
        return host

    @property
    def step(self) -> int:
        """The checkpoint label: env steps per seed (largest over rows)."""
        return int(self.steps.max())


def eval_fields(
    eval_returns: dict[str, np.ndarray] | None, rows: slice
) -> dict[str, Any]:
    """``eval_return`` (mode action) and ``eval_return_sampled`` (actions
    sampled from the policy), their means over ``rows`` and per seed."""
    fields: dict[str, Any] = {}
    for name, key in (("eval_return", "mode"), ("eval_return_sampled", "sampled")):
        values = None if eval_returns is None else eval_returns[key][rows]
        fields[name] = None if values is None else float(np.mean(values))
        fields[name + "_per_seed"] = (
            [] if values is None else [float(x) for x in values]
        )
    return fields


def summarize(
    config: TrainConfig,
    layout: Layout,
    host: Host,
    eval_returns: dict[str, np.ndarray] | None,
    wall_seconds: float,
    compile_seconds: float,
) -> dict[str, Any]:
    final_returns = host.recent
    summary: dict[str, Any] = {
        "algo": config.algo,
        "env": config.env,
        "num_seeds": config.num_seeds,
        "final_return": nanmean_or_none(final_returns),
        "final_return_per_seed": [finite_or_none(x) for x in final_returns],
        **eval_fields(eval_returns, slice(None)),
        "eval_episodes": config.eval_episodes,
        "steps_per_second": float(host.steps.sum() / max(host.train_seconds, 1e-9)),
        "compile_seconds": compile_seconds,
        "compile_seconds_all_sessions": host.compile_seconds,
        "train_seconds": host.train_seconds,
        "checkpoint_seconds": host.checkpoint_seconds,
        "wall_seconds": wall_seconds,
        "total_timesteps": int(host.steps.min()),
        "updates": int(host.updates.max()),
        "sessions": host.sessions,
        "interrupted": False,
    }
    if layout.swept:
        configs = []
        for c, point in enumerate(layout.points):
            rows = slice(c * layout.num_seeds, (c + 1) * layout.num_seeds)
            entry = {"config": c, **dict(zip(layout.names, point, strict=True))}
            entry["final_return"] = nanmean_or_none(final_returns[rows])
            entry["final_return_per_seed"] = [
                finite_or_none(x) for x in final_returns[rows]
            ]
            if eval_returns is not None:
                entry.update(eval_fields(eval_returns, rows))
            configs.append(entry)
        ranked = sorted(
            configs,
            key=lambda e: -math.inf if e["final_return"] is None else e["final_return"],
            reverse=True,
        )
        for rank, entry in enumerate(ranked, 1):
            entry["rank"] = rank
        summary["sweep"] = {
            name: list(values)
            for name, values in zip(layout.names, layout.values, strict=True)
        }
        summary["configs"] = ranked
        summary["best"] = {k: ranked[0][k] for k in ("config", *layout.names)}
    return summary


def csv_rows(metrics, layout: Layout, host: Host, chunk_start, chunk_end):
    """Turns ``[R, K]`` chunk metrics into CSV rows (active slots only).

    Updates ``host``'s steps, updates and recent returns. Rows of one chunk
    arrive together; their ``wall_time`` is interpolated linearly over the
    chunk's duration (``chunk_start``/``chunk_end`` are already wall times).
    """
    active = metrics["active"]
    num_slots = active.shape[1]
    labels = [layout.labels(i) for i in range(active.shape[0])]
    rows = []
    for slot in range(num_slots):
        wall = chunk_start + (slot + 1) / num_slots * (chunk_end - chunk_start)
        for i in range(active.shape[0]):
            if not active[i, slot]:
                continue
            host.steps[i] += int(metrics["env_steps"][i, slot])
            host.updates[i] += 1
            row = {
                **labels[i],
                "update": int(host.updates[i]),
                "step": int(host.steps[i]),
                "wall_time": wall,
                "_row": i,
            }
            for name, values in metrics.items():
                if name != "active":
                    row[name] = values[i, slot].item()
            value = row["episode_return"]
            if math.isfinite(value):
                host.recent[i] = value
            rows.append(row)
    return rows


def progress_bar(config: TrainConfig, enabled: bool, initial: int = 0):
    from tqdm.auto import tqdm

    return tqdm(
        total=config.total_timesteps,
        initial=initial,
        disable=not enabled,
        unit="step",
        unit_scale=True,
        dynamic_ncols=True,
        desc=f"{config.algo} {config.env}",
    )


def finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def nanmean_or_none(x: np.ndarray) -> float | None:
    finite = x[np.isfinite(x)]
    return float(finite.mean()) if finite.size else None
