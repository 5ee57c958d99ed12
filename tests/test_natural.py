"""Tests for pgjax.natural: CG, Fisher-vector products, natural step, line search."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from pgjax import natural
from pgjax.distributions import Categorical, DiagGaussian


@pytest.fixture
def x64():
    """Runs the test with 64-bit floats, restoring the setting afterwards."""
    with jax.enable_x64(True):
        yield


def _tree_allclose(a, b, **kwargs):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kwargs)


# ---------------------------------------------------------------------------
# Linear systems on a pytree: a dict of two arrays, operator built over the
# flattened vector.


def _example_tree(rng: np.random.Generator) -> dict:
    return {
        "a": jnp.asarray(rng.normal(size=(3,))),
        "b": jnp.asarray(rng.normal(size=(2, 2))),
    }


def _dense_matvec(matrix: np.ndarray, like: dict):
    _, unravel = ravel_pytree(like)
    matrix = jnp.asarray(matrix)

    def matvec(v):
        flat, _ = ravel_pytree(v)
        return unravel(matrix @ flat)

    return matvec


def _random_spd(rng: np.random.Generator, n: int) -> np.ndarray:
    m = rng.normal(size=(n, n))
    return m @ m.T + 0.5 * np.eye(n)


@pytest.mark.parametrize("use_jit", [False, True])
def test_cg_matches_dense_solve(x64, use_jit):
    rng = np.random.default_rng(0)
    b = _example_tree(rng)
    matrix = _random_spd(rng, 7)
    matvec = _dense_matvec(matrix, b)

    def solve(b):
        return natural.conjugate_gradient(matvec, b, iters=50, tol=1e-24)

    result = jax.jit(solve)(b) if use_jit else solve(b)

    b_flat = np.asarray(ravel_pytree(b)[0])
    x_flat = np.asarray(ravel_pytree(result.x)[0])
    assert jax.tree.structure(result.x) == jax.tree.structure(b)
    assert result.x["b"].shape == (2, 2)
    assert result.x["a"].dtype == jnp.float64
    np.testing.assert_allclose(x_flat, np.linalg.solve(matrix, b_flat), rtol=1e-8)
    true_residual = np.linalg.norm(b_flat - matrix @ x_flat)
    np.testing.assert_allclose(result.residual_norm, true_residual, atol=1e-10)
    assert result.residual_norm < 1e-11
    assert result.iterations.dtype == jnp.int32
    assert 1 <= int(result.iterations) <= 12  # exact in 7 steps, plus round-off


def test_cg_stops_early_when_exact(x64):
    # A has two distinct eigenvalues, so CG is exact after 2 steps (and the
    # identity after 1); the loop must stop there, not run all `iters`.
    rng = np.random.default_rng(1)
    b = _example_tree(rng)
    q, _ = np.linalg.qr(rng.normal(size=(7, 7)))
    matrix = q @ np.diag([1.0, 1.0, 1.0, 5.0, 5.0, 5.0, 5.0]) @ q.T
    result = natural.conjugate_gradient(_dense_matvec(matrix, b), b, 10, 1e-20)
    assert int(result.iterations) == 2
    b_flat = np.asarray(ravel_pytree(b)[0])
    np.testing.assert_allclose(
        ravel_pytree(result.x)[0], np.linalg.solve(matrix, b_flat), rtol=1e-10
    )

    identity = natural.conjugate_gradient(lambda v: v, b, iters=10, tol=1e-20)
    assert int(identity.iterations) == 1
    _tree_allclose(identity.x, b, rtol=1e-12)

    zero_rhs = jax.tree.map(jnp.zeros_like, b)
    result = natural.conjugate_gradient(_dense_matvec(matrix, b), zero_rhs)
    assert int(result.iterations) == 0
    _tree_allclose(result.x, zero_rhs, atol=0)


def test_cg_fixed_budget_is_respected(x64):
    rng = np.random.default_rng(2)
    b = _example_tree(rng)
    matrix = _random_spd(rng, 7)
    result = natural.conjugate_gradient(_dense_matvec(matrix, b), b, 3, 0.0)
    assert int(result.iterations) == 3
    x_flat = np.asarray(ravel_pytree(result.x)[0])
    b_flat = np.asarray(ravel_pytree(b)[0])
    # The reported residual is that of the returned iterate.
    np.testing.assert_allclose(
        result.residual_norm, np.linalg.norm(b_flat - matrix @ x_flat), rtol=1e-8
    )
    assert result.residual_norm > 1e-6
    with pytest.raises(ValueError, match="iters"):
        natural.conjugate_gradient(lambda v: v, b, iters=-1)


def test_cg_jit_vmap_over_right_hand_sides(x64):
    rng = np.random.default_rng(3)
    like = _example_tree(rng)
    eigenvalues, eigenvectors = np.linalg.eigh(_random_spd(rng, 7))
    matrix = eigenvectors @ np.diag(eigenvalues) @ eigenvectors.T
    _, unravel = ravel_pytree(like)
    flat_rhs = rng.normal(size=(5, 7))
    flat_rhs[0] = eigenvectors[:, 2]  # an eigenvector: exact after one step
    batch = jax.vmap(unravel)(jnp.asarray(flat_rhs))
    assert batch["b"].shape == (5, 2, 2)

    solve = jax.jit(
        jax.vmap(
            lambda b: natural.conjugate_gradient(
                _dense_matvec(matrix, like), b, iters=20, tol=1e-22
            )
        )
    )
    result = solve(batch)
    x_flat = jax.vmap(lambda x: ravel_pytree(x)[0])(result.x)
    expected = np.linalg.solve(matrix, flat_rhs.T).T
    np.testing.assert_allclose(x_flat, expected, rtol=1e-8, atol=1e-10)
    assert result.iterations.shape == (5,)
    assert int(result.iterations[0]) == 1
    assert np.all(np.asarray(result.iterations[1:]) >= 6)


@pytest.mark.parametrize("kind", ["zero", "negative", "nan", "overflow"])
def test_cg_breakdown_keeps_last_iterate(kind):
    b = {"w": jnp.ones((3, 2)), "b": jnp.arange(2.0)}
    matvec = {
        "zero": lambda v: jax.tree.map(jnp.zeros_like, v),
        "negative": lambda v: jax.tree.map(jnp.negative, v),
        "nan": lambda v: jax.tree.map(lambda x: x * jnp.nan, v),
        # Positive, finite curvature, but α = rᵀr/pᵀAp ≈ 1e38 sends x to inf in
        # float32 while the residual stays finite.
        "overflow": lambda v: jax.tree.map(lambda x: 1e-37 * x, v),
    }[kind]
    if kind == "overflow":
        b = jax.tree.map(lambda x: 100.0 * (x + 1.0), b)
    result = jax.jit(lambda b: natural.conjugate_gradient(matvec, b))(b)
    assert int(result.iterations) == 0
    assert np.isfinite(result.residual_norm)
    for leaf in jax.tree.leaves(result.x):
        np.testing.assert_array_equal(leaf, np.zeros_like(leaf))


# ---------------------------------------------------------------------------
# Small policies: a 2-layer tanh MLP giving categorical logits, or Gaussian means
# with a state-independent log-std parameter. Test data come from numpy's
# generator: op-by-op (or even jitted) jax.random costs seconds of compilation.


def _mlp(params, obs):
    x = obs
    for layer in params[:-1]:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def _categorical_policy(params, obs):
    return Categorical(_mlp(params, obs))


def _gaussian_policy(params, obs):
    return DiagGaussian(_mlp(params["mlp"], obs), params["log_std"])


# Module-level functions, so jitted helpers take them as static arguments and
# share compilations across tests.
_POLICIES = {"categorical": _categorical_policy, "gaussian": _gaussian_policy}


def _make_policy(kind, rng, obs_dim=3, hidden=5, out=3, dtype=np.float32):
    """Returns ``(params, dist_fn)`` with ``dist_fn(params, obs)`` a distribution."""
    mlp = [
        {
            "w": jnp.asarray(rng.normal(size=(n_in, n_out)) / np.sqrt(n_in), dtype),
            "b": jnp.asarray(0.1 * rng.normal(size=(n_out,)), dtype),
        }
        for n_in, n_out in itertools.pairwise([obs_dim, hidden, out])
    ]
    if kind == "categorical":
        return mlp, _categorical_policy
    log_std = jnp.asarray([-0.3, 0.2, 0.0][:out], dtype)
    return {"mlp": mlp, "log_std": log_std}, _gaussian_policy


def _flat_product(fvp, unravel):
    """``fvp`` acting on flat vectors."""
    return lambda v: ravel_pytree(fvp(unravel(v)))[0]


def _kl_fn(dist_fn, params, obs):
    """Mean KL(π_old ‖ π_p) with π_old frozen at ``params``."""
    old = jax.tree.map(jax.lax.stop_gradient, dist_fn(params, obs))
    return lambda p: jnp.mean(old.kl(dist_fn(p, obs)))


def _fvp_builders(dist_fn, params, obs):
    """Both forms of the Fisher-vector product: ``{form: damping ↦ fvp}``."""
    kl_fn = _kl_fn(dist_fn, params, obs)
    old = jax.tree.map(jax.lax.stop_gradient, dist_fn(params, obs))
    return {
        "hessian": lambda damping: natural.fisher_vector_product(
            kl_fn, params, damping=damping
        ),
        "gauss-newton": lambda damping: natural.gauss_newton_fisher_vector_product(
            lambda p: dist_fn(p, obs),
            lambda dist: jnp.mean(old.kl(dist)),
            params,
            damping=damping,
        ),
    }


@pytest.mark.parametrize("form", ["hessian", "gauss-newton"])
@pytest.mark.parametrize("kind", ["categorical", "gaussian"])
def test_fvp_matches_explicit_hessian(x64, kind, form):
    rng = np.random.default_rng(0)
    params, dist_fn = _make_policy(kind, rng, dtype=np.float64)
    obs = jnp.asarray(rng.normal(size=(16, 3)))
    kl_fn = _kl_fn(dist_fn, params, obs)
    flat, unravel = ravel_pytree(params)
    vectors = jnp.asarray(rng.normal(size=(3, flat.size)))

    @jax.jit
    def compute(vectors):
        hessian = jax.hessian(lambda f: kl_fn(unravel(f)))(flat)
        grad = ravel_pytree(jax.grad(kl_fn)(params))[0]
        products = {}
        make_fvp = _fvp_builders(dist_fn, params, obs)[form]
        for damping in (0.0, 0.25):
            fvp = make_fvp(damping)
            products[damping] = jax.vmap(_flat_product(fvp, unravel))(vectors)
        return hessian, grad, products

    hessian, grad, products = compute(vectors)
    assert hessian.shape == (flat.size, flat.size)
    # The Fisher is PSD and the KL's gradient vanishes at the old parameters.
    assert np.linalg.eigvalsh(hessian).min() > -1e-10
    np.testing.assert_allclose(grad, 0, atol=1e-12)
    expected = vectors @ hessian.T
    assert np.abs(expected).max() > 1e-2  # not a trivially zero Hessian
    np.testing.assert_allclose(products[0.0], expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(
        products[0.25], expected + 0.25 * vectors, rtol=1e-9, atol=1e-12
    )


@pytest.mark.parametrize("form", ["hessian", "gauss-newton"])
def test_kl_hessian_is_the_fisher_information(x64, form):
    # F = E_s Σ_a π(a|s) ∇log π(a|s) ∇log π(a|s)ᵀ equals the KL's Hessian.
    rng = np.random.default_rng(4)
    params, dist_fn = _make_policy("categorical", rng, dtype=np.float64)
    obs = jnp.asarray(rng.normal(size=(8, 3)))
    flat, unravel = ravel_pytree(params)

    @jax.jit
    def compute(params):
        jac = jax.jacobian(lambda f: dist_fn(unravel(f), obs).log_probs())(flat)
        probs = dist_fn(params, obs).probs()
        fisher = jnp.einsum("ba,bai,baj->ij", probs, jac, jac) / obs.shape[0]
        fvp = _fvp_builders(dist_fn, params, obs)[form](0.0)
        basis = jnp.eye(flat.size, dtype=flat.dtype)
        return fisher, jax.vmap(_flat_product(fvp, unravel))(basis)

    fisher, products = compute(params)
    np.testing.assert_allclose(products, fisher, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------
# A TRPO update on a toy batch: importance-ratio surrogate, natural step, line
# search.


def _toy_batch(kind: str, seed: int, n: int = 256, dtype=np.float32):
    """``(params, dist_fn, obs [n, 4], actions [n] or [n, 3], advantages [n])``.

    Actions are drawn from the policy itself, advantages are standard normal.
    """
    rng = np.random.default_rng(seed)
    params, dist_fn = _make_policy(kind, rng, obs_dim=4, hidden=8, dtype=dtype)
    obs = rng.normal(size=(n, 4)).astype(dtype)
    dist = dist_fn(params, jnp.asarray(obs))
    if kind == "categorical":
        cdf = np.cumsum(np.asarray(dist.probs(), np.float64), axis=-1)
        u = rng.random(size=(n, 1))
        actions = np.minimum((u > cdf).sum(axis=-1), cdf.shape[-1] - 1)
        actions = jnp.asarray(actions, jnp.int32)
    else:
        noise = rng.normal(size=dist.mean.shape).astype(dtype)
        actions = dist.mean + jnp.exp(dist.log_std) * noise
    advantages = jnp.asarray(rng.normal(size=(n,)), dtype)
    return params, dist_fn, jnp.asarray(obs), actions, advantages


def _surrogate_fn(dist_fn, params, obs, actions, advantages):
    """``p ↦ mean(π_p(a|s)/π_old(a|s) · A)``, π_old frozen at ``params``."""
    old_log_probs = jax.lax.stop_gradient(dist_fn(params, obs).log_prob(actions))

    def surrogate(p):
        ratio = jnp.exp(dist_fn(p, obs).log_prob(actions) - old_log_probs)
        return jnp.mean(ratio * advantages)

    return surrogate


_TRACES: list[str] = []


@functools.partial(jax.jit, static_argnums=0)
def _trpo_update(
    dist_fn, params, obs, actions, advantages, max_kl, search_max_kl, step_scale
):
    """A TRPO update, plus the real KL and surrogate gain of its result.

    The line search gets ``step_scale ⊙ step`` and ``search_max_kl`` so that tests
    can force it to fail (a backwards or NaN step, a tiny radius) without
    compiling another program; ``ones`` and ``max_kl`` give the plain update.
    """
    _TRACES.append(dist_fn.__name__)  # runs only while tracing
    surrogate = _surrogate_fn(dist_fn, params, obs, actions, advantages)
    kl_fn = _kl_fn(dist_fn, params, obs)
    grads = jax.grad(surrogate)(params)
    fvp = natural.fisher_vector_product(kl_fn, params, 1e-4)
    step, step_info = natural.natural_gradient_step(grads, fvp, max_kl, iters=10)
    step = jax.tree.map(jnp.multiply, step_scale, step)
    new_params, search_info = natural.backtracking_line_search(
        surrogate, kl_fn, params, step, step_info.expected_improvement, search_max_kl
    )
    kl = kl_fn(new_params)
    gain = surrogate(new_params) - surrogate(params)
    return new_params, step, step_info, search_info, kl, gain


def _update(dist_fn, params, obs, actions, advantages, max_kl, **forced):
    """Runs :func:`_trpo_update`; ``forced`` may set search_max_kl, step_scale."""
    max_kl = jnp.float32(max_kl)
    search_max_kl = jnp.float32(forced.get("search_max_kl", max_kl))
    step_scale = forced.get("step_scale", jax.tree.map(jnp.ones_like, params))
    return _trpo_update(
        dist_fn, params, obs, actions, advantages, max_kl, search_max_kl, step_scale
    )


@pytest.mark.parametrize("kind", ["categorical", "gaussian"])
@pytest.mark.parametrize("max_kl", [1e-3, 1e-4])
def test_accepted_step_fills_the_trust_region(kind, max_kl):
    params, dist_fn, obs, actions, advantages = _toy_batch(kind, seed=7)
    _, step, step_info, search_info, kl, gain = _update(
        dist_fn, params, obs, actions, advantages, max_kl
    )
    assert bool(step_info.valid)
    assert bool(search_info.accepted)
    assert float(step_info.xfx) > 0
    np.testing.assert_allclose(
        float(step_info.step_norm) ** 2,
        sum(float(jnp.vdot(s, s)) for s in jax.tree.leaves(step)),
        rtol=1e-4,
    )
    assert 0.5 * max_kl <= float(kl) <= 1.5 * max_kl
    assert float(search_info.kl) == pytest.approx(float(kl), rel=1e-4)
    assert float(gain) > 0
    assert float(search_info.improvement) == pytest.approx(float(gain), rel=1e-3)
    assert float(step_info.expected_improvement) > 0
    # Small steps: the realised gain is close to the linear model's prediction.
    predicted = float(step_info.expected_improvement) * float(search_info.step_fraction)
    assert 0.5 * predicted < float(gain) < 1.5 * predicted


def test_jitted_update_compiles_once():
    params, dist_fn, obs, actions, _ = _toy_batch("categorical", seed=1)
    rng = np.random.default_rng(100)
    traces = []
    for max_kl in [1e-3, 2e-3, 5e-4]:
        # New data, a new traced max_kl and new parameters on every call.
        advantages = jnp.asarray(rng.normal(size=obs.shape[0]), jnp.float32)
        new_params, _, _, search_info, _, _ = _update(
            dist_fn, params, obs, actions, advantages, max_kl
        )
        assert bool(search_info.accepted)
        assert not all(
            np.array_equal(a, b)
            for a, b in zip(
                jax.tree.leaves(new_params), jax.tree.leaves(params), strict=True
            )
        )
        params = new_params
        traces.append(_TRACES.count("_categorical_policy"))
    # Traced at most once, by the first call (earlier tests may have traced it).
    assert traces[0] <= 1 and traces[1] == traces[0] and traces[2] == traces[0]
    assert _trpo_update._cache_size() <= 2  # one entry per policy kind


def test_natural_step_scales_with_sqrt_max_kl_under_vmap():
    params, dist_fn, obs, actions, advantages = _toy_batch("categorical", seed=3)

    @jax.jit
    def steps(params, max_kls):
        surrogate = _surrogate_fn(dist_fn, params, obs, actions, advantages)
        grads = jax.grad(surrogate)(params)
        fvp = natural.fisher_vector_product(_kl_fn(dist_fn, params, obs), params, 1e-3)
        step, info = jax.vmap(lambda d: natural.natural_gradient_step(grads, fvp, d))(
            max_kls
        )
        return step, info, jax.vmap(fvp)(step)

    max_kls = jnp.asarray([1e-3, 4e-3], jnp.float32)
    step, info, f_step = steps(params, max_kls)
    assert np.all(np.asarray(info.valid))
    for leaf in jax.tree.leaves(step):
        np.testing.assert_allclose(leaf[1], 2.0 * leaf[0], rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(info.xfx[0], info.xfx[1], rtol=1e-6)
    # ½·sᵀ(F + λI)s = δ exactly for the operator that was used.
    s_fs = sum(
        np.sum(np.asarray(a, np.float64) * np.asarray(b), axis=tuple(range(1, a.ndim)))
        for a, b in zip(jax.tree.leaves(step), jax.tree.leaves(f_step), strict=True)
    )
    np.testing.assert_allclose(0.5 * s_fs, max_kls, rtol=1e-3)


@functools.partial(jax.jit, static_argnums=0)
def _natural_step_in_scaled_coordinates(dist_fn, u, scales, obs, actions, advantages):
    """The natural step in ``u``, where the policy's parameters are ``θ = c ⊙ u``."""

    def dist_u(p, o):
        return dist_fn(jax.tree.map(jnp.multiply, scales, p), o)

    surrogate = _surrogate_fn(dist_u, u, obs, actions, advantages)
    fvp = natural.fisher_vector_product(_kl_fn(dist_u, u, obs), u)
    n = ravel_pytree(u)[0].size
    return natural.natural_gradient_step(
        jax.grad(surrogate)(u), fvp, 1e-3, iters=4 * n, tol=1e-28
    )


def test_natural_step_is_invariant_to_rescaled_parameters(x64):
    # θ = c ⊙ u (a different scale per leaf): the plain gradient step in u is not
    # the same policy change as in θ, but the natural step is (Kakade 2001).
    params, dist_fn, obs, actions, advantages = _toy_batch(
        "categorical", seed=5, dtype=np.float64
    )
    ones = jax.tree.map(jnp.ones_like, params)
    scales = jax.tree.map(
        lambda leaf, c: jnp.full_like(leaf, c), params, [{"w": 3.0, "b": 0.5}] * 2
    )
    step_theta, info_theta = _natural_step_in_scaled_coordinates(
        dist_fn, params, ones, obs, actions, advantages
    )
    u = jax.tree.map(jnp.divide, params, scales)
    step_u, info_u = _natural_step_in_scaled_coordinates(
        dist_fn, u, scales, obs, actions, advantages
    )
    assert bool(info_theta.valid) and bool(info_u.valid)
    mapped = jax.tree.map(jnp.multiply, scales, step_u)
    _tree_allclose(mapped, step_theta, rtol=1e-6, atol=1e-9)
    # The coordinates really differ (a plain gradient step would map to c² ⊙ ∇_θ).
    assert not np.allclose(ravel_pytree(step_u)[0], ravel_pytree(step_theta)[0])


def test_line_search_backtracks_by_hand():
    # L(x) = −(x − 1)², L(0) = −1, g = L'(0) = 2, step s = 3, gᵀs = 6.
    def objective(p):
        return -jnp.square(p["x"] - 1.0)

    def kl(p):
        return jnp.zeros(())

    params = {"x": jnp.float32(0.0)}
    step = {"x": jnp.float32(3.0)}
    # Fractions 1, .8 overshoot (L(3) = −4, L(2.4) = −1.96); .64 gives L = −0.8464.
    new, info = natural.backtracking_line_search(objective, kl, params, step, 6.0, 0.1)
    assert bool(info.accepted)
    assert int(info.backtracks) == 2
    assert float(info.step_fraction) == pytest.approx(0.64)
    assert float(new["x"]) == pytest.approx(1.92)
    assert float(info.improvement) == pytest.approx(1.0 - 0.8464, rel=1e-5)
    # Requiring 10% of the predicted gain: .64 gives .1536 < .1·6·.64 = .384; .512
    # gives x = 1.536, gain .7127 > .307.
    new, info = natural.backtracking_line_search(
        objective, kl, params, step, 6.0, 0.1, accept_ratio=0.1
    )
    assert int(info.backtracks) == 3
    assert float(new["x"]) == pytest.approx(1.536)
    # The KL constraint kl(x) = x² ≤ δ = 1 rules out x = 3, 2.4, 1.92, 1.536 and
    # 1.2288; x = 0.8⁵·3 = 0.98304 is the first candidate allowed.
    new, info = natural.backtracking_line_search(
        objective, lambda p: jnp.square(p["x"]), params, step, 6.0, 1.0
    )
    assert int(info.backtracks) == 5
    assert float(info.kl) == pytest.approx(0.98304**2, rel=1e-5)
    # The same under jit and vmap over a sweep of radii: with δ = 100 only the
    # objective binds, as in the first search.
    sweep = jax.jit(
        jax.vmap(
            lambda delta: natural.backtracking_line_search(
                objective, lambda p: jnp.square(p["x"]), params, step, 6.0, delta
            )
        )
    )
    new, info = sweep(jnp.asarray([1.0, 100.0]))
    np.testing.assert_array_equal(info.backtracks, [5, 2])
    np.testing.assert_allclose(new["x"], [0.98304, 1.92], rtol=1e-6)
    # A step downhill is never accepted, even when the required fraction of a
    # (wrongly signed) expected improvement would allow a decrease.
    new, info = natural.backtracking_line_search(
        objective, kl, params, {"x": jnp.float32(-0.5)}, -1.0, 0.1, accept_ratio=10.0
    )
    assert not bool(info.accepted)
    assert float(info.last_improvement) < 0
    assert np.array_equal(new["x"], params["x"])
    # A non-finite candidate is rejected even where the objective and the KL
    # ignore it (say, critic parameters that share the pytree).
    both = {"x": jnp.float32(0.0), "unused": jnp.ones(2)}
    new, info = natural.backtracking_line_search(
        objective, kl, both, {"x": 3.0, "unused": jnp.asarray([0.0, jnp.inf])}, 6.0, 1.0
    )
    assert np.isfinite(float(info.last_improvement)) and not bool(info.accepted)
    _assert_bit_identical(new, both)


def test_line_search_with_one_pass_for_objective_and_kl():
    """kl_fn=None (objective_fn returns both) and a given L(θ) search exactly
    as the two-function form, and the objective is then never run at θ."""

    def objective(p):
        return -jnp.square(p["x"] - 1.0)

    def kl(p):
        return jnp.square(p["x"])

    params = {"x": jnp.float32(0.0)}
    step = {"x": jnp.float32(3.0)}
    two = natural.backtracking_line_search(objective, kl, params, step, 6.0, 1.0)
    evaluated = []

    def both(p):
        evaluated.append(p)
        return objective(p), kl(p)

    one = natural.backtracking_line_search(both, None, params, step, 6.0, 1.0)
    _assert_bit_identical(one, two)
    assert int(one[1].backtracks) == 5
    evaluated.clear()
    given = natural.backtracking_line_search(
        both, None, params, step, 6.0, 1.0, objective_at_params=objective(params)
    )
    _assert_bit_identical(given, two)
    assert len(evaluated) == 1  # traced once, in the loop body: never at θ
    # A wrong L(θ) shifts every improvement by the same amount.
    shifted = natural.backtracking_line_search(
        both, None, params, step, 6.0, 1.0, objective_at_params=jnp.float32(-2.0)
    )
    assert float(shifted[1].improvement) == pytest.approx(
        float(two[1].improvement) + 1.0, rel=1e-5
    )


def _assert_bit_identical(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("failure", ["wrong_way", "tiny_max_kl", "nan_step"])
def test_failed_line_search_leaves_params_bit_identical(failure):
    params, dist_fn, obs, actions, advantages = _toy_batch("gaussian", seed=11)
    ones = jax.tree.map(jnp.ones_like, params)
    forced = {
        "wrong_way": {"step_scale": jax.tree.map(jnp.negative, ones)},
        # The smallest fraction tried, 0.8⁹ ≈ 0.13, still has KL ≈ 2e-4 ≫ 1e-12.
        "tiny_max_kl": {"search_max_kl": 1e-12},
        "nan_step": {
            "step_scale": {**ones, "log_std": ones["log_std"].at[0].set(jnp.nan)}
        },
    }[failure]
    new_params, _, step_info, search_info, kl, gain = _update(
        dist_fn, params, obs, actions, advantages, 1e-2, **forced
    )
    assert bool(step_info.valid)
    assert float(kl) == 0.0 and float(gain) == 0.0
    assert not bool(search_info.accepted)
    assert int(search_info.backtracks) == 10
    assert float(search_info.step_fraction) == 0.0
    assert float(search_info.kl) == 0.0 and float(search_info.improvement) == 0.0
    _assert_bit_identical(new_params, params)
    if failure == "tiny_max_kl":
        assert float(search_info.last_kl) > 1e-12
        assert float(search_info.last_improvement) > 0


@pytest.mark.parametrize("case", ["zero", "negative", "nan_grads", "zero_grads"])
def test_natural_step_guards_give_a_finite_zero_step(case):
    grads = {"w": jnp.ones((3, 2)), "b": jnp.asarray([0.5, -2.0])}
    fvp = {
        "zero": lambda v: jax.tree.map(jnp.zeros_like, v),
        "negative": lambda v: jax.tree.map(jnp.negative, v),
        "nan_grads": lambda v: jax.tree.map(lambda x: 2.0 * x, v),
        "zero_grads": lambda v: jax.tree.map(lambda x: 2.0 * x, v),
    }[case]
    if case == "nan_grads":
        grads = jax.tree.map(lambda g: g.at[0].set(jnp.nan), grads)
    if case == "zero_grads":
        grads = jax.tree.map(jnp.zeros_like, grads)
    step, info = jax.jit(lambda g: natural.natural_gradient_step(g, fvp, max_kl=1e-2))(
        grads
    )
    assert not bool(info.valid)
    _assert_bit_identical(step, jax.tree.map(jnp.zeros_like, grads))
    assert float(info.step_norm) == 0.0
    assert float(info.expected_improvement) == 0.0
    # A line search on the zero step accepts nothing and changes nothing.
    params = jax.tree.map(lambda g: jnp.full_like(g, 0.3), grads)
    new_params, search_info = natural.backtracking_line_search(
        lambda p: jnp.sum(p["w"]), lambda p: jnp.zeros(()), params, step, 0.0, 1e-2
    )
    assert not bool(search_info.accepted)
    _assert_bit_identical(new_params, params)


def test_natural_step_positive_curvature_is_valid():
    # Control for the guard test: F = 2I gives x = g/2 and s = √(2δ/(gᵀg/2))·g/2.
    grads = {"w": jnp.ones((3, 2)), "b": jnp.asarray([0.5, -2.0])}
    step, info = natural.natural_gradient_step(
        grads, lambda v: jax.tree.map(lambda x: 2.0 * x, v), max_kl=1e-2
    )
    assert bool(info.valid)
    gg = 6.0 + 0.25 + 4.0
    scale = np.sqrt(2e-2 / (gg / 2.0)) / 2.0
    _tree_allclose(step, jax.tree.map(lambda g: scale * g, grads), rtol=1e-6)
    assert float(info.xfx) == pytest.approx(gg / 2.0, rel=1e-6)
    assert float(info.expected_improvement) == pytest.approx(scale * gg, rel=1e-6)
    assert int(info.cg_iterations) == 1


@pytest.mark.parametrize("iters", [0, 1, 3, 10])
def test_natural_step_curvature_is_that_of_the_returned_x(iters, x64):
    # xᵀFx comes from one more trip through CG's loop (the product applied
    # to x instead of p): it must equal the product computed afresh, for an
    # early stop (iters 1, 3), none (0: x = 0) and convergence (10 > n = 6),
    # and the operator must appear once in the program.
    rng = np.random.default_rng(3)
    m = rng.normal(size=(6, 6))
    a = jnp.asarray(m @ m.T + 0.5 * np.eye(6))
    grads = {"w": jnp.asarray(rng.normal(size=(2, 2))), "b": jnp.asarray([1.0, -2.0])}
    traced = []

    def fvp(v):
        traced.append(1)
        flat, unravel = ravel_pytree(v)
        return unravel(a @ flat)

    step, info = jax.jit(
        lambda g: natural.natural_gradient_step(g, fvp, max_kl=1e-2, iters=iters)
    )(grads)
    assert len(traced) == 1
    cg = natural.conjugate_gradient(fvp, grads, iters=iters)
    assert int(info.cg_iterations) == int(cg.iterations) == min(iters, 6)
    x = ravel_pytree(cg.x)[0]
    np.testing.assert_allclose(float(info.xfx), float(x @ a @ x), rtol=1e-10)
    s = ravel_pytree(step)[0]
    if iters == 0:
        assert not bool(info.valid)
        np.testing.assert_array_equal(s, 0.0)
    else:
        # ½·sᵀFs = δ exactly for the x found.
        np.testing.assert_allclose(0.5 * float(s @ a @ s), 1e-2, rtol=1e-10)


# ---------------------------------------------------------------------------
# CG that stops when its residual stops falling.


def _singular_system():
    """A rank-8 PSD matrix of size 12 (eigenvalues in [1, 3] and four zeros)
    and a right side with a small component (1e-3) in its null space, float32:
    plain CG's residual falls to about that component, then grows as ``x``
    runs off along the null space."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    eigenvalues = np.concatenate([np.linspace(1.0, 3.0, 8), np.zeros(4)])
    a = (q * eigenvalues) @ q.T
    b = q[:, :8] @ rng.normal(size=8) + 1e-3 * q[:, 8:] @ rng.normal(size=4)
    return jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), a, b


@pytest.mark.parametrize("patience", [1, 3])
def test_cg_stop_when_stalled_returns_the_best_iterate(patience):
    a, b, a64, b64 = _singular_system()

    def matvec(v):
        return a @ v

    plain = [natural.conjugate_gradient(matvec, b, iters=k, tol=0.0) for k in range(17)]
    residuals = np.array([float(cg.residual_norm) for cg in plain])
    # The first update that does not lower the residual; before it, each did.
    best = int(np.argmax(residuals[1:] >= residuals[:-1]))
    assert best >= 3 and np.all(np.diff(residuals[: best + 1]) < 0)
    # Plain CG's residual rises past it and x runs away.
    assert residuals[16] > 10 * residuals[best]
    assert np.linalg.norm(plain[16].x) > 1e3

    stalled = jax.jit(
        lambda b: natural.conjugate_gradient(
            matvec,
            b,
            iters=16,
            tol=0.0,
            stop_when_stalled=True,
            stall_patience=patience,
        )
    )(b)
    assert int(stalled.iterations) == best
    np.testing.assert_allclose(stalled.x, plain[best].x, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(float(stalled.residual_norm), residuals[best], rtol=1e-6)
    # The iterate it keeps is close to the minimum-norm solution A⁺b.
    minimum_norm = np.linalg.pinv(a64, rcond=1e-6) @ b64
    np.testing.assert_allclose(stalled.x, minimum_norm, atol=1e-2)


def test_cg_stop_when_stalled_matches_the_exact_solve_when_well_conditioned(x64):
    # Eigenvalues in [1, 2] (a random SPD matrix's spread can make the
    # residual rise on the way, which stops the solve where it rose).
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(7, 7)))
    a = (q * np.linspace(1.0, 2.0, 7)) @ q.T
    tree = _example_tree(rng)
    matvec = _dense_matvec(a, tree)
    plain = natural.conjugate_gradient(matvec, tree, iters=10, tol=1e-24)
    stalled = natural.conjugate_gradient(
        matvec, tree, iters=10, tol=1e-24, stop_when_stalled=True
    )
    exact = np.linalg.solve(a, np.asarray(ravel_pytree(tree)[0]))
    np.testing.assert_allclose(ravel_pytree(stalled.x)[0], exact, rtol=1e-8)
    assert int(stalled.iterations) == int(plain.iterations) == 7
    _tree_allclose(stalled.x, plain.x, rtol=1e-12)


def test_cg_stop_when_stalled_under_jit_and_vmap():
    # A batch of right sides, one stalling and one not, with a traced
    # threshold: each member is its own solve.
    a, b, _, _ = _singular_system()
    consistent = a @ jnp.arange(12.0, dtype=jnp.float32) / 10.0

    def solve(b, min_decrease):
        return natural.conjugate_gradient(
            lambda v: a @ v,
            b,
            iters=16,
            tol=1e-12,
            stop_when_stalled=True,
            min_decrease=min_decrease,
        )

    batched = jax.jit(jax.vmap(solve, in_axes=(0, None)))(
        jnp.stack([b, consistent]), jnp.asarray(0.0)
    )
    for i, rhs in enumerate((b, consistent)):
        alone = solve(rhs, 0.0)
        assert int(batched.iterations[i]) == int(alone.iterations)
        np.testing.assert_allclose(batched.x[i], alone.x, rtol=1e-5, atol=1e-6)
    assert int(batched.iterations[0]) != int(batched.iterations[1])
    # A required decrease of 90 % per update stops sooner.
    strict = jax.jit(solve)(b, jnp.asarray(0.9))
    assert int(strict.iterations) < int(batched.iterations[0])


# ---------------------------------------------------------------------------
# The fixed natural step θ ← θ + η·x.


def test_fixed_natural_step_is_eta_times_the_solution(x64):
    rng = np.random.default_rng(4)
    a = _random_spd(rng, 7)
    grads = _example_tree(rng)
    g = np.asarray(ravel_pytree(grads)[0])
    step, info = jax.jit(
        lambda g: natural.fixed_natural_step(g, _dense_matvec(a, grads), 0.3, iters=10)
    )(grads)
    x = np.linalg.solve(a, g)
    np.testing.assert_allclose(ravel_pytree(step)[0], 0.3 * x, rtol=1e-8)
    assert bool(info.valid)
    # gᵀx is xᵀAx for a CG iterate, with no further product.
    np.testing.assert_allclose(float(info.xfx), x @ a @ x, rtol=1e-8)
    np.testing.assert_allclose(float(info.expected_improvement), 0.3 * g @ x, rtol=1e-8)
    np.testing.assert_allclose(float(info.step_norm), 0.3 * np.linalg.norm(x))
    # A NaN gradient gives a zero step, never NaN.
    bad = jax.tree.map(lambda leaf: leaf.at[0].set(jnp.nan), grads)
    step, info = natural.fixed_natural_step(bad, _dense_matvec(a, grads), 0.3)
    assert not bool(info.valid)
    _assert_bit_identical(step, jax.tree.map(jnp.zeros_like, grads))


def test_npg_fixed_step_moves_the_actor_by_eta_times_the_explicit_solve():
    """One npg update with --natural-step fixed: θ_new − θ_old = η·x, with x
    solving (F + λI)·x = g for the Fisher matrix formed explicitly (the
    Hessian of the mean KL over the batch's states) and g the surrogate's
    gradient."""
    from pgjax.algos import natural_pg
    from pgjax.backend import IDENTITY
    from pgjax.config import TrainConfig
    from pgjax.train import make_train

    eta, damping = 0.05, 0.1
    config = TrainConfig(
        algo="npg",
        natural_step="fixed",
        natural_lr=eta,
        cg_damping=damping,
        cg_iters=40,
        num_envs=8,
        num_steps=4,
        kl_envs=8,
        hidden=(4,),
    )
    trainer = make_train(config, IDENTITY)
    state = trainer.init(jax.random.PRNGKey(0))
    agent, hyper = state.agent, state.hyper
    _, batch, _ = trainer.algorithm.collect(agent, state.env, state.key, hyper)
    new_agent, metrics = jax.jit(trainer.algorithm.update)(
        agent, batch, jax.random.PRNGKey(1), hyper, 0.0
    )
    phases = natural_pg.make_natural_phases(config, trainer.spec, IDENTITY, False)
    targets = phases.targets(agent, batch, hyper)
    gradient = phases.policy_gradient(agent.actor, batch, targets, hyper)

    theta, unravel = ravel_pytree(agent.actor)
    old = phases.policy.apply(agent.actor, batch.obs)

    def mean_kl(flat):
        return jnp.mean(old.kl(phases.policy.apply(unravel(flat), batch.obs)))

    fisher = np.asarray(jax.hessian(mean_kl)(theta), np.float64)
    g = np.asarray(ravel_pytree(gradient.grads)[0], np.float64)
    x = np.linalg.solve(fisher + damping * np.eye(len(g)), g)
    moved = np.asarray(ravel_pytree(new_agent.actor)[0] - theta, np.float64)
    assert np.linalg.norm(moved) > 1e-4
    np.testing.assert_allclose(moved, eta * x, rtol=2e-3, atol=1e-6)
    assert float(metrics["accepted"]) == 1.0


def test_entropy_bonus_enters_the_gradient_and_the_line_search_objective():
    """npg/trpo's surrogate with ``--ent-coef c``: its gradient is the plain
    surrogate's plus ``c·∇ mean H(π(·|s))`` over the batch, and TRPO's line
    search measures the same objective at θ_old."""
    from pgjax.algos import natural_pg
    from pgjax.backend import IDENTITY
    from pgjax.config import TrainConfig
    from pgjax.train import make_train

    c = 0.3
    config = TrainConfig(algo="trpo", num_envs=8, num_steps=4, hidden=(4,))
    trainer = make_train(config, IDENTITY)
    state = trainer.init(jax.random.PRNGKey(0))
    agent, hyper = state.agent, state.hyper
    _, batch, _ = trainer.algorithm.collect(agent, state.env, state.key, hyper)
    phases = natural_pg.make_natural_phases(config, trainer.spec, IDENTITY, True)
    targets = phases.targets(agent, batch, hyper)
    # Away from the near-uniform initial policy, where ∇H is ~1e-5.
    leaves, treedef = jax.tree.flatten(agent.actor)
    keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
    noisy = [
        x + jax.random.normal(k, x.shape, x.dtype)
        for x, k in zip(leaves, keys, strict=True)
    ]
    agent = agent.replace(actor=jax.tree.unflatten(treedef, noisy))
    plain = phases.policy_gradient(agent.actor, batch, targets, hyper)
    bonus_hyper = hyper.replace(ent_coef=jnp.asarray(c, hyper.ent_coef.dtype))
    bonus = phases.policy_gradient(agent.actor, batch, targets, bonus_hyper)

    def mean_entropy(actor):
        return jnp.mean(phases.policy.apply(actor, batch.obs).entropy())

    entropy_grad = jax.grad(mean_entropy)(agent.actor)
    difference = jax.tree.map(lambda b, p: b - p, bonus.grads, plain.grads)
    assert ravel_pytree(entropy_grad)[0].std() > 1e-4  # a real check
    np.testing.assert_allclose(
        ravel_pytree(difference)[0],
        c * ravel_pytree(entropy_grad)[0],
        rtol=1e-4,
        atol=1e-7,
    )
    np.testing.assert_allclose(
        bonus.objective, plain.objective + c * mean_entropy(agent.actor), rtol=1e-5
    )
    # TRPO compares candidates with L(θ_old) from the gradient's pass: the
    # line search's own objective must agree with it there.
    surrogate_and_kl = natural_pg._surrogate_and_kl_fn(
        phases.policy,
        natural_pg._surrogate_inputs(batch, targets),
        bonus.old_dist,
        bonus_hyper.ent_coef,
        0,
        IDENTITY,
    )
    objective, kl = surrogate_and_kl(agent.actor)
    np.testing.assert_allclose(objective, bonus.objective, rtol=1e-5, atol=1e-7)
    assert abs(float(kl)) < 1e-6


def test_trpo_refuses_the_fixed_step():
    from pgjax import envs
    from pgjax.algos import natural_pg
    from pgjax.backend import IDENTITY
    from pgjax.config import ConfigError, TrainConfig, validate

    config = TrainConfig(algo="trpo", natural_step="fixed")
    with pytest.raises(ConfigError, match="--natural-step"):
        validate(config)
    with pytest.raises(ConfigError, match="--natural-step"):
        natural_pg.make_trpo(config, envs.make_env("CartPole-v1"), IDENTITY)
    validate(TrainConfig(algo="npg", natural_step="fixed"))


def test_kl_limited_step_backtracks_to_the_first_fraction_within_the_limit():
    def kl(theta):
        return jnp.sum(theta**2)

    params, info = natural.kl_limited_step(
        kl, jnp.zeros(2), jnp.ones(2), max_kl=0.5, backtrack_ratio=0.5
    )
    # Fractions 1, 0.5: KL 2 is refused, 0.5 is accepted.
    np.testing.assert_array_equal(params, [0.5, 0.5])
    assert int(info.backtracks) == 1 and bool(info.accepted)
    assert float(info.kl) == 0.5
    # No fraction passes: the parameters are kept bit for bit.
    params, info = natural.kl_limited_step(
        kl, jnp.zeros(2), jnp.ones(2), max_kl=1e-9, max_backtracks=3
    )
    np.testing.assert_array_equal(params, [0.0, 0.0])
    assert not bool(info.accepted) and int(info.backtracks) == 3


@pytest.mark.parametrize("algo", ["npg", "nac"])
def test_kl_guard_keeps_each_steps_measured_kl_within_the_guard(algo):
    from pgjax import train
    from pgjax.config import Hyperparams, TrainConfig

    def measured(kl_guard):
        config = TrainConfig(
            algo=algo,
            env="CartPole-v1",
            num_envs=16,
            num_steps=16,
            total_timesteps=16 * 16 * 6,
            hidden=(16,),
            max_kl=0.5,
            cg_damping=1.0,
            kl_guard=kl_guard,
        )
        trainer = train.make_train(config)
        state = trainer.init(jax.random.key(0), Hyperparams.from_config(config))
        update, rows = jax.jit(trainer.update), []
        for _ in range(6):
            state, metrics = update(state)
            rows.append((float(metrics["kl"]), int(metrics["backtracks"])))
        return rows

    # Unguarded, some steps move the policy by more than 0.2 × 0.5.
    assert max(kl for kl, _ in measured(0.0)) > 0.1
    guarded = measured(0.2)
    assert all(kl <= 0.1 for kl, _ in guarded)
    assert any(backtracks > 0 for _, backtracks in guarded)


@pytest.mark.parametrize(
    "algo, natural_step",
    [("npg", "kl"), ("trpo", "kl"), ("nac", "kl"), ("npg", "fixed")],
)
def test_anneal_kl_is_the_step_size_times_the_remaining_fraction(algo, natural_step):
    """An update at progress p with --anneal-kl is, bit for bit, the update
    without it at max_kl·(1 − p) and natural_lr·(1 − p); at p = 0 it is the
    unannealed update, and at p = 0.75 it moves the policy less."""
    from pgjax.backend import IDENTITY
    from pgjax.config import TrainConfig
    from pgjax.train import make_train

    def configured(anneal_kl):
        return TrainConfig(
            algo=algo,
            natural_step=natural_step,
            anneal_kl=anneal_kl,
            num_envs=8,
            num_steps=8,
            hidden=(8,),
        )

    annealed = make_train(configured(True), IDENTITY)
    plain = make_train(configured(False), IDENTITY)
    state = annealed.init(jax.random.PRNGKey(0))
    agent, hyper = state.agent, state.hyper
    _, batch, _ = annealed.algorithm.collect(agent, state.env, state.key, hyper)
    key = jax.random.PRNGKey(1)

    def moved(trainer, hyper, progress):
        new, _ = jax.jit(trainer.algorithm.update)(agent, batch, key, hyper, progress)
        return ravel_pytree(new.actor)[0] - ravel_pytree(agent.actor)[0]

    shrunk = hyper.replace(
        max_kl=hyper.max_kl * 0.25, natural_lr=hyper.natural_lr * 0.25
    )
    late = moved(annealed, hyper, jnp.float32(0.75))
    np.testing.assert_array_equal(late, moved(plain, shrunk, jnp.float32(0.75)))
    start = moved(annealed, hyper, jnp.float32(0.0))
    np.testing.assert_array_equal(start, moved(plain, hyper, jnp.float32(0.0)))
    assert 0 < float(jnp.linalg.norm(late)) < 0.9 * float(jnp.linalg.norm(start))
