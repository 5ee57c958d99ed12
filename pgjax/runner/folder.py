"""The run folder's files: config.json, metrics.csv, TensorBoard events.

Every file is written atomically (a temporary file, then a rename), so an
abrupt exit leaves the previous version of each file, never half of one.
config.json holds the resolved configuration and the swept lists; a resumed
run must match it except for :data:`RESUME_MAY_CHANGE`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pgjax.config import (
    TrainConfig,
    flag_name,
    resolve_algorithm_defaults,
)
from pgjax.runner.layout import Layout
from pgjax.train import default_updates_per_chunk

# Settings that a resumed run may change: they do not alter the computation
# of the updates already done (a longer --total-timesteps does stretch the
# schedules of --anneal-lr and --anneal-kl from the resumed update on).
RESUME_MAY_CHANGE = (
    "total_timesteps",
    "checkpoint_every",
    "keep_checkpoints",
    "tensorboard",
    "eval_episodes",
    "devices",  # where the run's work is done, not what it computes
)


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
#: Version 3: reinforce divides by episodes by default (``pg_normalizer``).
CONFIG_VERSION = 3


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
    if data.get("config_version", 1) < 3 and values.get("algo") == "reinforce":
        # Before version 3 reinforce divided by the batch's valid steps.
        values["pg_normalizer"] = "steps"
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


class Discard:
    """Stands in for the metrics writer on processes other than process 0."""

    def write(self, rows) -> None:
        pass

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass


def truncate_metrics(path: Path, columns: list[str], rows: int) -> int:
    """Keeps the header and the first ``rows`` data rows of metrics.csv.

    Rewrites the file atomically. Returns the number of rows kept (fewer than
    ``rows`` only if the file lost rows, e.g. in an OS crash). A file written
    by an older pgjax whose columns are all among ``columns`` (the algorithm
    has since gained metrics, or reordered them) is rewritten with
    ``columns`` as its header, the kept rows' values moved under their
    columns and the new columns left empty (NaN).

    Raises:
      RunFolderError: the header has a column that ``columns`` lacks.
    """
    if not path.exists():
        return 0
    with open(path, newline="") as f:
        lines = f.read().splitlines(keepends=True)
    if not lines:
        return 0
    header = next(csv.reader([lines[0]]))
    if not set(header) <= set(columns):
        raise RunFolderError(
            "--run-dir",
            f"{path} has columns {','.join(header)}, expected {','.join(columns)}",
        )
    kept = [line for line in lines[1 : rows + 1] if line.endswith("\n")]
    if header != columns:
        lines[0], kept = _reordered(header, columns, kept)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        f.writelines([lines[0], *kept])
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(kept)


def _reordered(
    header: list[str], columns: list[str], lines: list[str]
) -> tuple[str, list[str]]:
    """The header line of ``columns`` and ``lines`` (CSV rows under
    ``header``) with each value under its column, absent columns empty."""

    def line(values) -> str:
        out = io.StringIO()
        csv.writer(out).writerow(values)  # the dialect MetricsWriter writes
        return out.getvalue()

    rows = [dict(zip(header, values, strict=True)) for values in csv.reader(lines)]
    return line(columns), [line([row.get(c, "") for c in columns]) for row in rows]


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
    purged (``purge_step``), as metrics.csv's rows are truncated. ``start``
    numbers the run's starts (1, then one more per resume): each start writes
    event files of its own.
    """

    def __init__(
        self,
        run_dir: Path,
        layout: Layout,
        metric_names: Sequence[str],
        purge_steps: Sequence[int | None],
        start: int = 1,
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
                    # Event files are named by the second they open in: a
                    # resume within the same second would overwrite the
                    # earlier start's file without a suffix of its own.
                    filename_suffix=f".start{start}",
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
