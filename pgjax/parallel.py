"""Data parallelism over a CPU's cores: the envs split across host devices.

XLA gives one CPU device's program its intra-op thread pool, but the
cache-sized row blocks of an update (:func:`pgjax.algos.base.blocked_grad`)
are too small to split: on a 2-core machine A2C's chunk ran only 1.1× faster
than on one core, while a hand-written A2C over whole-batch products gained
1.5×. With one JAX CPU device per core (``jax_num_cpu_devices``, see
:func:`use_cpu_cores`), the trainer splits the env axis across the devices:

* the rollout, GAE and every per-env computation run on each device's share
  of the envs (XLA's SPMD partitioner, from the sharding constraints of
  :func:`split_envs`), and means over the batch become all-reduces;
* each blocked pass (:func:`map_env_shards`) runs its block loop on the local
  envs of each device, in parallel, and sums its partial results across the
  devices once at the end.

Parameters and optimiser states are replicated: every device applies the same
summed gradient (XLA:CPU's all-reduce gives every device the same bits, so the
copies never drift; tests/test_parallel.py checks it). On other backends, with
one device, or when the devices do not divide the number of envs, nothing is
split and the programs are those of one device. A critic fit in ``M``
minibatches is split only when the devices also divide ``N / M`` (otherwise it
runs whole, correct but slower).

The devices synchronise at every rollout step and every all-reduce, which
costs more than the split saves on small batches: :func:`devices_that_pay`
says, from measurements on 2 cores, how many devices a run's batch keeps
busy enough, and ``train.py --cpu-devices 0`` gives the run that many.

Seeds (and sweep rows) are a different parallelism: a ``vmap`` over the
trainer's state, named :data:`SEEDS` (``Trainer.train_chunk_batch``), so that
loops with a data-dependent end can stop for all seeds at once
(:func:`all_seeds`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

#: The mesh axis the envs are split over.
AXIS = "envs"
#: ``[T, N, ...]`` leaves with their envs split across the devices.
ROWS = PartitionSpec(None, AXIS)
#: Leaves every device holds whole (parameters, scalars).
REPLICATED = PartitionSpec()
#: An output summed over the devices' partial results (:func:`map_env_shards`).
SUM = "sum"
#: The name of the ``vmap`` axis over seeds and sweep rows.
SEEDS = "seeds"


def all_seeds(flag: jax.Array) -> jax.Array:
    """``flag`` (bool) and-ed over the seeds vmapped as :data:`SEEDS`.

    For the predicate of a ``lax.while_loop``: a predicate that differs
    between vmapped rows turns, under ``vmap``, into a loop to the last row's
    end with a ``select`` of the *whole* carry at every iteration. For
    REINFORCE's episode rollout the carry holds its ``[500, N, ...]`` buffers,
    and that select cut two seeds' total steps/s to a sixth of one seed's.
    Reduced over the axis, the predicate is the same for every row, the loop
    stays an unbatched loop, and a row that is done simply runs on (its steps
    must be padding). Outside such a ``vmap`` (one seed), ``flag`` itself.
    """
    return _over_seeds(jax.lax.pmin, flag)


def max_over_seeds(count: jax.Array) -> jax.Array:
    """The largest ``count`` of the seeds vmapped as :data:`SEEDS` (``count``
    itself outside such a ``vmap``): a loop bound shared by the seeds, for the
    reason of :func:`all_seeds`. The rows past their own count must be no-ops.
    """
    return _over_seeds(jax.lax.pmax, count)


def _over_seeds(collective: Callable, x: jax.Array) -> jax.Array:
    try:
        jax.lax.axis_size(SEEDS)
    except NameError:  # not under a vmap over seeds
        return x
    return collective(x, SEEDS)


def use_cpu_cores(count: int | None = None) -> bool:
    """Makes JAX expose ``count`` CPU devices (default: the usable cores).

    Must run before JAX initialises its backends (before the first array or
    device query); returns False, changing nothing, if that already happened
    or if a count was already chosen (``XLA_FLAGS``'
    ``--xla_force_host_platform_device_count`` or ``jax_num_cpu_devices``).
    """
    if count is None:
        count = usable_cores()
    if count < 2 or "xla_force_host_platform_device_count" in os.environ.get(
        "XLA_FLAGS", ""
    ):
        return False
    if jax.config.jax_num_cpu_devices not in (-1, None):
        return False
    try:
        jax.config.update("jax_num_cpu_devices", int(count))
    except RuntimeError:  # backends already initialised
        return False
    return True


#: The fewest rows per update (``num_envs × num_steps``) each device must get
#: for splitting the envs across a CPU's devices to make a fixed-length
#: algorithm's ``train.py`` run faster. With less, the devices'
#: synchronisation (at every rollout step and every all-reduce) cost more
#: than the divided work saved. Measured on 2 cores (docs/performance.md,
#: "Twelfth session"): A2C trained 1.24× faster on one device at 1024 envs ×
#: 4 steps (2048 rows per device split), as fast at 8192 rows, and 1.18×
#: faster split at 16384 (8192 per device) and 1.49× at 4096 × 16. NPG and
#: TRPO, with more work per row (the critic's epochs, CG), ran 1.06× faster
#: on one device at 64 × 32 and 1.2–1.4× faster split from 128 × 32 (2048
#: rows per device).
MIN_ROWS_PER_DEVICE = {"a2c": 8192, "npg": 2048, "trpo": 2048}
#: REINFORCE runs episodes in a loop whose every step waits for all devices:
#: on 2 cores one device was 2× faster at 64 envs and as fast at 512, the
#: split 1.38× faster at 1024 and 1.2× at 2048 and 4096. Each device needs
#: this many envs.
MIN_ENVS_PER_DEVICE_EPISODES = 512


def devices_that_pay(algo: str, num_envs: int, num_steps: int, cores: int) -> int:
    """The CPU devices to split ``algo``'s envs across: the most, up to
    ``cores``, that divide ``num_envs`` and each get at least
    :data:`MIN_ROWS_PER_DEVICE` rows per update (REINFORCE:
    :data:`MIN_ENVS_PER_DEVICE_EPISODES` envs); 1 when no count does.
    ``train.py --cpu-devices 0`` gives the run this many.

    The minimums were measured on 2 cores; more devices synchronise at a
    higher cost, so on larger CPUs they are a lower bound on what pays.
    """
    if algo == "reinforce":
        work, least = num_envs, MIN_ENVS_PER_DEVICE_EPISODES
    else:
        work, least = num_envs * num_steps, MIN_ROWS_PER_DEVICE.get(algo, 0)
    for count in range(cores, 1, -1):
        if num_envs % count == 0 and work >= least * count:
            return count
    return 1


def usable_cores() -> int:
    """The cores this process may run on (1 where the OS does not say)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return 1


@functools.cache
def _cpu_mesh() -> Mesh | None:
    devices = jax.devices()
    if len(devices) < 2 or devices[0].platform != "cpu":
        return None
    return Mesh(np.asarray(devices), (AXIS,))


def env_mesh(num_envs: int) -> Mesh | None:
    """The mesh that splits ``num_envs`` envs, or None when nothing is split
    (not a CPU, one device, or a count the devices do not divide)."""
    mesh = _cpu_mesh()
    if mesh is None or num_envs % mesh.size:
        return None
    return mesh


def env_shards(num_envs: int) -> int:
    """How many devices ``num_envs`` envs are split across (1: not split)."""
    mesh = env_mesh(num_envs)
    return 1 if mesh is None else mesh.size


def _constrain(tree: Any, sharding: NamedSharding | None) -> Any:
    """Every leaf of ``tree`` constrained to ``sharding`` (None: as is)."""
    if sharding is None:
        return tree
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)


def replicated(num_envs: int) -> NamedSharding | None:
    """Every leaf whole on every device of :func:`env_mesh` (None without one):
    how a compiled training chunk takes and returns its state, so that the
    host loop, checkpoints and other programs see plain arrays."""
    mesh = env_mesh(num_envs)
    return None if mesh is None else NamedSharding(mesh, REPLICATED)


def replicate(tree: Any, num_envs: int) -> Any:
    """Constrains every leaf of ``tree`` to be whole on every device (inside a
    traced program; a no-op without :func:`env_mesh`). A state that enters
    and leaves a program replicated keeps one sharding from call to call, so
    ``jax.jit`` traces a chunk once."""
    return _constrain(tree, replicated(num_envs))


def place(tree: Any, num_envs: int) -> Any:
    """``tree`` copied to every device of :func:`env_mesh` (as is without one),
    for a chunk compiled with :func:`replicated` shardings."""
    sharding = replicated(num_envs)
    return tree if sharding is None else jax.device_put(tree, sharding)


def on_one_device(tree: Any) -> Any:
    """``tree`` on the default device, for a program compiled for one device
    (a replicated array's copy there, no transfer)."""
    return jax.device_put(tree, jax.devices()[0])


def split_envs(tree: Any, num_envs: int, axis: int = 0) -> Any:
    """Constrains every leaf of ``tree`` to be split across the devices along
    ``axis`` (its env axis); a no-op when :func:`env_mesh` is None."""
    mesh = env_mesh(num_envs)
    if mesh is None:
        return tree
    return _constrain(tree, NamedSharding(mesh, PartitionSpec(*([None] * axis), AXIS)))


def first_envs(x: jax.Array, count: int) -> jax.Array:
    """``count`` of the envs of ``x [T, N, ...]``: ``x[:, :count]`` on one
    device; split across devices, the first ``count / shards`` envs of each
    device's share, so that the subset stays split evenly (the envs are
    exchangeable, so either is a uniform sample)."""
    num_envs = x.shape[1]
    shards = env_shards(num_envs)
    if count >= num_envs:
        return x
    if shards == 1 or count % shards:
        return x[:, :count]
    grouped = x.reshape(x.shape[0], shards, num_envs // shards, *x.shape[2:])
    return grouped[:, :, : count // shards].reshape(x.shape[0], count, *x.shape[2:])


def map_env_shards(
    fn: Callable, num_envs: int, in_specs: tuple, out_specs: Any
) -> Callable:
    """``fn`` run on each device's share of the envs, in parallel.

    ``in_specs``: one :data:`ROWS` or :data:`REPLICATED` per argument (a
    prefix of its pytree). ``out_specs``: a prefix of the output's pytree
    with :data:`ROWS` (per-row outputs, back as ``[T, N, ...]``) or
    :data:`SUM` (each device's partial sum, summed across the devices).
    Without :func:`env_mesh`, ``fn`` itself: one device sees all envs.
    """
    mesh = env_mesh(num_envs)
    if mesh is None:
        return fn

    def is_spec(x):
        return x is None or isinstance(x, (str, PartitionSpec))

    def per_shard(*args):
        out = fn(*args)
        return jax.tree.map(
            lambda spec, y: (
                jax.tree.map(lambda v: jax.lax.psum(v, AXIS), y) if spec == SUM else y
            ),
            out_specs,
            out,
            is_leaf=is_spec,
        )

    specs = jax.tree.map(
        lambda spec: REPLICATED if spec == SUM else spec, out_specs, is_leaf=is_spec
    )
    return jax.shard_map(
        per_shard, mesh=mesh, in_specs=in_specs, out_specs=specs, check_vma=False
    )


def mean_over_shards(x: Any, sharded: bool) -> Any:
    """``pmean`` of every leaf over the devices inside a
    :func:`map_env_shards` function (``sharded``), else ``x``."""
    if not sharded:
        return x
    return jax.tree.map(lambda v: jax.lax.pmean(v, AXIS), x)


__all__ = [
    "AXIS",
    "MIN_ENVS_PER_DEVICE_EPISODES",
    "MIN_ROWS_PER_DEVICE",
    "REPLICATED",
    "ROWS",
    "SUM",
    "devices_that_pay",
    "env_mesh",
    "env_shards",
    "first_envs",
    "map_env_shards",
    "mean_over_shards",
    "on_one_device",
    "place",
    "replicate",
    "replicated",
    "split_envs",
    "usable_cores",
    "use_cpu_cores",
]
