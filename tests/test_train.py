"""System tests of the trainer: probe environments, seeds, compilation, NaNs.

The probe runs (pgjax.probes) have known right answers, so each one checks a
part of the learning machinery: the policy gradient (ProbeOneStep), credit
assignment and discounting (ProbeTwoStep), bootstrapping on truncation
(ProbeConstantReward) from the final observation (ProbeTruncatedState),
Gaussian policies (ProbeContinuous). Every run trains two seeds at once
(``vmap``) and both must pass.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgjax import parallel, runner, train, value_norm
from pgjax.algos import base
from pgjax.algos import critic as critic_lib
from pgjax.config import Hyperparams, TrainConfig

SEEDS = (0, 1)

# Small, fast settings under which every probe learns in a few hundred updates.
PROBE = dict(
    num_envs=16,
    num_steps=4,
    hidden=(16,),
    anneal_lr=False,
    lr=0.01,
    critic_lr=0.01,
    kl_envs=16,
    eval_episodes=8,
)

S0 = jnp.array([[1.0, 0.0, 0.0]])  # ProbeTwoStep, step 0
S1 = jnp.array([[0.0, 0.0, 1.0]])  # ProbeTwoStep, step 1 after a0 = 1
ONE = jnp.ones((1, 1))  # the constant observation of the other probes


@dataclasses.dataclass
class Trained:
    config: TrainConfig
    trainer: train.Trainer
    states: train.TrainState  # leaves [S, ...]

    def networks(self):
        return base.make_networks(
            self.config,
            self.trainer.spec,
            self.trainer.backend,
            q_critic=self.config.critic == "q",
        )

    def probs(self, obs):
        """``[S, B, A]`` action probabilities of each seed's policy."""
        policy, _ = self.networks()
        return jax.vmap(lambda p: policy.apply(p, obs).probs())(self.states.agent.actor)

    def values(self, obs):
        """``[S, B]`` (or ``[S, B, A]`` for Q) critic values of each seed
        (PopArt outputs denormalised when ``value_norm``)."""
        _, critic = self.networks()

        def one(params, stats):
            return critic_lib.critic_value_fn(self.config, critic, params, stats)(obs)

        agent = self.states.agent
        return jax.vmap(one)(agent.critic, agent.value_stats)


def train_seeds(seeds=SEEDS, hyper=None, **overrides) -> Trained:
    config = TrainConfig(**{**PROBE, **overrides})
    trainer = train.make_train(config)
    keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray(seeds))
    if hyper is None:
        hyper = Hyperparams.from_config(config)
    hyper = jax.tree.map(lambda x: jnp.broadcast_to(x, (len(seeds),)), hyper)
    states = jax.jit(jax.vmap(trainer.train, axis_name=parallel.SEEDS))(keys, hyper)
    assert np.all(np.asarray(states.experience) >= config.total_timesteps)
    return Trained(config, trainer, jax.device_get(states))


# ------------------------------------------------------------- a2c on probes


# a2c's critic either takes its one step in the actor's blocked pass (1 epoch
# of 1 minibatch, the CLI's default) or is fitted on its own after the actor's
# step (critic.fit_critic; TrainConfig's default of 2 epochs × 4 minibatches).
A2C_CRITIC_FITS = [
    pytest.param(dict(critic_epochs=1, critic_minibatches=1), id="joint-step"),
    pytest.param(dict(critic_epochs=2, critic_minibatches=4), id="minibatch-fit"),
]


@pytest.mark.parametrize("critic_fit", A2C_CRITIC_FITS)
def test_a2c_learns_one_step(critic_fit):
    run = train_seeds(
        algo="a2c", env="ProbeOneStep-v0", total_timesteps=6400, **critic_fit
    )
    probs = np.asarray(run.probs(ONE))[:, 0]
    values = np.asarray(run.values(ONE))[:, 0]
    assert np.all(probs[:, 1] > 0.9), probs
    np.testing.assert_allclose(values, 1.0, atol=0.1)


@pytest.mark.parametrize("critic_fit", A2C_CRITIC_FITS)
def test_a2c_learns_two_step_credit_assignment(critic_fit):
    # γ = 0.5 makes V(s0) = γ clearly different from the undiscounted 1. The
    # seeds run with λ = 0 (credit flows only through the critic's bootstrap
    # from V(s1)) and again with λ = 1 (Monte-Carlo return inside the rollout):
    # hyperparameters are traced, so this sweep is one compiled program.
    gamma = 0.5
    config = TrainConfig(**PROBE)
    hyper = Hyperparams.from_config(dataclasses.replace(config, gamma=gamma))
    lambdas = [0.0] * len(SEEDS) + [1.0] * len(SEEDS)
    hyper = hyper.replace(gae_lambda=jnp.array(lambdas))
    run = train_seeds(
        seeds=SEEDS + SEEDS,
        hyper=hyper,
        algo="a2c",
        env="ProbeTwoStep-v0",
        gamma=gamma,
        total_timesteps=6400,
        **critic_fit,
    )
    probs = np.asarray(run.probs(S0))[:, 0]
    assert np.all(probs[:, 1] > 0.9), probs
    np.testing.assert_allclose(np.asarray(run.values(S0))[:, 0], gamma, atol=0.1)
    np.testing.assert_allclose(np.asarray(run.values(S1))[:, 0], 1.0, atol=0.1)


def test_a2c_q_critic_learns_one_step():
    run = train_seeds(
        algo="a2c", env="ProbeOneStep-v0", critic="q", total_timesteps=6400
    )
    probs = np.asarray(run.probs(ONE))[:, 0]
    q = np.asarray(run.values(ONE))[:, 0]  # [S, 2]
    assert np.all(probs[:, 1] > 0.9), probs
    np.testing.assert_allclose(q[:, 1], 1.0, atol=0.1)  # Q(s0, 1) = 1
    assert np.all(q[:, 1] - q[:, 0] > 0.5), q  # Q(s0, 0) = 0, far below


@pytest.mark.parametrize(
    "algo, critic, popart, critic_epochs",
    [
        ("a2c", "v", False, 1),
        ("a2c", "v", False, 2),
        ("a2c", "q", False, 1),
        ("a2c", "q", False, 2),
        ("a2c", "v", True, 2),
        ("npg", "v", True, 2),
        ("trpo", "v", True, 2),
    ],
)
def test_bootstraps_on_truncation(algo, critic, popart, critic_epochs):
    # Reward 1 forever, cut at 20 steps, nothing in the obs about time: the
    # right value is 1/(1 − γ) = 10. Treating the time limit as termination
    # gives about 6 (v) or 7 (q) here. Rollouts of 20 steps put one truncation
    # in every batch: with shorter ones the envs (all started together)
    # truncate in one batch out of several, and Adam's normalised steps would
    # hide most of the error (≈ 9.4 with 8-step rollouts). With PopArt, GAE
    # must see denormalised values, or the bootstrapped target 1 + γ·V would
    # stay near 1. The critic is fitted by minibatch regression after the
    # policy step (2 epochs × 2 minibatches of the 16 envs), or for a2c also
    # by its one joint step (1 epoch of 1 minibatch).
    gamma = 0.9
    run = train_seeds(
        algo=algo,
        env="ProbeConstantReward-v0",
        critic=critic,
        value_norm=popart,
        critic_epochs=critic_epochs,
        critic_minibatches=critic_epochs,
        gamma=gamma,
        num_steps=20,
        total_timesteps=16 * 20 * 150,
    )
    values = np.asarray(run.values(ONE))[:, 0]
    if critic == "q":
        # Both actions are worth 10, but only the ones the policy takes get
        # trained: check V = Σ_a π(a|s)·Q(s, a).
        values = np.sum(np.asarray(run.probs(ONE))[:, 0] * values, axis=-1)
    np.testing.assert_allclose(values, 1.0 / (1.0 - gamma), rtol=0.1)


def test_a2c_value_norm_learns_two_step_values():
    # PopArt must give the same answer as the raw critic: V(s0) = γ, V(s1) = 1.
    gamma = 0.5
    run = train_seeds(
        algo="a2c",
        env="ProbeTwoStep-v0",
        gamma=gamma,
        value_norm=True,
        total_timesteps=6400,
    )
    assert np.all(np.asarray(run.probs(S0))[:, 0, 1] > 0.9)
    np.testing.assert_allclose(np.asarray(run.values(S0))[:, 0], gamma, atol=0.1)
    np.testing.assert_allclose(np.asarray(run.values(S1))[:, 0], 1.0, atol=0.1)
    # The statistics moved away from their initial (0, 1).
    mean, scale = jax.vmap(value_norm.statistics)(run.states.agent.value_stats)
    assert np.all(np.asarray(mean) > 0.3) and np.all(np.asarray(scale) < 0.9)


def test_a2c_bootstraps_from_final_obs_not_reset_obs():
    # A (reward 1) and B (reward 0) alternate and the time limit cuts after
    # A, B, A: the truncated step must bootstrap from V(B), the final obs, not
    # V(A), the reset obs. Right: V(A) = 1/(1 − γ²), V(B) = γ·V(A). Using the
    # reset obs at the truncations inside each rollout gives V(A) ≈ 6.4 here.
    # TD(0) makes this purely a test of the bootstrap (with λ = 0.95 and this
    # learning rate some seeds' critics circle the answer without settling).
    gamma = 0.9
    run = train_seeds(
        algo="a2c",
        env="ProbeTruncatedState-v0",
        gamma=gamma,
        gae_lambda=0.0,
        num_steps=12,
        total_timesteps=16 * 12 * 200,
    )
    values = np.asarray(run.values(jnp.eye(2)))  # [S, (A, B)]
    v_a = 1.0 / (1.0 - gamma**2)
    np.testing.assert_allclose(values[:, 0], v_a, rtol=0.05)
    np.testing.assert_allclose(values[:, 1], gamma * v_a, rtol=0.05)


def test_a2c_gaussian_policy_learns_continuous():
    run = train_seeds(
        algo="a2c", env="ProbeContinuous-v0", lr=0.03, total_timesteps=12800
    )
    policy, _ = run.networks()
    mean = jax.vmap(lambda p: policy.apply(p, ONE).mode())(run.states.agent.actor)
    np.testing.assert_allclose(np.asarray(mean)[:, 0, 0], 0.5, atol=0.1)
    returns = jax.jit(jax.vmap(lambda s, k: run.trainer.evaluate(s, k, 4)))(
        run.states, jax.random.split(jax.random.PRNGKey(9), len(SEEDS))
    )
    assert np.all(np.asarray(returns) > -0.01)


# ------------------------------------------------------- reinforce on probes


@pytest.mark.parametrize("baseline", ["none", "mean", "value"])
@pytest.mark.parametrize("returns", ["total", "reward-to-go"])
@pytest.mark.parametrize(
    "env",
    [
        # One step: both kinds of return are the reward; slow set only.
        pytest.param("ProbeOneStep-v0", marks=pytest.mark.slow),
        "ProbeTwoStep-v0",
    ],
)
def test_reinforce_learns_probes(env, returns, baseline):
    gamma = 0.5
    run = train_seeds(
        algo="reinforce",
        env=env,
        returns=returns,
        baseline=baseline,
        gamma=gamma,
        lr=0.02,
        critic_lr=0.02,
        total_timesteps=1920,
    )
    s0 = ONE if env == "ProbeOneStep-v0" else S0
    probs = np.asarray(run.probs(s0))[:, 0]
    assert np.all(probs[:, 1] > 0.9), probs
    if baseline == "value":
        # The critic regresses on the reward-to-go: V(s0) = γ^(steps − 1).
        expected = 1.0 if env == "ProbeOneStep-v0" else gamma
        np.testing.assert_allclose(np.asarray(run.values(s0))[:, 0], expected, atol=0.1)


# ------------------------------------------------ seeds, determinism, compile

SMALL = dict(
    algo="a2c",
    env="CartPole-v1",
    num_envs=8,
    num_steps=4,
    hidden=(16,),
    total_timesteps=8 * 4 * 5,  # exactly 5 updates
    updates_per_chunk=3,
    kl_envs=8,
    lr=0.01,
    target_kl=0.01,
    normalize_obs=True,
)
KEYS = jnp.stack([jax.random.PRNGKey(0), jax.random.PRNGKey(1)])


@dataclasses.dataclass
class Compiled:
    """One small CartPole trainer and its jitted functions, shared by the tests
    below so that each is compiled once for the whole module."""

    trainer: train.Trainer
    init_batch: Any  # jit(trainer.init_batch)
    chunk: Any  # jit(vmap(train_chunk)), counting its traces
    single_chunk: Any  # jit(train_chunk)
    traces: list


@pytest.fixture(scope="module")
def small() -> Compiled:
    trainer = train.make_train(TrainConfig(**SMALL))
    traces = []

    def counted_chunk(state):
        traces.append(1)  # runs only while tracing
        return trainer.train_chunk(state)

    return Compiled(
        trainer=trainer,
        init_batch=jax.jit(trainer.init_batch),
        chunk=jax.jit(jax.vmap(counted_chunk)),
        single_chunk=jax.jit(trainer.train_chunk),
        traces=traces,
    )


def _leaves_equal(a, b) -> bool:
    """Bit-identical pytrees (NaN equals NaN: metrics are NaN without episodes)."""
    return all(
        np.array_equal(x, y, equal_nan=True)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_vmap_over_seeds_equals_separate_runs(small):
    state = small.init_batch(KEYS)
    history = []
    for _ in range(2):
        state, metrics = small.chunk(state)
        history.append(jax.device_get(metrics))
    start = small.init_batch(KEYS)
    for i in range(len(KEYS)):
        # Seed i alone, unbatched, from the same initial state.
        one = jax.tree.map(lambda x, i=i: x[i], start)
        for k in range(2):
            one, one_metrics = small.single_chunk(one)
            for name, value in one_metrics.items():
                np.testing.assert_allclose(
                    value, history[k][name][i], rtol=1e-4, atol=1e-6, err_msg=name
                )
        for x, y in zip(jax.tree.leaves(one), jax.tree.leaves(state), strict=True):
            np.testing.assert_allclose(x, y[i], rtol=1e-5, atol=1e-6)
    # The two seeds really are different runs.
    kernels = jax.tree.leaves(state.agent.actor)
    assert not all(np.allclose(k[0], k[1]) for k in kernels)


def test_reinforce_seeds_in_one_program_equal_separate_runs():
    # train_chunk_batch shares REINFORCE's episode loop between the seeds
    # (parallel.all_seeds): a seed that finished first collects padding rows,
    # which must change nothing it learns or reports.
    config = TrainConfig(
        **dict(SMALL, algo="reinforce", baseline="value", total_timesteps=10**6)
    )
    trainer = train.make_train(config)
    start = jax.jit(trainer.init_batch)(KEYS)
    state, metrics = jax.jit(trainer.train_chunk_batch)(start)
    single = jax.jit(trainer.train_chunk)

    def kept(s):
        """All but the envs' own state, which the next update resets anyway
        (a seed that finished first stepped on)."""
        return s.agent, s.env.obs_norm, s.key, s.experience

    for i in range(len(KEYS)):
        one, one_metrics = single(jax.tree.map(lambda x, i=i: x[i], start))
        for name, value in one_metrics.items():
            # The policy loss is a sum per episode of nearly cancelling terms
            # (the estimate divides by episodes, not steps): its rounding
            # differs at 1e-5 between the batched and the single program.
            np.testing.assert_allclose(
                value, metrics[name][i], rtol=1e-4, atol=2e-5, err_msg=name
            )
        for x, y in zip(
            jax.tree.leaves(kept(one)), jax.tree.leaves(kept(state)), strict=True
        ):
            np.testing.assert_allclose(x, y[i], rtol=1e-5, atol=1e-6)
    # Episodes of different lengths: one seed's loop ran past its own end.
    assert metrics["episode_length"][0, 0] != metrics["episode_length"][1, 0]


def test_same_seed_is_bit_identical(small):
    def run():
        state = small.init_batch(jnp.stack([KEYS[0], KEYS[0]]))
        history = []
        for _ in range(2):
            state, metrics = small.chunk(state)
            history.append(metrics)
        return jax.device_get(state), jax.device_get(history)

    state_a, metrics_a = run()
    state_b, metrics_b = run()
    assert _leaves_equal(state_a, state_b)
    assert _leaves_equal(metrics_a, metrics_b)
    # Two copies of one seed inside a batch agree with each other too.
    assert _leaves_equal(
        jax.tree.map(lambda x: x[0], (state_a, metrics_a)),
        jax.tree.map(lambda x: x[1], (state_a, metrics_a)),
    )


def test_chunk_compiles_once_and_idles_when_done(small):
    state = small.init_batch(KEYS)
    active = []
    for _ in range(4):
        previous = state
        state, metrics = small.chunk(state)
        active.append(np.asarray(metrics["active"]))
    # Also counts calls made by the other tests of this module.
    assert len(small.traces) == 1
    assert small.chunk._cache_size() == 1
    # 5 updates in slots of 3: the second chunk idles in its last slot; the
    # third and fourth do nothing and leave the state bit-identical.
    expected = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    for seed in range(len(KEYS)):
        np.testing.assert_array_equal(np.concatenate(active, axis=1)[seed], expected)
    np.testing.assert_array_equal(state.update, [5, 5])
    np.testing.assert_array_equal(state.experience, [160, 160])
    assert _leaves_equal(jax.device_get(previous), jax.device_get(state))


def test_non_finite_loss_is_detected(small):
    names = tuple(
        n for n in small.trainer.algorithm.metric_names if n != "learning_rate"
    )
    state = small.init_batch(KEYS)
    _, healthy = small.chunk(state)
    assert runner.first_non_finite(jax.device_get(healthy), names) is None

    # Poison seed 1's critic: its value loss (and advantages) become NaN.
    critic = jax.tree.map(lambda x: x.at[1].set(jnp.nan), state.agent.critic)
    poisoned = state.replace(agent=state.agent.replace(critic=critic))
    _, metrics = small.chunk(poisoned)
    metrics = jax.device_get(metrics)
    assert np.isnan(metrics["value_loss"][1]).all()
    assert np.isfinite(metrics["value_loss"][0]).all()
    found = runner.first_non_finite(metrics, names)
    assert found is not None
    slot, name = found
    assert slot == 0
    assert not np.isfinite(metrics[name][1, 0])


def test_first_non_finite_ignores_idle_slots():
    active = np.array([[True, True, False], [True, False, False]])
    loss = np.zeros((2, 3))
    loss[1, 1] = np.nan  # seed 1 was idle in slot 1: ignored
    loss[:, 2] = np.inf  # nobody active in slot 2: ignored
    metrics = {"active": active, "policy_loss": loss, "value_loss": np.zeros((2, 3))}
    names = ("policy_loss", "value_loss")
    assert runner.first_non_finite(metrics, names) is None
    metrics["value_loss"][0, 1] = np.nan
    assert runner.first_non_finite(metrics, names) == (1, "value_loss")


INIT_LOOP = """
import jax, jax.numpy as jnp
from pgjax.config import TrainConfig
from pgjax.train import make_train
trainer = make_train(TrainConfig(num_envs=64, num_seeds=8))
init = jax.jit(trainer.init_batch)
keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(8))
for _ in range(150):
    jax.block_until_ready(init(keys))
print("ok")
"""


def test_multi_seed_init_never_deadlocks():
    """Regression: a vmapped orthogonal init (batched LAPACK QR) hung XLA's CPU
    pool within ~50 calls on 2 cores; init_batch must survive many calls."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", INIT_LOOP], capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ok")
