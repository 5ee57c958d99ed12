"""pgjax.tabular against closed forms, Python loops and sampled episodes.

Exact quantities (values, visitation, ∇J, F, the natural gradient) are checked
against independent computations: Bellman iteration, power series, the policy
gradient theorem, finite differences, Kakade's soft-policy-iteration identity
and the short corridor's closed form J(p). The Monte-Carlo checks assert that
the sampled mean lies within a few of its own standard errors of the exact
value, and that a wrong estimator (no γ^t factor) lies far outside.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgjax import envs, natural, tabular

GAMMA = 0.8


def _random_problem(num_states=4, num_actions=3, gamma=GAMMA, seed=0):
    key_mdp, key_logits = jax.random.split(jax.random.key(seed))
    mdp = tabular.random_mdp(key_mdp, num_states, num_actions, gamma)
    logits = jax.random.normal(key_logits, (num_states, num_actions))
    return mdp, logits


def _mlp_policy(num_states=4, num_actions=3, hidden=5, seed=1):
    """A tanh MLP on one-hot states: a parametrisation that is not tabular."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    params = {
        "w1": jax.random.normal(k1, (num_states, hidden)),
        "b1": jnp.zeros((hidden,)),
        "w2": jax.random.normal(k2, (hidden, num_actions)),
        "b2": jnp.zeros((num_actions,)),
    }

    def policy_fn(p):
        hidden_units = jnp.tanh(jnp.eye(num_states) @ p["w1"] + p["b1"])
        return jax.nn.softmax(hidden_units @ p["w2"] + p["b2"], axis=-1)

    return policy_fn, params


def _state_blind(theta):
    """The short corridor's policy with π(right) = sigmoid(θ)."""
    return tabular.short_corridor_policy(jax.nn.sigmoid(theta))


def _corridor_value(p):
    """J(p) = (4 − 2p)/(p(p − 1)), from solving V = −1 + P_π V by hand."""
    return (4.0 - 2.0 * p) / (p * (p - 1.0))


# ---------------------------------------------------------------------------
# Values and visitation.


def test_policy_evaluation_matches_bellman_iteration():
    mdp, logits = _random_problem()
    probs = np.asarray(tabular.softmax_policy(logits), np.float64)
    P = np.asarray(mdp.transitions, np.float64)
    R = np.asarray(mdp.rewards, np.float64)
    v = np.zeros(4)
    for _ in range(400):
        q = R + GAMMA * P @ v
        v = (probs * q).sum(-1)
    values, q_values = tabular.policy_evaluation(mdp, tabular.softmax_policy(logits))
    np.testing.assert_allclose(values, v, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(q_values, q, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        tabular.advantage(mdp, tabular.softmax_policy(logits)),
        q - v[:, None],
        atol=1e-5,
    )


def test_short_corridor_values_match_hand_solution():
    p = 0.3
    values, q_values = tabular.policy_evaluation(
        tabular.short_corridor(), tabular.short_corridor_policy(p)
    )
    v1 = (p - 3.0) / (p * (1.0 - p))
    expected = [v1 - 1.0 / p, v1, -1.0 + (1.0 - p) * v1, 0.0]
    np.testing.assert_allclose(values, expected, rtol=1e-5)
    # Q(1, right) = −1 + V(0): the switched state. Terminal Q is 0.
    np.testing.assert_allclose(q_values[1, 1], -1.0 + expected[0], rtol=1e-5)
    np.testing.assert_allclose(q_values[3], [0.0, 0.0])


def test_discounted_visitation_matches_power_series():
    mdp, logits = _random_problem()
    probs = tabular.softmax_policy(logits)
    p_pi = np.einsum("sa,sat->st", np.asarray(probs), np.asarray(mdp.transitions))
    occupancy, visits = np.asarray(mdp.initial, np.float64), np.zeros(4)
    for t in range(300):
        visits += GAMMA**t * occupancy
        occupancy = occupancy @ p_pi
    eta = tabular.discounted_visitation(mdp, probs, normalize=False)
    d = tabular.discounted_visitation(mdp, probs)
    np.testing.assert_allclose(eta, visits, rtol=1e-5)
    # Without terminal states, normalising is multiplying by (1 − γ).
    np.testing.assert_allclose(d, (1.0 - GAMMA) * visits, rtol=1e-5)
    np.testing.assert_allclose(jnp.sum(d), 1.0, rtol=1e-6)


def test_visitation_with_termination_counts_expected_visits():
    # γ = 1: η is the expected number of visits; it sums to the expected
    # episode length, −J with reward −1 per step; the terminal state gets 0.
    mdp = tabular.short_corridor()
    probs = tabular.short_corridor_policy(0.4)
    eta = tabular.discounted_visitation(mdp, probs, normalize=False)
    np.testing.assert_allclose(jnp.sum(eta), -_corridor_value(0.4), rtol=1e-5)
    assert eta[3] == 0.0
    # Flow into state 0: the start, staying (left), and "right" from state 1:
    # η₀ = 1 + (1 − p)·η₀ + p·η₁, so η₀ = 1/p + η₁.
    np.testing.assert_allclose(eta[0], 1.0 / 0.4 + eta[1], rtol=1e-5)
    d = tabular.discounted_visitation(mdp, probs)
    np.testing.assert_allclose(d, eta / jnp.sum(eta), rtol=1e-6)


# ---------------------------------------------------------------------------
# The short corridor.


def test_short_corridor_objective_matches_closed_form():
    mdp = tabular.short_corridor()
    ps = np.linspace(0.05, 0.95, 19)
    returns = jax.vmap(
        lambda p: tabular.objective(mdp, tabular.short_corridor_policy(p))
    )(jnp.asarray(ps, jnp.float32))
    np.testing.assert_allclose(returns, _corridor_value(ps), rtol=1e-5)


def test_short_corridor_optimum():
    p_star = tabular.SHORT_CORRIDOR_OPTIMUM
    assert p_star == pytest.approx(2.0 - math.sqrt(2.0)) == pytest.approx(0.5858, 1e-4)
    with jax.enable_x64(True):
        mdp = tabular.short_corridor()
        ps = jnp.linspace(0.01, 0.99, 9801)
        returns = jax.vmap(
            lambda p: tabular.objective(mdp, tabular.short_corridor_policy(p))
        )(ps)
        assert float(ps[jnp.argmax(returns)]) == pytest.approx(p_star, abs=1e-4)
        best = tabular.objective(mdp, tabular.short_corridor_policy(p_star))
        assert float(best) == pytest.approx(-(6.0 + 4.0 * math.sqrt(2.0)), 1e-10)
        assert float(best) == pytest.approx(-11.657, abs=1e-3)
        # ∂J/∂θ = 0 at p*, nowhere near 0 away from it.
        theta_star = jnp.log(p_star / (1.0 - p_star))
        grad = tabular.exact_gradient(mdp, _state_blind, theta_star)
        assert abs(float(grad)) < 1e-8
        assert abs(float(tabular.exact_gradient(mdp, _state_blind, 0.0))) > 0.1


# ---------------------------------------------------------------------------
# Gradients.


def _finite_difference(mdp, policy_fn, params, eps=1e-6):
    flat, unravel = jax.flatten_util.ravel_pytree(params)

    def central_difference(direction):
        def objective(v):
            return tabular.objective(mdp, policy_fn(unravel(v)))

        plus, minus = (
            objective(flat + eps * direction),
            objective(flat - eps * direction),
        )
        return (plus - minus) / (2 * eps)

    return jax.jit(jax.vmap(central_difference))(jnp.eye(flat.size))


@pytest.mark.parametrize("problem", ["softmax", "mlp", "corridor"])
def test_exact_gradient_matches_theorem_and_finite_differences(problem):
    with jax.enable_x64(True):
        if problem == "corridor":
            mdp, policy_fn, params = tabular.short_corridor(), _state_blind, -0.5
            params = jnp.asarray(params)
        else:
            mdp, logits = _random_problem()
            policy_fn, params = tabular.softmax_policy, logits
            if problem == "mlp":
                policy_fn, params = _mlp_policy()
        grad = tabular.exact_gradient(mdp, policy_fn, params)
        theorem = tabular.policy_gradient_theorem(mdp, policy_fn, params)
        flat = jax.flatten_util.ravel_pytree(grad)[0]
        np.testing.assert_allclose(
            flat, jax.flatten_util.ravel_pytree(theorem)[0], rtol=1e-9, atol=1e-12
        )
        np.testing.assert_allclose(
            flat, _finite_difference(mdp, policy_fn, params), rtol=1e-6, atol=1e-8
        )
        assert np.linalg.norm(flat) > 1e-2


def test_theorem_with_tabular_softmax_is_visits_times_advantage():
    # ∂J/∂θ[s,a] = η(s)·π(a|s)·A(s,a) for the tabular softmax.
    mdp, logits = _random_problem()
    probs = tabular.softmax_policy(logits)
    eta = tabular.discounted_visitation(mdp, probs, normalize=False)
    expected = eta[:, None] * probs * tabular.advantage(mdp, probs)
    grad = tabular.exact_gradient(mdp, tabular.softmax_policy, logits)
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------
# Fisher matrix and natural gradient.


def test_fisher_matches_explicit_sum_and_kl_hessian():
    mdp, _ = _random_problem()
    policy_fn, params = _mlp_policy()
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    probs = policy_fn(params)
    d = tabular.discounted_visitation(mdp, probs)
    score = jax.jit(jax.grad(lambda v, s, a: jnp.log(policy_fn(unravel(v))[s, a])))
    expected = np.zeros((flat.size, flat.size))
    for s in range(4):
        for a in range(3):
            psi = np.asarray(score(flat, s, a))
            expected += float(d[s]) * float(probs[s, a]) * np.outer(psi, psi)
    matrix = tabular.fisher(mdp, policy_fn, params)
    np.testing.assert_allclose(matrix, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        tabular.fisher(mdp, policy_fn, params, weighting=d), matrix, rtol=1e-6
    )

    # F is the Hessian of the d-weighted KL from the frozen policy.
    def kl(v):
        new = policy_fn(unravel(v))
        per_state = jnp.sum(probs * (jnp.log(probs) - jnp.log(new)), axis=-1)
        return jnp.sum(d * per_state)

    fvp = natural.fisher_vector_product(kl, flat)
    direction = jax.random.normal(jax.random.key(3), flat.shape)
    np.testing.assert_allclose(fvp(direction), matrix @ direction, rtol=1e-3, atol=1e-5)


def test_state_weights_choices():
    mdp = tabular.short_corridor()
    probs = tabular.short_corridor_policy(0.5)
    np.testing.assert_allclose(
        tabular.state_weights(mdp, probs, "uniform"), [1 / 3, 1 / 3, 1 / 3, 0.0]
    )
    np.testing.assert_allclose(
        tabular.state_weights(mdp, probs, "initial"), mdp.initial
    )
    with pytest.raises(ValueError, match="weighting"):
        tabular.state_weights(mdp, probs, "visits")


def _spread_per_state(x):
    """max − min over actions, per state: 0 when x is constant in each state."""
    return jnp.max(x, axis=-1) - jnp.min(x, axis=-1)


def test_natural_step_is_soft_policy_iteration():
    # Kakade 2001; Agarwal et al. 2021: F_d⁺∇J = A/(1 − γ) up to a constant per
    # state, so one step of size α gives π_new ∝ π·exp(α·A/(1 − γ)).
    with jax.enable_x64(True):
        mdp, logits = _random_problem()
        probs = tabular.softmax_policy(logits)
        adv = tabular.advantage(mdp, probs)
        step = tabular.natural_gradient(mdp, tabular.softmax_policy, logits)
        step = step.reshape(logits.shape)
        assert jnp.max(_spread_per_state(step - adv / (1 - GAMMA))) < 1e-9
        alpha = 0.3
        new = tabular.softmax_policy(logits + alpha * step)
        expected = probs * jnp.exp(alpha * adv / (1 - GAMMA))
        expected = expected / jnp.sum(expected, axis=-1, keepdims=True)
        np.testing.assert_allclose(new, expected, rtol=1e-9)
        # Any other state weighting gives another step.
        for weighting in ("uniform", "initial"):
            other = tabular.natural_gradient(
                mdp, tabular.softmax_policy, logits, weighting
            ).reshape(logits.shape)
            assert jnp.max(_spread_per_state(other - adv / (1 - GAMMA))) > 0.1
            moved = tabular.softmax_policy(logits + alpha * other)
            assert jnp.max(jnp.abs(moved - expected)) > 1e-2


def test_natural_entropy_bonus_flattens_the_policy_geometrically():
    # The entropy bonus of npg/trpo, c·E_{s∼d}[H(π(·|s))] with the state
    # weights held fixed (the batch's states do not move with θ): under the
    # d-weighted Fisher its natural gradient is −c·log π(a|s) up to a constant
    # per state, so a step of size α on the surrogate E_d[E_π A] plus the bonus
    # gives π_new ∝ π^(1 − α·c)·exp(α·A). The exponent below 1 pulls every
    # state toward uniform by a fixed fraction of its log-probabilities,
    # however sharp the policy already is: the bonus cannot vanish as
    # the plain gradient of the entropy does near a deterministic policy.
    with jax.enable_x64(True):
        mdp, logits = _random_problem()
        logits = logits.at[0].set(jnp.array([12.0, 0.0, -12.0]))  # near-greedy
        probs = tabular.softmax_policy(logits)
        weights = tabular.discounted_visitation(mdp, probs)
        adv = tabular.advantage(mdp, probs)

        def surrogate(theta):
            return jnp.sum(weights[:, None] * tabular.softmax_policy(theta) * adv)

        def entropy_bonus(theta):
            p = tabular.softmax_policy(theta)
            return jnp.sum(weights * -jnp.sum(p * jnp.log(p), axis=-1))

        fisher_pinv = jnp.linalg.pinv(
            tabular.fisher(mdp, tabular.softmax_policy, logits), hermitian=True
        )

        def natural(fn):
            return (fisher_pinv @ jax.grad(fn)(logits).ravel()).reshape(logits.shape)

        # Least squares through the pinv: the near-greedy state's rare action
        # (π ≈ 4e-11) is solved to ~1e-6.
        entropy_step = natural(entropy_bonus)
        assert jnp.max(_spread_per_state(entropy_step + jnp.log(probs))) < 1e-5
        assert jnp.max(_spread_per_state(natural(surrogate) - adv)) < 1e-5
        alpha, c = 0.3, 0.5
        step = natural(lambda t: surrogate(t) + c * entropy_bonus(t))
        new = tabular.softmax_policy(logits + alpha * step)
        expected = probs ** (1 - alpha * c) * jnp.exp(alpha * adv)
        expected = expected / jnp.sum(expected, axis=-1, keepdims=True)
        np.testing.assert_allclose(new, expected, rtol=1e-4, atol=1e-12)
        # In the near-greedy state the natural step moves the logits 24·c
        # apart, and the rarest action gains a factor π^(−α·c) ≈ e^(24·0.15);
        # the plain gradient of the bonus there is below 1e-5.
        assert _spread_per_state(entropy_step)[0] > 20.0
        assert new[0, 2] / probs[0, 2] > 10.0
        assert jnp.max(jnp.abs(jax.grad(entropy_bonus)(logits)[0])) < 1e-5


def test_natural_step_with_termination_uses_the_horizon():
    # γ = 1 and a one-hot softmax on the corridor: F_d⁺∇J = H·A per state, H
    # the expected episode length Σ η.
    with jax.enable_x64(True):
        mdp = tabular.short_corridor()
        logits = jnp.log(tabular.short_corridor_policy(0.3))
        probs = tabular.softmax_policy(logits)
        horizon = jnp.sum(tabular.discounted_visitation(mdp, probs, normalize=False))
        step = tabular.natural_gradient(mdp, tabular.softmax_policy, logits)
        spread = _spread_per_state(
            step.reshape(4, 2) - horizon * tabular.advantage(mdp, probs)
        )
        assert jnp.max(spread[:3]) < 1e-8


# ---------------------------------------------------------------------------
# Sampled episodes and REINFORCE.


def test_sampled_episodes_are_well_formed_and_return_j():
    mdp = tabular.short_corridor()
    probs = tabular.short_corridor_policy(0.5)
    episodes = tabular.sample_episodes(mdp, probs, jax.random.key(0), 4000, 200)
    valid = np.asarray(episodes.valid)
    assert valid.shape == (200, 4000)
    # Valid rows are a prefix; the last one terminates (none is cut at 200).
    length = valid.sum(0)
    np.testing.assert_array_equal(valid, np.arange(200)[:, None] < length)
    terminated = np.asarray(episodes.terminated)
    np.testing.assert_array_equal(terminated.sum(0), 1)
    np.testing.assert_array_equal(terminated[length - 1, np.arange(4000)], True)
    assert np.all(np.asarray(episodes.states)[0] == 0)
    returns = np.asarray(episodes.rewards).sum(0)
    error = returns.std() / np.sqrt(returns.size)
    assert abs(returns.mean() - _corridor_value(0.5)) < 4 * error


@pytest.mark.parametrize("problem", ["corridor", "random"])
def test_reinforce_mean_matches_exact_gradient(problem):
    if problem == "corridor":
        mdp, policy_fn, params, steps = (
            tabular.short_corridor(),
            _state_blind,
            -0.5,
            200,
        )
        params = jnp.asarray(params)
    else:
        mdp, params = _random_problem()
        policy_fn, steps = tabular.softmax_policy, 100  # γ^100 ≈ 2e-10
    num = 10_000
    episodes = tabular.sample_episodes(
        mdp, policy_fn(params), jax.random.key(1), num, steps
    )
    exact = jax.flatten_util.ravel_pytree(
        tabular.exact_gradient(mdp, policy_fn, params)
    )[0]

    def z_scores(**kwargs):
        g = tabular.reinforce_estimates(mdp, policy_fn, params, episodes, **kwargs)
        error = jnp.std(g, axis=0) / np.sqrt(num)
        return (jnp.mean(g, axis=0) - exact) / error, error

    for kwargs in ({}, {"reward_to_go": False}):
        z, error = z_scores(**kwargs)
        assert jnp.max(jnp.abs(z)) < 4.0, (kwargs, z)
    # The test has power: errors are small against the gradient itself, and
    # dropping γ^t (a different direction for γ < 1) lies far outside.
    assert jnp.max(error) < 0.2 * jnp.max(jnp.abs(exact))
    if problem == "random":
        z, _ = z_scores(discount_steps=False)
        assert jnp.max(jnp.abs(z)) > 20.0


# ---------------------------------------------------------------------------
# The gymnax environment.


def test_short_corridor_env_steps():
    spec = envs.make_env("ShortCorridor-v0")
    assert spec.obs_shape == (1,) and spec.discrete and spec.num_actions == 2
    assert spec.max_episode_steps == 100
    env, params = spec.env, spec.params
    obs, state = env.reset(jax.random.key(0), params)
    assert int(state.state) == 0
    np.testing.assert_array_equal(obs, [1.0])
    # right → 1, left (switched) → 2, right → terminal.
    path = []
    for action in (1, 0, 1):
        obs, state, reward, terminated, truncated, info = env.step(
            jax.random.key(1), state, action, params
        )
        path.append((float(reward), bool(terminated), bool(truncated)))
    assert path == [(-1.0, False, False), (-1.0, False, False), (-1.0, True, False)]
    assert int(state.state) == 0 and int(state.time) == 0  # auto-reset
    np.testing.assert_array_equal(info["final_observation"], [1.0])


def test_tabular_env_truncates_with_final_observation():
    mdp, _ = _random_problem()
    env = tabular.TabularEnv(mdp, max_steps=3)
    params = env.default_params
    _, state = env.reset(jax.random.key(0), params)
    for t in range(3):
        obs, state, _, terminated, truncated, info = env.step(
            jax.random.key(t + 1), state, 0, params
        )
        assert bool(truncated) == (t == 2) and not bool(terminated)
    final = np.asarray(info["final_observation"])
    assert final.sum() == 1.0 and obs.sum() == 1.0  # one-hot, before and after
    assert int(state.time) == 0
    with pytest.raises(ValueError, match="one row per state"):
        tabular.TabularEnv(mdp, observations=np.ones((3, 2)))


def test_short_corridor_env_returns_match_objective():
    # Each env's first episode under π(right) = p has mean return J(p).
    spec = envs.make_env("ShortCorridor-v0")
    num, p = 2000, 0.5

    def body(carry, key):
        state, first_return, done = carry
        key_action, key_step = jax.random.split(key)
        action = jax.random.bernoulli(key_action, p, (num,)).astype(jnp.int32)
        state, result = envs.step(spec, state, action, key_step)
        ended = result.terminated | result.truncated
        first_return = jnp.where(ended & ~done, result.completed_return, first_return)
        return (state, first_return, done | ended), None

    state = envs.reset(spec, jax.random.key(0), num)
    init = (state, jnp.zeros((num,)), jnp.zeros((num,), bool))
    (_, returns, done), _ = jax.lax.scan(
        body, init, jax.random.split(jax.random.key(1), 100)
    )
    assert bool(jnp.all(done))
    error = float(jnp.std(returns)) / np.sqrt(num)
    assert abs(float(jnp.mean(returns)) - _corridor_value(p)) < 4 * error
