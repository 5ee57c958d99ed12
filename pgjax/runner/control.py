"""Controlling a running loop: signals, waits, checkpoint timing, failures.

* **Signals**: the first SIGINT/SIGTERM lets the chunk in flight finish, saves
  a checkpoint and ends the run as interrupted; a second one exits at once.
  With several processes, the processes agree at every chunk end on whether
  to stop and whether to checkpoint (:class:`Agreement`).
* **Checkpoints** are taken every ``checkpoint_every`` updates or, by
  default, past each tenth of the run but at most once a minute
  (:func:`checkpoint_due`).
* **Non-finite metrics** stop the run, naming the update and the metric.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from pgjax.config import (
    TrainConfig,
)
from pgjax.runner.report import Host

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


class Interrupts:
    """First SIGINT/SIGTERM: request a stop; a second one: exit at once.

    The training loop waits for the device with interruptible waits (see
    :func:`wait`), so the handler runs promptly even during a long chunk.
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


def wait(pool: concurrent.futures.Executor, fn: Callable, *args) -> Any:
    """Runs ``fn`` in the worker thread; the main thread waits interruptibly.

    A blocking device call in the main thread would defer Python signal
    handlers until it returns; waiting on a future lets them run at once.
    """
    return pool.submit(fn, *args).result()


#: A chunk running this many times longer than the slowest one before it (or
#: STALL_FIRST_SECONDS for the first) gets a warning on stderr.
STALL_FACTOR = 20.0


STALL_FIRST_SECONDS = 600.0


def wait_chunk(pool, fn: Callable, *args, slowest: float, label: str) -> Any:
    """:func:`wait` for a chunk, warning once if it seems stuck.

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


class Agreement:
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
class SaveMarker:
    """When and where the newest checkpoint was taken."""

    step: int | None  # its label (None: no checkpoint yet)
    updates: int  # updates.max() then
    tenth: int  # steps.min() // tenth_size then
    tenth_size: int  # total_timesteps // 10
    cost: float = 0.0  # seconds the save blocked training
    end: float = 0.0  # time.time() when it returned

    @classmethod
    def at(cls, config: TrainConfig, host: Host, step: int | None) -> SaveMarker:
        tenth_size = max(1, config.total_timesteps // 10)
        return cls(
            step=step,
            updates=int(host.updates.max()),
            tenth=int(host.steps.min()) // tenth_size,
            tenth_size=tenth_size,
            end=time.time(),
        )

    def update(self, host: Host, cost: float) -> None:
        self.step = host.step
        self.updates = int(host.updates.max())
        self.tenth = int(host.steps.min()) // self.tenth_size
        self.cost, self.end = cost, time.time()


def checkpoint_due(config: TrainConfig, host: Host, last: SaveMarker) -> bool:
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
