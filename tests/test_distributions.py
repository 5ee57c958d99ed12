"""Tests for pgjax.distributions.

Closed forms come from scipy (a dependency of jax) and numpy; KL is also
checked against a Monte-Carlo estimate from ``sample``; numerics are checked at
extreme logits and log standard deviations in float32 and float64; gradients
are checked against finite differences in float64.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy import special, stats

from pgjax.distributions import LOG_STD_MAX, LOG_STD_MIN, Categorical, DiagGaussian

NUM_MC = 200_000
DTYPES = pytest.mark.parametrize("dtype", ["float32", "float64"])


@pytest.fixture
def x64():
    """Enables 64-bit types for one test and restores the setting after it."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def dtype_ctx(dtype):
    """Runs the test with x64 enabled when ``dtype`` is float64."""
    with jax.enable_x64(dtype == "float64"):
        yield jnp.dtype(dtype)


def assert_all_finite(tree):
    for leaf in jax.tree_util.tree_leaves(tree):
        assert np.all(np.isfinite(np.asarray(leaf))), leaf


# --------------------------------------------------------------------------
# Categorical: closed forms.


def np_log_softmax(logits):
    return special.log_softmax(np.asarray(logits, np.float64), axis=-1)


@pytest.fixture
def cat_pair():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(4, 3, 5)) * 2.0
    q = rng.normal(size=(4, 3, 5)) * 2.0
    return p.astype(np.float32), q.astype(np.float32)


def test_categorical_log_prob_matches_closed_form(cat_pair):
    logits, _ = cat_pair
    actions = np.random.default_rng(1).integers(0, 5, size=(4, 3))
    dist = Categorical(jnp.asarray(logits))
    got = np.asarray(dist.log_prob(actions))
    want = np.take_along_axis(np_log_softmax(logits), actions[..., None], -1)[..., 0]
    assert got.shape == (4, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(dist.probs()), np.exp(np_log_softmax(logits)), rtol=1e-5
    )
    np.testing.assert_allclose(
        np.asarray(dist.log_probs()), np_log_softmax(logits), rtol=1e-5, atol=1e-5
    )


def test_categorical_entropy_matches_closed_form(cat_pair):
    logits, _ = cat_pair
    probs = np.exp(np_log_softmax(logits))
    want = stats.entropy(probs, axis=-1)
    got = np.asarray(Categorical(jnp.asarray(logits)).entropy())
    assert got.shape == (4, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_categorical_kl_matches_closed_form(cat_pair):
    p_logits, q_logits = cat_pair
    p = np.exp(np_log_softmax(p_logits))
    q = np.exp(np_log_softmax(q_logits))
    want = stats.entropy(p, q, axis=-1)  # Σ p·log(p/q)
    got = np.asarray(Categorical(jnp.asarray(p_logits)).kl(Categorical(q_logits)))
    assert got.shape == (4, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # KL is not symmetric; the direction matters.
    reverse = stats.entropy(q, p, axis=-1)
    assert not np.allclose(got, reverse, rtol=1e-3)
    self_kl = np.asarray(Categorical(p_logits).kl(Categorical(p_logits)))
    np.testing.assert_allclose(self_kl, 0.0, atol=1e-6)


@jax.jit
def _categorical_draws(p_logits, q_logits, key):
    """NUM_MC draws x ~ p and log p(x) − log q(x) for logits ``[A]``."""
    p = Categorical(jnp.broadcast_to(p_logits, (NUM_MC, p_logits.shape[-1])))
    q = Categorical(jnp.broadcast_to(q_logits, (NUM_MC, q_logits.shape[-1])))
    x = p.sample(key)
    return x, p.log_prob(x) - q.log_prob(x)


# The last action of p is masked; q puts mass on it.
CAT_P = jnp.array([0.5, -1.0, 1.5, 0.0, -jnp.inf])
CAT_Q = jnp.array([0.0, 0.3, -0.5, 1.0, 0.2])


def test_categorical_kl_matches_monte_carlo():
    x, log_ratio = _categorical_draws(CAT_P, CAT_Q, jax.random.key(0))
    assert x.shape == (NUM_MC,)
    log_ratio = np.asarray(log_ratio, np.float64)
    estimate = log_ratio.mean()
    stderr = log_ratio.std() / np.sqrt(NUM_MC)
    exact = float(Categorical(CAT_P).kl(Categorical(CAT_Q)))
    assert abs(estimate - exact) < 4 * stderr, (estimate, exact, stderr)


def test_categorical_sample_frequencies_and_mode():
    # Same shapes as the KL test: the compiled sampler is reused.
    logits = jnp.array([1.0, 0.0, -1.0, 2.0, -jnp.inf])
    x, _ = _categorical_draws(logits, CAT_Q, jax.random.key(1))
    x = np.asarray(x)
    assert x.shape == (NUM_MC,)
    assert np.issubdtype(x.dtype, np.integer)
    probs = np.exp(np_log_softmax(np.asarray(logits)))
    freqs = np.bincount(x, minlength=5) / NUM_MC
    stderr = np.sqrt(probs * (1 - probs) / NUM_MC)
    assert np.all(np.abs(freqs - probs) <= 4 * stderr), (freqs, probs)
    # The masked action (logit −inf) is never drawn.
    assert not np.any(x == 4)
    assert int(Categorical(logits).mode()) == 3


def test_categorical_mode_is_argmax():
    logits = np.random.default_rng(2).normal(size=(3, 4, 6)).astype(np.float32)
    mode = np.asarray(Categorical(jnp.asarray(logits)).mode())
    np.testing.assert_array_equal(mode, logits.argmax(-1))


# --------------------------------------------------------------------------
# Categorical: extreme logits.


@DTYPES
def test_categorical_extreme_logits_finite_and_correct(dtype, dtype_ctx):
    inf = np.inf
    logits = jnp.asarray(
        [
            [1e9, 0.0, -1e9, -inf],  # one-hot on action 0
            [1e9, 1e9, -1e9, -inf],  # half-half on actions 0 and 1
            [0.0, 0.0, -1e9, -inf],  # half-half on actions 0 and 1
            [-1e9, -1e9, 0.0, -inf],  # one-hot on action 2
        ],
        dtype=dtype_ctx,
    )
    other = jnp.asarray(
        [
            [0.0, 1e9, -inf, 0.0],
            [0.0, 0.0, 0.0, -inf],
            [1.0, 0.0, -1e9, -inf],
            [-inf, 0.0, 1e9, -1e9],
        ],
        dtype=dtype_ctx,
    )
    out = _categorical_everything(logits, other)
    assert_all_finite(out)
    for leaf in jax.tree_util.tree_leaves(out):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == dtype_ctx
    half = np.log(0.5)

    # Values: finite and equal to the limits they approximate.
    np.testing.assert_allclose(out["entropy"], [0.0, -half, -half, 0.0], atol=1e-6)
    # log π(a) for a = 0, 1, 2, 3 in every row (a = 3 is masked: a huge negative
    # but finite number).
    np.testing.assert_allclose(
        out["log_prob"][:3],
        [[0.0, half, half, -1e9], [-1e9, half, half, -1e9], [-2e9, -2e9, -1e9, 0.0]],
        rtol=1e-6,
        atol=1e-6,
    )
    assert np.all(out["log_prob"][3] < -1e30)
    # Mass on a −inf (masked) action is exactly 0 and it is never the mode.
    assert np.all(out["probs"][:, 3] == 0.0)
    np.testing.assert_array_equal(out["mode"], [0, 0, 0, 2])

    kl = out["kl"]
    # Row 0: log p(0) = 0, log q(0) = −1e9. Row 3: p and q are both one-hot on
    # action 2 (q is −inf where p has mass e^−1e9 = 0).
    np.testing.assert_allclose(kl[0], 1e9, rtol=1e-6)
    np.testing.assert_allclose(kl[1], np.log(0.5 / (1 / 3)), rtol=1e-5)
    q2 = np.exp(np_log_softmax([1.0, 0.0]))
    np.testing.assert_allclose(kl[2], np.sum(0.5 * np.log(0.5 / q2)), rtol=1e-5)
    np.testing.assert_allclose(kl[3], 0.0, atol=1e-6)
    np.testing.assert_allclose(out["kl_self"], 0.0, atol=1e-6)

    # Gradients (all finite, checked above). d log π(a)/d logits = onehot(a) − π:
    # for row 2 (π = ½, ½, 0, 0) and a = 0.
    np.testing.assert_allclose(out["grad_log_prob"][0][2], [0.5, -0.5, 0.0, 0.0])
    # The entropy of a (numerically) one-hot row has zero gradient.
    np.testing.assert_allclose(out["grad_entropy"][0], 0.0, atol=1e-6)


@jax.jit
def _categorical_everything(logits, other):
    """Values and gradients of every method at ``logits`` (and ``other``)."""
    dist, other_dist = Categorical(logits), Categorical(other)
    actions = jnp.arange(4)[:, None] * jnp.ones((1, logits.shape[0]), jnp.int32)

    def log_prob(lg, a):
        return Categorical(lg).log_prob(a).sum()

    return {
        "entropy": dist.entropy(),
        "log_prob": jax.vmap(dist.log_prob)(actions),  # [action, row]
        "probs": dist.probs(),
        "mode": dist.mode(),
        "kl": dist.kl(other_dist),
        "kl_self": dist.kl(dist),
        "grad_log_prob": jax.vmap(jax.grad(log_prob), in_axes=(None, 0))(
            logits, actions
        ),
        "grad_entropy": jax.grad(lambda lg: Categorical(lg).entropy().sum())(logits),
        "grad_kl_p": jax.grad(lambda lg: Categorical(lg).kl(other_dist).sum())(logits),
        "grad_kl_q": jax.grad(lambda lg: dist.kl(Categorical(lg)).sum())(other),
        "grad_kl_self": jax.grad(lambda lg: dist.kl(Categorical(lg)).sum())(logits),
    }


# --------------------------------------------------------------------------
# DiagGaussian: closed forms.


@pytest.fixture
def gauss_pair():
    rng = np.random.default_rng(3)
    shape = (4, 3)
    return (
        rng.normal(size=shape).astype(np.float32),
        rng.uniform(-1.5, 1.0, size=shape).astype(np.float32),
        rng.normal(size=shape).astype(np.float32),
        rng.uniform(-1.5, 1.0, size=shape).astype(np.float32),
    )


def np_gauss_kl(m1, ls1, m2, ls2):
    s1, s2 = np.exp(np.float64(ls1)), np.exp(np.float64(ls2))
    terms = np.log(s2 / s1) + (s1**2 + (np.float64(m1) - m2) ** 2) / (2 * s2**2) - 0.5
    return terms.sum(-1)


def test_gaussian_log_prob_matches_closed_form(gauss_pair):
    mean, log_std, _, _ = gauss_pair
    action = np.random.default_rng(4).normal(size=mean.shape).astype(np.float32)
    got = np.asarray(DiagGaussian(mean, log_std).log_prob(action))
    want = stats.norm.logpdf(action, loc=mean, scale=np.exp(log_std)).sum(-1)
    assert got.shape == (4,)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # A shared log-std of shape [D] broadcasts over the batch.
    shared = log_std[0]
    got = np.asarray(DiagGaussian(mean, shared).log_prob(action))
    want = stats.norm.logpdf(action, loc=mean, scale=np.exp(shared)).sum(-1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_gaussian_entropy_matches_closed_form(gauss_pair):
    mean, log_std, _, _ = gauss_pair
    got = np.asarray(DiagGaussian(mean, log_std).entropy())
    want = stats.norm.entropy(scale=np.exp(np.float64(log_std))).sum(-1)
    assert got.shape == (4,)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_gaussian_kl_matches_closed_form(gauss_pair):
    m1, ls1, m2, ls2 = gauss_pair
    p, q = DiagGaussian(m1, ls1), DiagGaussian(m2, ls2)
    got = np.asarray(p.kl(q))
    assert got.shape == (4,)
    np.testing.assert_allclose(got, np_gauss_kl(m1, ls1, m2, ls2), rtol=1e-5)
    reverse = np_gauss_kl(m2, ls2, m1, ls1)
    assert not np.allclose(got, reverse, rtol=1e-3)
    np.testing.assert_allclose(np.asarray(p.kl(p)), 0.0, atol=1e-6)


def test_gaussian_log_std_is_clipped():
    mean = jnp.zeros((2, 3))
    action = jnp.full((2, 3), 0.5)
    high = DiagGaussian(mean, jnp.full((3,), LOG_STD_MAX + 3.0))
    at_max = DiagGaussian(mean, jnp.full((3,), LOG_STD_MAX))
    low = DiagGaussian(mean, jnp.full((3,), LOG_STD_MIN - 5.0))
    at_min = DiagGaussian(mean, jnp.full((3,), LOG_STD_MIN))
    for clipped, bound in ((high, at_max), (low, at_min)):
        np.testing.assert_array_equal(clipped.entropy(), bound.entropy())
        np.testing.assert_array_equal(clipped.log_prob(action), bound.log_prob(action))
    want = 3 * (LOG_STD_MAX + 0.5 * np.log(2 * np.pi * np.e))
    np.testing.assert_allclose(np.asarray(high.entropy()), [want, want], rtol=1e-6)


@jax.jit
def _gaussian_draws(mean, log_std, other_mean, other_log_std, key):
    """NUM_MC draws x ~ p and log p(x) − log q(x) for parameters ``[D]``."""
    p = DiagGaussian(jnp.broadcast_to(mean, (NUM_MC, mean.shape[-1])), log_std)
    q = DiagGaussian(
        jnp.broadcast_to(other_mean, (NUM_MC, mean.shape[-1])), other_log_std
    )
    x = p.sample(key)
    return x, p.log_prob(x) - q.log_prob(x)


def test_gaussian_kl_matches_monte_carlo():
    m1, ls1 = jnp.array([0.3, -1.0, 0.0]), jnp.array([0.2, -0.5, 0.0])
    m2, ls2 = jnp.array([-0.4, -0.2, 0.3]), jnp.array([0.5, 0.1, -0.3])
    x, log_ratio = _gaussian_draws(m1, ls1, m2, ls2, jax.random.key(2))
    assert x.shape == (NUM_MC, 3)
    log_ratio = np.asarray(log_ratio, np.float64)
    estimate = log_ratio.mean()
    stderr = log_ratio.std() / np.sqrt(NUM_MC)
    exact = float(DiagGaussian(m1, ls1).kl(DiagGaussian(m2, ls2)))
    assert abs(estimate - exact) < 4 * stderr, (estimate, exact, stderr)


def test_gaussian_sample_statistics_and_mode():
    mean = jnp.array([1.5, -2.0, 0.0])
    log_std = jnp.array([0.0, -1.0, 1.0])
    x, _ = _gaussian_draws(mean, log_std, mean, log_std, jax.random.key(3))
    x = np.asarray(x, np.float64)
    assert x.shape == (NUM_MC, 3)
    std = np.exp(np.asarray(log_std, np.float64))
    se_mean = std / np.sqrt(NUM_MC)
    se_std = std / np.sqrt(2 * NUM_MC)
    assert np.all(np.abs(x.mean(0) - np.asarray(mean)) < 4 * se_mean), x.mean(0)
    assert np.all(np.abs(x.std(0) - std) < 4 * se_std), x.std(0)
    # Different keys give different samples; the same key the same ones.
    small = DiagGaussian(mean, log_std)
    np.testing.assert_array_equal(
        small.sample(jax.random.key(4)), small.sample(jax.random.key(4))
    )
    other_draw = small.sample(jax.random.key(5))
    assert not np.allclose(small.sample(jax.random.key(4)), other_draw)
    np.testing.assert_array_equal(np.asarray(small.mode()), np.asarray(mean))


# --------------------------------------------------------------------------
# DiagGaussian: extreme log standard deviations.


@jax.jit
def _gaussian_everything(mean, log_std, other_mean, other_log_std, action):
    """Values and gradients of every method of p = N(mean, e^log_std)."""
    p = DiagGaussian(mean, log_std)
    q = DiagGaussian(other_mean, other_log_std)

    def log_prob(m, s, a):
        return DiagGaussian(m, s).log_prob(a).sum()

    def entropy(m, s):
        return DiagGaussian(m, s).entropy().sum()

    def kl(m1, s1, m2, s2):
        return DiagGaussian(m1, s1).kl(DiagGaussian(m2, s2)).sum()

    def sample(m, s):
        return DiagGaussian(m, s).sample(jax.random.key(1)).sum()

    args = (mean, log_std, other_mean, other_log_std)
    reverse = (other_mean, other_log_std, mean, log_std)
    return {
        "log_prob": p.log_prob(action),
        "entropy": p.entropy(),
        "kl_pq": p.kl(q),
        "kl_qp": q.kl(p),
        "kl_pp": p.kl(p),
        "sample": p.sample(jax.random.key(0)),
        "grad_log_prob": jax.grad(log_prob, (0, 1, 2))(mean, log_std, action),
        "grad_entropy": jax.grad(entropy, (0, 1))(mean, log_std),
        "grad_kl_pq": jax.grad(kl, (0, 1, 2, 3))(*args),
        "grad_kl_qp": jax.grad(kl, (0, 1, 2, 3))(*reverse),
        "grad_sample": jax.grad(sample, (0, 1))(mean, log_std),
    }


@DTYPES
@pytest.mark.parametrize(
    "ls,other_ls",
    [(LOG_STD_MIN, LOG_STD_MAX), (LOG_STD_MAX, LOG_STD_MIN)],
    ids=["min-vs-max", "max-vs-min"],
)
def test_gaussian_extreme_log_std_finite_and_correct(dtype, dtype_ctx, ls, other_ls):
    mean = jnp.asarray([[0.5, -1.0], [0.0, 2.0]], dtype_ctx)
    other_mean = jnp.asarray([[1.5, -1.0], [-1.0, 0.0]], dtype_ctx)
    action = mean + jnp.asarray([[1.0, 0.0], [0.0, -1.0]], dtype_ctx)
    log_std = jnp.full((2, 2), ls, dtype_ctx)
    other_log_std = jnp.full((2, 2), other_ls, dtype_ctx)
    out = _gaussian_everything(mean, log_std, other_mean, other_log_std, action)
    assert_all_finite(out)
    for leaf in jax.tree_util.tree_leaves(out):
        assert leaf.dtype == dtype_ctx

    # Against closed forms evaluated in float64.
    a64, m64 = np.asarray(action, np.float64), np.asarray(mean, np.float64)
    om64 = np.asarray(other_mean, np.float64)
    ls64, ols64 = np.full((2, 2), ls), np.full((2, 2), other_ls)
    want_lp = stats.norm.logpdf(a64, loc=m64, scale=np.exp(ls64)).sum(-1)
    np.testing.assert_allclose(out["log_prob"], want_lp, rtol=1e-5)
    want_ent = stats.norm.entropy(scale=np.exp(ls64)).sum(-1)
    np.testing.assert_allclose(out["entropy"], want_ent, rtol=1e-5)
    np.testing.assert_allclose(
        out["kl_pq"], np_gauss_kl(m64, ls64, om64, ols64), rtol=1e-5
    )
    np.testing.assert_allclose(
        out["kl_qp"], np_gauss_kl(om64, ols64, m64, ls64), rtol=1e-5
    )
    np.testing.assert_allclose(out["kl_pp"], 0.0, atol=1e-6)
    np.testing.assert_allclose(out["sample"], mean, atol=max(10 * np.exp(ls), 1e-6))
    # d log p / d action = −(a − μ)/σ²: huge at LOG_STD_MIN, yet finite.
    want_grad_a = -(a64 - m64) * np.exp(-2.0 * ls64)
    np.testing.assert_allclose(out["grad_log_prob"][2], want_grad_a, rtol=1e-5)


# --------------------------------------------------------------------------
# Gradients against finite differences (float64), and jit.


def test_categorical_check_grads(x64):
    rng = np.random.default_rng(5)
    p = jnp.asarray(rng.normal(size=(3, 4)))
    q = jnp.asarray(rng.normal(size=(3, 4)))
    assert p.dtype == jnp.float64
    actions = jnp.array([0, 3, 2])

    def log_prob(lg):
        return Categorical(lg).log_prob(actions)

    def entropy(lg):
        return Categorical(lg).entropy()

    def kl(lp, lq):
        return Categorical(lp).kl(Categorical(lq))

    check_grads(log_prob, (p,), order=1, modes=["rev"])
    check_grads(entropy, (p,), order=1, modes=["rev"])
    # Second order for the KL: its Hessian is the Fisher matrix of TRPO / NPG.
    check_grads(kl, (p, q), order=2, modes=["rev"])


def test_gaussian_check_grads(x64):
    rng = np.random.default_rng(6)
    m1, m2, a = (jnp.asarray(rng.normal(size=(3, 2))) for _ in range(3))
    ls1 = jnp.asarray(rng.uniform(-1.0, 0.5, size=(3, 2)))
    ls2 = jnp.asarray(rng.uniform(-1.0, 0.5, size=(3, 2)))
    assert m1.dtype == jnp.float64

    def log_prob(m, s, x):
        return DiagGaussian(m, s).log_prob(x)

    def entropy(m, s):
        return DiagGaussian(m, s).entropy()

    def kl(ma, sa, mb, sb):
        return DiagGaussian(ma, sa).kl(DiagGaussian(mb, sb))

    check_grads(log_prob, (m1, ls1, a), order=1, modes=["rev"])
    check_grads(entropy, (m1, ls1), order=1, modes=["rev"])
    check_grads(kl, (m1, ls1, m2, ls2), order=2, modes=["rev"])


def test_distributions_pass_through_jit(cat_pair, gauss_pair):
    p_logits, q_logits = cat_pair
    m1, ls1, m2, ls2 = gauss_pair

    @jax.jit
    def stats_of(p, q, action):
        return p.log_prob(action), p.entropy(), p.kl(q), p.mode()

    cat_action = jnp.zeros((4, 3), jnp.int32)
    for p, q, action in (
        (Categorical(p_logits), Categorical(q_logits), cat_action),
        (DiagGaussian(m1, ls1), DiagGaussian(m2, ls2), jnp.asarray(m2)),
    ):
        jitted = stats_of(p, q, action)
        eager = (p.log_prob(action), p.entropy(), p.kl(q), p.mode())
        for got, want in zip(jitted, eager, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
