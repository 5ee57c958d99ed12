"""A finished or interrupted run folder, opened again by the scripts that
read it (evaluate.py, variance.py): its config, trainer, layout and a
checkpoint's state. Every failure is a :class:`RunFolderError` naming the
flag to blame (``--run-dir`` or ``--checkpoint``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pgjax import cpu_linalg
from pgjax.checkpoints import Checkpointer, CheckpointError
from pgjax.config import TrainConfig
from pgjax.runner.folder import RunFolderError, load_run_config
from pgjax.runner.layout import Layout, make_layout
from pgjax.runner.programs import abstract_state
from pgjax.train import Trainer, make_train


def open_run(run_dir: Path) -> tuple[TrainConfig, Trainer, Layout]:
    """``(config, trainer, layout)`` of the run in ``run_dir`` (its config.json).

    Installs :func:`pgjax.cpu_linalg.install` as a run does: the scripts that
    read a run evaluate its policy in batches as large as the run's own.
    """
    cpu_linalg.install()
    config, sweep = load_run_config(run_dir)
    try:
        trainer = make_train(config)
        layout = make_layout(config, sweep)
    except ValueError as error:
        raise RunFolderError("--run-dir", f"config.json: {error}") from None
    return config, trainer, layout


def restore_run(
    run_dir: Path, trainer: Trainer, layout: Layout, step: int | None = None
) -> tuple[Any, int]:
    """The ``[R]`` state of the run's checkpoint at ``step`` (None: the
    newest readable one) and its step."""
    checkpointer = Checkpointer(run_dir, read_only=True)
    try:
        if checkpointer.latest_step() is None:
            raise RunFolderError("--run-dir", f"{run_dir} has no checkpoint")
        if step is not None and step not in checkpointer.steps():
            available = ", ".join(map(str, checkpointer.steps()))
            raise RunFolderError(
                "--checkpoint",
                f"no checkpoint at step {step} in {run_dir} (available: {available})",
            )
        try:
            state, _, step = checkpointer.restore(
                abstract_state(trainer, layout), step=step
            )
        except CheckpointError as error:
            raise RunFolderError("--checkpoint", str(error)) from None
    finally:
        checkpointer.close()
    return state, step
