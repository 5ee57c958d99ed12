"""Tests of pgjax.envs (batched gymnax envs) and the probe environments."""

from __future__ import annotations

import functools

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgjax import envs, probes

PROBE_IDS = (
    "ProbeOneStep-v0",
    "ProbeTwoStep-v0",
    "ProbeConstantReward-v0",
    "ProbeTruncatedState-v0",
    "ProbeContinuous-v0",
)


@functools.cache
def _jitted_step(env_id: str):
    spec = envs.make_env(env_id)
    return jax.jit(lambda s, a, k: envs.step(spec, s, a, k))


def _run(spec, actions, num_envs=2, seed=0):
    """Steps ``num_envs`` envs through ``actions`` (each ``[N, *action_shape]``).

    Returns the list of (state before, state after, result) per step.
    """
    state = envs.reset(spec, jax.random.PRNGKey(seed), num_envs)
    step = _jitted_step(spec.env_id)
    out = []
    for t, action in enumerate(actions):
        new, result = step(state, jnp.asarray(action), jax.random.PRNGKey(100 + t))
        out.append((state, new, jax.device_get(result)))
        state = new
    return out


# ----------------------------------------------------------------- make_env


def test_make_env_cartpole_spaces():
    spec = envs.make_env("CartPole-v1")
    assert spec.env_id == "CartPole-v1"
    assert spec.obs_shape == (4,)
    assert spec.discrete and spec.num_actions == 2
    assert spec.action_shape == ()
    assert spec.action_low == () and spec.action_high == ()
    assert spec.max_episode_steps == 500


def test_make_env_pendulum_spaces():
    spec = envs.make_env("Pendulum-v1")
    assert spec.obs_shape == (3,)
    assert not spec.discrete and spec.num_actions == 0
    assert spec.action_shape == (1,)
    assert spec.action_low == (-2.0,) and spec.action_high == (2.0,)
    assert spec.max_episode_steps == 200


@pytest.mark.parametrize(
    "env_id, obs_shape, discrete, num_actions, action_shape, limit",
    [
        ("ProbeOneStep-v0", (1,), True, 2, (), 10),
        ("ProbeTwoStep-v0", (3,), True, 2, (), 10),
        ("ProbeConstantReward-v0", (1,), True, 2, (), 20),
        ("ProbeTruncatedState-v0", (2,), True, 2, (), 3),
        ("ProbeContinuous-v0", (1,), False, 0, (1,), 10),
    ],
)
def test_make_env_probes(env_id, obs_shape, discrete, num_actions, action_shape, limit):
    spec = envs.make_env(env_id)
    assert spec.obs_shape == obs_shape
    assert spec.discrete == discrete
    assert spec.num_actions == num_actions
    assert spec.action_shape == action_shape
    assert spec.max_episode_steps == limit
    if not discrete:
        assert spec.action_low == (-1.0,) and spec.action_high == (1.0,)


def test_probes_registered_once():
    probes.register_probes()  # a second registration is a no-op
    for env_id in PROBE_IDS:
        assert env_id in envs.env_ids()
        assert gymnax.registered_envs.count(env_id) == 1


@pytest.mark.parametrize(
    "bad, suggestion",
    [("CartPole-v2", "CartPole-v1"), ("ProbeOneStep-v1", "ProbeOneStep-v0")],
)
def test_unknown_env_lists_close_ids(bad, suggestion):
    with pytest.raises(ValueError, match="unknown environment") as info:
        envs.make_env(bad)
    assert bad in str(info.value)
    assert suggestion in str(info.value)


def test_unknown_env_without_close_ids():
    with pytest.raises(ValueError, match="unknown environment"):
        envs.make_env("zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz")


# ------------------------------------------------------------------- probes


def test_probe_one_step_rewards():
    spec = envs.make_env("ProbeOneStep-v0")
    ((before, after, r),) = _run(spec, [[1, 0, 1]], num_envs=3)
    np.testing.assert_array_equal(before.obs, np.ones((3, 1)))
    np.testing.assert_array_equal(r.reward, [1.0, 0.0, 1.0])
    assert r.terminated.all() and not r.truncated.any()
    np.testing.assert_array_equal(after.obs, np.ones((3, 1)))


def test_probe_two_step_rewards_depend_on_first_action():
    spec = envs.make_env("ProbeTwoStep-v0")
    # env i takes first action a0[i] and second action a1[i].
    a0 = np.array([1, 1, 0, 0])
    a1 = np.array([0, 1, 0, 1])
    (b0, s1, r0), (_, s2, r1) = _run(spec, [a0, a1], num_envs=4)
    np.testing.assert_array_equal(b0.obs, np.tile([1.0, 0.0, 0.0], (4, 1)))
    # The step-1 observation shows which first action was taken.
    np.testing.assert_array_equal(
        s1.obs, [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]
    )
    np.testing.assert_array_equal(r0.reward, np.zeros(4))
    assert not r0.terminated.any() and not r0.truncated.any()
    np.testing.assert_array_equal(r1.reward, [1.0, 1.0, 0.0, 0.0])
    assert r1.terminated.all() and not r1.truncated.any()
    np.testing.assert_array_equal(r1.completed_length, [2, 2, 2, 2])
    np.testing.assert_array_equal(s2.obs, np.tile([1.0, 0.0, 0.0], (4, 1)))  # reset
    np.testing.assert_array_equal(r1.final_obs, np.zeros((4, 3)))  # terminal


def test_probe_constant_reward_truncates_at_limit():
    spec = envs.make_env("ProbeConstantReward-v0")
    steps = _run(spec, [np.zeros(2, np.int32)] * 45)
    truncated = np.array([r.truncated for _, _, r in steps])  # [T, N]
    terminated = np.array([r.terminated for _, _, r in steps])
    assert not terminated.any()
    expected = np.zeros((45, 2), bool)
    expected[[19, 39]] = True
    np.testing.assert_array_equal(truncated, expected)
    rewards = np.array([r.reward for _, _, r in steps])
    np.testing.assert_array_equal(rewards, np.ones((45, 2)))
    obs = np.array([after.obs for _, after, _ in steps])
    np.testing.assert_array_equal(obs, np.ones((45, 2, 1)))


def test_probe_truncated_state_final_obs_differs_from_reset():
    spec = envs.make_env("ProbeTruncatedState-v0")
    steps = _run(spec, [np.zeros(2, np.int32)] * 6)
    a, b = [1.0, 0.0], [0.0, 1.0]
    for t, (before, after, r) in enumerate(steps):
        np.testing.assert_array_equal(before.obs, [[a, b, a][t % 3]] * 2)
        np.testing.assert_array_equal(r.reward, [1.0 - (t % 3 == 1)] * 2)
        assert not r.terminated.any()
        assert r.truncated.all() == (t % 3 == 2)
        if t % 3 == 2:
            np.testing.assert_array_equal(r.final_obs, [b, b])  # true next state
            np.testing.assert_array_equal(after.obs, [a, a])  # reset
            np.testing.assert_allclose(r.completed_return, [2.0, 2.0])


def test_probe_continuous_reward():
    spec = envs.make_env("ProbeContinuous-v0")
    ((_, _, r),) = _run(spec, [[[0.5], [0.0], [-1.0]]], num_envs=3)
    np.testing.assert_allclose(r.reward, [0.0, -0.25, -2.25])
    assert r.terminated.all()


# ----------------------------------------------------------- batched stepping


def test_env_action_clips_to_box():
    spec = envs.make_env("Pendulum-v1")
    action = jnp.array([[5.0], [-7.0], [0.3]])
    np.testing.assert_allclose(envs.env_action(spec, action), [[2.0], [-2.0], [0.3]])
    discrete = envs.make_env("CartPole-v1")
    ints = jnp.array([0, 1, 1])
    np.testing.assert_array_equal(envs.env_action(discrete, ints), ints)


def test_step_clips_continuous_actions():
    # ProbeContinuous does not clip itself: its reward shows the action it got.
    spec = envs.make_env("ProbeContinuous-v0")
    ((_, _, r),) = _run(spec, [[[5.0], [-7.0], [0.75]]], num_envs=3)
    # Clipped to 1 → −0.25; to −1 → −2.25 (unclipped: −20.25 and −56.25).
    np.testing.assert_allclose(r.reward, [-0.25, -2.25, -0.0625])


def test_step_rejects_wrong_action_shape():
    spec = envs.make_env("Pendulum-v1")
    state = envs.reset(spec, jax.random.PRNGKey(0), 3)
    with pytest.raises(AssertionError):
        envs.step(spec, state, jnp.zeros((3,)), jax.random.PRNGKey(1))


def test_episode_statistics_tracked_and_reset():
    spec = envs.make_env("ProbeConstantReward-v0")
    steps = _run(spec, [np.zeros(3, np.int32)] * 25, num_envs=3)
    for t, (before, after, r) in enumerate(steps):
        np.testing.assert_array_equal(before.episode_length, np.full(3, t % 20))
        np.testing.assert_allclose(before.episode_return, np.full(3, t % 20))
        if t == 19:
            np.testing.assert_array_equal(r.completed_length, np.full(3, 20))
            np.testing.assert_allclose(r.completed_return, np.full(3, 20.0))
            np.testing.assert_array_equal(after.episode_length, np.zeros(3))
            np.testing.assert_allclose(after.episode_return, np.zeros(3))
        else:
            np.testing.assert_array_equal(r.completed_length, np.zeros(3))
            np.testing.assert_allclose(r.completed_return, np.zeros(3))


def test_cartpole_terminates_and_final_obs_is_pre_reset():
    spec = envs.make_env("CartPole-v1")
    num_envs = 4
    # Always push right: the pole falls within a few dozen steps.
    steps = _run(spec, [np.ones(num_envs, np.int32)] * 60, num_envs=num_envs)
    ended = np.zeros(num_envs, bool)
    length = np.zeros(num_envs, int)
    for _, after, r in steps:
        assert not r.truncated.any()  # far from the 500-step limit
        length += 1
        for i in range(num_envs):
            if r.terminated[i]:
                ended[i] = True
                # The final observation broke a limit; the new one is a reset.
                x, _, theta, _ = r.final_obs[i]
                assert abs(x) > 2.4 or abs(theta) > 12 * 2 * np.pi / 360
                assert np.all(np.abs(after.obs[i]) <= 0.05)
                assert r.completed_length[i] == length[i]
                assert r.completed_return[i] == pytest.approx(length[i])
                assert after.episode_length[i] == 0
                length[i] = 0
            else:
                np.testing.assert_array_equal(r.final_obs[i], after.obs[i])
                assert r.completed_length[i] == 0
    assert ended.all()


def test_two_step_final_obs_differs_from_reset_obs():
    spec = envs.make_env("ProbeTwoStep-v0")
    _, (_, after, r) = _run(spec, [np.ones(2, np.int32)] * 2)
    assert r.terminated.all()
    np.testing.assert_array_equal(after.obs, [[1.0, 0.0, 0.0]] * 2)  # reset
    np.testing.assert_array_equal(r.final_obs, [[0.0, 0.0, 0.0]] * 2)  # terminal


def test_envs_are_independent_and_keyed():
    spec = envs.make_env("CartPole-v1")
    a = envs.reset(spec, jax.random.PRNGKey(0), 8)
    b = envs.reset(spec, jax.random.PRNGKey(0), 8)
    c = envs.reset(spec, jax.random.PRNGKey(1), 8)
    np.testing.assert_array_equal(a.obs, b.obs)
    assert not np.array_equal(a.obs, c.obs)
    assert len({tuple(row) for row in np.asarray(a.obs)}) == 8


# ------------------------------------------------------ observation statistics


def test_merge_obs_stats_matches_numpy():
    rng = np.random.default_rng(0)
    batches = [
        rng.normal(3.0, 2.0, size=(50, 3)).astype(np.float32),
        rng.normal(-1.0, 0.5, size=(7, 3)).astype(np.float32),
        rng.normal(10.0, 4.0, size=(200, 3)).astype(np.float32),
    ]
    norm = envs.init_obs_norm((3,))
    for batch in batches:
        norm = envs.merge_obs_stats(
            norm,
            jnp.sum(batch, axis=0),
            jnp.sum(np.square(batch), axis=0),
            jnp.asarray(len(batch), jnp.float32),
        )
    everything = np.concatenate(batches).astype(np.float64)
    np.testing.assert_allclose(norm.mean, everything.mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(norm.var, everything.var(0), rtol=1e-3)
    assert float(norm.count) == pytest.approx(257, abs=1e-3)


def test_normalize_obs_standardises_and_clips():
    norm = envs.ObsNormState(
        mean=jnp.array([1.0, -2.0]), var=jnp.array([4.0, 0.25]), count=jnp.ones(())
    )
    obs = jnp.array([[3.0, -2.5], [1.0, 100.0]])
    np.testing.assert_allclose(
        envs.normalize_obs(norm, obs), [[1.0, -1.0], [0.0, 10.0]], rtol=1e-5
    )


@pytest.mark.parametrize(
    "env_id", ["CartPole-v1", "Pendulum-v1", "ProbeTruncatedState-v0", "DeepSea-bsuite"]
)
def test_step_with_keys_matches_gymnax_step(env_id):
    # gymnax's Environment.step splits each env's key into (step, reset) keys;
    # step_with_keys given those halves must reproduce it exactly, resets and
    # final observations included (DeepSea overrides step: the fallback path).
    spec = envs.make_env(env_id)
    num_envs, steps = 8, min(spec.max_episode_steps, 200) + 5
    state = envs.reset(spec, jax.random.PRNGKey(0), num_envs)
    env_state, obs = state.env_state, state.obs
    space = spec.env.action_space(spec.params)
    keys = jax.random.split(jax.random.PRNGKey(1), (steps, num_envs))
    standard = envs._standard_auto_reset(spec.env)
    assert standard is (env_id != "DeepSea-bsuite")

    @jax.jit
    def both(state, env_state, key_row, act_key):
        actions = jax.vmap(space.sample)(jax.random.split(act_key, num_envs))
        halves = jax.vmap(jax.random.split)(key_row)  # [N, 2, 2]
        ours, result = envs.step_with_keys(
            spec, state, actions, halves[:, 0], halves[:, 1]
        )
        theirs = jax.vmap(spec.env.step, in_axes=(0, 0, 0, None))(
            key_row, env_state, envs.env_action(spec, actions), spec.params
        )
        return ours, result, theirs

    close = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6)
    resets = 0
    for t in range(steps):
        ours, result, theirs = both(
            state, env_state, keys[t], jax.random.PRNGKey(100 + t)
        )
        obs, env_state, reward, terminated, truncated, info = theirs
        # Same keys, same arithmetic: equal up to XLA's float rounding (the
        # two programs fuse differently); flags and resets exactly.
        close(ours.obs, obs)
        close(result.reward, reward)
        np.testing.assert_array_equal(result.terminated, terminated)
        np.testing.assert_array_equal(result.truncated, truncated)
        close(result.final_obs, info["final_observation"])
        jax.tree.map(close, ours.env_state, env_state)
        resets += int(np.sum(terminated | truncated))
        # Both continue from gymnax's state, so rounding cannot accumulate.
        state = ours.replace(env_state=env_state, obs=obs.astype(np.float32))
    assert resets > 0  # the auto-reset branch was exercised


def test_step_draws_distinct_step_and_reset_keys():
    # One split gives every env its own pair: no two envs share a reset, and
    # the reset of an env differs from what its step key would give.
    spec = envs.make_env("CartPole-v1")
    key = jax.random.PRNGKey(3)
    keys = jax.random.split(key, (2, 16))
    flat = np.asarray(keys).reshape(32, 2)
    assert len({tuple(k) for k in flat}) == 32
    state = envs.reset(spec, jax.random.PRNGKey(0), 16)
    stepped, _ = envs.step(spec, state, jnp.zeros(16, jnp.int32), key)
    again, _ = envs.step_with_keys(spec, state, jnp.zeros(16, jnp.int32), *keys)
    np.testing.assert_array_equal(stepped.obs, again.obs)
