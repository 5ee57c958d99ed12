"""The Q actor-critic's linear critic (``--critic linear-q``).

Checked against exact answers: one TD(0) step against a hand computation
with explicit features ``φ(s, a) = one_hot(a) ⊗ [s, 1]``, A2C's whole critic
update against the same computation on a probe with time limits, the fixed
point against ``Q^π`` computed exactly, and the actor learning the probes.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_one_line_error, run_main

from pgjax import cli, networks, parallel, runner, train
from pgjax.algos import linear_q
from pgjax.backend import IDENTITY, Backend, make_mesh
from pgjax.config import ConfigError, TrainConfig, validate

# A small run with the linear critic; tests override the env and rates.
SMALL = dict(
    algo="a2c",
    critic="linear-q",
    num_envs=16,
    num_steps=8,
    hidden=(16,),
    anneal_lr=False,
    kl_envs=16,
    eval_episodes=8,
)


def hand_features(obs: np.ndarray, action: int, num_actions: int) -> np.ndarray:
    """``φ(s, a) = one_hot(a) ⊗ [s, 1]`` as an explicit vector."""
    return np.kron(np.eye(num_actions)[action], np.append(obs, 1.0))


def hand_td_step(w, rows, num_actions, lr):
    """One semi-gradient TD(0) step (expected form), by a loop over rows.

    ``rows``: ``(s, a, r, discount, s', π(·|s'))`` tuples; ``w`` flat.
    """
    update = np.zeros_like(w)
    for s, a, r, discount, s_next, probs in rows:
        expected_next = sum(
            probs[b] * w @ hand_features(s_next, b, num_actions)
            for b in range(num_actions)
        )
        delta = r + discount * expected_next - w @ hand_features(s, a, num_actions)
        update += delta * hand_features(s, a, num_actions)
    return w + lr * update / len(rows)


def test_td_step_equals_a_hand_computed_step():
    rng = np.random.default_rng(0)
    num_actions, rows = 3, 5
    critic = linear_q.LinearQCritic(num_actions=num_actions, obs_shape=(2,))
    w = rng.normal(size=(num_actions, 3)).astype(np.float32)
    obs = rng.normal(size=(rows, 2)).astype(np.float32)
    next_obs = rng.normal(size=(rows, 2)).astype(np.float32)
    actions = np.array([0, 2, 1, 2, 0])
    rewards = rng.normal(size=rows).astype(np.float32)
    discounts = np.array([0.9, 0.0, 0.9, 0.9, 0.0], np.float32)  # 2 terminated
    probs = rng.dirichlet(np.ones(num_actions), size=rows).astype(np.float32)
    batch = linear_q.TDBatch(
        inputs=critic.inputs(jnp.asarray(obs)),
        action=jax.nn.one_hot(actions, num_actions),
        next_inputs=critic.inputs(jnp.asarray(next_obs)),
        next_probs=jnp.asarray(probs),
        reward=jnp.asarray(rewards),
        discount=jnp.asarray(discounts),
    )
    # Q_w(s, ·) is w·φ(s, ·) with the explicit features.
    q = critic.apply({"w": jnp.asarray(w)}, jnp.asarray(obs))
    for i in range(rows):
        for a in range(num_actions):
            expected = w.reshape(-1) @ hand_features(obs[i], a, num_actions)
            np.testing.assert_allclose(q[i, a], expected, rtol=1e-5, atol=1e-6)
    stepped, loss, norm = linear_q.td_step({"w": jnp.asarray(w)}, batch, 0.3)
    hand_rows = list(
        zip(obs, actions, rewards, discounts, next_obs, probs, strict=True)
    )
    expected = hand_td_step(w.reshape(-1).astype(np.float64), hand_rows, 3, 0.3)
    np.testing.assert_allclose(stepped["w"].reshape(-1), expected, rtol=1e-5, atol=1e-6)
    deltas = linear_q.td_errors({"w": jnp.asarray(w)}, batch)
    np.testing.assert_allclose(loss, 0.5 * np.mean(np.square(deltas)), rtol=1e-6)
    np.testing.assert_allclose(
        norm, np.linalg.norm(expected - w.reshape(-1)) / 0.3, rtol=1e-4
    )


def test_a2c_critic_update_is_one_td_step_bootstrapping_from_the_final_obs():
    # ProbeTruncatedState alternates A → B → A and is cut after 3 steps, so
    # the truncated step's true next state (B) differs from the reset one
    # (A) that the next row holds; the hand computation derives s' from the
    # dynamics, not from the batch.
    config = TrainConfig(
        **{**SMALL, "num_envs": 4, "num_steps": 8},
        env="ProbeTruncatedState-v0",
        gamma=0.9,
        critic_lr=0.3,
        reward_scale=2.0,
    )
    trainer = train.make_train(config)
    state = trainer.init(jax.random.PRNGKey(0))
    w = jax.random.normal(jax.random.PRNGKey(1), (2, 3))
    agent = state.agent.replace(critic={"w": w})
    algorithm, hyper = trainer.algorithm, state.hyper
    _, batch, _ = algorithm.collect(agent, state.env, state.key, hyper)
    assert bool(batch.truncated.any())
    new_agent, metrics = jax.jit(algorithm.update)(agent, batch, state.key, hyper, 0.0)

    policy = networks.make_policy(trainer.spec, config.hidden, config.activation)
    obs = np.asarray(batch.obs).reshape(-1, 2)
    next_obs = obs[:, ::-1]  # A ↔ B
    probs = np.asarray(policy.apply(agent.actor, jnp.asarray(next_obs)).probs())
    rows = list(
        zip(
            obs,
            np.asarray(batch.action).reshape(-1),
            2.0 * np.asarray(batch.reward).reshape(-1),
            0.9 * (1.0 - np.asarray(batch.terminated).reshape(-1)),
            next_obs,
            probs,
            strict=True,
        )
    )
    expected = hand_td_step(np.asarray(w, np.float64).reshape(-1), rows, 2, 0.3)
    np.testing.assert_allclose(
        new_agent.critic["w"].reshape(-1), expected, rtol=1e-5, atol=1e-5
    )
    # The actor moved, weighted by Q_w(s, a) of the critic before its step.
    assert not np.allclose(
        jax.tree.leaves(new_agent.actor)[0], jax.tree.leaves(agent.actor)[0]
    )
    targets = linear_q.make_targets(
        policy, linear_q.make_critic(trainer.spec), 0, IDENTITY
    )
    weights, _ = targets({"actor": agent.actor, "critic": {"w": w}}, batch, hyper, None)
    hand_q = [np.asarray(w).reshape(-1) @ hand_features(s, a, 2) for s, a, *_ in rows]
    np.testing.assert_allclose(np.ravel(weights), hand_q, rtol=1e-5, atol=1e-5)
    assert np.isfinite(metrics["value_loss"])


def exact_q(env_id: str, gamma: float) -> dict[tuple[tuple[float, ...], int], float]:
    """``Q^π`` of the probes' visited pairs (it does not depend on π there)."""
    if env_id == "ProbeTwoStep-v0":
        s0, s1_after_0, s1_after_1 = (1, 0, 0), (0, 1, 0), (0, 0, 1)
        return {
            (s0, 0): 0.0,
            (s0, 1): gamma,
            (s1_after_0, 0): 0.0,
            (s1_after_0, 1): 0.0,
            (s1_after_1, 0): 1.0,
            (s1_after_1, 1): 1.0,
        }
    state_a, state_b = (1, 0), (0, 1)  # ProbeTruncatedState, never terminal
    v_a = 1.0 / (1.0 - gamma**2)
    v_b = gamma * v_a
    return {(state_a, a): v_a for a in (0, 1)} | {(state_b, a): v_b for a in (0, 1)}


@pytest.mark.parametrize("env_id", ["ProbeTwoStep-v0", "ProbeTruncatedState-v0"])
def test_td_fixed_point_is_the_true_q_on_one_hot_probes(env_id):
    gamma = 0.9
    config = TrainConfig(**{**SMALL, "num_envs": 32}, env=env_id, gamma=gamma)
    trainer = train.make_train(config)
    state = trainer.init(jax.random.PRNGKey(0))
    algorithm, hyper = trainer.algorithm, state.hyper
    _, batch, _ = algorithm.collect(state.agent, state.env, state.key, hyper)
    policy = networks.make_policy(trainer.spec, config.hidden, config.activation)
    critic = linear_q.make_critic(trainer.spec)
    targets = linear_q.make_targets(policy, critic, 0, IDENTITY)
    params = {"actor": state.agent.actor, "critic": critic.init(None)}
    _, td_batch = targets(params, batch, hyper, None)
    fitted, _, _ = jax.jit(
        lambda p, b: linear_q.td_fit(p, b, jax.random.PRNGKey(0), 0.5, 3000, 1)
    )(params["critic"], td_batch)
    truth = exact_q(env_id, gamma)
    obs = np.asarray(batch.obs).reshape(-1, batch.obs.shape[-1])
    actions = np.asarray(batch.action).reshape(-1)
    q = np.asarray(critic.apply(fitted, jnp.asarray(obs)))
    seen = set()
    for i, (s, a) in enumerate(zip(obs, actions, strict=True)):
        pair = (tuple(int(x) for x in s), int(a))
        seen.add(pair)
        np.testing.assert_allclose(q[i, a], truth[pair], atol=1e-3, err_msg=pair)
    assert seen == set(truth)  # every pair was visited and checked


def test_td_fixed_point_weights_the_next_actions_by_the_policy():
    # Two states, two actions; action a moves to state a; rewards r(s, a);
    # never terminal. With π(·|s) far from uniform, Q^π depends on it, and
    # the expected form's fixed point must be Q^π = (I − γP_π)⁻¹R exactly
    # (one-hot states: the features hold every table).
    gamma = 0.5
    rewards = np.array([[1.0, 0.0], [0.0, 2.0]])  # [s, a]
    pi = np.array([[0.8, 0.2], [0.3, 0.7]])  # [s, a]
    pairs = [(s, a) for s in range(2) for a in range(2)]
    transition = np.zeros((4, 4))  # (s, a) → (s' = a, a') with π(a'|s')
    for i, (_, a) in enumerate(pairs):
        for j, (s_next, a_next) in enumerate(pairs):
            transition[i, j] = (s_next == a) * pi[s_next, a_next]
    reward = np.array([rewards[s, a] for s, a in pairs])
    q_pi = np.linalg.solve(np.eye(4) - gamma * transition, reward)
    critic = linear_q.LinearQCritic(num_actions=2, obs_shape=(2,))
    eye = jnp.eye(2)
    batch = linear_q.TDBatch(
        inputs=critic.inputs(eye[jnp.array([s for s, _ in pairs])]),
        action=eye[jnp.array([a for _, a in pairs])],
        next_inputs=critic.inputs(eye[jnp.array([a for _, a in pairs])]),
        next_probs=jnp.asarray(pi[[a for _, a in pairs]], jnp.float32),
        reward=jnp.asarray(reward, jnp.float32),
        discount=jnp.full((4,), gamma),
    )
    batch = jax.tree.map(lambda x: x[:, None], batch)  # [T=4, N=1, ...]
    fitted, _, _ = linear_q.td_fit(
        critic.init(None), batch, jax.random.PRNGKey(0), 0.5, 2000, 1
    )
    q = critic.apply(fitted, eye)
    np.testing.assert_allclose([q[s, a] for s, a in pairs], q_pi, rtol=1e-4, atol=1e-4)
    # A SARSA-max or uniform bootstrap would land elsewhere: the check bites.
    assert np.max(np.abs(q_pi - np.linalg.solve(
        np.eye(4) - gamma * np.where(transition > 0, 0.5, 0.0), reward
    ))) > 0.1  # fmt: skip


def trained_probability(env_id: str, obs: jax.Array, **overrides) -> np.ndarray:
    """π(a = 1|obs) before and after training, for two seeds."""
    config = TrainConfig(**{**SMALL, **overrides}, env=env_id)
    trainer = train.make_train(config)
    keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(2))
    initial = jax.jit(jax.vmap(trainer.init))(keys)
    trained = jax.jit(jax.vmap(trainer.train, axis_name=parallel.SEEDS))(keys)
    policy = networks.make_policy(trainer.spec, config.hidden, config.activation)

    def prob(states):
        return np.asarray(
            jax.vmap(lambda p: policy.apply(p, obs).probs())(states.agent.actor)
        )[:, 0, 1]

    return prob(initial), prob(trained)


@pytest.mark.parametrize(
    ("env_id", "obs", "gamma"),
    [
        ("ProbeOneStep-v0", jnp.ones((1, 1)), 0.99),
        ("ProbeTwoStep-v0", jnp.array([[1.0, 0.0, 0.0]]), 0.5),
    ],
)
def test_linear_q_actor_critic_learns_the_probes(env_id, obs, gamma):
    # ProbeTwoStep's reward follows the first action a step later: only the
    # critic's bootstrap from Q_w(s1, ·) carries it back to a0.
    before, after = trained_probability(
        env_id,
        obs,
        gamma=gamma,
        lr=0.01,
        critic_lr=0.5,
        total_timesteps=16 * 8 * 40,
    )
    assert np.all(np.abs(before - 0.5) < 0.2), before
    assert np.all(after > 0.9), after


SPLIT = Backend(mesh=make_mesh(jax.devices(), rows=1, num_envs=8))


def test_linear_q_update_is_the_same_with_the_envs_split():
    # Two TD epochs of two minibatches (one shuffled): the same steps on one
    # device as on two.
    config = TrainConfig(
        **{**SMALL, "num_envs": 8, "num_steps": 4, "kl_envs": 4},
        env="CartPole-v1",
        critic_epochs=2,
        critic_minibatches=2,
        updates_per_chunk=2,
        normalize_obs=True,
    )

    def chunk(backend):
        trainer = train.make_train(config, backend)
        keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(1))
        shardings = trainer.state_shardings(jax.eval_shape(trainer.init_batch, keys))
        state = jax.jit(trainer.init_batch, out_shardings=shardings)(keys)
        run = jax.jit(
            trainer.train_chunk_batch, **runner.chunk_shardings(backend, shardings)
        )
        return run(state)

    (one, one_metrics), (split, split_metrics) = chunk(IDENTITY), chunk(SPLIT)
    assert float(jnp.abs(one.agent.critic["w"]).max()) > 0  # the critic moved
    for a, b in zip(
        jax.tree.leaves(one.agent), jax.tree.leaves(split.agent), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
    for name, value in one_metrics.items():
        np.testing.assert_allclose(
            split_metrics[name], value, rtol=2e-4, atol=2e-5, err_msg=name
        )


def test_linear_q_needs_discrete_actions_and_no_value_norm():
    with pytest.raises(ConfigError) as error:
        train.make_train(TrainConfig(**SMALL, env="ProbeContinuous-v0"))
    assert error.value.flag == "--critic"
    with pytest.raises(ConfigError) as error:
        validate(TrainConfig(**SMALL, value_norm=True))
    assert error.value.flag == "--value-norm"


@pytest.mark.parametrize(
    "argv",
    [
        ["--critic", "linear-q", "--env", "Pendulum-v1"],
        ["--critic", "linear-q", "--value-norm"],
        ["--critic", "linear"],
    ],
)
def test_cli_refuses_linear_q_misuse_in_one_line(argv, tmp_path, capsys):
    run_dir = tmp_path / "run"
    tiny = ["--num-envs", "4", "--total-timesteps", "32", "--no-progress"]
    code, out, err = run_main(
        lambda a: cli.train_main(a, start_time=time.time()),
        ["--algo", "a2c", *tiny, *argv, "--run-dir", str(run_dir)],
        capsys,
    )
    flag = "--value-norm" if "--value-norm" in argv else "--critic"
    assert_one_line_error(code, err, flag)
    assert out == ""
    assert not run_dir.exists()
