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

:func:`install` keeps LAPACK for every call that jaxlib runs whole and lowers
the calls it would split with XLA's own expansion of the operation (the
lowering JAX uses on TPUs), which runs inside the program's own loops and
blocks no thread. A call below the split threshold compiles exactly as before,
so its results are unchanged bit for bit. XLA's expansion runs a large batch
about 2× slower than LAPACK's split (512 Cholesky solves of 14 × 14: 10.8 ms
against 4.4 ms on 2 cores), but these calls are a small part of a brax step:
A2C on brax/ant with 512 envs, whose every step splits, ran at 5,459-5,607
steps/s with the reroute and 5,552-6,375 without (2 runs each, alternating).

Other LAPACK operations (eigh, svd, qr, eig) split their batches the same way
but have no XLA expansion on a CPU; pgjax's programs do not batch them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
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


def _unsplit_rule(lapack: Callable, expansion: Callable, cost: Callable) -> Callable:
    """A CPU lowering rule: ``lapack`` for calls jaxlib runs whole,
    ``expansion`` (XLA's) for calls it would split."""

    def rule(ctx, *args, **params):
        split = lapack_splits(_batch_size(ctx), cost(ctx, **params))
        return (expansion if split else lapack)(ctx, *args, **params)

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
        expansion = mlir._lowerings.get(primitive)
        if primitive in _installed or lapack is None or expansion is None:
            continue
        rule = _unsplit_rule(lapack.rule, expansion.rule, cost)
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
