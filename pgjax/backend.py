"""What the core knows about the hardware: one value, built by the shell.

The pure core (:mod:`pgjax.train`, :mod:`pgjax.algos`, :mod:`pgjax.rollout`)
computes the same numbers on any hardware; what changes with the hardware is
only *how* it computes them. All of that enters through one frozen
:class:`Backend`, which the shell (the CLI, the runner, a benchmark) builds and
hands to :func:`pgjax.train.make_train`:

* ``mesh``: the devices, with a :data:`SEEDS` axis (seeds and swept
  configurations are split over it: no collectives) and an :data:`ENVS` axis
  (each seed's envs are split over it: means become all-reduces). ``None``
  means one device and nothing split.
* ``block_rows``: rows per block of the update's forward/backward passes (0:
  the whole batch in one pass, the right choice on accelerators).
* ``chunk_options``, ``run_once_options``, ``heavy_run_once_options``: XLA
  compile options of the training chunk and of the programs that run once.
* ``dot_general``: the product the networks' Dense layers use (``None``:
  ``jax.lax.dot_general``).

``Backend()`` is the identity profile: one device, XLA's defaults, nothing
tuned. It is what a library user gets, what a GPU or TPU run gets apart from
its mesh, and what the tests run to cover the non-CPU path. The profile
measured on CPUs is built by :func:`pgjax.cpu.cpu_backend`, and only the shell
imports that module. Nothing below the shell asks JAX which devices exist.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from jax.sharding import Mesh

#: The mesh axis seeds and swept configurations are split over.
SEEDS = "seeds"
#: The mesh axis each seed's envs are split over.
ENVS = "envs"


@dataclasses.dataclass(frozen=True)
class Backend:
    """How the core runs on the hardware at hand (see the module docstring).

    Attributes:
      mesh: devices with axes ``(SEEDS, ENVS)``, or None for one device.
      block_rows: rows per block of the update's passes; 0 = whole batch.
      chunk_options: XLA compile options of the training chunk.
      run_once_options: XLA compile options of programs that run once (the
        initial state, the final evaluation).
      heavy_run_once_options: ... of a run-once program with much work.
      dot_general: the Dense layers' product (None: ``lax.dot_general``).
    """

    mesh: Mesh | None = None
    block_rows: int = 0
    chunk_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    run_once_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    heavy_run_once_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    dot_general: Callable | None = None

    @property
    def seed_shards(self) -> int:
        """Devices the seeds are split across (1: not split)."""
        return 1 if self.mesh is None else self.mesh.shape[SEEDS]

    @property
    def env_shards(self) -> int:
        """Devices each seed's envs are split across (1: not split)."""
        return 1 if self.mesh is None else self.mesh.shape[ENVS]

    @property
    def devices(self) -> int:
        """Devices in the mesh (1 without one)."""
        return 1 if self.mesh is None else self.mesh.size

    def __hash__(self) -> int:  # the option dicts are not hashable
        return hash((self.mesh, self.block_rows, self.dot_general))


IDENTITY = Backend()


def mesh_shape(devices: int, rows: int, num_envs: int) -> tuple[int, int]:
    """``(seed_shards, env_shards)`` for ``devices`` devices, ``rows`` seeds
    (or configurations × seeds) and ``num_envs`` envs per seed.

    Seeds are split first, over the largest count that divides both the
    seeds and the devices (their programs need no collectives); the devices
    of each seed group split its envs, as many as divide ``num_envs``. The
    product may be less than ``devices`` when nothing divides evenly: the
    rest stay idle rather than unbalance the work.
    """
    seed_shards = _largest_divisor(rows, devices, devices)
    env_shards = _largest_divisor(num_envs, devices // seed_shards)
    return seed_shards, env_shards


def _largest_divisor(n: int, at_most: int, also_divides: int = 0) -> int:
    """The largest divisor of ``n`` that is at most ``at_most`` (≥ 1) and,
    if given, also divides ``also_divides``."""
    for d in range(max(1, min(n, at_most)), 0, -1):
        if n % d == 0 and (also_divides == 0 or also_divides % d == 0):
            return d
    return 1


def make_mesh(devices: list, rows: int, num_envs: int) -> Mesh | None:
    """A ``(SEEDS, ENVS)`` mesh over the first devices of ``devices`` that
    :func:`mesh_shape` uses; None when that is one device."""
    seed_shards, env_shards = mesh_shape(len(devices), rows, num_envs)
    if seed_shards * env_shards == 1:
        return None
    grid = np.asarray(devices[: seed_shards * env_shards], dtype=object)
    return Mesh(grid.reshape(seed_shards, env_shards), (SEEDS, ENVS))


__all__ = ["ENVS", "IDENTITY", "SEEDS", "Backend", "make_mesh", "mesh_shape"]
