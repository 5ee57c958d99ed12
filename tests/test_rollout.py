"""Tests of pgjax.rollout: shapes, auto-reset boundaries, complete episodes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgjax import envs, losses, parallel, rollout

THETA_LIMIT = 12 * 2 * np.pi / 360


def random_act_fn(spec: envs.EnvSpec):
    """A uniform random policy with its log-probabilities."""

    def act(obs, key):
        n = obs.shape[0]
        if spec.discrete:
            action = jax.random.randint(key, (n,), 0, spec.num_actions)
            return action, jnp.full((n,), -np.log(spec.num_actions), jnp.float32)
        action = 3.0 * jax.random.normal(key, (n, *spec.action_shape))
        return action, jnp.zeros((n,), jnp.float32)

    return act


def collect_steps(env_id, num_envs, num_steps, seed=0, normalize=False):
    spec = envs.make_env(env_id)

    @jax.jit
    def run(key):
        reset_key, run_key = jax.random.split(key)
        state = envs.reset(spec, reset_key, num_envs)
        return rollout.collect_steps(
            spec, random_act_fn(spec), state, run_key, num_steps, normalize
        )

    state, batch = run(jax.random.PRNGKey(seed))
    return spec, state, jax.device_get(batch)


def collect_episodes(env_id, num_envs, seed=0):
    spec = envs.make_env(env_id)

    @jax.jit
    def run(key):
        reset_key, run_key = jax.random.split(key)
        # Start the envs mid-episode: collect_episodes must start fresh anyway.
        state = envs.reset(spec, reset_key, num_envs)
        state = state.replace(episode_length=state.episode_length + 7)
        return rollout.collect_episodes(spec, random_act_fn(spec), state, run_key)

    state, batch, num_run = run(jax.random.PRNGKey(seed))
    return spec, state, jax.device_get(batch), int(num_run)


@pytest.fixture(scope="module")
def cartpole_steps():
    """80 steps of 5 random CartPole envs: several episodes each."""
    return collect_steps("CartPole-v1", num_envs=5, num_steps=80)


# ---------------------------------------------------------------- collect_steps


def _check_shapes(state, batch, t, n, obs_shape, action_shape):
    assert batch.obs.shape == (t, n, *obs_shape)
    assert batch.next_obs.shape == (t, n, *obs_shape)
    assert batch.action.shape == (t, n, *action_shape)
    for name in (
        "log_prob",
        "reward",
        "terminated",
        "truncated",
        "completed_return",
        "completed_length",
        "valid",
    ):
        assert getattr(batch, name).shape == (t, n), name
    assert batch.terminated.dtype == np.bool_ and batch.truncated.dtype == np.bool_
    assert batch.valid.all()
    assert state.obs.shape == (n, *obs_shape)


def test_collect_steps_shapes_discrete(cartpole_steps):
    _, state, batch = cartpole_steps
    _check_shapes(state, batch, 80, 5, (4,), ())


def test_collect_steps_shapes_continuous():
    _, state, batch = collect_steps("Pendulum-v1", num_envs=5, num_steps=6)
    _check_shapes(state, batch, 6, 5, (3,), (1,))
    assert batch.action.dtype == np.float32


def test_collect_steps_continues_where_it_left_off():
    spec = envs.make_env("CartPole-v1")
    state = envs.reset(spec, jax.random.PRNGKey(0), 3)
    run = jax.jit(
        lambda s, k: rollout.collect_steps(spec, random_act_fn(spec), s, k, 4)
    )
    state1, batch1 = run(state, jax.random.PRNGKey(1))
    _, batch2 = run(state1, jax.random.PRNGKey(2))
    np.testing.assert_array_equal(batch1.obs[0], state.obs)
    np.testing.assert_array_equal(batch2.obs[0], state1.obs)


def test_collect_steps_draws_all_its_keys_in_one_split():
    # Each random call site compiles into its own loop of threefry rounds; the
    # rollout's keys come from one (the policy's sampling and the envs' reset
    # draws inside the scan are sites of their own).
    spec = envs.make_env("CartPole-v1")
    state = envs.reset(spec, jax.random.PRNGKey(0), 3)

    def act_fn(obs, key):
        action, _ = random_act_fn(spec)(obs, key)
        # The step's key, seen through a draw of it: one per step, all envs.
        return action, jnp.broadcast_to(jax.random.uniform(key), action.shape)

    def run(s, k):
        return rollout.collect_steps(spec, act_fn, s, k, 6)

    top_level = jax.make_jaxpr(run)(state, jax.random.PRNGKey(1)).eqns
    assert [e.primitive.name for e in top_level].count("random_split") == 1
    _, batch = jax.jit(run)(state, jax.random.PRNGKey(1))
    draws = np.asarray(batch.log_prob)
    assert len(np.unique(draws[:, 0])) == 6  # a fresh key at every step
    np.testing.assert_array_equal(draws, np.broadcast_to(draws[:, :1], draws.shape))


def _split_episodes(done_column):
    """Index ranges ``[start, stop)`` of the episodes in one env's column."""
    ranges, start = [], 0
    for t, done in enumerate(done_column):
        if done:
            ranges.append((start, t + 1))
            start = t + 1
    if start < len(done_column):
        ranges.append((start, len(done_column)))
    return ranges


def _check_against_python_loops(batch, weights, gamma=0.9, lam=0.8):
    """Reward-to-go, GAE and episode stats vs. per-env loops split at dones.

    ``obs @ weights`` serves as a value function (any fixed function does).
    """
    done = batch.terminated | batch.truncated
    rewards = jnp.asarray(batch.reward)
    to_go = np.asarray(
        losses.reward_to_go(rewards, jnp.full_like(rewards, gamma), jnp.asarray(done))
    )
    values = batch.obs @ weights
    next_values = batch.next_obs @ weights
    discounts = gamma * (1.0 - batch.terminated)
    adv = np.asarray(
        losses.gae_advantages(
            rewards,
            jnp.asarray(values),
            jnp.asarray(next_values),
            jnp.asarray(discounts, jnp.float32),
            jnp.asarray(done),
            lam,
        )
    )
    for i in range(batch.reward.shape[1]):
        for start, stop in _split_episodes(done[:, i]):
            episode_reward = batch.reward[start:stop, i]
            ended = bool(done[stop - 1, i])
            if ended and start > 0:
                # The whole episode lies in the batch: stats agree with it.
                assert batch.completed_length[stop - 1, i] == stop - start
                assert batch.completed_return[stop - 1, i] == pytest.approx(
                    episode_reward.sum()
                )
            # Python reward-to-go within the episode only.
            g = 0.0
            for t in reversed(range(start, stop)):
                g = batch.reward[t, i] + gamma * g
                assert to_go[t, i] == pytest.approx(g, rel=1e-5, abs=1e-5)
            # Python GAE within the episode; bootstrap from V(next_obs), which
            # a truncated last step keeps (discount γ) and a terminal one drops.
            a = 0.0
            for t in reversed(range(start, stop)):
                delta = (
                    batch.reward[t, i]
                    + discounts[t, i] * next_values[t, i]
                    - values[t, i]
                )
                last = t == stop - 1
                a = delta + (0.0 if last else gamma * lam * a)
                assert adv[t, i] == pytest.approx(a, rel=1e-4, abs=1e-4)
            # Inside the episode next_obs is the next row's obs.
            np.testing.assert_array_equal(
                batch.next_obs[start : stop - 1, i], batch.obs[start + 1 : stop, i]
            )


def test_auto_reset_never_mixes_episodes_cartpole(cartpole_steps):
    _, _, batch = cartpole_steps
    assert batch.terminated.sum() >= 5  # random CartPole falls in ~20 steps
    _check_against_python_loops(batch, np.array([0.3, -1.2, 2.0, 0.7], np.float32))
    done = batch.terminated | batch.truncated
    for i in range(batch.reward.shape[1]):
        for t in np.flatnonzero(done[:, i]):
            # next_obs at the done step is the final obs (it broke a limit)...
            final = batch.next_obs[t, i]
            assert abs(final[0]) > 2.4 or abs(final[2]) > THETA_LIMIT
            if t + 1 < batch.reward.shape[0]:
                # ...and the following row starts a fresh episode (reset obs).
                assert np.all(np.abs(batch.obs[t + 1, i]) <= 0.05)
                assert not np.array_equal(batch.obs[t + 1, i], final)


def test_truncation_boundaries_constant_reward():
    gamma = 0.5
    _, _, batch = collect_steps("ProbeConstantReward-v0", num_envs=3, num_steps=45)
    assert not batch.terminated.any()
    expected = np.zeros((45, 3), bool)
    expected[[19, 39]] = True
    np.testing.assert_array_equal(batch.truncated, expected)
    np.testing.assert_array_equal(batch.completed_length[19], [20, 20, 20])
    np.testing.assert_array_equal(batch.completed_length[39], [20, 20, 20])
    _check_against_python_loops(batch, np.array([2.0], np.float32))
    rewards = jnp.asarray(batch.reward)
    to_go = np.asarray(
        losses.reward_to_go(
            rewards, jnp.full_like(rewards, gamma), jnp.asarray(batch.truncated)
        )
    )
    # Steps left in the episode (within the batch), discounted.
    left = np.concatenate([20 - np.arange(20), 20 - np.arange(20), 5 - np.arange(5)])
    np.testing.assert_allclose(
        to_go, np.repeat(((1 - gamma**left) / (1 - gamma))[:, None], 3, 1), rtol=1e-6
    )


def test_reset_obs_after_done_two_step():
    _, _, batch = collect_steps("ProbeTwoStep-v0", num_envs=4, num_steps=6)
    first = np.array([1.0, 0.0, 0.0])
    for t in range(6):
        assert batch.terminated[t].all() == (t % 2 == 1)
        if t % 2 == 0:
            # A fresh episode: the reset obs, also right after a terminal step.
            np.testing.assert_array_equal(batch.obs[t], [first] * 4)
            np.testing.assert_array_equal(batch.next_obs[t], batch.obs[t + 1])
            np.testing.assert_array_equal(batch.reward[t], 0.0)
        else:
            a0 = batch.action[t - 1]
            np.testing.assert_array_equal(batch.obs[t], np.eye(3)[1 + a0])
            # next_obs at the terminal step is the final obs, not the reset one.
            np.testing.assert_array_equal(batch.next_obs[t], np.zeros((4, 3)))
            np.testing.assert_array_equal(batch.reward[t], a0 == 1)
            np.testing.assert_array_equal(batch.completed_return[t], a0 == 1)


def test_collect_steps_updates_obs_stats():
    _, state, batch = collect_steps("CartPole-v1", 4, 16, normalize=True)
    # With the initial statistics (mean 0, var 1) normalisation is the identity
    # for CartPole's small observations, so batch.obs holds the raw ones.
    raw = batch.obs.reshape(-1, 4).astype(np.float64)
    np.testing.assert_allclose(state.obs_norm.mean, raw.mean(0), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(state.obs_norm.var, raw.var(0), rtol=1e-3, atol=1e-5)
    assert float(state.obs_norm.count) == pytest.approx(64, abs=1e-3)


# ------------------------------------------------------------- collect_episodes


def _check_one_episode_each(spec, batch, num_run):
    horizon, num_envs = batch.valid.shape
    assert horizon == spec.max_episode_steps
    valid = batch.valid
    lengths = valid.sum(axis=0)
    assert (lengths >= 1).all()
    for i in range(num_envs):
        # valid is a prefix: True for the first lengths[i] rows, then False.
        np.testing.assert_array_equal(valid[:, i], np.arange(horizon) < lengths[i])
        done = (batch.terminated | batch.truncated)[:, i]
        # Exactly one episode end among the valid rows: at the last one.
        assert done[: lengths[i]].sum() == 1
        assert done[lengths[i] - 1]
        assert batch.completed_length[lengths[i] - 1, i] == lengths[i]
        assert batch.completed_return[lengths[i] - 1, i] == pytest.approx(
            batch.reward[: lengths[i], i].sum()
        )
    assert num_run == lengths.max()
    # Rows past the longest episode were never written.
    assert not valid[num_run:].any()
    np.testing.assert_array_equal(batch.reward[num_run:], 0.0)
    return lengths


def test_collect_episodes_cartpole():
    spec, _, batch, num_run = collect_episodes("CartPole-v1", num_envs=8)
    lengths = _check_one_episode_each(spec, batch, num_run)
    assert num_run < spec.max_episode_steps  # stopped early, not at the limit
    assert len(set(lengths.tolist())) > 1  # episodes of different lengths
    # Every episode starts fresh (reset obs), and ends terminated.
    assert np.all(np.abs(batch.obs[0]) <= 0.05)
    for i, n in enumerate(lengths):
        assert batch.terminated[n - 1, i]
        np.testing.assert_allclose(batch.reward[:n, i], 1.0)


def test_collect_episodes_truncated_probe():
    spec, _, batch, num_run = collect_episodes("ProbeConstantReward-v0", num_envs=3)
    lengths = _check_one_episode_each(spec, batch, num_run)
    np.testing.assert_array_equal(lengths, [20, 20, 20])
    assert num_run == 20
    assert batch.truncated[19].all() and not batch.terminated.any()


def test_collect_episodes_one_step_probe():
    spec, _, batch, num_run = collect_episodes("ProbeOneStep-v0", num_envs=4)
    lengths = _check_one_episode_each(spec, batch, num_run)
    np.testing.assert_array_equal(lengths, [1, 1, 1, 1])
    assert num_run == 1
    np.testing.assert_array_equal(batch.reward[0], batch.action[0] == 1)


def test_collect_episodes_under_a_vmap_over_seeds_runs_one_loop():
    # Named parallel.SEEDS, the seeds share the loop's predicate: its counter
    # stays a scalar (a per-seed predicate would batch it, and vmap would
    # select the whole [500, N] buffers at every step), and each seed's valid
    # rows are those it collects alone.
    spec = envs.make_env("CartPole-v1")

    def run(key):
        reset_key, run_key = jax.random.split(key)
        state = envs.reset(spec, reset_key, 6)
        return rollout.collect_episodes(spec, random_act_fn(spec), state, run_key)

    keys = jax.random.split(jax.random.PRNGKey(3), 2)
    shared = jax.vmap(run, axis_name=parallel.SEEDS)
    loops = [
        eqn
        for eqn in jax.make_jaxpr(shared)(keys).eqns
        if eqn.primitive.name == "while"
    ]
    assert len(loops) == 1
    assert loops[0].outvars[0].aval.shape == ()  # the step counter t

    _, batches, num_run = jax.jit(shared)(keys)
    alone = [jax.jit(run)(key) for key in keys]
    assert int(num_run[0]) == max(int(a[2]) for a in alone)
    for seed, (_, batch, _) in enumerate(alone):
        valid = np.asarray(batch.valid)
        np.testing.assert_array_equal(np.asarray(batches.valid[seed]), valid)
        for name in ("obs", "action", "reward", "done", "completed_return"):
            np.testing.assert_allclose(
                np.asarray(getattr(batches, name)[seed])[valid],
                np.asarray(getattr(batch, name))[valid],
                err_msg=name,
            )
