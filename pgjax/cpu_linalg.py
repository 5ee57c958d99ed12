"""Batched linear algebra on a CPU without jaxlib's thread-pool deadlock.

On a CPU, JAX lowers a Cholesky factorisation, a triangular solve or an LU
factorisation to a LAPACK call in jaxlib. When a call's batch holds enough work
(:func:`lapack_splits`), jaxlib splits the batch into pieces, schedules them on
XLA's intra-op thread pool and blocks the calling thread, itself a thread of
that pool, until they finish. If as many such calls run at once as the pool has
threads (two on a 2-core machine), every thread waits for pieces that no free
thread is left to run: the program hangs with the CPU idle. Independent calls
run at once whenever a program holds two of them, e.g. a batch of brax/ant
episodes evaluated with the mode and the sampled policy side by side: 2 seeds ×
128 episodes of its 14 × 14 mass matrices are enough.

:func:`install` lowers a call that jaxlib would split as consecutive slices
of its batch, each small enough for jaxlib to run whole on whichever thread
reaches it. The slices are independent calls, so XLA still runs them side by
side on the pool's threads, and none of them blocks a thread. LAPACK factors
each matrix on its own, so the results are those of the unsliced call bit for
bit, and the speed that of jaxlib's split (512 Cholesky solves and LU
factorisations of 14 × 14 matrices on 2 cores: 1.8-2.0 ms sliced, 1.8-2.2 ms
split; XLA's own expansion of the operations, another way around the split,
took 9-12 ms).

Other LAPACK operations (eigh, svd, qr, eig) split their batches the same way;
pgjax's programs do not batch them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.interpreters import mlir
from jax.lax import linalg

#: jaxlib splits a LAPACK call across the thread pool from this much work, in
#: its own flop estimate of the whole batch (``kMinWorkPerTask``).
JAXLIB_MIN_WORK_PER_TASK = 200_000


def lapack_splits(batch: int, cost_per_matrix: int) -> bool:
    """Whether jaxlib splits a LAPACK call over ``batch`` matrices, each
    ``cost_per_matrix`` flops by its estimate, across a pool of 2+ threads.

    jaxlib runs the call whole below :data:`JAXLIB_MIN_WORK_PER_TASK` flops
    in all; above, in chunks of at least that much work each, and splits when
    that leaves more than one chunk.
    """
    if batch * cost_per_matrix < JAXLIB_MIN_WORK_PER_TASK:
        return False
    min_chunk = -(-JAXLIB_MIN_WORK_PER_TASK // max(cost_per_matrix, 1))
    return min_chunk < batch


def _complex_factor(aval) -> int:
    return 3 if np.issubdtype(aval.dtype, np.complexfloating) else 1


def cholesky_cost(ctx, **params) -> int:
    """jaxlib's flops per matrix of ``potrf``: ``n³/3``."""
    (x,) = ctx.avals_in
    n = x.shape[-1]
    return n * n * n // 3 * _complex_factor(x)


def triangular_solve_cost(ctx, *, left_side: bool, **params) -> int:
    """jaxlib's flops per matrix of ``trsm``: ``rows·cols·k`` of ``b``
    ``[rows, cols]``, ``k`` the side ``a`` multiplies."""
    _, b = ctx.avals_in
    rows, cols = b.shape[-2:]
    return rows * cols * (rows if left_side else cols) * _complex_factor(b)


def lu_cost(ctx, **params) -> int:
    """jaxlib's flops per matrix of ``getrf``: ``m·n·min(m, n)``."""
    (x,) = ctx.avals_in
    m, n = x.shape[-2:]
    return m * n * min(m, n) * _complex_factor(x)


#: The primitives :func:`install` reroutes, with jaxlib's cost of each call.
COSTS: dict = {
    linalg.cholesky_p: cholesky_cost,
    linalg.triangular_solve_p: triangular_solve_cost,
    linalg.lu_p: lu_cost,
}

_installed: set = set()


def _batch_size(ctx) -> int:
    return math.prod(ctx.avals_in[0].shape[:-2])


def _slice_size(cost_per_matrix: int) -> int:
    """The most matrices of this cost that jaxlib runs whole."""
    return max(1, (JAXLIB_MIN_WORK_PER_TASK - 1) // max(cost_per_matrix, 1))


def _sliced_rule(primitive, lapack: Callable, cost: Callable) -> Callable:
    """A CPU lowering rule for ``primitive``: ``lapack`` for a call that
    jaxlib runs whole, else the call repeated over slices of the batch (every
    operand and result ``[*batch, ...]``) that it runs whole, concatenated."""
    multiple = primitive.multiple_results

    def rule(ctx, *args, **params):
        batch, per_matrix = _batch_size(ctx), cost(ctx, **params)
        if not lapack_splits(batch, per_matrix):
            return lapack(ctx, *args, **params)
        size = _slice_size(per_matrix)
        batch_shape = ctx.avals_in[0].shape[:-2]

        def sliced(*operands):
            flat = [x.reshape(batch, *x.shape[len(batch_shape) :]) for x in operands]
            pieces = []
            for start in range(0, batch, size):
                out = primitive.bind(*(x[start : start + size] for x in flat), **params)
                pieces.append(out if multiple else [out])
            joined = [jnp.concatenate(parts) for parts in zip(*pieces, strict=True)]
            joined = [x.reshape(*batch_shape, *x.shape[1:]) for x in joined]
            return joined if multiple else joined[0]

        return mlir.lower_fun(sliced, multiple_results=multiple)(ctx, *args)

    return rule


def install() -> tuple[str, ...]:
    """Reroutes the CPU lowering of :data:`COSTS`' primitives so that no
    LAPACK call of theirs is split across XLA's thread pool (see the module's
    docstring) in programs lowered afterwards, in this process: it clears
    JAX's caches of lowered and compiled functions (not the persistent
    compilation cache, whose entries are keyed by the lowered program) when
    it reroutes anything. Calling it again changes nothing. Returns the names
    of the primitives rerouted (one whose rules this JAX does not keep where
    expected is left alone).
    """
    cpu_rules = mlir._platform_specific_lowerings["cpu"]
    before = len(_installed)
    for primitive, cost in COSTS.items():
        lapack = cpu_rules.get(primitive)
        if primitive in _installed or lapack is None:
            continue
        rule = _sliced_rule(primitive, lapack.rule, cost)
        mlir.register_lowering(primitive, rule, platform="cpu", inline=lapack.inline)
        _installed.add(primitive)
    if len(_installed) > before:
        # jax.scipy.linalg's functions are jitted: their lowerings are cached.
        jax.clear_caches()
    return tuple(sorted(p.name for p in _installed))


__all__ = [
    "COSTS",
    "JAXLIB_MIN_WORK_PER_TASK",
    "cholesky_cost",
    "install",
    "lapack_splits",
    "lu_cost",
    "triangular_solve_cost",
]
