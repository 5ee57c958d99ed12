"""pgjax.cpu_linalg: batched LAPACK calls that jaxlib would split across XLA's
thread pool run as slices it runs whole, so two at once cannot deadlock it."""

import os
import subprocess
import sys
import textwrap
import types

import jax.numpy as jnp
import pytest
from jax.core import ShapedArray

from pgjax import cpu_linalg


def ctx(*shapes, dtype=jnp.float32):
    """A stand-in for a lowering context: only ``avals_in`` is read."""
    return types.SimpleNamespace(avals_in=[ShapedArray(s, dtype) for s in shapes])


def test_costs_are_jaxlibs_flop_estimates():
    assert cpu_linalg.cholesky_cost(ctx((8, 14, 14))) == 14**3 // 3
    assert cpu_linalg.cholesky_cost(ctx((14, 14), dtype=jnp.complex64)) == 3 * 914
    left = ctx((14, 14), (14, 3))
    assert cpu_linalg.triangular_solve_cost(left, left_side=True) == 14 * 3 * 14
    right = ctx((3, 3), (14, 3))
    assert cpu_linalg.triangular_solve_cost(right, left_side=False) == 14 * 3 * 3
    assert cpu_linalg.lu_cost(ctx((5, 6, 4))) == 6 * 4 * 4


@pytest.mark.parametrize(
    "batch, cost, splits",
    [
        # 14 × 14 Cholesky (914 flops): chunks of at least 219 matrices.
        (218, 914, False),  # 199,252 flops in all: run whole
        (219, 914, False),  # one chunk holds them all
        (220, 914, True),
        # 14 × 14 solve against 14 right-hand sides: chunks of 73 or more.
        (73, 2744, False),
        (74, 2744, True),
        (1, 10**9, False),  # one matrix: nothing to split
        (10**6, 0, False),  # 1 × 1 Cholesky: 1³/3 rounds to no work
    ],
)
def test_lapack_splits_follows_jaxlibs_chunking(batch, cost, splits):
    assert cpu_linalg.lapack_splits(batch, cost) is splits


# Independent batched factorisations in one program, as brax's mass matrices
# meet in an evaluation. With jaxlib's split, each blocks one of XLA's pool
# threads (NPROC=2 fixes the pool's size on any machine) waiting for pieces
# queued behind the other; whether they meet is a race, so the program's
# lowering is checked too: every LAPACK call small enough to run whole.
PROGRAM = textwrap.dedent(
    """
    import re
    import jax, jax.numpy as jnp, numpy as np
    from pgjax import cpu_linalg

    def spd(seed, batch, n=14):
        a = jax.random.normal(jax.random.key(seed), (batch, n, n))
        return a @ jnp.swapaxes(a, -1, -2) + n * jnp.eye(n)

    def solve_pos(m):
        eye = jnp.broadcast_to(jnp.eye(m.shape[-1]), m.shape)
        return jax.scipy.linalg.solve(m, eye, assume_a="pos")

    def lu(m):
        return jax.lax.linalg.lu(m)

    def side_by_side(seed, batch):
        return [f(spd(seed + i, batch)) for i, f in enumerate(2 * [solve_pos, lu])]

    # jaxlib's flops per 14 x 14 matrix of each call (potrf; trsm, getrf).
    COST = {"spotrf": 14**3 // 3, "strsm": 14**3, "sgetrf": 14**3}

    def lapack_calls(batch):
        text = jax.jit(side_by_side, static_argnums=1).lower(0, batch).as_text()
        calls = re.findall(r"@lapack_(\\w+)_ffi\\(.*: \\(tensor<(\\d+)x", text)
        return [(name, int(rows)) for name, rows in calls]

    # One call per program: nothing runs beside it.
    ref = jax.tree.leaves(
        [jax.jit(f)(spd(i, 512)) for i, f in enumerate(2 * [solve_pos, lu])]
    )
    assert any(
        cpu_linalg.lapack_splits(rows, COST[name]) for name, rows in lapack_calls(512)
    ), "jaxlib would split these"
    assert cpu_linalg.install() == ("cholesky", "lu", "triangular_solve")
    assert cpu_linalg.install() == ("cholesky", "lu", "triangular_solve")
    calls = lapack_calls(512)
    assert {name for name, _ in calls} == set(COST), calls
    for name, rows in calls:
        assert not cpu_linalg.lapack_splits(rows, COST[name]), (name, rows)

    program = jax.jit(side_by_side, static_argnums=1)
    for seed in range(5):
        jax.block_until_ready(program(seed, 512))
    # LAPACK factors each matrix on its own: slicing changes no bit.
    for out, expected in zip(jax.tree.leaves(program(0, 512)), ref):
        assert bool(jnp.all(out == expected))
    print("finished")
    """
)


def run_fresh(code: str, **env: str) -> str:
    """``code`` run by a fresh interpreter (``env`` added to its environment):
    install() changes JAX for the whole process. Returns its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, "JAX_PLATFORMS": "cpu", **env},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_side_by_side_batched_solves_finish_and_agree_with_lapack():
    assert run_fresh(PROGRAM, NPROC="2").strip().endswith("finished")


def test_the_cpu_profile_installs_it():
    # Every CPU run builds its backend here (pgjax.hardware.backend_for); a
    # fresh interpreter, since tests in this one built backends already.
    run_fresh(
        """
        import jax
        from pgjax import cpu, cpu_linalg
        assert not cpu_linalg._installed
        cpu.cpu_backend("trpo", jax.devices()[:1], rows=1, num_envs=16)
        assert set(cpu_linalg.COSTS) == cpu_linalg._installed
        """
    )
