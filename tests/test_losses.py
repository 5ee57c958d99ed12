"""Tests for pgjax.losses.

Every public function is checked against a plain Python loop written here, on
random batches with terminations and truncations mid-batch, eagerly and under
``jax.jit``; plus the identities between estimators, the gradients of the
losses, and the shape checks.

Data conventions (see the module docstring of pgjax.losses):
``discounts[t] = γ·(1 − terminated_t)``, ``dones[t] = terminated_t or
truncated_t``, ``next_values[t]`` is the value of the true next state: the value
of the following row within an episode, a fresh number (the final observation's
value) where the episode ended, and the bootstrap value at the last row.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgjax import losses

GAMMA = 0.9
# (T, batch shape): one batch axis, two batch axes. (Rank-1 inputs, no batch
# axis, are covered by the hand-computed GAE example.)
CASES = [(7, (3,)), (11, (2, 4))]
CASE_IDS = ["T7-3", "T11-2x4"]
JIT = pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
SHAPES = pytest.mark.parametrize("T,batch_shape", CASES, ids=CASE_IDS)
RTOL = 2e-5
ATOL = 2e-5


def maybe_jit(fn, jit, **jit_kwargs):
    return jax.jit(fn, **jit_kwargs) if jit else fn


def make_batch(T, batch_shape, seed, truncations=True):
    """A time-major batch with terminations and (optionally) truncations."""
    rng = np.random.default_rng(seed)
    shape = (T, *batch_shape)
    terminated = rng.random(shape) < 0.15
    truncated = rng.random(shape) < 0.15
    term_cols = terminated.reshape(T, -1)  # views: edits reach the arrays
    trunc_cols = truncated.reshape(T, -1)
    # Guarantee a pure termination and a pure truncation mid-batch.
    term_cols[2, 0], trunc_cols[2, 0] = True, False
    term_cols[4, 0], trunc_cols[4, 0] = False, True
    term_cols[3, -1], trunc_cols[3, -1] = True, False
    term_cols[5, -1], trunc_cols[5, -1] = False, True
    if not truncations:
        truncated[...] = False
    dones = terminated | truncated
    assert terminated[1:-1].any()
    assert truncations == bool(truncated[1:-1].any())

    values = rng.normal(size=shape)
    # Within an episode V'_t = V_{t+1}; where it ended, V of the final
    # observation (a new number); at the last row, the bootstrap value.
    following = np.concatenate([values[1:], rng.normal(size=(1, *batch_shape))])
    final_obs_values = 3.0 + rng.normal(size=shape)
    next_values = np.where(dones, final_obs_values, following)
    f32 = functools.partial(np.asarray, dtype=np.float32)
    return {
        "rewards": f32(rng.normal(size=shape)),
        "values": f32(values),
        "next_values": f32(next_values),
        "discounts": f32(GAMMA * (1.0 - terminated)),
        "dones": dones,
        "terminated": terminated,
        "truncated": truncated,
    }


def flag_variants(flags):
    """The same flags as booleans and as 0/1 floats."""
    flags = np.asarray(flags, dtype=bool)
    return {"bool": flags, "float": flags.astype(np.float32)}


def per_column(fn, *arrays):
    """Applies ``fn`` (1-D time series in, list out) to every batch column."""
    T = arrays[0].shape[0]
    cols = [np.asarray(a, dtype=np.float64).reshape(T, -1) for a in arrays]
    out = np.zeros_like(cols[0])
    for b in range(cols[0].shape[1]):
        out[:, b] = fn(*(c[:, b] for c in cols))
    return out.reshape(arrays[0].shape)


# --------------------------------------------------------------------------
# Python loop references.


def ref_discounted_returns(rewards, discounts, bootstrap):
    T = rewards.shape[0]
    boot = np.asarray(bootstrap, np.float64).reshape(1, -1)
    boot = np.broadcast_to(boot, (T, boot.shape[1]))

    def column(r, d, g_end):
        out, g = [0.0] * T, g_end[0]
        for t in reversed(range(T)):
            g = r[t] + d[t] * g
            out[t] = g
        return out

    return per_column(column, rewards, discounts, boot.reshape(rewards.shape))


def ref_td_errors(rewards, values, next_values, discounts):
    def column(r, v, nv, d):
        return [r[t] + d[t] * nv[t] - v[t] for t in range(len(r))]

    return per_column(column, rewards, values, next_values, discounts)


def ref_gae(rewards, values, next_values, discounts, dones, lam):
    """Explicit sum A_t = Σ_k (Π_{j<k} λ·d_{t+j}) δ_{t+k} up to the episode end."""

    def column(r, v, nv, d, done):
        T = len(r)
        delta = [r[t] + d[t] * nv[t] - v[t] for t in range(T)]
        out = []
        for t in range(T):
            total, coef = 0.0, 1.0
            for k in range(t, T):
                total += coef * delta[k]
                if done[k]:
                    break
                coef *= lam * d[k]
            out.append(total)
        return out

    return per_column(column, rewards, values, next_values, discounts, dones)


def ref_lambda_returns(rewards, next_values, discounts, dones, lam):
    """G_t = r_t + d_t·[(1 − λ)·V'_t + λ·G_{t+1}], r_t + d_t·V'_t at episode end."""

    def column(r, nv, d, done):
        T = len(r)
        out, g_next = [0.0] * T, 0.0
        for t in reversed(range(T)):
            if done[t] or t == T - 1:
                g = r[t] + d[t] * nv[t]
            else:
                g = r[t] + d[t] * ((1.0 - lam) * nv[t] + lam * g_next)
            out[t] = g_next = g
        return out

    return per_column(column, rewards, next_values, discounts, dones)


def ref_n_step(rewards, next_values, discounts, dones, n):
    def column(r, nv, d, done):
        T = len(r)
        out = []
        for t in range(T):
            total, coef = 0.0, 1.0
            for k in range(n):
                i = t + k
                total += coef * r[i]
                coef *= d[i]
                if k == n - 1 or done[i] or i == T - 1:
                    total += coef * nv[i]
                    break
            out.append(total)
        return out

    return per_column(column, rewards, next_values, discounts, dones)


def ref_reward_to_go(rewards, discounts, dones):
    def column(r, d, done):
        T = len(r)
        out = []
        for t in range(T):
            total, coef = 0.0, 1.0
            for i in range(t, T):
                total += coef * r[i]
                if done[i]:
                    break
                coef *= d[i]
            out.append(total)
        return out

    return per_column(column, rewards, discounts, dones)


def ref_episode_returns(rewards, discounts, dones):
    def column(r, d, done):
        T = len(r)
        out = []
        for t in range(T):
            start = t
            while start > 0 and not done[start - 1]:
                start -= 1
            total, coef = 0.0, 1.0
            for i in range(start, T):
                total += coef * r[i]
                if done[i]:
                    break
                coef *= d[i]
            out.append(total)
        return out

    return per_column(column, rewards, discounts, dones)


def ref_masked_mean(x, mask=None):
    x = np.asarray(x, np.float64).ravel()
    mask = np.ones_like(x) if mask is None else np.asarray(mask, np.float64).ravel()
    total, count = 0.0, 0.0
    for xi, mi in zip(x, mask, strict=True):
        total += xi * mi
        count += mi
    return total / max(count, 1.0)


def ref_normalize(adv, mask=None):
    flat = np.asarray(adv, np.float64).ravel()
    m = np.ones_like(flat) if mask is None else np.asarray(mask, np.float64).ravel()
    valid = [a for a, mi in zip(flat, m, strict=True) if mi]
    mean = sum(valid) / len(valid)
    std = (sum((a - mean) ** 2 for a in valid) / len(valid)) ** 0.5
    out = [
        (a - mean) / (std + 1e-8) if mi else 0.0 for a, mi in zip(flat, m, strict=True)
    ]
    return np.asarray(out).reshape(np.shape(adv))


def make_mask(shape, seed):
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < 0.6
    mask.reshape(-1)[:2] = [True, False]  # at least one valid and one padded
    return mask


def assert_close(got, want, rtol=RTOL, atol=ATOL):
    got = np.asarray(got)
    assert got.shape == np.shape(want)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


# --------------------------------------------------------------------------
# Reference checks: eager and jit, bool and float flags.


@JIT
@SHAPES
def test_discounted_returns_matches_loop(jit, T, batch_shape):
    b = make_batch(T, batch_shape, seed=1)
    bootstrap = np.linspace(-1.0, 2.0, int(np.prod(batch_shape))).astype(np.float32)
    bootstrap = bootstrap.reshape(batch_shape)
    got = maybe_jit(losses.discounted_returns, jit)(
        b["rewards"], b["discounts"], bootstrap
    )
    want = ref_discounted_returns(b["rewards"], b["discounts"], bootstrap)
    assert_close(got, want)


@JIT
@SHAPES
def test_td_errors_matches_loop(jit, T, batch_shape):
    b = make_batch(T, batch_shape, seed=2)
    args = (b["rewards"], b["values"], b["next_values"], b["discounts"])
    got = maybe_jit(losses.td_errors, jit)(*args)
    assert_close(got, ref_td_errors(*args))


@JIT
@SHAPES
def test_gae_advantages_matches_loop(jit, T, batch_shape):
    b = make_batch(T, batch_shape, seed=3)
    fn = maybe_jit(losses.gae_advantages, jit)
    for lam in (0.0, 0.7, 1.0):
        want = ref_gae(
            b["rewards"],
            b["values"],
            b["next_values"],
            b["discounts"],
            b["dones"],
            lam,
        )
        results = {}
        for kind, dones in flag_variants(b["dones"]).items():
            # λ is passed as an array so that under jit it is traced.
            results[kind] = fn(
                b["rewards"],
                b["values"],
                b["next_values"],
                b["discounts"],
                dones,
                jnp.float32(lam),
            )
            assert_close(results[kind], want)
        np.testing.assert_allclose(results["bool"], results["float"], rtol=1e-6, atol=0)


@JIT
@SHAPES
def test_lambda_returns_matches_loop(jit, T, batch_shape):
    b = make_batch(T, batch_shape, seed=4)
    lam = 0.8
    fn = maybe_jit(losses.lambda_returns, jit)
    want = ref_lambda_returns(
        b["rewards"], b["next_values"], b["discounts"], b["dones"], lam
    )
    results = {}
    for kind, dones in flag_variants(b["dones"]).items():
        results[kind] = fn(
            b["rewards"], b["values"], b["next_values"], b["discounts"], dones, lam
        )
        assert_close(results[kind], want)
    np.testing.assert_allclose(results["bool"], results["float"], rtol=1e-6, atol=0)


@JIT
@SHAPES
@pytest.mark.parametrize("n", [1, 3])
def test_n_step_returns_matches_loop(jit, T, batch_shape, n):
    b = make_batch(T, batch_shape, seed=5)
    fn = maybe_jit(losses.n_step_returns, jit, static_argnames="n")
    want = ref_n_step(b["rewards"], b["next_values"], b["discounts"], b["dones"], n)
    results = {}
    for kind, dones in flag_variants(b["dones"]).items():
        results[kind] = fn(b["rewards"], b["next_values"], b["discounts"], dones, n=n)
        assert_close(results[kind], want)
    np.testing.assert_allclose(results["bool"], results["float"], rtol=1e-6, atol=0)


@JIT
@SHAPES
def test_reward_to_go_matches_loop(jit, T, batch_shape):
    b = make_batch(T, batch_shape, seed=6)
    fn = maybe_jit(losses.reward_to_go, jit)
    gammas = np.full_like(b["rewards"], GAMMA)
    want = ref_reward_to_go(b["rewards"], gammas, b["dones"])
    results = {}
    for kind, dones in flag_variants(b["dones"]).items():
        results[kind] = fn(b["rewards"], gammas, dones)
        assert_close(results[kind], want)
        # Termination zeros in the discounts change nothing: the sum stops there.
        assert_close(fn(b["rewards"], b["discounts"], dones), want)
    np.testing.assert_allclose(results["bool"], results["float"], rtol=1e-6, atol=0)


@JIT
@SHAPES
def test_episode_returns_matches_loop(jit, T, batch_shape):
    b = make_batch(T, batch_shape, seed=7)
    fn = maybe_jit(losses.episode_returns, jit)
    want = ref_episode_returns(b["rewards"], b["discounts"], b["dones"])
    results = {}
    for kind, dones in flag_variants(b["dones"]).items():
        results[kind] = fn(b["rewards"], b["discounts"], dones)
        assert_close(results[kind], want)
    np.testing.assert_allclose(results["bool"], results["float"], rtol=1e-6, atol=0)


@JIT
@SHAPES
def test_expected_value_baseline_matches_loop(jit, T, batch_shape):
    rng = np.random.default_rng(8)
    num_actions = 4
    shape = (T, *batch_shape, num_actions)
    q = rng.normal(size=shape).astype(np.float32)
    probs = rng.random(shape)
    probs = (probs / probs.sum(-1, keepdims=True)).astype(np.float32)
    got = maybe_jit(losses.expected_value_baseline, jit)(q, probs)
    q2, p2 = q.reshape(-1, num_actions), probs.reshape(-1, num_actions)
    want = [
        sum(float(p2[i, a]) * float(q2[i, a]) for a in range(num_actions))
        for i in range(q2.shape[0])
    ]
    assert_close(got, np.reshape(want, shape[:-1]))


@JIT
@SHAPES
def test_policy_gradient_loss_matches_loop(jit, T, batch_shape):
    rng = np.random.default_rng(9)
    shape = (T, *batch_shape)
    log_probs = -np.abs(rng.normal(size=shape)).astype(np.float32)
    adv = rng.normal(size=shape).astype(np.float32)
    mask = make_mask(shape, seed=10)
    fn = maybe_jit(losses.policy_gradient_loss, jit)
    assert_close(fn(log_probs, adv), -ref_masked_mean(adv * log_probs))
    want = -ref_masked_mean(adv * log_probs, mask)
    results = {k: fn(log_probs, adv, m) for k, m in flag_variants(mask).items()}
    for result in results.values():
        assert_close(result, want)
    np.testing.assert_allclose(results["bool"], results["float"], rtol=1e-6, atol=0)


@JIT
@SHAPES
def test_value_loss_matches_loop(jit, T, batch_shape):
    rng = np.random.default_rng(11)
    shape = (T, *batch_shape)
    values = rng.normal(size=shape).astype(np.float32)
    targets = rng.normal(size=shape).astype(np.float32)
    mask = make_mask(shape, seed=12)
    fn = maybe_jit(losses.value_loss, jit)
    sq = (values.astype(np.float64) - targets) ** 2
    assert_close(fn(values, targets), 0.5 * ref_masked_mean(sq))
    want = 0.5 * ref_masked_mean(sq, mask)
    results = {k: fn(values, targets, m) for k, m in flag_variants(mask).items()}
    for result in results.values():
        assert_close(result, want)
    np.testing.assert_allclose(results["bool"], results["float"], rtol=1e-6, atol=0)


@JIT
@SHAPES
def test_entropy_loss_matches_loop(jit, T, batch_shape):
    rng = np.random.default_rng(13)
    shape = (T, *batch_shape)
    ent = rng.random(shape).astype(np.float32) * 2.0
    mask = make_mask(shape, seed=14)
    fn = maybe_jit(losses.entropy_loss, jit)
    assert_close(fn(ent), -ref_masked_mean(ent))
    results = {k: fn(ent, m) for k, m in flag_variants(mask).items()}
    for result in results.values():
        assert_close(result, -ref_masked_mean(ent, mask))
    np.testing.assert_allclose(results["bool"], results["float"], rtol=1e-6, atol=0)


@JIT
@SHAPES
def test_normalize_advantages_matches_loop(jit, T, batch_shape):
    rng = np.random.default_rng(15)
    shape = (T, *batch_shape)
    adv = (2.0 + 3.0 * rng.normal(size=shape)).astype(np.float32)
    mask = make_mask(shape, seed=16)
    adv[~mask] = 1e4  # garbage in the padding must not reach the statistics
    fn = maybe_jit(losses.normalize_advantages, jit)
    assert_close(fn(adv), ref_normalize(adv), atol=1e-4)
    results = {k: fn(adv, m) for k, m in flag_variants(mask).items()}
    for result in results.values():
        assert_close(result, ref_normalize(adv, mask), atol=1e-4)
    np.testing.assert_allclose(results["bool"], results["float"], rtol=1e-6, atol=0)


@JIT
@SHAPES
def test_masked_mean_matches_loop(jit, T, batch_shape):
    rng = np.random.default_rng(17)
    shape = (T, *batch_shape)
    x = rng.normal(size=shape).astype(np.float32)
    mask = make_mask(shape, seed=18)
    fn = maybe_jit(losses.masked_mean, jit)
    assert_close(fn(x), ref_masked_mean(x))
    results = {k: fn(x, m) for k, m in flag_variants(mask).items()}
    for result in results.values():
        assert_close(result, ref_masked_mean(x, mask))
    np.testing.assert_allclose(results["bool"], results["float"], rtol=1e-6, atol=0)


# --------------------------------------------------------------------------
# Hand-computed truncation vs termination example.


@JIT
def test_gae_hand_computed_truncation_and_termination(jit):
    rewards = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    values = np.array([0.5, 0.6, 0.7, 0.8], np.float32)
    # Episode ends after t = 1; V of its final observation is 10; bootstrap 5.
    next_values = np.array([0.6, 10.0, 0.8, 5.0], np.float32)
    dones = np.array([False, True, False, False])
    fn = maybe_jit(losses.gae_advantages, jit)
    # Truncated at t = 1: the step keeps γ and bootstraps from V = 10.
    discounts = np.full(4, 0.9, np.float32)
    got = fn(rewards, values, next_values, discounts, dones, 0.5)
    # δ = [1.04, 10.4, 3.02, 7.7]; A3 = 7.7, A2 = 3.02 + 0.45·7.7, A1 = δ1 (the
    # episode ended), A0 = 1.04 + 0.45·10.4.
    assert_close(got, [5.72, 10.4, 6.485, 7.7])
    # Terminated at t = 1: discount 0, δ1 = 2 − 0.6.
    discounts[1] = 0.0
    got = fn(rewards, values, next_values, discounts, dones, 0.5)
    assert_close(got, [1.67, 1.4, 6.485, 7.7])


# --------------------------------------------------------------------------
# Identities between estimators.


@JIT
@SHAPES
def test_gae_lambda_zero_equals_td_errors(jit, T, batch_shape):
    b = make_batch(T, batch_shape, seed=20)
    gae = maybe_jit(losses.gae_advantages, jit)(
        b["rewards"], b["values"], b["next_values"], b["discounts"], b["dones"], 0.0
    )
    td = maybe_jit(losses.td_errors, jit)(
        b["rewards"], b["values"], b["next_values"], b["discounts"]
    )
    assert_close(gae, td, rtol=1e-6, atol=1e-6)


@JIT
@SHAPES
def test_gae_lambda_one_untruncated_equals_returns_minus_values(jit, T, batch_shape):
    b = make_batch(T, batch_shape, seed=21, truncations=False)
    gae = maybe_jit(losses.gae_advantages, jit)(
        b["rewards"], b["values"], b["next_values"], b["discounts"], b["dones"], 1.0
    )
    returns = maybe_jit(losses.discounted_returns, jit)(
        b["rewards"], b["discounts"], b["next_values"][-1]
    )
    assert_close(gae, np.asarray(returns) - b["values"], atol=1e-5)


@JIT
def test_gae_lambda_one_with_truncation_bootstraps_at_the_cut(jit):
    # With a truncation, λ = 1 GAE is the return of each episode bootstrapped
    # from V(final observation) where it was cut, minus V: it is NOT the plain
    # discounted return over the batch.
    b = make_batch(9, (3,), seed=22)
    gae = maybe_jit(losses.gae_advantages, jit)(
        b["rewards"], b["values"], b["next_values"], b["discounts"], b["dones"], 1.0
    )
    want = ref_n_step(
        b["rewards"], b["next_values"], b["discounts"], b["dones"], n=9
    ) - np.asarray(b["values"], np.float64)
    assert_close(gae, want)
    plain = ref_discounted_returns(
        b["rewards"], b["discounts"], b["next_values"][-1]
    ) - np.asarray(b["values"], np.float64)
    assert not np.allclose(np.asarray(gae), plain, atol=1e-3)


@JIT
def test_estimators_split_at_episode_end_equal_concatenation(jit):
    T, split = 10, 5  # equal halves: one compiled shape for both segments
    b = make_batch(T, (3,), seed=23)
    # End an episode in every column at row split − 1: terminated in column 0,
    # truncated in columns 1 and 2.
    b["dones"][split - 1] = True
    b["discounts"][split - 1] = [0.0, GAMMA, GAMMA]
    keys = ("rewards", "values", "next_values", "discounts", "dones")
    full = [b[k] for k in keys]
    first = [b[k][:split] for k in keys]
    second = [b[k][split:] for k in keys]

    def check(fn):
        fn = maybe_jit(fn, jit)
        whole = np.asarray(fn(*full))
        parts = np.concatenate([np.asarray(fn(*first)), np.asarray(fn(*second))])
        assert_close(whole, parts, rtol=1e-6, atol=1e-6)

    def gae(r, v, nv, d, done):
        return losses.gae_advantages(r, v, nv, d, done, 0.9)

    def nstep(r, v, nv, d, done):
        return losses.n_step_returns(r, nv, d, done, 3)

    def ep_ret(r, v, nv, d, done):
        return losses.episode_returns(r, d, done)

    for fn in (gae, nstep, ep_ret):
        check(fn)


@JIT
@SHAPES
def test_lambda_returns_equal_gae_plus_values(jit, T, batch_shape):
    b = make_batch(T, batch_shape, seed=24)
    # Inconsistent next values (V'_t ≠ V_{t+1} everywhere) on purpose: the
    # identity holds for any inputs.
    rng = np.random.default_rng(25)
    next_values = rng.normal(size=b["values"].shape).astype(np.float32)
    args = (b["rewards"], b["values"], next_values, b["discounts"], b["dones"], 0.6)
    lam_ret = maybe_jit(losses.lambda_returns, jit)(*args)
    gae = maybe_jit(losses.gae_advantages, jit)(*args)
    assert_close(lam_ret, np.asarray(gae) + b["values"], rtol=1e-6, atol=1e-6)


@JIT
@SHAPES
def test_n_step_returns_n1_and_n_large(jit, T, batch_shape):
    b = make_batch(T, batch_shape, seed=26)
    fn = maybe_jit(losses.n_step_returns, jit, static_argnames="n")
    args = (b["rewards"], b["next_values"], b["discounts"], b["dones"])
    one_step = b["rewards"] + b["discounts"] * b["next_values"]
    assert_close(fn(*args, n=1), one_step, rtol=1e-6, atol=1e-6)
    lam_one = maybe_jit(losses.lambda_returns, jit)(
        b["rewards"], b["values"], b["next_values"], b["discounts"], b["dones"], 1.0
    )
    for n in (T, T + 3):
        assert_close(fn(*args, n=n), lam_one, atol=1e-5)


def test_n_step_returns_rejects_bad_n():
    b = make_batch(7, (3,), seed=27)
    args = (b["rewards"], b["next_values"], b["discounts"], b["dones"])
    for n in (0, -1, 2.0):
        with pytest.raises(ValueError):
            losses.n_step_returns(*args, n=n)


# --------------------------------------------------------------------------
# Gradients of the losses.


@JIT
def test_policy_gradient_loss_gradients(jit):
    rng = np.random.default_rng(30)
    shape = (6, 4)
    log_probs = -np.abs(rng.normal(size=shape)).astype(np.float32)
    adv = rng.normal(size=shape).astype(np.float32)
    mask = make_mask(shape, seed=31)
    grad = maybe_jit(jax.grad(losses.policy_gradient_loss, argnums=(0, 1)), jit)

    g_logp, g_adv = grad(log_probs, adv)
    assert_close(g_logp, -adv / adv.size, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(g_adv), np.zeros(shape))

    for m in flag_variants(mask).values():
        g_logp, g_adv = grad(log_probs, adv, m)
        assert_close(g_logp, -adv * mask / mask.sum(), rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(np.asarray(g_adv), np.zeros(shape))


@JIT
def test_value_loss_gradients(jit):
    rng = np.random.default_rng(32)
    shape = (6, 4)
    values = rng.normal(size=shape).astype(np.float32)
    targets = rng.normal(size=shape).astype(np.float32)
    mask = make_mask(shape, seed=33)
    grad = maybe_jit(jax.grad(losses.value_loss, argnums=(0, 1)), jit)

    g_v, g_t = grad(values, targets)
    assert_close(g_v, (values - targets) / values.size, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(g_t), np.zeros(shape))

    g_v, g_t = grad(values, targets, mask)
    assert_close(g_v, (values - targets) * mask / mask.sum(), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(g_t), np.zeros(shape))


@JIT
def test_normalize_advantages_of_equal_advantages_is_zero(jit):
    """Equal advantages, or equal but for the rounding of the computation that
    produced them, carry no signal: 0, not rounding noise at unit scale. A
    small real spread is still standardised."""
    fn = maybe_jit(losses.normalize_advantages, jit)
    equal = np.full((500, 64), -99.34304, np.float32)
    np.testing.assert_array_equal(np.asarray(fn(equal)), 0.0)
    rounded = equal.copy()
    rounded[::7, ::3] = np.nextafter(rounded[::7, ::3], np.float32(0))
    np.testing.assert_array_equal(np.asarray(fn(rounded)), 0.0)
    spread = equal + np.float32(1e-3) * np.arange(64, dtype=np.float32)
    np.testing.assert_allclose(np.asarray(fn(spread)).std(), 1.0, rtol=1e-3)


@JIT
def test_normalize_advantages_statistics(jit):
    rng = np.random.default_rng(34)
    shape = (8, 5)
    adv = (-4.0 + 7.0 * rng.normal(size=shape)).astype(np.float32)
    mask = make_mask(shape, seed=35)
    adv[~mask] = -1e5
    fn = maybe_jit(losses.normalize_advantages, jit)

    out = np.asarray(fn(adv, mask))
    valid = out[mask].astype(np.float64)
    np.testing.assert_allclose(valid.mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(valid.std(), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(out[~mask], 0.0)

    out = np.asarray(fn(adv[mask]))
    np.testing.assert_allclose(out.mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(), 1.0, rtol=1e-5)


@JIT
def test_masked_mean_all_zero_mask_is_zero(jit):
    x = np.arange(12, dtype=np.float32).reshape(4, 3) + 1.0
    fn = maybe_jit(losses.masked_mean, jit)
    for mask in flag_variants(np.zeros((4, 3))).values():
        out = fn(x, mask)
        assert np.isfinite(out)
        assert float(out) == 0.0
        g = maybe_jit(jax.grad(losses.masked_mean), jit)(x, mask)
        np.testing.assert_array_equal(np.asarray(g), np.zeros((4, 3)))
    for fn_loss in (losses.policy_gradient_loss, losses.value_loss):
        out = maybe_jit(fn_loss, jit)(x, x + 1.0, np.zeros((4, 3), bool))
        assert float(out) == 0.0


# --------------------------------------------------------------------------
# Shape checks.

_T, _N = 5, 3
_R = np.zeros((_T, _N), np.float32)
_COL = np.zeros((_T, _N, 1), np.float32)
_ROW = np.zeros((_T, 1), np.float32)
_DONE = np.zeros((_T, _N), bool)

SHAPE_ERRORS = {
    "td_errors/values(T,N,1)": (losses.td_errors, (_R, _COL, _R, _R)),
    "td_errors/next_values(T,N,1)": (losses.td_errors, (_R, _R, _COL, _R)),
    "td_errors/discounts(T,1)": (losses.td_errors, (_R, _R, _R, _ROW)),
    "gae/values(T,N,1)": (losses.gae_advantages, (_R, _COL, _R, _R, _DONE, 0.9)),
    "gae/dones(T,1)": (losses.gae_advantages, (_R, _R, _R, _R, _DONE[:, :1], 0.9)),
    "lambda_returns/values(T,N,1)": (
        losses.lambda_returns,
        (_R, _COL, _R, _R, _DONE, 0.9),
    ),
    "discounted_returns/discounts(T,N,1)": (
        losses.discounted_returns,
        (_R, _COL, np.zeros(_N, np.float32)),
    ),
    "discounted_returns/bootstrap(N,1)": (
        losses.discounted_returns,
        (_R, _R, np.zeros((_N, 1), np.float32)),
    ),
    "discounted_returns/bootstrap(T,N)": (losses.discounted_returns, (_R, _R, _R)),
    "discounted_returns/bootstrap()": (
        losses.discounted_returns,
        (_R, _R, np.float32(0.0)),
    ),
    "n_step/next_values(T,N,1)": (
        functools.partial(losses.n_step_returns, n=2),
        (_R, _COL, _R, _DONE),
    ),
    "reward_to_go/dones(T,1)": (losses.reward_to_go, (_R, _R, _DONE[:, :1])),
    "episode_returns/discounts(T,N,1)": (losses.episode_returns, (_R, _COL, _DONE)),
    "expected_value_baseline/probs(1,A)": (
        losses.expected_value_baseline,
        (np.zeros((_N, 4), np.float32), np.zeros((1, 4), np.float32)),
    ),
    "policy_gradient_loss/advantages(T,N,1)": (
        losses.policy_gradient_loss,
        (_R, _COL),
    ),
    "policy_gradient_loss/mask(T,1)": (losses.policy_gradient_loss, (_R, _R, _ROW)),
    "value_loss/targets(T,N,1)": (losses.value_loss, (_R, _COL)),
    "entropy_loss/mask(T,N,1)": (losses.entropy_loss, (_R, _COL)),
    "normalize_advantages/mask(T,1)": (losses.normalize_advantages, (_R, _ROW)),
    "masked_mean/mask(T,1)": (losses.masked_mean, (_R, _ROW)),
}


@JIT
@pytest.mark.parametrize("name", list(SHAPE_ERRORS))
def test_mismatched_shapes_raise(jit, name):
    fn, args = SHAPE_ERRORS[name]
    with pytest.raises((AssertionError, ValueError)):
        jax.block_until_ready(maybe_jit(fn, jit)(*args))
