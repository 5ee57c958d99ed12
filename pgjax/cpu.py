"""The backend profile measured on CPUs: every CPU-specific choice in one place.

Only the shell (the CLI, the runner, the benchmark) imports this module; the
core sees its choices through the :class:`~pgjax.backend.Backend` that
:func:`cpu_backend` builds. Each choice below was measured on a 2-core machine
(docs/performance.md) and says why it pays there:

* **One device per core** (:func:`use_cpu_cores`). XLA gives one CPU device's
  program an intra-op thread pool, but the cache-sized row blocks of an update
  are too small to split across it. With one JAX device per core the envs are
  split across the cores instead (:mod:`pgjax.parallel`). The devices
  synchronise at every rollout step and every all-reduce, which costs more
  than the split saves on small batches: :func:`devices_that_pay` says how
  many devices a run's batch keeps busy enough.
* **Row blocks** (:data:`BLOCK_ROWS`): the update's forward/backward passes run
  over blocks of 2048 rows, which keep every activation in cache; one pass
  over a large batch runs 2-3× slower.
* **Compile options** (:data:`CHUNK_OPTIONS`): XLA:CPU hands fused subgraphs of
  matrix products to the YNNPACK library; for the small MLPs of the
  actor-critic methods, and above all under ``vmap`` over seeds, those fused
  subgraphs run slower than XLA's own loops around single products, so
  YNNPACK keeps single products only (REINFORCE runs faster with the
  default). Every chunk is built at LLVM's lighter optimisation level 1:
  shorter compiles at the same speed. Programs that run once are built at
  level 0 (half the compile time; they run for milliseconds), a heavy one
  (a sweep's final evaluation) at level 1.
* **Batched linear algebra** (:mod:`pgjax.cpu_linalg`): a Cholesky, LU or
  triangular solve over a batch large enough for jaxlib to split across the
  thread pool runs as slices that jaxlib runs whole: two splits at once
  deadlock a 2-core pool (brax's mass matrices, evaluated in large batches).
* **Weight gradients** (:func:`dense_dot`): XLA:CPU emits the weight gradient
  ``xᵀ·g`` (both operands contracted on their leading axis) through a slow
  generic path; a transposed copy turns it into an ordinary product.
"""

from __future__ import annotations

import os
from typing import Any

import jax
from jax import lax

from pgjax import cpu_linalg
from pgjax.backend import Backend, make_mesh

Array = jax.Array

#: Rows per block of the update's passes on a CPU.
BLOCK_ROWS = 2048

_YNNPACK_SINGLE_PRODUCTS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
}
_LIGHT_LLVM = {"xla_backend_optimization_level": 1}

#: XLA options of each algorithm's training chunk on a CPU.
CHUNK_OPTIONS: dict[str, dict[str, Any]] = {
    "a2c": {**_YNNPACK_SINGLE_PRODUCTS, **_LIGHT_LLVM},
    "npg": {**_YNNPACK_SINGLE_PRODUCTS, **_LIGHT_LLVM},
    "trpo": {**_YNNPACK_SINGLE_PRODUCTS, **_LIGHT_LLVM},
    "nac": {**_YNNPACK_SINGLE_PRODUCTS, **_LIGHT_LLVM},
    "reinforce": dict(_LIGHT_LLVM),
}
#: XLA options for programs that run once...
RUN_ONCE_OPTIONS = {"xla_backend_optimization_level": 0}
#: ... and for run-once programs with much work.
HEAVY_RUN_ONCE_OPTIONS = {"xla_backend_optimization_level": 1}

#: The fewest rows per update (``num_envs × num_steps``) each device must get
#: for splitting a fixed-length algorithm's envs across a CPU's devices to pay:
#: below, the devices' synchronisation costs more than the divided work saves
#: (measured on 2 cores: A2C ran faster on one device at 2048 rows per device
#: and split from 8192; NPG and TRPO, with more work per row, split from 2048;
#: AC(λ)'s one step per update, 32 envs × 1 step, ran 2.4× slower split across
#: 2 devices than on one). NAC's work per row is NPG's.
MIN_ROWS_PER_DEVICE = {
    "a2c": 8192,
    "npg": 2048,
    "trpo": 2048,
    "nac": 2048,
    "ac-lambda": 8192,
}
#: REINFORCE runs whole episodes in a loop whose every step waits for all
#: devices; each device needs this many envs for the split to pay.
MIN_ENVS_PER_DEVICE_EPISODES = 512


def usable_cores() -> int:
    """The cores this process may run on (1 where the OS does not say)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return 1


def devices_that_pay(
    algo: str, num_envs: int, num_steps: int, cores: int, rows: int = 1
) -> int:
    """The CPU devices to split a run across: the most, up to ``cores``, that
    divide its ``rows`` seeds (each device trains its own: no collectives),
    or that divide ``num_envs`` and each get at least
    :data:`MIN_ROWS_PER_DEVICE` rows per update (REINFORCE:
    :data:`MIN_ENVS_PER_DEVICE_EPISODES` envs); 1 when no count does.

    The minimums were measured on 2 cores; more devices synchronise at a
    higher cost, so on larger CPUs they are a lower bound on what pays.
    """
    if algo == "reinforce":
        work, least = num_envs, MIN_ENVS_PER_DEVICE_EPISODES
    else:
        work, least = num_envs * num_steps, MIN_ROWS_PER_DEVICE.get(algo, 0)
    for count in range(cores, 1, -1):
        if rows % count == 0:
            return count
        if num_envs % count == 0 and work >= least * count:
            return count
    return 1


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


def cpu_backend(algo: str, devices: list, rows: int, num_envs: int) -> Backend:
    """The CPU profile for ``algo`` over ``devices`` (see the module docstring),
    with the mesh of :func:`pgjax.backend.make_mesh` for ``rows`` seeds of
    ``num_envs`` envs. Installs :func:`pgjax.cpu_linalg.install`, so that the
    run's batched LAPACK calls cannot deadlock XLA's thread pool."""
    cpu_linalg.install()
    return Backend(
        mesh=make_mesh(devices, rows, num_envs),
        block_rows=BLOCK_ROWS,
        chunk_options=dict(CHUNK_OPTIONS.get(algo, {})),
        run_once_options=dict(RUN_ONCE_OPTIONS),
        heavy_run_once_options=dict(HEAVY_RUN_ONCE_OPTIONS),
        dot_general=dense_dot_general,
    )


@jax.custom_jvp
def dense_dot(x: Array, kernel: Array) -> Array:
    """``x @ kernel`` for a Dense layer (``x [..., i]``, ``kernel [i, o]``), with
    its derivative written for XLA's CPU matrix products.

    The weight gradient ``xᵀ·g`` contracts over the batch axis. XLA:CPU emits
    that product (both operands contracted on their leading axis) through a
    slow generic path: for a 2048-row block it took 112 µs for a ``[64, 2]``
    output and 46 µs for ``[64, 1]``. Transposing ``x`` first (a copy that
    ``optimization_barrier`` keeps XLA from folding back into the product) makes
    it an ordinary ``[i, B]·[B, o]`` product: 15 and 5 µs.

    The rule is a JVP whose weight term is written with that transposed copy,
    ``dx·W + (xᵀ)ᵀ·dW``: reverse mode transposes it into ``xᵀ·g``, and forward
    mode (``jax.jvp``, ``jax.linearize``, Hessians) still works. Values and
    derivatives are those of ``x @ kernel``.
    """
    return x @ kernel


@dense_dot.defjvp
def _dense_dot_jvp(primals, tangents):
    x, kernel = primals
    x_dot, kernel_dot = tangents
    out = x @ kernel
    rows = x.reshape(-1, x.shape[-1])
    x_t = lax.optimization_barrier(rows.T)  # [i, B], materialised
    weight_term = lax.dot_general(x_t, kernel_dot, (((0,), (0,)), ((), ())))
    out_dot = weight_term.reshape(out.shape).astype(out.dtype)
    out_dot = out_dot + x_dot @ kernel
    return out, out_dot


def dense_dot_general(lhs, rhs, dimension_numbers, precision=None, **kwargs):
    """``lax.dot_general`` signature for ``nn.Dense``, routed to :func:`dense_dot`."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    standard = (
        tuple(lhs_contract) == (lhs.ndim - 1,)
        and tuple(rhs_contract) == (0,)
        and rhs.ndim == 2
        and not lhs_batch
        and not rhs_batch
        and precision is None
        and kwargs.get("preferred_element_type") is None
    )
    if not standard:
        return lax.dot_general(lhs, rhs, dimension_numbers, precision, **kwargs)
    return dense_dot(lhs, rhs)


__all__ = [
    "BLOCK_ROWS",
    "CHUNK_OPTIONS",
    "HEAVY_RUN_ONCE_OPTIONS",
    "MIN_ENVS_PER_DEVICE_EPISODES",
    "MIN_ROWS_PER_DEVICE",
    "RUN_ONCE_OPTIONS",
    "cpu_backend",
    "dense_dot",
    "dense_dot_general",
    "devices_that_pay",
    "usable_cores",
    "use_cpu_cores",
]
