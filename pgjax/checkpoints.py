"""Checkpoints of the whole training state with orbax: atomic, pruned, restorable.

Shell layer: files only, no training logic. A checkpoint is one
folder ``<run_dir>/checkpoints/<step>/`` holding two orbax items:

* ``state``: the full :class:`~pgjax.train.TrainState` pytree with its leading
  row axis (seeds, or configurations × seeds in a sweep): parameters, optimiser
  states, observation statistics, environment states, PRNG keys, counters and
  hyperparameters, saved bit for bit;
* ``host``: a small JSON dict of what the runner keeps on the host (steps and
  updates per row, recent returns, seconds spent, rows of ``metrics.csv``).

``step`` is the environment steps per seed at the checkpoint (the largest over
rows when rows differ, as with REINFORCE's whole episodes).

Atomicity: orbax writes ``<step>.orbax-checkpoint-tmp`` and renames it to
``<step>`` only once every file is written, so an interrupted save (a crash, a
second Ctrl-C, a full disk) never replaces the last good checkpoint; its
leftovers are invisible to :meth:`Checkpointer.steps` and deleted the next time
a run opens the folder for writing. Old checkpoints are pruned to ``keep``
only after a new one is complete.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"
# Version of the ``host`` dict; bump when its meaning changes.
HOST_FORMAT = 1

_log = logging.getLogger(__name__)


def _one_line(error: Exception, limit: int = 400) -> str:
    """``error``'s message on one line, at most ``limit`` characters (orbax
    lists a mismatched tree over many lines, e.g. the state of a run written
    by a pgjax whose training state had other fields)."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read."""


def checkpoint_dir(run_dir: Path | str) -> Path:
    """``<run_dir>/checkpoints`` (absolute: orbax needs absolute paths)."""
    return (Path(run_dir) / CHECKPOINT_DIR).absolute()


def owned_copy(tree: Any) -> Any:
    """A copy of every leaf that the save owns.

    The runner donates the state to the next chunk call, which may reuse its
    device buffers; an asynchronous save must own its data. Arrays this
    process holds whole are copied to host memory; arrays split across
    processes (a multi-host run) are copied on their devices, and orbax
    writes each process's shards.
    """
    if all(getattr(x, "is_fully_addressable", True) for x in jax.tree.leaves(tree)):
        return jax.tree.map(lambda x: np.array(x, copy=True), jax.device_get(tree))
    return jax.tree.map(jnp.copy, tree)


def abstract_like(tree: Any, shardings: Any = None) -> Any:
    """``ShapeDtypeStruct`` leaves (not weakly typed) describing ``tree``,
    with ``shardings`` (a matching pytree) where given."""
    if shardings is None:
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        tree,
        shardings,
    )


class Checkpointer:
    """Saves and restores run checkpoints in ``<run_dir>/checkpoints``.

    Args:
      run_dir: the run folder.
      keep: newest checkpoints kept; older ones are deleted after each save.
      async_save: write in a background thread (the caller only waits for the
        host copy); :meth:`wait` or :meth:`close` waits for the files.
      read_only: open an existing folder for restoring only (no cleanup, no
        folder created).
    """

    def __init__(
        self,
        run_dir: Path | str,
        keep: int = 3,
        async_save: bool = True,
        read_only: bool = False,
    ):
        self.directory = checkpoint_dir(run_dir)
        self.read_only = read_only
        # (orbax's own read_only option logs warnings; not saving is enough.)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else keep,
            create=not read_only,
            cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=async_save and not read_only,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first."""
        if not self.directory.is_dir():
            return []
        self._manager.reload()  # another process may have written since
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: Any, host: dict[str, Any]) -> None:
        """Saves ``state`` (any pytree of arrays) and the ``host`` dict at ``step``.

        Returns once the state is copied to host memory; with ``async_save``
        the files are written in the background. A step that already has a
        checkpoint is left as it is.

        Raises:
          CheckpointError: the save (or the previous background save) failed;
            the last complete checkpoint is intact.
        """
        if self.read_only:
            raise CheckpointError(f"{self.directory} was opened read-only")
        host = {**host, "format": HOST_FORMAT, "step": int(step)}
        data = owned_copy(state)
        try:
            self._manager.wait_until_finished()
            if int(step) in self._manager.all_steps():
                return
            self._manager.save(
                int(step),
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(data),
                    host=ocp.args.JsonSave(host),
                ),
                force=True,
            )
        except Exception as error:
            raise CheckpointError(
                f"saving checkpoint {step} in {self.directory} failed: {error}"
            ) from error

    def wait(self) -> None:
        """Waits until every started save is on disk.

        Raises:
          CheckpointError: a background save failed.
        """
        try:
            self._manager.wait_until_finished()
        except Exception as error:
            raise CheckpointError(
                f"saving a checkpoint in {self.directory} failed: {error}"
            ) from error

    def restore(
        self, abstract_state: Any, shardings: Any = None, step: int | None = None
    ) -> tuple[Any, dict[str, Any], int]:
        """Restores a checkpoint: ``(state, host, step)``.

        Args:
          abstract_state: a pytree of ``jax.ShapeDtypeStruct`` (for example
            ``jax.eval_shape(trainer.init_batch, keys)``) giving the structure,
            shapes and dtypes to restore into.
          shardings: where to place each leaf (a matching pytree of
            shardings, e.g. :meth:`pgjax.train.Trainer.state_shardings`); None
            puts it on the default device. A checkpoint restores onto any
            number of devices and processes, whatever it was saved from.
          step: the checkpoint to restore; ``None`` restores the newest one
            that can be read, falling back to older ones (with a warning) if
            the newest is damaged.

        Raises:
          CheckpointError: no checkpoint, the requested step does not exist, or
            none could be read (or it does not match ``abstract_state``).
        """
        available = self.steps()
        if not available:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        if step is not None and step not in available:
            raise CheckpointError(
                f"no checkpoint at step {step} in {self.directory}; "
                f"available: {', '.join(map(str, available))}"
            )
        candidates = [step] if step is not None else available[::-1]
        errors = []
        for candidate in candidates:
            try:
                state, host = self._restore_step(abstract_state, shardings, candidate)
            except Exception as error:  # a damaged or mismatched checkpoint
                reason = _one_line(error)
                errors.append(f"step {candidate}: {reason}")
                if step is None:
                    _log.warning("cannot read checkpoint %s: %s", candidate, reason)
                continue
            return state, host, candidate
        raise CheckpointError(
            f"cannot restore a checkpoint from {self.directory} ({errors[0]})"
        )

    def _restore_step(
        self, abstract_state: Any, shardings: Any, step: int
    ) -> tuple[Any, dict]:
        if shardings is None:
            # A target placement is what lets orbax restore a checkpoint saved
            # from any topology (several devices or processes) onto this one.
            one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
            shardings = jax.tree.map(lambda _: one_device, abstract_state)
        abstract_state = abstract_like(abstract_state, shardings)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                host=ocp.args.JsonRestore(),
            ),
        )
        state, host = restored["state"], restored["host"]
        if jax.tree.structure(state) != jax.tree.structure(abstract_state):
            raise CheckpointError("the saved state has a different structure")

        def checked(x, like):
            if x.shape != like.shape or x.dtype != like.dtype:
                raise CheckpointError(
                    f"saved leaf {x.dtype}{list(x.shape)} does not match "
                    f"{like.dtype}{list(like.shape)}"
                )
            return x

        state = jax.tree.map(checked, state, abstract_state)
        if not isinstance(host, dict) or host.get("format") != HOST_FORMAT:
            raise CheckpointError("unknown checkpoint format")
        return state, host

    def delete_after(self, step: int) -> list[int]:
        """Deletes checkpoints newer than ``step`` (returns their steps)."""
        newer = [s for s in self.steps() if s > step]
        for s in newer:
            self._manager.delete(s)
        return newer

    def close(self) -> None:
        """Waits for background saves, then releases orbax's resources."""
        try:
            self.wait()
        finally:
            self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
