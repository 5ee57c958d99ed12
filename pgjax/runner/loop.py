"""The host loop: open or resume a run, train it chunk by chunk, finish it.

Per chunk the loop makes one call into the compiled program and one transfer
of the chunk's metrics to the host; the device never waits on Python inside a
chunk. :func:`run` reads as its four steps: :func:`_open` (the folder, the
trainer, the layout over the devices), :func:`_start` (a fresh or restored
state and the compiled chunk), :func:`_train` (chunks, metrics, checkpoints)
and :func:`_finish` (evaluation, the last checkpoint, summary.json).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pgjax import distributed, plotting
from pgjax.backend import Backend
from pgjax.checkpoints import Checkpointer
from pgjax.compilation import compile_lowered, lower
from pgjax.config import TrainConfig
from pgjax.hardware import backend_for
from pgjax.runner import control, folder, programs, report
from pgjax.runner.layout import Layout, make_layout, row_hyper, row_keys
from pgjax.train import Trainer, make_train


@dataclasses.dataclass
class _Run:
    """What one run holds while it trains."""

    config: TrainConfig
    sweep: dict[str, list[float]]
    run_dir: Path
    layout: Layout
    trainer: Trainer
    abstract: Any  # the [R] state's shapes and dtypes
    shardings: Any  # where its leaves live (None: one device)
    primary: bool  # process 0, which writes the folder's files
    checkpointer: Checkpointer
    interrupts: control.Interrupts
    agreement: control.Agreement
    pool: concurrent.futures.ThreadPoolExecutor
    start_time: float
    host: report.Host
    state: Any = None
    resumed_from: int | None = None
    wall_offset: float = 0.0  # wall seconds the run had before this start
    compile_seconds: float = 0.0
    writer: Any = None
    tensorboard: Any = None
    bar: Any = None
    last_saved: control.SaveMarker | None = None

    @property
    def columns(self) -> list[str]:
        """metrics.csv's columns."""
        labels = [*self.layout.label_columns(), "update", "step", "wall_time"]
        return labels + list(self.trainer.metric_names)

    def wall_time(self, now: float) -> float:
        """Seconds since the run first started (earlier starts included)."""
        return self.wall_offset + now - self.start_time

    def close(self) -> None:
        for closeable in (self.bar, self.writer, self.tensorboard):
            if closeable is not None:
                closeable.close()
        try:
            self.checkpointer.close()
        finally:
            self.pool.shutdown(wait=True)


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
) -> report.RunResult:
    """Trains ``config.num_seeds`` seeds (per swept configuration), writes the folder.

    Args:
      config: a validated configuration.
      run_dir: the run folder (created if missing).
      start_time: ``time.time()`` at process start; ``wall_time`` counts from it
        (on resume, from the run's first start: the checkpoint's elapsed wall
        time is added).
      progress: show a progress bar on stderr.
      on_chunk: optional callback after each chunk (for tests and tools) with
        ``steps``, ``updates`` (per row), ``chunks`` and ``checkpoint`` (the
        newest checkpoint's step, or None).
      resume: continue the run in ``run_dir`` from its newest checkpoint (from
        the start if it has none). ``config`` must equal config.json except
        for :data:`~pgjax.runner.folder.RESUME_MAY_CHANGE`;
        ``updates_per_chunk = 0`` takes the stored value.
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
    config = _checked_config(config, run_dir, resume, sweep)
    r = _open(config, sweep, run_dir, resume, backend, start_time, handle_signals)
    try:
        with r.interrupts:
            chunk_fn = _start(r, resume)
            _open_logs(r, progress)
            _train(r, chunk_fn, on_chunk)
            summary = _finish(r)
    finally:
        r.close()
    signum = r.agreement.signum()
    return report.RunResult(
        summary=summary, state=r.state, run_dir=run_dir, signum=signum
    )


def _checked_config(
    config: TrainConfig, run_dir: Path, resume: bool, sweep: dict[str, list[float]]
) -> TrainConfig:
    """``config`` resolved, and checked against the run it resumes."""
    if resume:
        saved, saved_sweep = folder.load_run_config(run_dir)
        if config.updates_per_chunk == 0:
            config = dataclasses.replace(
                config, updates_per_chunk=saved.updates_per_chunk
            )
        folder.check_resumable(saved, saved_sweep, config, sweep)
    config = folder.resolve_config(config)
    if config.tensorboard and not folder.tensorboard_available():
        raise folder.TensorBoardMissingError(
            "--tensorboard", "needs tensorboardX: pip install 'pgjax[tensorboard]'"
        )
    return config


def _open(
    config: TrainConfig,
    sweep: dict[str, list[float]],
    run_dir: Path,
    resume: bool,
    backend: Backend | None,
    start_time: float,
    handle_signals: bool,
) -> _Run:
    """The trainer on its layout over the devices, and the run folder."""
    layout = make_layout(config, sweep)
    if backend is None:
        backend = backend_for(config, layout.num_rows)
    trainer = make_train(config, backend)
    abstract = programs.abstract_state(trainer, layout)
    # Several processes (jax.distributed) run this same loop on their shares
    # of the devices; process 0 alone writes the run folder's files, every
    # process writes its shards of each checkpoint.
    primary = distributed.is_primary()
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpointer = Checkpointer(run_dir, keep=config.keep_checkpoints)
    if not resume and checkpointer.steps():
        checkpointer.close()
        raise folder.RunFolderError(
            "--run-dir",
            f"{run_dir} already has checkpoints of another run; resume it or "
            f"use a fresh folder",
        )
    if not resume and primary:
        folder.write_json_atomic(
            run_dir / "config.json", folder.config_to_json(config, sweep)
        )
    interrupts = control.Interrupts(handle_signals)
    return _Run(
        config=config,
        sweep=sweep,
        run_dir=run_dir,
        layout=layout,
        trainer=trainer,
        abstract=abstract,
        shardings=trainer.state_shardings(abstract),
        primary=primary,
        checkpointer=checkpointer,
        interrupts=interrupts,
        agreement=control.Agreement(interrupts),
        # Two workers: the chunk compiles in one while the initial state's
        # program runs in the other; afterwards one call at a time.
        pool=concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="pgjax-run"),
        start_time=start_time,
        host=report.Host.fresh(layout.num_rows),
    )


def _start(r: _Run, resume: bool) -> Callable:
    """Sets ``r.state`` (fresh, or the newest checkpoint) and returns the
    compiled training chunk."""
    config, trainer, backend = r.config, r.trainer, r.trainer.backend
    compile_start = time.time()

    def compile_training_chunk():
        # Lowered here (Python, holding the GIL) before the initial state's
        # program; compiled in a worker (no GIL) with the backend's options.
        lowered = lower(
            trainer.train_chunk_batch,
            r.abstract,
            donate_argnums=0,
            **programs.chunk_shardings(backend, r.shardings),
        )
        return r.pool.submit(compile_lowered, lowered, backend.chunk_options)

    if resume and r.checkpointer.latest_step() is not None:
        r.state, host_json, r.resumed_from = r.checkpointer.restore(
            r.abstract, r.shardings
        )
        r.host = report.Host.from_json(host_json, r.layout.num_rows)
        if r.host.steps.min() > config.total_timesteps:
            raise folder.RunFolderError(
                "--total-timesteps",
                f"the run already has {int(r.host.steps.min())} steps per "
                f"seed at its newest checkpoint; give at least that",
            )
        r.checkpointer.delete_after(r.resumed_from)  # unreadable newer ones
        chunk_compiled = compile_training_chunk()
    else:
        # The chunk compiles in a worker while this thread compiles the
        # initial state's program: a compile leaves part of the cores idle
        # (its HLO passes run on one thread), and the other compile fills
        # them, so the first chunk starts sooner from an empty cache.
        chunk_compiled = compile_training_chunk()
        keys, hyper = row_keys(config, r.layout), row_hyper(config, r.layout)
        init = programs.compile_init(trainer, keys, hyper, r.shardings)
        r.state = control.wait(r.pool, init, keys, hyper)
    if resume and r.primary:
        _truncate_metrics(r)
        folder.write_json_atomic(
            r.run_dir / "config.json", folder.config_to_json(config, r.sweep)
        )
    # The evaluation compiles after training, so that training starts sooner
    # (and an interrupted run never builds it).
    chunk_fn = chunk_compiled.result()
    r.compile_seconds = time.time() - compile_start
    r.host.compile_seconds += r.compile_seconds
    r.wall_offset = r.host.wall_seconds
    r.last_saved = control.SaveMarker.at(config, r.host, r.resumed_from)
    return chunk_fn


def _truncate_metrics(r: _Run) -> None:
    """metrics.csv back to the rows of the checkpoint the run resumes from."""
    kept = folder.truncate_metrics(
        r.run_dir / "metrics.csv", r.columns, r.host.csv_rows
    )
    if kept < r.host.csv_rows:
        print(
            f"warning: metrics.csv had only {kept} of the {r.host.csv_rows} "
            f"rows of checkpoint {r.resumed_from}",
            file=sys.stderr,
        )
    r.host.csv_rows = kept


def _open_logs(r: _Run, progress: bool) -> None:
    """metrics.csv, TensorBoard and the progress bar (process 0 only)."""
    if r.primary:
        r.writer = folder.MetricsWriter(r.run_dir / "metrics.csv", r.columns)
    else:
        r.writer = folder.Discard()
    if r.config.tensorboard and r.primary:
        purge = [int(s) + 1 if s > 0 else None for s in r.host.steps]
        r.tensorboard = folder.TensorBoardLogger(
            r.run_dir, r.layout, r.trainer.metric_names, purge, r.host.sessions
        )
    r.bar = report.progress_bar(
        r.config, progress and r.primary, int(r.host.steps.min())
    )


def _save(r: _Run, final: bool = False) -> None:
    """A checkpoint of ``r.state`` and the host counters (once per step)."""
    if r.last_saved.step == r.host.step:
        return
    r.writer.sync()
    now = time.time()
    r.host.wall_seconds = r.wall_time(now)
    r.checkpointer.save(r.host.step, r.state, r.host.to_json())
    if final:
        r.checkpointer.wait()
    cost = time.time() - now
    r.host.checkpoint_seconds += cost
    r.last_saved.update(r.host, cost)


def _train(r: _Run, chunk_fn: Callable, on_chunk: Callable | None) -> None:
    """Chunks until every row has its steps or a signal stops the run."""
    config, host = r.config, r.host
    checked = tuple(n for n in r.trainer.algorithm.metric_names if n != "learning_rate")
    slowest = 0.0
    while not r.agreement.signum() and not np.all(host.steps >= config.total_timesteps):
        chunk_start = time.time()
        new_state, metrics = control.wait_chunk(
            r.pool,
            programs.call_chunk,
            chunk_fn,
            r.state,
            slowest=slowest,
            label=f"chunk {host.chunks + 1}",
        )
        chunk_end = time.time()
        slowest = max(slowest, chunk_end - chunk_start)
        host.train_seconds += chunk_end - chunk_start
        _check_finite(metrics, checked, host)
        r.state = new_state
        host.chunks += 1
        _record_chunk(r, metrics, chunk_start, chunk_end)
        finished = not np.any(metrics["active"][:, -1]) or np.all(
            host.steps >= config.total_timesteps
        )
        due = not finished and control.checkpoint_due(config, host, r.last_saved)
        if r.agreement.at_chunk_end(due):
            _save(r)
        if on_chunk is not None:
            on_chunk(
                {
                    "steps": host.steps.copy(),
                    "updates": host.updates.copy(),
                    "chunks": host.chunks,
                    "checkpoint": r.last_saved.step,
                }
            )
        if finished:
            break


def _check_finite(metrics, checked: tuple[str, ...], host) -> None:
    """Raises :class:`control.NonFiniteError` naming the first update of the
    chunk whose ``checked`` metrics hold NaN or inf."""
    bad = control.first_non_finite(metrics, checked)
    if bad is not None:
        slot, name = bad
        raise control.NonFiniteError(
            f"non-finite {name} at update {int(host.updates.min()) + slot + 1}: "
            f"training stopped; the run folder keeps the metrics up to the "
            f"previous chunk and the last checkpoint"
        )


def _record_chunk(r: _Run, metrics, chunk_start: float, chunk_end: float) -> None:
    """The chunk's rows into metrics.csv (and TensorBoard), and the progress bar."""
    host = r.host
    rows = report.csv_rows(
        metrics, r.layout, host, r.wall_time(chunk_start), r.wall_time(chunk_end)
    )
    r.writer.write(rows)
    host.csv_rows += len(rows)
    if r.tensorboard is not None:
        r.tensorboard.write(rows)
    _show_progress(r)


def _show_progress(r: _Run) -> None:
    host, bar = r.host, r.bar
    done_steps = int(host.steps.min())
    # Whole updates overshoot total_timesteps by up to one update: grow the
    # bar's total so it ends at 100 % instead of turning into a bare count.
    bar.total = max(bar.total, done_steps)
    bar.update(done_steps - bar.n)
    bar.set_postfix(
        ret=f"{np.nanmean(host.recent):.1f}" if np.isfinite(host.recent).any() else "–",
        sps=f"{host.steps.sum() / max(host.train_seconds, 1e-9):,.0f}",
    )


def _finish(r: _Run) -> dict[str, Any]:
    """Evaluation (unless interrupted), the final checkpoint, summary.json and
    the learning curve; returns the summary."""
    config, host = r.config, r.host
    signum = r.agreement.signum()
    compile_seconds = r.compile_seconds
    evaluation = eval_returns = None
    if signum is None:
        # Before the final save, so that its host record counts the compile.
        eval_start = time.time()
        evaluation = control.wait(
            r.pool,
            programs.compile_evaluation,
            r.trainer,
            r.abstract,
            r.shardings,
            config.eval_episodes,
        )
        eval_compile = time.time() - eval_start
        compile_seconds += eval_compile
        host.compile_seconds += eval_compile
    _save(r, final=True)
    if evaluation is not None:
        eval_returns = control.wait(r.pool, evaluation, r.state)
    summary = report.summarize(
        config,
        r.layout,
        host,
        eval_returns,
        r.wall_time(time.time()),
        compile_seconds,
    )
    summary.update(programs.layout_summary(r.trainer.backend))
    summary["checkpoint"] = r.last_saved.step
    if r.resumed_from is not None:
        summary["resumed_from"] = r.resumed_from
    if signum is not None:
        summary["interrupted"] = True
        summary["signal"] = signal.Signals(signum).name
    if r.primary:
        _write_results(r, summary, signum)
    # The others wait for process 0's files before they exit.
    distributed.barrier("pgjax-run-written")
    return summary


def _write_results(r: _Run, summary: dict[str, Any], signum: int | None) -> None:
    if signum is not None:
        print(
            f"{summary['signal']}: stopped at {r.host.step:,} steps per seed; "
            f"checkpoint saved; continue with: python scripts/train.py --resume "
            f"--run-dir {r.run_dir}",
            file=sys.stderr,
            flush=True,
        )
    folder.write_json_atomic(r.run_dir / "summary.json", summary)
    title = f"{r.config.algo} on {r.config.env}"
    plotting.plot_runs(
        [r.run_dir],
        r.run_dir / "learning_curve.png",
        group_by=r.layout.names,
        title=title + (" (interrupted)" if signum is not None else ""),
    )
