"""REINFORCE's gradient estimate against exact answers.

On ``ProbeEqualReturn-v0`` every policy's return is 2, so the true gradient is
0, while the episode's length (1 or 2 steps) depends on the first action. The
estimate divided by the number of episodes (``--pg-normalizer episodes``) has
mean 0; divided by the number of steps (``steps``) it is a ratio estimator
whose mean, with one episode per batch, is ``−∇π(0|s0)`` for the loss. Both
are checked by Monte Carlo over many one-episode updates and exactly, by
enumerating the probe's three trajectories. The same enumeration checks that
the leave-one-out mean baseline keeps the estimate unbiased (a batch mean does
not) and that ``--discounted-gradient`` gives the exact gradient of
``J_γ = E[Σ_t γ^t r_t]``; a Python loop checks the estimate itself.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_one_line_error, run_main
from jax.flatten_util import ravel_pytree

from pgjax import cli, envs, losses, rollout
from pgjax.algos import base, reinforce
from pgjax.backend import IDENTITY
from pgjax.config import ConfigError, Hyperparams, TrainConfig, validate

PROBE = "ProbeEqualReturn-v0"
S0 = jnp.array([1.0, 0.0])  # the probe's first observation
S1 = jnp.array([0.0, 1.0])


def _config(**overrides) -> TrainConfig:
    settings = dict(
        algo="reinforce",
        env=PROBE,
        num_envs=1,
        hidden=(8,),
        gamma=1.0,
        baseline="none",
        normalize_advantages=False,
        ent_coef=0.0,
    )
    return TrainConfig(**{**settings, **overrides})


def _setup(config: TrainConfig):
    """The estimator, an agent and the hyperparameters of ``config``."""
    spec = envs.make_env(config.env)
    estimator = reinforce.make_estimator(config, spec, IDENTITY)
    agent = base.init_actor_critic(
        estimator.policy, estimator.critic, jax.random.PRNGKey(0)
    )
    return spec, estimator, agent, Hyperparams.from_config(config)


def _flat_actor_grad(estimate: reinforce.Estimate) -> jax.Array:
    return ravel_pytree(estimate.grads["actor"])[0]


def _grad_prob(policy, actor, obs, action) -> jax.Array:
    """``∇_θ π(action|obs)``, flattened."""

    def prob(params):
        return jnp.exp(policy.apply(params, obs[None]).log_prob(jnp.array([action])))[0]

    return ravel_pytree(jax.grad(prob)(actor))[0]


def _probs(policy, actor, obs) -> np.ndarray:
    logits = policy.apply(actor, obs[None]).logits[0]
    return np.asarray(jax.nn.softmax(logits), np.float64)


# --------------------------------------------- Monte Carlo: one episode each


@pytest.mark.parametrize("normalizer", ["episodes", "steps"])
def test_one_episode_estimates_mean_zero_only_when_divided_by_episodes(normalizer):
    config = _config(pg_normalizer=normalizer)
    spec, estimator, agent, hyper = _setup(config)
    act = base.sampling_act_fn(estimator.policy, agent.actor)

    def one_update_gradient(key):
        state_key, roll_key = jax.random.split(key)
        env_state = envs.reset(spec, state_key, 1)
        _, batch, _ = rollout.collect_episodes(spec, act, env_state, roll_key)
        return _flat_actor_grad(estimator.gradient(agent, batch, hyper))

    samples = 4096
    keys = jax.random.split(jax.random.PRNGKey(1), samples)
    grads = np.asarray(jax.jit(jax.vmap(one_update_gradient))(keys), np.float64)
    # Project on the direction of ∇π(0|s0): the steps estimate's mean is
    # −∇π(0|s0) (of the loss), the episodes estimate's is 0.
    direction = np.asarray(_grad_prob(estimator.policy, agent.actor, S0, 0))
    norm = np.linalg.norm(direction)
    projected = grads @ (direction / norm)
    mean = projected.mean()
    stderr = projected.std(ddof=1) / np.sqrt(samples)
    z = mean / stderr
    if normalizer == "episodes":
        assert abs(z) < 3.0, (mean, stderr)
    else:
        assert z < -4.0, (mean, stderr)
        assert abs(mean + norm) < 3.0 * stderr, (mean, -norm, stderr)


# ------------------------------------------- exact: enumerate the trajectories


@jax.jit
def _fixed_actions_batch(first: jax.Array, second: jax.Array):
    """One episode per env on the probe, env ``i`` taking ``first[i]`` at step 0
    and ``second[i]`` at step 1, through the rollout the algorithm uses."""

    def act(obs, key):
        del key
        action = jnp.where(obs[:, 0] == 1.0, first, second)
        return action, jnp.zeros(action.shape)

    spec = envs.make_env(PROBE)
    env_state = envs.reset(spec, jax.random.PRNGKey(0), first.shape[0])
    _, batch, _ = rollout.collect_episodes(spec, act, env_state, jax.random.PRNGKey(1))
    return batch


def _expected_gradient(config: TrainConfig, episodes: int = 1) -> tuple:
    """``E[estimate]`` over every combination of the probe's trajectories for
    ``episodes`` envs, weighted by their probabilities; and the setup."""
    _, estimator, agent, hyper = _setup(config)
    p0 = _probs(estimator.policy, agent.actor, S0)
    p1 = _probs(estimator.policy, agent.actor, S1)
    trajectories = [((0, 0), p0[0])] + [((1, a), p0[1] * p1[a]) for a in (0, 1)]
    combos = list(itertools.product(trajectories, repeat=episodes))
    first = jnp.array([[a for (a, _), _ in combo] for combo in combos])
    second = jnp.array([[b for (_, b), _ in combo] for combo in combos])
    probabilities = np.array([np.prod([p for _, p in combo]) for combo in combos])

    def gradient(first, second):
        batch = _fixed_actions_batch(first, second)
        return _flat_actor_grad(estimator.gradient(agent, batch, hyper))

    grads = jax.jit(jax.vmap(gradient))(first, second)
    return probabilities @ np.asarray(grads, np.float64), estimator, agent


@pytest.mark.parametrize("returns", ["total", "reward-to-go"])
def test_exact_expectation_of_each_normaliser(returns):
    expected, estimator, agent = _expected_gradient(
        _config(returns=returns, pg_normalizer="episodes")
    )
    np.testing.assert_allclose(expected, 0.0, atol=1e-6)
    expected, estimator, agent = _expected_gradient(
        _config(returns=returns, pg_normalizer="steps")
    )
    minus_grad_p0 = -np.asarray(_grad_prob(estimator.policy, agent.actor, S0, 0))
    assert np.linalg.norm(minus_grad_p0) > 1e-3  # a bias that can be seen
    np.testing.assert_allclose(expected, minus_grad_p0, rtol=1e-4, atol=1e-6)


def _batch_mean(g_hat, valid):
    """The mean over every valid step of the batch, the episode's own included."""
    return jnp.broadcast_to(losses.masked_mean(g_hat, valid), g_hat.shape)


def test_leave_one_out_mean_baseline_is_unbiased_and_a_batch_mean_is_not(
    monkeypatch,
):
    # Two episodes per batch, reward-to-go (1 or 2 at step 0, 1 at step 1):
    # a baseline over the batch's own steps correlates with the episode's
    # first action.
    config = _config(baseline="mean", returns="reward-to-go")
    expected, _, _ = _expected_gradient(config, episodes=2)
    np.testing.assert_allclose(expected, 0.0, atol=1e-6)
    monkeypatch.setattr(reinforce, "leave_one_out_mean", _batch_mean)
    biased, _, _ = _expected_gradient(config, episodes=2)
    assert np.abs(biased).max() > 1e-3


def test_leave_one_out_mean_by_hand():
    g_hat = jnp.array([[1.0, 2.0, 4.0], [3.0, 5.0, 0.0], [7.0, 0.0, 0.0]])
    valid = jnp.array([[True, True, True], [True, True, False], [True, False, False]])
    baseline = reinforce.leave_one_out_mean(g_hat, valid)
    # Sums over each episode's steps 11, 7, 4 over lengths 3, 2, 1.
    expected = [(7 + 4) / 3, (11 + 4) / 4, (11 + 7) / 5]
    np.testing.assert_allclose(baseline, np.broadcast_to(expected, (3, 3)), rtol=1e-6)
    alone = reinforce.leave_one_out_mean(g_hat[:, :1], valid[:, :1])
    np.testing.assert_array_equal(alone, 0.0)


def _equal_returns_batch(steps: int = 500, episodes: int = 64):
    """Acrobot-sized episodes that all run to the time limit at −1 a step,
    with random observations and actions: every episode returns the same."""
    obs_key, action_key = jax.random.split(jax.random.PRNGKey(4))
    obs = jax.random.normal(obs_key, (steps, episodes, 6))
    shape = (steps, episodes)
    return rollout.Transition(
        obs=obs,
        action=jax.random.randint(action_key, shape, 0, 3),
        log_prob=jnp.zeros(shape),
        reward=-jnp.ones(shape),
        terminated=jnp.zeros(shape, bool),
        truncated=jnp.zeros(shape, bool).at[-1].set(True),
        next_obs=obs,
        completed_return=jnp.zeros(shape),
        completed_length=jnp.zeros(shape, jnp.int32),
        valid=jnp.ones(shape, bool),
    )


def _equal_returns_gradient_norm(**settings) -> float:
    config = _config(env="Acrobot-v1", num_envs=64, gamma=0.99, **settings)
    _, estimator, agent, hyper = _setup(config)
    estimate = jax.jit(estimator.gradient)(agent, _equal_returns_batch(), hyper)
    return float(jnp.linalg.norm(_flat_actor_grad(estimate)))


@pytest.mark.parametrize("jit", [False, True])
def test_leave_one_out_mean_of_equal_returns_is_exact(jit):
    # Summed plainly, 32,000 copies of these returns (Acrobot's −500 at γ 0.99,
    # and others) average to a value a few units in the last place away.
    fn = jax.jit(reinforce.leave_one_out_mean) if jit else reinforce.leave_one_out_mean
    valid = jnp.ones((500, 64), bool)
    for value in (-99.34304, -63.39676, -86.60323, -0.1):
        g_hat = jnp.full((500, 64), value, jnp.float32)
        np.testing.assert_array_equal(fn(g_hat, valid), g_hat)


@pytest.mark.parametrize("normalize", [False, True])
def test_equal_returns_less_the_leave_one_out_mean_give_exactly_zero(normalize):
    """No episode did better than another: whole returns less the mean of the
    other episodes' are 0 to the last bit, so the step is 0 and the policy
    keeps its exploration (with Adam, rounding noise would be a full step)."""
    norm = _equal_returns_gradient_norm(
        returns="total", baseline="mean", normalize_advantages=normalize
    )
    assert norm == 0.0


def test_equal_returns_less_a_learned_value_leave_a_step_of_noise():
    """Reward-to-go less an (untrained) V: the weights are the critic's
    residuals, which the standardisation scales to unit size."""
    norm = _equal_returns_gradient_norm(
        returns="reward-to-go", baseline="value", normalize_advantages=True
    )
    assert norm > 0.1


# ------------------------------------------------ the estimate, by Python loop


@pytest.mark.parametrize(
    ("baseline", "discounted", "normalizer"),
    [
        ("none", False, "episodes"),
        ("mean", False, "episodes"),
        ("none", True, "episodes"),
        ("mean", True, "steps"),
    ],
)
def test_estimate_is_the_hand_computed_sum(baseline, discounted, normalizer):
    """(1/D) Σ_i Σ_t γ^t·∇log π(a_t|s_t)·(Ĝ_t − b_i), D the episodes or the
    steps, on three CartPole episodes of a random policy, in blocks of 8 rows."""
    gamma = 0.9
    config = _config(
        env="CartPole-v1",
        num_envs=3,
        gamma=gamma,
        baseline=baseline,
        discounted_gradient=discounted,
        pg_normalizer=normalizer,
        block_rows=8,
    )
    spec, estimator, agent, hyper = _setup(config)
    act = base.sampling_act_fn(estimator.policy, agent.actor)
    env_state = envs.reset(spec, jax.random.PRNGKey(2), 3)
    _, batch, _ = rollout.collect_episodes(spec, act, env_state, jax.random.PRNGKey(3))
    estimate = jax.jit(estimator.gradient)(agent, batch, hyper)

    valid = np.asarray(batch.valid)
    rewards = np.asarray(batch.reward, np.float64)
    lengths = valid.sum(axis=0)
    assert len(set(lengths)) > 1  # episodes of different lengths
    to_go = {}
    for i, length in enumerate(lengths):
        total = 0.0
        for t in reversed(range(length)):
            total = rewards[t, i] + gamma * total
            to_go[i, t] = total
    baselines = [0.0] * 3
    if baseline == "mean":
        for i in range(3):
            others = [to_go[j, t] for (j, t) in to_go if j != i]
            baselines[i] = sum(others) / len(others)

    def log_prob(params, obs, action):
        return estimator.policy.apply(params, obs[None]).log_prob(action[None])[0]

    score = jax.jit(jax.grad(log_prob))
    hand = 0.0
    for (i, t), g in to_go.items():
        weight = (gamma**t if discounted else 1.0) * (g - baselines[i])
        grad = ravel_pytree(score(agent.actor, batch.obs[t, i], batch.action[t, i]))[0]
        hand = hand + weight * np.asarray(grad, np.float64)
    hand = hand / (3 if normalizer == "episodes" else lengths.sum())
    # The estimate is that of the loss: −∇J.
    np.testing.assert_allclose(-_flat_actor_grad(estimate), hand, rtol=2e-4, atol=1e-6)


# --------------------------------------- the discounted objective's gradient


def _two_step_batch(a0: int, a1: int):
    """A two-step episode of a small MDP with no env behind it: the states are
    ``S0`` then ``S1`` whatever the actions, ``r_0 = [0, 1][a0]`` and
    ``r_1 = [2, 0][a1]``, so step 1's action matters."""
    obs = jnp.stack([S0, S1])[:, None]
    action = jnp.array([[a0], [a1]])
    reward = jnp.array([[float(a0 == 1)], [2.0 * (a1 == 0)]])
    terminated = jnp.array([[False], [True]])
    zeros = jnp.zeros((2, 1))
    return rollout.Transition(
        obs=obs,
        action=action,
        log_prob=zeros,
        reward=reward,
        terminated=terminated,
        truncated=jnp.zeros((2, 1), bool),
        next_obs=obs,
        completed_return=zeros,
        completed_length=jnp.zeros((2, 1), jnp.int32),
        valid=jnp.ones((2, 1), bool),
    )


@pytest.mark.parametrize("returns", ["reward-to-go", "total"])
@pytest.mark.parametrize("discounted", [True, False])
def test_discounted_gradient_is_the_gradient_of_the_discounted_objective(
    returns, discounted
):
    gamma = 0.5
    config = _config(gamma=gamma, returns=returns, discounted_gradient=discounted)
    _, estimator, agent, hyper = _setup(config)
    policy = estimator.policy
    gradient = jax.jit(lambda b: _flat_actor_grad(estimator.gradient(agent, b, hyper)))

    def objective(params, step_weight):
        """``E[r_0 + step_weight·r_1]``: the states do not depend on θ."""
        p0 = jax.nn.softmax(policy.apply(params, S0[None]).logits[0])
        p1 = jax.nn.softmax(policy.apply(params, S1[None]).logits[0])
        return p0[1] * 1.0 + step_weight * p1[0] * 2.0

    def exact(step_weight):
        return np.asarray(
            ravel_pytree(jax.grad(objective)(agent.actor, step_weight))[0], np.float64
        )

    p0 = _probs(policy, agent.actor, S0)
    p1 = _probs(policy, agent.actor, S1)
    expected = 0.0
    for a0, a1 in itertools.product((0, 1), repeat=2):
        estimate = np.asarray(gradient(_two_step_batch(a0, a1)), np.float64)
        expected = expected + p0[a0] * p1[a1] * estimate
    discounted_objective = exact(gamma)  # ∇J_γ
    if discounted or returns == "total":
        np.testing.assert_allclose(
            -expected, discounted_objective, rtol=1e-4, atol=1e-7
        )
    else:
        # The usual form weights step 1's score by its undiscounted reward-to-go:
        # here the gradient of E[r_0 + r_1], not of J_γ.
        np.testing.assert_allclose(-expected, exact(1.0), rtol=1e-4, atol=1e-7)
        assert np.abs(expected + discounted_objective).max() > 1e-3


# ----------------------------------------------------------- configuration


def test_bad_settings_name_their_flag():
    with pytest.raises(ConfigError, match="--pg-normalizer"):
        validate(_config(pg_normalizer="batch"))
    with pytest.raises(ConfigError, match="--pg-normalizer"):
        reinforce.make_estimator(
            _config(pg_normalizer="batch"), envs.make_env(PROBE), IDENTITY
        )
    with pytest.raises(ConfigError, match="--discounted-gradient"):
        validate(_config(algo="a2c", discounted_gradient=True))
    validate(_config(discounted_gradient=True, pg_normalizer="steps"))


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--algo", "reinforce", "--pg-normalizer", "batch"], "--pg-normalizer"),
        (["--algo", "npg", "--discounted-gradient"], "--discounted-gradient"),
    ],
)
def test_cli_refuses_bad_settings_in_one_line(argv, flag, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, _, err = run_main(
        lambda a: cli.train_main(a, start_time=0.0),
        [*argv, "--run-dir", str(run_dir)],
        capsys,
    )
    assert_one_line_error(code, err, flag)
    assert not run_dir.exists()
