"""Tests of AC(λ), the online actor-critic with eligibility traces.

* The trace recursion against hand-computed numbers, and one whole update
  against the book's step written out env by env.
* The backward view equals the forward view exactly offline: over complete
  episodes (ending by termination and by truncation) with θ and w held fixed,
  ``Σ_t mean_i δ_i·e^θ_i`` is the GAE(λ) policy gradient and
  ``Σ_t mean_i δ_i·e^w_i`` the semi-gradient of the λ-return regression
  (checked in float64).
* Learning on probes with known answers (the plain CartPole command is in
  tests/test_learning.py, slow).
* Bad settings end in an error naming the flag; a resumed run equals a
  straight one.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_one_line_error, run_main

from pgjax import cli, envs, losses, networks, parallel, presets, rollout, runner, train
from pgjax.algos import ac_lambda
from pgjax.checkpoints import Checkpointer
from pgjax.config import ConfigError, Hyperparams, TrainConfig, validate

ROOT = Path(__file__).resolve().parent.parent

# --------------------------------------------------------- the trace recursion


def test_trace_step_matches_hand_computed_traces():
    # Two envs, one scalar parameter, gradients 1, 2, 3 and γλ = 0.5; env 1's
    # episode ends after the second step, so its third trace starts afresh.
    traces = {"w": jnp.zeros((2,))}
    grads = [jnp.array([1.0, 1.0]), jnp.array([2.0, 2.0]), jnp.array([3.0, 3.0])]
    deltas = [jnp.array([1.0, 2.0]), jnp.array([0.5, -1.0]), jnp.array([2.0, 1.0])]
    dones = [jnp.array([False, False]), jnp.array([False, True])]
    dones.append(jnp.array([False, False]))
    expected_traces = [[1.0, 1.0], [2.5, 2.5], [4.25, 3.0]]
    for t in range(3):
        direction, traces = ac_lambda.trace_step(
            traces, {"w": grads[t]}, deltas[t], dones[t], 0.5
        )
        e = np.array(expected_traces[t])
        np.testing.assert_allclose(direction["w"], np.mean(np.asarray(deltas[t]) * e))
        carried = np.where(np.asarray(dones[t]), 0.0, e)
        np.testing.assert_allclose(traces["w"], carried)


def test_accumulate_traces_broadcasts_a_per_env_decay_over_the_leaf():
    traces = jnp.arange(12.0).reshape(2, 3, 2)
    grads = jnp.ones((2, 3, 2))
    out = ac_lambda.accumulate_traces(traces, grads, jnp.array([0.0, 0.5]))
    np.testing.assert_allclose(out[0], np.ones((3, 2)))
    np.testing.assert_allclose(out[1], 0.5 * np.arange(6.0, 12.0).reshape(3, 2) + 1)


# ---------------------------------------------- offline backward = forward view

T, N, GAMMA = 7, 3, 0.9
# Every env's data ends with an episode end, so no trace is cut short.
TERMINATED = np.zeros((T, N), bool)
TRUNCATED = np.zeros((T, N), bool)
TERMINATED[2, 0] = TRUNCATED[6, 0] = True  # terminated, then truncated
TERMINATED[6, 1] = True  # one long episode
TRUNCATED[3, 2] = TERMINATED[6, 2] = True  # truncated, then terminated


def _episodes(spec: envs.EnvSpec) -> rollout.Transition:
    """Random float64 experience ``[T, N]`` with the episode ends above; a
    truncated step's ``next_obs`` (its true final observation) differs from
    the next row's reset ``obs``."""
    keys = jax.random.split(jax.random.PRNGKey(7), 4)
    obs = jax.random.normal(keys[0], (T + 1, N, *spec.obs_shape), jnp.float64)
    final = jax.random.normal(keys[1], (T, N, *spec.obs_shape), jnp.float64)
    dones = jnp.asarray(TERMINATED | TRUNCATED)
    next_obs = jnp.where(dones[..., None], final, obs[1:])
    zeros = jnp.zeros((T, N))
    return rollout.Transition(
        obs=obs[:T],
        action=jax.random.randint(keys[2], (T, N), 0, spec.num_actions),
        log_prob=zeros,
        reward=jax.random.normal(keys[3], (T, N), jnp.float64),
        terminated=jnp.asarray(TERMINATED),
        truncated=jnp.asarray(TRUNCATED),
        next_obs=next_obs,
        completed_return=zeros,
        completed_length=zeros.astype(jnp.int32),
        valid=jnp.ones((T, N), bool),
    )


SPEC = envs.make_env("CartPole-v1")
POLICY = networks.make_policy(SPEC, (8,))
CRITIC = networks.make_critic(SPEC, (8,))


@jax.jit
def _backward_view(actor, critic_params, batch, hyper):
    """``Σ_t`` of AC(λ)'s directions with the parameters held fixed."""
    policy, critic = POLICY, CRITIC
    decay = hyper.gamma * hyper.gae_lambda
    actor_trace = ac_lambda.zero_traces(actor, N)
    critic_trace = ac_lambda.zero_traces(critic_params, N)
    actor_sum = jax.tree.map(jnp.zeros_like, actor)
    critic_sum = jax.tree.map(jnp.zeros_like, critic_params)
    for t in range(T):
        step = jax.tree.map(lambda x, t=t: x[t], batch)
        _, actor_grads = ac_lambda.per_env_log_prob_grads(
            policy, actor, step.obs, step.action
        )
        values, critic_grads = ac_lambda.per_env_value_grads(
            critic, critic_params, step.obs
        )
        deltas = ac_lambda.td_errors_of_step(critic, critic_params, step, values, hyper)
        actor_dir, actor_trace = ac_lambda.trace_step(
            actor_trace, actor_grads, deltas, step.done, decay
        )
        critic_dir, critic_trace = ac_lambda.trace_step(
            critic_trace, critic_grads, deltas, step.done, decay
        )
        actor_sum = jax.tree.map(jnp.add, actor_sum, actor_dir)
        critic_sum = jax.tree.map(jnp.add, critic_sum, critic_dir)
    return actor_sum, critic_sum


@jax.jit
def _forward_view(actor, critic_params, batch, lambda_):
    """The gradients of ``Σ_t mean_i log π(a|s)·A^GAE`` and of
    ``Σ_t mean_i V(s)·(G^λ − V(s))`` (weights held fixed)."""
    policy, critic = POLICY, CRITIC
    values = critic.apply(critic_params, batch.obs)
    next_values = critic.apply(critic_params, batch.next_obs)
    discounts = GAMMA * (1.0 - batch.terminated.astype(jnp.float64))
    args = (batch.reward, values, next_values, discounts, batch.done, lambda_)
    advantages = losses.gae_advantages(*args)
    errors = losses.lambda_returns(*args) - values

    def actor_objective(p):
        log_probs = policy.apply(p, batch.obs).log_prob(batch.action)
        return jnp.sum(jnp.mean(log_probs * advantages, axis=1))

    def critic_objective(w):
        return jnp.sum(jnp.mean(critic.apply(w, batch.obs) * errors, axis=1))

    return jax.grad(actor_objective)(actor), jax.grad(critic_objective)(critic_params)


@pytest.mark.parametrize("lambda_", [0.0, 0.8, 1.0])
def test_offline_traces_equal_the_forward_view(lambda_):
    with jax.enable_x64(True):
        as64 = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tree)  # noqa: E731
        actor = as64(POLICY.init(jax.random.PRNGKey(1)))
        # A value head far from its small initial scale: the TD errors and
        # the λ-returns then differ a lot from the rewards.
        critic_params = as64(CRITIC.init(jax.random.PRNGKey(2)))
        critic_params = jax.tree.map(lambda x: 3.0 * x, critic_params)
        batch = _episodes(SPEC)
        hyper = as64(Hyperparams.from_config(TrainConfig()))
        hyper = hyper.replace(gamma=jnp.float64(GAMMA), gae_lambda=jnp.float64(lambda_))
        backward = _backward_view(actor, critic_params, batch, hyper)
        forward = _forward_view(actor, critic_params, batch, jnp.float64(lambda_))
        for b, f in zip(
            jax.tree.leaves(backward), jax.tree.leaves(forward), strict=True
        ):
            assert b.dtype == jnp.float64
            np.testing.assert_allclose(b, f, rtol=1e-10, atol=1e-12)
        # (And the gradients compared are not zero.)
        assert np.abs(np.asarray(jax.tree.leaves(forward[0])[0])).max() > 1e-3


# ------------------------------------------------------------ one update, wired


def test_update_is_the_book_step_env_by_env():
    config = TrainConfig(
        algo="ac-lambda",
        env="CartPole-v1",
        num_envs=4,
        num_steps=1,
        hidden=(8,),
        anneal_lr=False,
        lr=0.05,
        critic_lr=0.1,
        gamma=0.9,
        gae_lambda=0.7,
        reward_scale=0.5,
    )
    trainer = train.make_train(config)
    algorithm, spec = trainer.algorithm, trainer.spec
    hyper = Hyperparams.from_config(config)
    agent = algorithm.init(jax.random.PRNGKey(0), hyper)
    keys = jax.random.split(jax.random.PRNGKey(1), 6)
    # Traces carried from earlier steps (non-zero), one step of 4 envs: env 1
    # terminates, env 2 is truncated (bootstraps from its final observation).
    agent = agent.replace(
        actor_trace=jax.tree.map(
            lambda e: jax.random.normal(keys[0], e.shape), agent.actor_trace
        ),
        critic_trace=jax.tree.map(
            lambda e: jax.random.normal(keys[1], e.shape), agent.critic_trace
        ),
    )
    terminated = np.array([False, True, False, False])
    truncated = np.array([False, False, True, False])
    batch = rollout.Transition(
        obs=jax.random.normal(keys[2], (1, 4, 4)),
        action=jnp.array([[0, 1, 1, 0]]),
        log_prob=jnp.zeros((1, 4)),
        reward=jax.random.normal(keys[3], (1, 4)),
        terminated=jnp.asarray(terminated)[None],
        truncated=jnp.asarray(truncated)[None],
        next_obs=jax.random.normal(keys[4], (1, 4, 4)),
        completed_return=jnp.zeros((1, 4)),
        completed_length=jnp.zeros((1, 4), jnp.int32),
        valid=jnp.ones((1, 4), bool),
    )
    new, metrics = jax.jit(algorithm.update)(
        agent, batch, keys[5], hyper, jnp.float32(0.3)
    )

    policy = networks.make_policy(spec, config.hidden)
    critic = networks.make_critic(spec, config.hidden)
    log_prob_grad = jax.jit(
        jax.grad(lambda p, s, a: policy.apply(p, s[None]).log_prob(a[None])[0])
    )
    value = jax.jit(jax.value_and_grad(lambda w, s: critic.apply(w, s[None])[0]))
    # Everything below in NumPy, env by env.
    agent, batch = jax.device_get((agent, batch))
    deltas, actor_traces, critic_traces = [], [], []
    for i in range(4):
        s, a = batch.obs[0, i], batch.action[0, i]
        v, v_grad = jax.device_get(value(agent.critic, s))
        v_next = float(value(agent.critic, batch.next_obs[0, i])[0])
        deltas.append(0.5 * batch.reward[0, i] + 0.9 * (1 - terminated[i]) * v_next - v)
        g = jax.device_get(log_prob_grad(agent.actor, s, a))
        # e_i ← γλ·e_i + ∇ (γλ = 0.63).
        actor_traces.append(
            jax.tree.map(lambda x, y, i=i: 0.63 * x[i] + y, agent.actor_trace, g)
        )
        critic_traces.append(
            jax.tree.map(lambda x, y, i=i: 0.63 * x[i] + y, agent.critic_trace, v_grad)
        )
    ended = np.asarray(terminated | truncated)
    new = jax.device_get(new)
    for old, updated, traces, carried, lr in (
        (agent.actor, new.actor, actor_traces, new.actor_trace, 0.05),
        (agent.critic, new.critic, critic_traces, new.critic_trace, 0.1),
    ):
        # θ ← θ + α·(1/N)·Σ_i δ_i·e_i, and the ended envs' traces zeroed.
        expected = jax.tree.map(
            lambda p, *es, lr=lr: (
                p + lr * sum(d * e for d, e in zip(deltas, es, strict=True)) / 4
            ),
            old,
            *traces,
        )
        for q, x in zip(
            jax.tree.leaves(updated), jax.tree.leaves(expected), strict=True
        ):
            np.testing.assert_allclose(q, x, rtol=1e-5, atol=1e-6)
        for i, e in enumerate(traces):
            kept = jax.tree.map(lambda x, i=i: x[i], carried)
            for k, x in zip(jax.tree.leaves(kept), jax.tree.leaves(e), strict=True):
                np.testing.assert_allclose(
                    k, 0.0 if ended[i] else x, rtol=1e-5, atol=1e-6
                )
    np.testing.assert_allclose(metrics["td_error"], np.mean(deltas), rtol=1e-5)
    np.testing.assert_allclose(metrics["learning_rate"], 0.05)


# ------------------------------------------------------------------- learning


def _train_probe(env: str, updates: int, **overrides):
    """Two seeds of AC(λ) trained on a probe; returns the trained states (leaves
    ``[2, ...]``) and plain networks that read them."""
    config = TrainConfig(
        algo="ac-lambda",
        env=env,
        num_envs=16,
        num_steps=1,
        hidden=(16,),
        anneal_lr=False,
        total_timesteps=16 * updates,
        **overrides,
    )
    trainer = train.make_train(config)
    keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(2))
    trained = jax.jit(jax.vmap(trainer.train, axis_name=parallel.SEEDS))(keys)
    policy = networks.make_policy(trainer.spec, config.hidden)
    critic = networks.make_critic(trainer.spec, config.hidden)
    probs = jax.vmap(lambda p, o: policy.apply(p, o).probs(), in_axes=(0, None))
    values = jax.vmap(critic.apply, in_axes=(0, None))
    return trained.agent, probs, values


def test_probes_learn_the_known_values_and_actions():
    # One step: action 1 pays 1, so π(1|s) → 1 and V(s) → E_π[r] ≈ 1.
    agent, probs, values = _train_probe("ProbeOneStep-v0", 200, lr=0.5, critic_lr=0.5)
    one = jnp.ones((1, 1))
    p1 = np.asarray(probs(agent.actor, one))[:, 0, 1]
    assert np.all(p1 > 0.95), p1
    np.testing.assert_allclose(
        np.asarray(values(agent.critic, one))[:, 0], p1, atol=0.05
    )

    # Two steps, the reward for the first action arrives a step later: the
    # trace carries the credit back. V(s0) = γ·π(1|s0), V([0, 0, 1]) = 1.
    agent, probs, values = _train_probe(
        "ProbeTwoStep-v0", 300, lr=0.5, critic_lr=0.5, gamma=0.5, gae_lambda=0.9
    )
    p1 = np.asarray(probs(agent.actor, jnp.eye(3)[:1]))[:, 0, 1]
    assert np.all(p1 > 0.95), p1
    v = np.asarray(values(agent.critic, jnp.eye(3)))
    np.testing.assert_allclose(v[:, 0], 0.5 * p1, atol=0.05)
    np.testing.assert_allclose(v[:, 2], 1.0, atol=0.05)

    # Truncated after A, B, A: only a bootstrap from the true final
    # observation (B) gives V(A) = 1/(1 − γ²), V(B) = γ/(1 − γ²) (γ = 0.9).
    agent, _, values = _train_probe(
        "ProbeTruncatedState-v0", 300, lr=0.1, critic_lr=0.2, gamma=0.9
    )
    v = np.asarray(values(agent.critic, jnp.eye(2)))
    np.testing.assert_allclose(v, [[1 / 0.19, 0.9 / 0.19]] * 2, rtol=0.02)


# ------------------------------------------------------- settings and resuming


def test_the_preset_is_online_and_other_rollout_lengths_are_refused(capsys):
    assert presets.preset("ac-lambda", "CartPole-v1")["num_steps"] == 1
    assert presets.preset("ac-lambda", "Acrobot-v1")["num_steps"] == 1
    bad = TrainConfig(algo="ac-lambda", num_steps=4)
    for check in (validate, train.make_train):
        with pytest.raises(ConfigError, match="1 for ac-lambda") as error:
            check(bad)
        assert error.value.flag == "--num-steps"
    norm = TrainConfig(algo="ac-lambda", num_steps=1, value_norm=True)
    with pytest.raises(ConfigError) as error:
        validate(norm)
    assert error.value.flag == "--value-norm"
    for argv, flag in (
        (["--num-steps", "8"], "--num-steps"),
        (["--value-norm"], "--value-norm"),
    ):
        code, out, err = run_main(
            lambda a: cli.train_main(
                ["--algo", "ac-lambda", "--no-progress", *a], start_time=time.time()
            ),
            argv,
            capsys,
        )
        assert_one_line_error(code, err, flag)
        assert out == ""


RESUME = TrainConfig(
    algo="ac-lambda",
    env="CartPole-v1",
    num_envs=8,
    num_steps=1,
    total_timesteps=8 * 24,
    updates_per_chunk=4,
    num_seeds=2,
    hidden=(16,),
    eval_episodes=2,
    checkpoint_every=4,
    anneal_lr=False,  # so that a run split at any total equals the straight one
    normalize_obs=True,
)


def _final_state(run_dir: Path):
    trainer = train.make_train(RESUME)
    abstract = runner.abstract_state(trainer, runner.make_layout(RESUME))
    with Checkpointer(run_dir, read_only=True) as checkpointer:
        return checkpointer.restore(abstract)[0]


@pytest.mark.usefixtures("compilation_cache")
def test_resumed_run_equals_the_straight_one(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    runner.run(RESUME, straight, progress=False)
    runner.run(
        dataclasses.replace(RESUME, total_timesteps=8 * 12), split, progress=False
    )
    runner.run(RESUME, split, progress=False, resume=True)

    def rows(run_dir: Path) -> list[list[str]]:
        lines = (run_dir / "metrics.csv").read_text().splitlines()
        header = lines[0].split(",")
        wall = header.index("wall_time")
        return [
            [v for j, v in enumerate(line.split(",")) if j != wall] for line in lines
        ]

    assert rows(straight) == rows(split)
    a, b = _final_state(straight), _final_state(split)
    paths, leaves_a = zip(*jax.tree_util.tree_leaves_with_path(a), strict=True)
    for path, x, y in zip(paths, leaves_a, jax.tree.leaves(b), strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y)), jax.tree_util.keystr(path)
    # The traces are part of the checkpoint, one per env.
    assert jax.tree.leaves(a.agent.actor_trace)[0].shape[:2] == (2, 8)
