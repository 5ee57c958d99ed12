"""The host loop: compile once, call the compiled chunk, report, write the run folder.

This is the shell around the pure core (DESIGN.md): the only place with wall
clocks, files, progress bars and signals. Per chunk it makes one call into the
compiled program and one transfer of the chunk's metrics to the host; the
device never waits on Python inside a chunk.

Run folder::

  config.json     the resolved configuration
  metrics.csv     one row per seed per update (long format)
  summary.json    final and evaluation returns, speed, compile and wall time
  learning_curve.png
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pgjax import plotting
from pgjax.config import TrainConfig
from pgjax.train import Trainer, TrainState, make_train


class NonFiniteError(RuntimeError):
    """A loss or gradient became NaN or infinite; training stopped."""


def write_json_atomic(path: Path, data: Any) -> None:
    """Writes JSON to a temporary file and renames it over ``path``.

    A crash or interrupt leaves either the old file or the new one, never half.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, allow_nan=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def config_to_json(config: TrainConfig) -> dict[str, Any]:
    data = dataclasses.asdict(config)
    data["hidden"] = list(config.hidden)
    return data


def _fmt(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return "" if not math.isfinite(value) and math.isnan(value) else f"{value:.6g}"
    return str(value)


class MetricsWriter:
    """Appends rows to metrics.csv, flushing after each chunk."""

    def __init__(self, path: Path, columns: list[str]):
        self.columns = columns
        new = not path.exists() or path.stat().st_size == 0
        self._file = open(path, "a", newline="")  # noqa: SIM115 (closed by close())
        self._writer = csv.writer(self._file)
        if new:
            self._writer.writerow(columns)

    def write(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self._writer.writerow([_fmt(row.get(c, "")) for c in self.columns])
        self._file.flush()

    def close(self) -> None:
        self._file.close()


@dataclasses.dataclass
class RunResult:
    """What :func:`run` returns (also written to summary.json)."""

    summary: dict[str, Any]
    state: TrainState
    run_dir: Path


def seed_keys(config: TrainConfig) -> jax.Array:
    """One PRNG key per seed: ``PRNGKey(seed + i)`` for ``i < num_seeds``."""
    seeds = jnp.arange(config.seed, config.seed + config.num_seeds)
    return jax.vmap(jax.random.PRNGKey)(seeds)


def first_non_finite(
    metrics: dict[str, np.ndarray], names: tuple[str, ...]
) -> tuple[int, str] | None:
    """``(slot, metric)`` of the first active update with a non-finite value."""
    active = metrics["active"]  # [S, K]
    for slot in range(active.shape[1]):
        for name in names:
            values = metrics[name][:, slot]
            if np.any(active[:, slot] & ~np.isfinite(values)):
                return slot, name
    return None


def run(
    config: TrainConfig,
    run_dir: Path,
    start_time: float | None = None,
    progress: bool = True,
    on_chunk: Callable[[dict[str, Any]], None] | None = None,
) -> RunResult:
    """Trains ``config.num_seeds`` seeds and writes the run folder.

    Args:
      config: a validated configuration.
      run_dir: the run folder (created if missing).
      start_time: ``time.time()`` at process start; ``wall_time`` counts from it.
      progress: show a progress bar on stderr.
      on_chunk: optional callback with the chunk's summary (for tests/tools).

    Raises:
      NonFiniteError: a loss or gradient norm became NaN/inf; the message names
        the update and the metric.
    """
    start_time = time.time() if start_time is None else start_time
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "config.json", config_to_json(config))

    trainer: Trainer = make_train(config)
    checked = tuple(
        n for n in trainer.algorithm.metric_names if n not in ("learning_rate",)
    )
    compile_start = time.time()
    state = jax.jit(trainer.init_batch)(seed_keys(config))
    chunk_fn = (
        jax.jit(trainer.train_chunk_batch, donate_argnums=0).lower(state).compile()
    )
    compile_seconds = time.time() - compile_start

    columns = ["seed", "update", "step", "wall_time", *trainer.metric_names]
    writer = MetricsWriter(run_dir / "metrics.csv", columns)
    seeds = list(range(config.seed, config.seed + config.num_seeds))
    steps = np.zeros(config.num_seeds, dtype=np.int64)
    updates = np.zeros(config.num_seeds, dtype=np.int64)
    recent = np.full(config.num_seeds, np.nan)
    bar = _progress_bar(config, progress)
    train_seconds = 0.0
    try:
        while True:
            chunk_start = time.time()
            new_state, metrics = chunk_fn(state)
            metrics = jax.device_get(metrics)
            chunk_end = time.time()
            train_seconds += chunk_end - chunk_start
            bad = first_non_finite(metrics, checked)
            if bad is not None:
                slot, name = bad
                update = int(updates.min()) + slot + 1
                raise NonFiniteError(
                    f"non-finite {name} at update {update}: training stopped; "
                    f"the run folder keeps the metrics up to the previous chunk"
                )
            state = new_state
            rows = _rows(
                metrics, seeds, steps, updates, chunk_start, chunk_end, start_time
            )
            writer.write(rows)
            for row in rows:
                if math.isfinite(row["episode_return"]):
                    recent[seeds.index(row["seed"])] = row["episode_return"]
            bar.update(int(steps.min()) - bar.n)
            bar.set_postfix(
                ret=f"{np.nanmean(recent):.1f}" if np.isfinite(recent).any() else "–",
                sps=f"{steps.sum() / max(train_seconds, 1e-9):,.0f}",
            )
            if on_chunk is not None:
                on_chunk({"steps": steps.copy(), "updates": updates.copy()})
            if not np.any(metrics["active"][:, -1]) or np.all(
                steps >= config.total_timesteps
            ):
                break
    finally:
        bar.close()
        writer.close()

    eval_returns = evaluate_seeds(trainer, state, config.eval_episodes)
    wall_seconds = time.time() - start_time
    final_returns = recent
    summary = {
        "algo": config.algo,
        "env": config.env,
        "num_seeds": config.num_seeds,
        "final_return": _nanmean(final_returns),
        "final_return_per_seed": [_num(x) for x in final_returns],
        "eval_return": float(np.mean(eval_returns)),
        "eval_return_per_seed": [float(x) for x in eval_returns],
        "eval_episodes": config.eval_episodes,
        "steps_per_second": float(steps.sum() / max(train_seconds, 1e-9)),
        "compile_seconds": compile_seconds,
        "train_seconds": train_seconds,
        "wall_seconds": wall_seconds,
        "total_timesteps": int(steps.min()),
        "updates": int(updates.max()),
        "interrupted": False,
    }
    write_json_atomic(run_dir / "summary.json", summary)
    plotting.plot_runs(
        [run_dir],
        run_dir / "learning_curve.png",
        title=f"{config.algo} on {config.env}",
    )
    return RunResult(summary=summary, state=state, run_dir=run_dir)


def evaluate_seeds(trainer: Trainer, state: TrainState, episodes: int) -> np.ndarray:
    """Mean mode-action return of ``episodes`` fresh episodes for each seed."""
    keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(state.key, 2**20)
    returns = jax.jit(
        jax.vmap(lambda s, k: trainer.evaluate(s, k, episodes, deterministic=True))
    )(state, keys)
    return np.asarray(jax.device_get(returns)).mean(axis=1)


def _rows(metrics, seeds, steps, updates, chunk_start, chunk_end, start_time):
    """Turns ``[S, K]`` chunk metrics into CSV rows (active slots only).

    Rows of one chunk arrive together; their ``wall_time`` is interpolated
    linearly over the chunk's duration.
    """
    active = metrics["active"]
    num_slots = active.shape[1]
    rows = []
    for slot in range(num_slots):
        wall = chunk_start + (slot + 1) / num_slots * (chunk_end - chunk_start)
        for i, seed in enumerate(seeds):
            if not active[i, slot]:
                continue
            steps[i] += int(metrics["env_steps"][i, slot])
            updates[i] += 1
            row = {
                "seed": seed,
                "update": int(updates[i]),
                "step": int(steps[i]),
                "wall_time": wall - start_time,
            }
            for name, values in metrics.items():
                if name != "active":
                    row[name] = values[i, slot].item()
            rows.append(row)
    return rows


def _progress_bar(config: TrainConfig, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=config.total_timesteps,
        disable=not enabled,
        unit="step",
        unit_scale=True,
        dynamic_ncols=True,
        desc=f"{config.algo} {config.env}",
    )


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _nanmean(x: np.ndarray) -> float | None:
    finite = x[np.isfinite(x)]
    return float(finite.mean()) if finite.size else None
