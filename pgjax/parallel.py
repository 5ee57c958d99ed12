"""Splitting a run over the devices of a :class:`~pgjax.backend.Backend`'s mesh.

Two kinds of parallelism, on two mesh axes:

* **Seeds** (and swept configurations) are a ``vmap`` over the trainer's
  state named :data:`SEEDS`. With a mesh whose :data:`SEEDS` axis has several
  devices, the ``vmap`` is also split over them (``spmd_axis_name``): each
  device trains its own seeds, with no collectives.
* **Envs**: each seed's envs are split over the :data:`ENVS` axis. The rollout
  and every per-env computation run on each device's share (XLA's SPMD
  partitioner, from the constraints of :func:`split_envs`); means over the
  batch become all-reduces; each blocked pass (:func:`map_env_shards`) runs its
  block loop on the local envs of each device and sums its partial results
  across the devices once at the end.

Parameters and optimiser states are replicated over the envs axis: every
device applies the same summed gradient. Every function here takes the
backend (or a flag derived from it) explicitly and asks JAX nothing about the
devices: without a mesh they return their input or the unsplit function.

What a seed computes never depends on the split: sums are over the same rows
whichever device holds them (only the order of floating-point additions
differs), and subsets of envs (critic minibatches, the KL envs) are chosen
over global env indices (:func:`strided_envs`, :func:`pgjax.algos.critic`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import jax
from jax.sharding import NamedSharding, PartitionSpec

from pgjax.backend import ENVS, SEEDS, Backend

#: ``[T, N, ...]`` leaves with their envs split across the devices.
ROWS = PartitionSpec(None, ENVS)
#: Leaves every device holds whole (parameters, scalars).
REPLICATED = PartitionSpec()
#: An output summed over the devices' partial results (:func:`map_env_shards`).
SUM = "sum"


def all_seeds(flag: jax.Array) -> jax.Array:
    """``flag`` (bool) and-ed over the seeds vmapped as :data:`SEEDS`.

    For the predicate of a ``lax.while_loop``: a predicate that differs
    between vmapped rows turns, under ``vmap``, into a loop to the last row's
    end with a ``select`` of the *whole* carry at every iteration. For
    REINFORCE's episode rollout the carry holds its ``[500, N, ...]`` buffers,
    and that select costs several times the loop itself. Reduced over the
    axis, the predicate is the same for every row, the loop stays an unbatched
    loop, and a row that is done simply runs on (its steps must be padding).
    Outside such a ``vmap`` (one seed), ``flag`` itself.
    """
    return _over_seeds(jax.lax.pmin, flag)


def max_over_seeds(count: jax.Array) -> jax.Array:
    """The largest ``count`` of the seeds vmapped as :data:`SEEDS` (``count``
    itself outside such a ``vmap``): a loop bound shared by the seeds, for the
    reason of :func:`all_seeds`. The rows past their own count must be no-ops.
    """
    return _over_seeds(jax.lax.pmax, count)


#: True while tracing programs whose seeds run apart (:func:`seeds_apart`).
_SEEDS_APART = False


@contextlib.contextmanager
def seeds_apart() -> Iterator[None]:
    """Traces within run each seed's program on its own: :func:`all_seeds` and
    :func:`max_over_seeds` return their input although :data:`SEEDS` names an
    axis.

    For one seed per device (a ``shard_map`` over the mesh's :data:`SEEDS`
    axis), where the axis name is bound but each device runs an unbatched
    program: a reduction over it would be a collective between the devices,
    and a seed that has finished (its update slots idle) never joins it, so
    the other seeds would wait for it forever.
    """
    global _SEEDS_APART
    outer, _SEEDS_APART = _SEEDS_APART, True
    try:
        yield
    finally:
        _SEEDS_APART = outer


def _over_seeds(collective: Callable, x: jax.Array) -> jax.Array:
    if _SEEDS_APART:
        return x
    try:
        jax.lax.axis_size(SEEDS)
    except NameError:  # not under a vmap over seeds
        return x
    return collective(x, SEEDS)


def vmap_seeds(fn: Callable, backend: Backend) -> Callable:
    """``jax.vmap(fn)`` over a leading seed axis named :data:`SEEDS`, split
    across the mesh's seeds axis when it has one (``spmd_axis_name``)."""
    if backend.mesh is None:
        return jax.vmap(fn, axis_name=SEEDS)
    return jax.vmap(fn, axis_name=SEEDS, spmd_axis_name=SEEDS)


def env_shards_of(backend: Backend, num_envs: int) -> int:
    """Devices ``num_envs`` envs are split across: the mesh's envs axis when
    it divides ``num_envs`` (a batch of a seed's envs, or a subset of them such
    as a critic minibatch), else 1 (that computation runs unsplit)."""
    shards = backend.env_shards
    return shards if num_envs % shards == 0 else 1


def split_envs(tree: Any, backend: Backend, axis: int = 0) -> Any:
    """Constrains every leaf of ``tree`` to be split across the envs axis along
    ``axis`` (its env axis); a no-op when the envs are not split
    (:func:`env_shards_of`). Under :func:`vmap_seeds` the seeds axis is
    prepended by ``vmap``."""
    leaves = jax.tree.leaves(tree)
    if not leaves or env_shards_of(backend, leaves[0].shape[axis]) == 1:
        return tree
    sharding = NamedSharding(backend.mesh, PartitionSpec(*([None] * axis), ENVS))
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)


def strided_envs(x: jax.Array, count: int) -> jax.Array:
    """``count`` envs of ``x [T, N, ...]``, every ``N / count``-th one (all of
    them when ``count ≥ N``; the first ``count`` when it does not divide ``N``).

    The envs are exchangeable, so any fixed subset is a uniform sample; a
    strided one is defined over global env indices (the same whatever the
    split) and, when the devices divide ``count``, is split as evenly as the
    envs themselves, so that taking it moves no data between devices.
    """
    num_envs = x.shape[1]
    if count >= num_envs:
        return x
    if num_envs % count:
        return x[:, :count]
    grouped = x.reshape(x.shape[0], count, num_envs // count, *x.shape[2:])
    return grouped[:, :, 0]


def map_env_shards(
    fn: Callable, backend: Backend, num_envs: int, in_specs: tuple, out_specs: Any
) -> Callable:
    """``fn`` run on each device's share of the envs, in parallel.

    ``in_specs``: one :data:`ROWS` or :data:`REPLICATED` per argument (a
    prefix of its pytree). ``out_specs``: a prefix of the output's pytree
    with :data:`ROWS` (per-row outputs, back as ``[T, N, ...]``) or
    :data:`SUM` (each device's partial sum, summed across the devices).
    ``num_envs``: the size of the :data:`ROWS` arguments' env axis. When
    those envs are not split (:func:`env_shards_of`), ``fn`` itself: one
    program sees all of them.
    """
    if env_shards_of(backend, num_envs) == 1:
        return fn

    def is_spec(x):
        return x is None or isinstance(x, (str, PartitionSpec))

    def per_shard(*args):
        out = fn(*args)
        return jax.tree.map(
            lambda spec, y: (
                jax.tree.map(lambda v: jax.lax.psum(v, ENVS), y) if spec == SUM else y
            ),
            out_specs,
            out,
            is_leaf=is_spec,
        )

    specs = jax.tree.map(
        lambda spec: REPLICATED if spec == SUM else spec, out_specs, is_leaf=is_spec
    )
    return jax.shard_map(
        per_shard,
        mesh=backend.mesh,
        in_specs=in_specs,
        out_specs=specs,
        check_vma=False,
    )


def mean_over_shards(x: Any, sharded: bool) -> Any:
    """``pmean`` of every leaf over the envs axis inside a
    :func:`map_env_shards` function (``sharded``), else ``x``."""
    if not sharded:
        return x
    return jax.tree.map(lambda v: jax.lax.pmean(v, ENVS), x)


__all__ = [
    "ENVS",
    "REPLICATED",
    "ROWS",
    "SEEDS",
    "SUM",
    "all_seeds",
    "env_shards_of",
    "map_env_shards",
    "max_over_seeds",
    "mean_over_shards",
    "split_envs",
    "strided_envs",
    "vmap_seeds",
]
