"""The host loop: compile once, call the compiled chunk, report, write the run folder.

This is the shell around the pure core: the only place with wall
clocks, files, progress bars, checkpoints and signals. Per chunk it makes one
call into the compiled program and one transfer of the chunk's metrics to the
host; the device never waits on Python inside a chunk.

Run folder::

  config.json     the resolved configuration (updates_per_chunk resolved) and
                  the swept lists ("sweep", empty when not sweeping)
  metrics.csv     one row per seed (per configuration) per update (long format)
  summary.json    final and evaluation returns, speed, compile and wall time
  learning_curve.png
  checkpoints/    the whole training state every --checkpoint-every updates,
                  at the end and on Ctrl-C/SIGTERM (pgjax.checkpoints)
  tensorboard/    with --tensorboard: one event folder per seed

Durability (see :func:`run`):

* **Checkpoints** are taken at chunk boundaries: the state a chunk returns is
  copied to host memory before it is donated to the next chunk call, then
  written in the background (orbax, atomic rename). Each holds the full
  ``TrainState`` with its row axis and the host counters (steps, updates and
  recent returns per row, seconds, rows of metrics.csv). They are taken every
  ``checkpoint_every`` updates, or by default past each tenth of the run but
  at most once a minute (a save blocks training for ~0.05-0.3 s), and always
  at the end; the newest ``keep_checkpoints`` are kept.
* **Resume** (``run(..., resume=True)``) restores the newest checkpoint,
  truncates metrics.csv to the rows it had, and continues with the *same
  compiled program* (same ``updates_per_chunk``, read from config.json). On
  CPU the continued run is bit-identical to one that was never stopped: every
  metrics.csv value but ``wall_time`` and the final parameters. Only settings
  in :data:`RESUME_MAY_CHANGE` may differ from config.json. A larger
  ``total_timesteps`` extends the run; since learning-rate annealing is
  ``lr·(1 − experience/total_timesteps)``, the schedule is then recomputed
  against the new total (the learning rate jumps up at the resume point), so
  a run extended from X to Y equals a straight run to Y only with
  ``anneal_lr`` off.
* **Signals**: the first SIGINT/SIGTERM lets the chunk in flight finish, saves
  a checkpoint, writes summary.json with ``"interrupted": true`` and returns
  (the CLI exits 130/143); a second one exits at once. Every file is written
  atomically (temporary file or folder, then rename), so an abrupt exit leaves
  the previous version of each file, never half of one.
* **Sweeps**: ``sweep={"lr": [...], "ent_coef": [...]}`` trains the product
  grid × ``num_seeds`` in one compiled program (the grid's hyperparameters
  are ``[R]`` leaves of the vmapped state).
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import functools
import itertools
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from pgjax import distributed, parallel, plotting
from pgjax.backend import Backend
from pgjax.checkpoints import Checkpointer, CheckpointError
from pgjax.compilation import compile_lowered, compile_with, lower
from pgjax.config import (
    SWEEPABLE,
    Hyperparams,
    TrainConfig,
    flag_name,
    resolve_algorithm_defaults,
)
from pgjax.hardware import backend_for
from pgjax.train import Trainer, TrainState, default_updates_per_chunk, make_train

# Settings that a resumed run may change: they do not alter the computation.
RESUME_MAY_CHANGE = (
    "total_timesteps",
    "checkpoint_every",
    "keep_checkpoints",
    "tensorboard",
    "eval_episodes",
    "devices",  # where the run's work is done, not what it computes
)

# Automatic checkpoints (checkpoint_every = 0): at the first chunk boundary past
# each tenth of total_timesteps, but no sooner than this after the last one
# (a save costs ~0.1-0.5 s, blocking and in the background, so this bounds the
# overhead well under 1% whatever the run's speed)...
AUTO_CHECKPOINT_MIN_SECONDS = 60.0
# ...and not while the last save blocked training for more than this fraction
# of the time since (a huge state).
AUTO_CHECKPOINT_MAX_OVERHEAD = 0.02


class NonFiniteError(RuntimeError):
    """A loss or gradient became NaN or infinite; training stopped."""


class RunFolderError(ValueError):
    """A run folder cannot be resumed; ``flag`` names the culprit CLI flag."""

    def __init__(self, flag: str, message: str):
        super().__init__(f"{flag}: {message}")
        self.flag = flag


class TensorBoardMissingError(RunFolderError):
    """``--tensorboard`` was asked for but no writer library is installed."""


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


#: Version 2: a2c honours critic_epochs/critic_minibatches (0 = its default).
CONFIG_VERSION = 2


def config_to_json(
    config: TrainConfig, sweep: Mapping[str, Sequence[float]] | None = None
) -> dict[str, Any]:
    """config.json's content: every TrainConfig field, plus the swept lists."""
    data = {"config_version": CONFIG_VERSION, **dataclasses.asdict(config)}
    data["hidden"] = list(config.hidden)
    data["sweep"] = {name: list(values) for name, values in (sweep or {}).items()}
    return data


def config_from_json(data: Mapping[str, Any]) -> tuple[TrainConfig, dict]:
    """Inverse of :func:`config_to_json`: ``(config, sweep)``.

    Fields missing from ``data`` (a run written by an older pgjax) take their
    defaults; unknown keys are ignored.
    """
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in data.items() if k in fields}
    if data.get("config_version", 1) < 2 and values.get("algo") == "a2c":
        # Before version 2 a2c ignored the critic-fit fields (it always took
        # one joint critic step) while config.json recorded npg's 2 × 4: keep
        # what the run trained with.
        values["critic_epochs"] = values["critic_minibatches"] = 0
    if "hidden" in values:
        values["hidden"] = tuple(values["hidden"])
    sweep = {k: [float(x) for x in v] for k, v in (data.get("sweep") or {}).items()}
    return TrainConfig(**values), sweep


def load_run_config(run_dir: Path) -> tuple[TrainConfig, dict[str, list[float]]]:
    """Reads ``<run_dir>/config.json``.

    Raises:
      RunFolderError: (flag ``--run-dir``) no run folder or unreadable config.
    """
    path = Path(run_dir) / "config.json"
    if not Path(run_dir).is_dir():
        raise RunFolderError("--run-dir", f"{run_dir} does not exist")
    if not path.is_file():
        raise RunFolderError(
            "--run-dir", f"{run_dir} has no config.json (not a run folder)"
        )
    try:
        return config_from_json(json.loads(path.read_text()))
    except (ValueError, TypeError) as error:
        raise RunFolderError("--run-dir", f"cannot read {path}: {error}") from None


def resolve_config(config: TrainConfig) -> TrainConfig:
    """Fixes settings resolved at run time (``updates_per_chunk = 0``, and the
    algorithm's critic fit for ``critic_epochs``/``critic_minibatches = 0``).

    The resolved chunk size is stored in config.json so that a resumed run
    compiles the same program even when it changes ``total_timesteps`` (on
    which the automatic chunk size depends).
    """
    config = resolve_algorithm_defaults(config)
    if config.updates_per_chunk == 0:
        config = dataclasses.replace(
            config, updates_per_chunk=default_updates_per_chunk(config)
        )
    return config


def check_resumable(
    saved: TrainConfig,
    saved_sweep: Mapping[str, Sequence[float]],
    config: TrainConfig,
    sweep: Mapping[str, Sequence[float]],
) -> None:
    """Refuses a resume whose settings differ from the run folder's.

    Raises:
      RunFolderError: naming the first differing flag.
    """
    allowed = ", ".join(flag_name(n) for n in RESUME_MAY_CHANGE)
    # 0 ("the algorithm's default") and the value it stands for train alike.
    saved = resolve_algorithm_defaults(saved)
    config = resolve_algorithm_defaults(config)
    for field in dataclasses.fields(TrainConfig):
        name = field.name
        if name in RESUME_MAY_CHANGE or name in sweep or name in saved_sweep:
            continue
        old, new = getattr(saved, name), getattr(config, name)
        if old != new:
            raise RunFolderError(
                flag_name(name),
                f"differs from the run being resumed (config.json has {old!r}, "
                f"got {new!r}); a resume may only change {allowed}",
            )
    names = sorted(set(sweep) | set(saved_sweep))
    for name in names:
        old = [float(x) for x in saved_sweep.get(name, [getattr(saved, name)])]
        new = [float(x) for x in sweep.get(name, [getattr(config, name)])]
        if old != new:
            raise RunFolderError(
                flag_name(name),
                f"differs from the run being resumed (config.json has "
                f"{','.join(map(str, old))}, got {','.join(map(str, new))})",
            )


# --------------------------------------------------------------------- sweeps


@dataclasses.dataclass(frozen=True)
class Layout:
    """How the rows of the vmapped state map to configurations and seeds.

    Row ``r`` trains configuration ``r // num_seeds`` with seed
    ``config.seed + r % num_seeds``; configurations are the product of the
    swept lists, in :data:`~pgjax.config.SWEEPABLE` order (last name fastest).
    """

    names: tuple[str, ...]  # swept names, SWEEPABLE order
    values: tuple[tuple[float, ...], ...]  # each name's list, as given
    points: tuple[tuple[float, ...], ...]  # one tuple of values per configuration
    num_seeds: int
    first_seed: int

    @property
    def num_configs(self) -> int:
        return len(self.points)

    @property
    def num_rows(self) -> int:
        return self.num_configs * self.num_seeds

    @property
    def swept(self) -> bool:
        return bool(self.names)

    def labels(self, row: int) -> dict[str, Any]:
        """The fixed metrics.csv columns of a row: config, seed, swept values."""
        config_index, seed_offset = divmod(row, self.num_seeds)
        labels: dict[str, Any] = {}
        if self.swept:
            labels["config"] = config_index
        labels["seed"] = self.first_seed + seed_offset
        for name, value in zip(self.names, self.points[config_index], strict=True):
            labels[name] = value
        return labels

    def label_columns(self) -> list[str]:
        return (["config"] if self.swept else []) + ["seed", *self.names]


def make_layout(
    config: TrainConfig, sweep: Mapping[str, Sequence[float]] | None = None
) -> Layout:
    """The sweep grid (one point when not sweeping).

    Raises:
      ValueError: a swept name that is not in SWEEPABLE, or an empty list.
    """
    sweep = sweep or {}
    unknown = [n for n in sweep if n not in SWEEPABLE]
    if unknown:
        raise ValueError(f"cannot sweep {unknown}: sweepable are {SWEEPABLE}")
    names = tuple(n for n in SWEEPABLE if n in sweep)
    for name in names:
        if not sweep[name]:
            raise ValueError(f"empty sweep list for {name}")
    values = tuple(tuple(float(v) for v in sweep[n]) for n in names)
    points = tuple(itertools.product(*values))
    return Layout(names, values, points, config.num_seeds, config.seed)


def grid_configs(config: TrainConfig, layout: Layout) -> list[TrainConfig]:
    """One TrainConfig per configuration of the grid (for validation/reports)."""
    return [
        dataclasses.replace(config, **dict(zip(layout.names, point, strict=True)))
        for point in layout.points
    ]


def row_hyper(config: TrainConfig, layout: Layout) -> Hyperparams:
    """Hyperparams with ``[R]`` leaves for swept names (scalars otherwise)."""
    hyper = Hyperparams.from_config(config)
    if not layout.swept:
        return hyper
    swept = {}
    for i, name in enumerate(layout.names):
        per_config = np.asarray([p[i] for p in layout.points], np.float32)
        swept[name] = jnp.asarray(np.repeat(per_config, layout.num_seeds))
    return hyper.replace(**swept)


def seed_keys(config: TrainConfig) -> jax.Array:
    """One PRNG key per seed: ``PRNGKey(seed + i)`` for ``i < num_seeds``."""
    seeds = jnp.arange(config.seed, config.seed + config.num_seeds)
    return jax.vmap(jax.random.PRNGKey)(seeds)


def row_keys(config: TrainConfig, layout: Layout) -> jax.Array:
    """``[R]`` keys: the seeds' keys repeated for each configuration."""
    return jnp.tile(seed_keys(config), (layout.num_configs, 1))


def strong(tree: Any) -> Any:
    """The same arrays without weak types.

    The compiled chunk is specialised to exact input types; a restored state
    has no weak types, so the fresh one must not have them either for both to
    run the very same program.
    """
    return jax.tree.map(lambda x: x.astype(x.dtype), tree)


def trace_init(trainer: Trainer, layout: Layout) -> jax.stages.Traced:
    """The traced ``(keys, hyper) -> [R] state`` program (no weak types; see
    :func:`strong`) for the rows' keys and hyperparameters. Its ``out_info``
    is the abstract state, and a fresh run compiles it (:func:`compile_init`):
    one trace serves both."""
    config = trainer.config
    return jax.jit(lambda k, h: strong(trainer.init_batch(k, h))).trace(
        row_keys(config, layout), row_hyper(config, layout)
    )


def abstract_of(traced_init: jax.stages.Traced) -> Any:
    """Shapes and dtypes of the state :func:`trace_init`'s program returns."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), traced_init.out_info
    )


def abstract_state(trainer: Trainer, layout: Layout) -> Any:
    """Shapes and dtypes of the ``[R]`` state (for compiling and restoring)."""
    return abstract_of(trace_init(trainer, layout))


# ---------------------------------------------------------------- metrics.csv


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

    def sync(self) -> None:
        """Flushes to disk (before a checkpoint records the row count)."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def truncate_metrics(path: Path, columns: list[str], rows: int) -> int:
    """Keeps the header and the first ``rows`` data rows of metrics.csv.

    Rewrites the file atomically. Returns the number of rows kept (fewer than
    ``rows`` only if the file lost rows, e.g. in an OS crash).

    Raises:
      RunFolderError: the header does not match ``columns``.
    """
    if not path.exists():
        return 0
    with open(path, newline="") as f:
        lines = f.read().splitlines(keepends=True)
    if not lines:
        return 0
    header = next(csv.reader([lines[0]]))
    if header != columns:
        raise RunFolderError(
            "--run-dir",
            f"{path} has columns {','.join(header)}, expected {','.join(columns)}",
        )
    kept = [line for line in lines[1 : rows + 1] if line.endswith("\n")]
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        f.writelines([lines[0], *kept])
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(kept)


# ------------------------------------------------------------------ TensorBoard


def tensorboard_available() -> bool:
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        return False
    return True


class TensorBoardLogger:
    """Writes metrics.csv's rows as TensorBoard scalars, one run per row.

    Runs are ``tensorboard/seed_<s>`` (``config_<c>/seed_<s>`` in a sweep); the
    x-axis is environment steps. On resume, events past the checkpoint are
    purged (``purge_step``), as metrics.csv's rows are truncated.
    """

    def __init__(
        self,
        run_dir: Path,
        layout: Layout,
        metric_names: Sequence[str],
        purge_steps: Sequence[int | None],
    ):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise TensorBoardMissingError(
                "--tensorboard",
                "needs tensorboardX: pip install 'pgjax[tensorboard]'",
            ) from None
        self.metric_names = list(metric_names)
        self.writers = []
        for row in range(layout.num_rows):
            labels = layout.labels(row)
            name = f"seed_{labels['seed']}"
            if layout.swept:
                name = f"config_{labels['config']}/{name}"
            self.writers.append(
                SummaryWriter(
                    logdir=str(run_dir / "tensorboard" / name),
                    purge_step=purge_steps[row],
                    flush_secs=30,
                )
            )

    def write(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            writer = self.writers[row["_row"]]
            for name in self.metric_names:
                value = row.get(name)
                if value is not None and math.isfinite(value):
                    writer.add_scalar(name, value, global_step=row["step"])
        for writer in self.writers:
            writer.flush()

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


# --------------------------------------------------------------------- signals


class Interrupts:
    """First SIGINT/SIGTERM: request a stop; a second one: exit at once.

    The training loop waits for the device with interruptible waits (see
    :func:`_wait`), so the handler runs promptly even during a long chunk.
    Installed only in the main thread; previous handlers are restored on exit.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Interrupts:
        if self.enabled:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.signum is None:
            self.signum = signum
            print(
                f"\n{name}: finishing the chunk in flight, then saving a checkpoint "
                f"(send it again to quit at once)",
                file=sys.stderr,
                flush=True,
            )
            return
        print(
            f"\n{name} again: exiting now; the last complete checkpoint is kept",
            file=sys.stderr,
            flush=True,
        )
        os._exit(128 + signum)


def _wait(pool: concurrent.futures.Executor, fn: Callable, *args) -> Any:
    """Runs ``fn`` in the worker thread; the main thread waits interruptibly.

    A blocking device call in the main thread would defer Python signal
    handlers until it returns; waiting on a future lets them run at once.
    """
    return pool.submit(fn, *args).result()


#: A chunk running this many times longer than the slowest one before it (or
#: STALL_FIRST_SECONDS for the first) gets a warning on stderr.
STALL_FACTOR = 20.0
STALL_FIRST_SECONDS = 600.0


def _wait_chunk(pool, fn: Callable, *args, slowest: float, label: str) -> Any:
    """:func:`_wait` for a chunk, warning once if it seems stuck.

    A program stuck inside XLA's CPU runtime (as a batched LAPACK call under
    ``vmap`` once was, see ``Trainer.init_batch``) cannot be cancelled from
    Python, so the warning says how to get out with nothing lost.
    """
    future = pool.submit(fn, *args)
    limit = STALL_FACTOR * slowest if slowest > 0 else STALL_FIRST_SECONDS
    try:
        return future.result(timeout=limit)
    except concurrent.futures.TimeoutError:
        before = f" ({STALL_FACTOR:.0f}× the slowest before it)" if slowest else ""
        print(
            f"\nwarning: {label} has run for {limit:.0f} s{before}; if this "
            f"process uses no CPU it is stuck inside XLA: press Ctrl-C twice to "
            f"exit (the last checkpoint is kept) and continue with --resume",
            file=sys.stderr,
            flush=True,
        )
        return future.result()


# ------------------------------------------------------------------------- run


@dataclasses.dataclass
class RunResult:
    """What :func:`run` returns (also written to summary.json)."""

    summary: dict[str, Any]
    state: TrainState
    run_dir: Path
    signum: int | None = None  # the signal that interrupted the run, if any


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


@dataclasses.dataclass
class _Host:
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
    def fresh(cls, rows: int) -> _Host:
        return cls(
            steps=np.zeros(rows, np.int64),
            updates=np.zeros(rows, np.int64),
            recent=np.full(rows, np.nan),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "steps": [int(x) for x in self.steps],
            "updates": [int(x) for x in self.updates],
            "recent": [_num(x) for x in self.recent],
            "train_seconds": self.train_seconds,
            "compile_seconds": self.compile_seconds,
            "checkpoint_seconds": self.checkpoint_seconds,
            "wall_seconds": self.wall_seconds,
            "csv_rows": self.csv_rows,
            "chunks": self.chunks,
            "sessions": self.sessions,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], rows: int) -> _Host:
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


def run(
    config: TrainConfig,
    run_dir: Path,
    start_time: float | None = None,
    progress: bool = True,
    on_chunk: Callable[[dict[str, Any]], None] | None = None,
    *,
    resume: bool = False,
    sweep: Mapping[str, Sequence[float]] | None = None,
    handle_signals: bool = True,
    backend: Backend | None = None,
) -> RunResult:
    """Trains ``config.num_seeds`` seeds (per swept configuration), writes the folder.

    Args:
      config: a validated configuration.
      run_dir: the run folder (created if missing).
      start_time: ``time.time()`` at process start; ``wall_time`` counts from it
        (on resume, from the run's first start: the checkpoint's elapsed wall time
        is added).
      progress: show a progress bar on stderr.
      on_chunk: optional callback after each chunk (for tests and tools) with
        ``steps``, ``updates`` (per row), ``chunks`` and ``checkpoint`` (the
        newest checkpoint's step, or None).
      resume: continue the run in ``run_dir`` from its newest checkpoint (from
        the start if it has none). ``config`` must equal config.json except
        for :data:`RESUME_MAY_CHANGE`; ``updates_per_chunk = 0`` takes the
        stored value.
      sweep: ``{name: values}`` for names in SWEEPABLE; trains the product grid
        × ``num_seeds`` as rows of one vmapped program (``config``'s own value
        of a swept name is ignored).
      handle_signals: catch SIGINT/SIGTERM (main thread only): the first stops
        after the chunk in flight with a checkpoint; a second exits at once.
      backend: how the run uses the hardware (default:
        :func:`pgjax.hardware.backend_for` the config's ``devices``).

    Returns:
      The summary (also in summary.json; ``"interrupted": true`` when a signal
      stopped the run, and then no evaluation), the final state and the
      interrupting signal.

    Raises:
      NonFiniteError: a loss or gradient norm became NaN/inf; the message names
        the update and the metric. The last checkpoint is kept.
      RunFolderError: ``resume`` with a missing or incompatible run folder, or
        ``tensorboard`` without tensorboardX.
      CheckpointError: a checkpoint could not be written or read.
    """
    start_time = time.time() if start_time is None else start_time
    run_dir = Path(run_dir)
    sweep = {name: [float(v) for v in values] for name, values in (sweep or {}).items()}
    if resume:
        saved, saved_sweep = load_run_config(run_dir)
        if config.updates_per_chunk == 0:
            config = dataclasses.replace(
                config, updates_per_chunk=saved.updates_per_chunk
            )
        check_resumable(saved, saved_sweep, config, sweep)
    config = resolve_config(config)
    if config.tensorboard and not tensorboard_available():
        raise TensorBoardMissingError(
            "--tensorboard", "needs tensorboardX: pip install 'pgjax[tensorboard]'"
        )
    layout = make_layout(config, sweep)
    if backend is None:
        backend = backend_for(config, layout.num_rows)
    trainer: Trainer = make_train(config, backend)
    checked = tuple(
        n for n in trainer.algorithm.metric_names if n not in ("learning_rate",)
    )
    columns = [*layout.label_columns(), "update", "step", "wall_time"]
    columns += list(trainer.metric_names)
    traced_init = trace_init(trainer, layout)
    abstract = abstract_of(traced_init)
    shardings = trainer.state_shardings(abstract)
    # Several processes (jax.distributed) run this same loop on their shares
    # of the devices; process 0 alone writes the run folder's files, every
    # process writes its shards of each checkpoint.
    primary = distributed.is_primary()
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpointer = Checkpointer(run_dir, keep=config.keep_checkpoints)
    if not resume and checkpointer.steps():
        checkpointer.close()
        raise RunFolderError(
            "--run-dir",
            f"{run_dir} already has checkpoints of another run; resume it or "
            f"use a fresh folder",
        )
    if not resume and primary:
        write_json_atomic(run_dir / "config.json", config_to_json(config, sweep))

    interrupts = Interrupts(handle_signals)
    agreement = _Agreement(interrupts)
    # Two workers: the chunk compiles in one while the initial state's
    # program (compiled in this thread) runs in the other (see below);
    # afterwards one call at a time.
    pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="pgjax-run")
    writer = tensorboard = bar = None
    try:
        with interrupts:
            # -- state: fresh, or the newest checkpoint.
            host = _Host.fresh(layout.num_rows)
            resumed_from = None
            compile_start = time.time()

            def compile_training_chunk():
                # Lowered here (Python, holding the GIL) before the initial
                # state's program is lowered; compiled in a worker (no GIL),
                # optimised: it runs hundreds of times (see compile_chunk).
                lowered = lower(
                    trainer.train_chunk_batch,
                    abstract,
                    donate_argnums=0,
                    **chunk_shardings(backend, shardings),
                )
                return pool.submit(compile_lowered, lowered, backend.chunk_options)

            if resume and checkpointer.latest_step() is not None:
                state, host_json, resumed_from = checkpointer.restore(
                    abstract, shardings
                )
                host = _Host.from_json(host_json, layout.num_rows)
                if host.steps.min() > config.total_timesteps:
                    raise RunFolderError(
                        "--total-timesteps",
                        f"the run already has {int(host.steps.min())} steps per "
                        f"seed at its newest checkpoint; give at least that",
                    )
                checkpointer.delete_after(resumed_from)  # unreadable newer ones
                chunk_compiled = compile_training_chunk()
            else:
                # The chunk compiles in a worker while this thread compiles
                # the (run-once, -O0) initial state's program: a compile
                # leaves part of the cores idle (its HLO passes run on one
                # thread), and the other compile fills them: the first chunk
                # starts sooner from an empty cache.
                chunk_compiled = compile_training_chunk()
                keys, hyper = row_keys(config, layout), row_hyper(config, layout)
                init = compile_init(trainer, layout, shardings)
                state = _wait(pool, init, keys, hyper)
            if resume and primary:
                kept = truncate_metrics(run_dir / "metrics.csv", columns, host.csv_rows)
                if kept < host.csv_rows:
                    print(
                        f"warning: metrics.csv had only {kept} of the "
                        f"{host.csv_rows} rows of checkpoint {resumed_from}",
                        file=sys.stderr,
                    )
                host.csv_rows = kept
                write_json_atomic(
                    run_dir / "config.json", config_to_json(config, sweep)
                )
            # The evaluation compiles after training, so that training starts
            # sooner (and an interrupted run never builds it).
            chunk_fn = chunk_compiled.result()
            compile_seconds = time.time() - compile_start
            host.compile_seconds += compile_seconds

            writer = (
                MetricsWriter(run_dir / "metrics.csv", columns)
                if primary
                else _Discard()
            )
            if config.tensorboard and primary:
                purge = [int(s) + 1 if s > 0 else None for s in host.steps]
                tensorboard = TensorBoardLogger(
                    run_dir, layout, trainer.metric_names, purge
                )
            bar = _progress_bar(config, progress and primary, int(host.steps.min()))
            wall_offset = host.wall_seconds
            last_saved = _SaveMarker.at(config, host, resumed_from)

            def save(final: bool = False) -> None:
                if last_saved.step == host.step:
                    return
                writer.sync()
                now = time.time()
                host.wall_seconds = wall_offset + now - start_time
                checkpointer.save(host.step, state, host.to_json())
                if final:
                    checkpointer.wait()
                cost = time.time() - now
                host.checkpoint_seconds += cost
                last_saved.update(host, cost)

            slowest_chunk = 0.0
            while not agreement.signum() and not np.all(
                host.steps >= config.total_timesteps
            ):
                chunk_start = time.time()
                new_state, metrics = _wait_chunk(
                    pool,
                    _call_chunk,
                    chunk_fn,
                    state,
                    slowest=slowest_chunk,
                    label=f"chunk {host.chunks + 1}",
                )
                chunk_end = time.time()
                slowest_chunk = max(slowest_chunk, chunk_end - chunk_start)
                host.train_seconds += chunk_end - chunk_start
                bad = first_non_finite(metrics, checked)
                if bad is not None:
                    slot, name = bad
                    update = int(host.updates.min()) + slot + 1
                    raise NonFiniteError(
                        f"non-finite {name} at update {update}: training stopped; "
                        f"the run folder keeps the metrics up to the previous chunk "
                        f"and the last checkpoint"
                    )
                state = new_state
                host.chunks += 1
                rows = _rows(
                    metrics,
                    layout,
                    host,
                    chunk_start - start_time + wall_offset,
                    chunk_end - start_time + wall_offset,
                )
                writer.write(rows)
                host.csv_rows += len(rows)
                if tensorboard is not None:
                    tensorboard.write(rows)
                done_steps = int(host.steps.min())
                # Whole updates overshoot total_timesteps by up to one update:
                # grow the bar's total so it ends at 100 % instead of turning
                # into a bare count.
                bar.total = max(bar.total, done_steps)
                bar.update(done_steps - bar.n)
                bar.set_postfix(
                    ret=f"{np.nanmean(host.recent):.1f}"
                    if np.isfinite(host.recent).any()
                    else "–",
                    sps=f"{host.steps.sum() / max(host.train_seconds, 1e-9):,.0f}",
                )
                finished = not np.any(metrics["active"][:, -1]) or np.all(
                    host.steps >= config.total_timesteps
                )
                due = not finished and _checkpoint_due(config, host, last_saved)
                if agreement.at_chunk_end(due):
                    save()
                if on_chunk is not None:
                    on_chunk(
                        {
                            "steps": host.steps.copy(),
                            "updates": host.updates.copy(),
                            "chunks": host.chunks,
                            "checkpoint": last_saved.step,
                        }
                    )
                if finished:
                    break

            signum = agreement.signum()
            evaluation = eval_returns = None
            if signum is None:
                # Once, so at -O0 (-O1 for a sweep's many episodes): compile_once.
                # Before the final save, so that its host record counts it.
                eval_start = time.time()
                evaluation = _wait(
                    pool,
                    compile_evaluation,
                    trainer,
                    abstract,
                    shardings,
                    config.eval_episodes,
                )
                eval_compile_seconds = time.time() - eval_start
                compile_seconds += eval_compile_seconds
                host.compile_seconds += eval_compile_seconds
            save(final=True)
            if evaluation is not None:
                eval_returns = _wait(pool, evaluation, state)
            wall_seconds = wall_offset + time.time() - start_time
            summary = _summary(
                config, layout, host, eval_returns, wall_seconds, compile_seconds
            )
            summary.update(layout_summary(backend))
            summary["checkpoint"] = last_saved.step
            if resumed_from is not None:
                summary["resumed_from"] = resumed_from
            if signum is not None:
                name = signal.Signals(signum).name
                summary["interrupted"] = True
                summary["signal"] = name
            if signum is not None and primary:
                print(
                    f"{name}: stopped at {host.step:,} steps per seed; checkpoint "
                    f"saved; continue with: python scripts/train.py --resume "
                    f"--run-dir {run_dir}",
                    file=sys.stderr,
                    flush=True,
                )
            if primary:
                write_json_atomic(run_dir / "summary.json", summary)
                title = f"{config.algo} on {config.env}"
                plotting.plot_runs(
                    [run_dir],
                    run_dir / "learning_curve.png",
                    group_by=layout.names,
                    title=title + (" (interrupted)" if signum is not None else ""),
                )
            # The others wait for process 0's files before they exit.
            distributed.barrier("pgjax-run-written")
    finally:
        for closeable in (bar, writer, tensorboard):
            if closeable is not None:
                closeable.close()
        try:
            checkpointer.close()
        finally:
            pool.shutdown(wait=True)
    return RunResult(summary=summary, state=state, run_dir=run_dir, signum=signum)


def _call_chunk(chunk_fn, state):
    new_state, metrics = chunk_fn(state)
    return new_state, distributed.to_host_everywhere(metrics)


class _Discard:
    """Stands in for the metrics writer on processes other than process 0."""

    def write(self, rows) -> None:
        pass

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass


class _Agreement:
    """What every process does at a chunk boundary, decided together.

    With several processes, a signal reaches one of them, and their clocks
    (which time automatic checkpoints) differ; every process must still take
    the same checkpoints and stop after the same chunk, or the others would
    wait in a collective for it forever. At each chunk end the processes
    exchange their signal and their checkpoint decision: all stop if any was
    signalled, and all follow process 0 on checkpoints. With one process,
    its own signal and decision, as they are.
    """

    def __init__(self, interrupts: Interrupts):
        self.interrupts = interrupts
        self.agreed: int | None = None

    def signum(self) -> int | None:
        """The signal that stops the run (None: none so far)."""
        if jax.process_count() == 1:
            return self.interrupts.signum
        return self.agreed

    def at_chunk_end(self, checkpoint_due: bool) -> bool:
        """Exchanges the signals; returns whether to checkpoint now."""
        if jax.process_count() == 1:
            return checkpoint_due
        from jax.experimental import multihost_utils

        mine = np.asarray([self.interrupts.signum or 0, int(checkpoint_due)])
        everyone = np.asarray(multihost_utils.process_allgather(mine))
        self.agreed = int(everyone[:, 0].max()) or None
        return bool(everyone[0, 1])


@dataclasses.dataclass
class _SaveMarker:
    """When and where the newest checkpoint was taken."""

    step: int | None  # its label (None: no checkpoint yet)
    updates: int  # updates.max() then
    tenth: int  # steps.min() // tenth_size then
    tenth_size: int  # total_timesteps // 10
    cost: float = 0.0  # seconds the save blocked training
    end: float = 0.0  # time.time() when it returned

    @classmethod
    def at(cls, config: TrainConfig, host: _Host, step: int | None) -> _SaveMarker:
        tenth_size = max(1, config.total_timesteps // 10)
        return cls(
            step=step,
            updates=int(host.updates.max()),
            tenth=int(host.steps.min()) // tenth_size,
            tenth_size=tenth_size,
            end=time.time(),
        )

    def update(self, host: _Host, cost: float) -> None:
        self.step = host.step
        self.updates = int(host.updates.max())
        self.tenth = int(host.steps.min()) // self.tenth_size
        self.cost, self.end = cost, time.time()


def _checkpoint_due(config: TrainConfig, host: _Host, last: _SaveMarker) -> bool:
    """Whether to checkpoint at this chunk boundary (the end is always saved).

    ``checkpoint_every > 0``: once that many updates passed since the last
    checkpoint. ``0`` (automatic): at the first boundary past each tenth of
    ``total_timesteps`` (per-seed steps, slowest row) that is at least
    :data:`AUTO_CHECKPOINT_MIN_SECONDS` after the last checkpoint (or the
    start), unless the last save blocked training for more than
    :data:`AUTO_CHECKPOINT_MAX_OVERHEAD` of the time since.
    """
    if config.checkpoint_every < 0:
        return False
    if config.checkpoint_every > 0:
        return int(host.updates.max()) - last.updates >= config.checkpoint_every
    if int(host.steps.min()) // last.tenth_size <= last.tenth:
        return False
    since = time.time() - last.end
    return (
        since >= AUTO_CHECKPOINT_MIN_SECONDS
        and last.cost <= AUTO_CHECKPOINT_MAX_OVERHEAD * since
    )


#: Episodes in all (rows × per row) from which the final evaluation is compiled
#: at -O1 rather than -O0 (see pgjax.compilation): 4 seeds at the default 128.
HEAVY_EVALUATION_EPISODES = 512


def chunk_shardings(backend: Backend, shardings: Any) -> dict[str, Any]:
    """``jax.jit``'s shardings of the training chunk: the state enters and
    leaves as :meth:`~pgjax.train.Trainer.state_shardings` places it (so it
    stays where it is between chunks), the metrics leave whole on every
    device (every process reads them). Empty without a mesh."""
    if shardings is None:
        return {}
    whole = NamedSharding(backend.mesh, PartitionSpec())
    return {"in_shardings": (shardings,), "out_shardings": (shardings, whole)}


def layout_summary(backend: Backend) -> dict[str, int]:
    """How the run was laid over the devices, for summary.json."""
    return {
        "devices": backend.devices,
        "seed_shards": backend.seed_shards,
        "env_shards": backend.env_shards,
        "processes": jax.process_count(),
    }


def compile_evaluation(
    trainer: Trainer, abstract: Any, shardings: Any, episodes: int
) -> Callable[[TrainState], np.ndarray]:
    """Compiles the final evaluation for states shaped like ``abstract`` ``[R]``
    (placed as ``shardings``: each device evaluates its seeds, and splits
    their episodes like training's envs).

    The returned function gives each row's mean mode-action return over
    ``episodes`` fresh episodes (keys derived from the row's own key).
    """
    backend = trainer.backend

    def returns(state: TrainState) -> jax.Array:
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(state.key, 2**20)
        evaluate = functools.partial(
            trainer.evaluate, num_episodes=episodes, deterministic=True
        )
        return parallel.vmap_seeds(evaluate, backend)(state, keys)

    rows = jax.tree.leaves(abstract)[0].shape[0]
    heavy = rows * episodes >= HEAVY_EVALUATION_EPISODES
    options = backend.heavy_run_once_options if heavy else backend.run_once_options
    jit_shardings = {}
    if shardings is not None:
        jit_shardings = {
            "in_shardings": (shardings,),
            "out_shardings": NamedSharding(backend.mesh, PartitionSpec()),
        }
    compiled = compile_with(returns, abstract, options=options, **jit_shardings)
    return lambda state: distributed.to_host_everywhere(compiled(state)).mean(axis=1)


def compile_init(trainer: Trainer, layout: Layout, shardings: Any) -> Callable:
    """The compiled ``(keys, hyper) -> [R] state`` (no weak types, see
    :func:`strong`), built with the backend's run-once options and placing
    the state as ``shardings``."""
    config = trainer.config
    backend = trainer.backend
    return compile_with(
        lambda k, h: strong(trainer.init_batch(k, h)),
        row_keys(config, layout),
        row_hyper(config, layout),
        options=backend.run_once_options,
        out_shardings=shardings,
    )


def _summary(
    config: TrainConfig,
    layout: Layout,
    host: _Host,
    eval_returns: np.ndarray | None,
    wall_seconds: float,
    compile_seconds: float,
) -> dict[str, Any]:
    final_returns = host.recent
    summary: dict[str, Any] = {
        "algo": config.algo,
        "env": config.env,
        "num_seeds": config.num_seeds,
        "final_return": _nanmean(final_returns),
        "final_return_per_seed": [_num(x) for x in final_returns],
        "eval_return": None if eval_returns is None else float(np.mean(eval_returns)),
        "eval_return_per_seed": []
        if eval_returns is None
        else [float(x) for x in eval_returns],
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
            entry["final_return"] = _nanmean(final_returns[rows])
            entry["final_return_per_seed"] = [_num(x) for x in final_returns[rows]]
            if eval_returns is not None:
                entry["eval_return"] = float(np.mean(eval_returns[rows]))
                entry["eval_return_per_seed"] = [float(x) for x in eval_returns[rows]]
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


def _rows(metrics, layout: Layout, host: _Host, chunk_start, chunk_end):
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


def _progress_bar(config: TrainConfig, enabled: bool, initial: int = 0):
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


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _nanmean(x: np.ndarray) -> float | None:
    finite = x[np.isfinite(x)]
    return float(finite.mean()) if finite.size else None
