"""Natural actor-critic (``--algo nac``).

The direction is checked against exact answers: the least-squares fit from an
explicitly formed score matrix, NPG's direction when the batch holds every
action at every state weighted by π (the empirical Fisher is then the exact
one), and the update's step against the same fit on its own batch. Then the
policy learns the probes (the CartPole command: tests/test_learning.py, slow).
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_one_line_error, run_main
from jax.flatten_util import ravel_pytree

from pgjax import cli, compatible, envs, natural, networks, parallel, train
from pgjax.algos import nac, natural_pg
from pgjax.backend import IDENTITY
from pgjax.config import ConfigError, Hyperparams, TrainConfig

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def x64():
    """Runs the test with 64-bit floats, restoring the setting afterwards."""
    with jax.enable_x64(True):
        yield


# Compiled once per shape: eager dispatch of the fit's many small ops is slower.
fit_compatible_critic = jax.jit(
    nac.fit_compatible_critic, static_argnames=("policy", "iters")
)


def float64(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tree)


def small_policy(env_id: str, key: int = 0):
    """A one-hidden-layer policy for ``env_id`` and its parameters (float64
    under x64)."""
    spec = envs.make_env(env_id)
    policy = networks.make_policy(spec, (4,))
    return spec, policy, float64(policy.init(jax.random.PRNGKey(key)))


def one_log_prob(policy):
    return lambda params, obs, action: policy.apply(params, obs).log_prob(action)


@pytest.mark.parametrize("weighted", [False, True])
def test_direction_is_the_explicit_least_squares_fit(x64, weighted):
    spec, policy, params = small_policy("CartPole-v1")
    rows, ridge = 12, 0.1
    keys = jax.random.split(jax.random.PRNGKey(1), 4)
    obs = jax.random.normal(keys[0], (rows, *spec.obs_shape), jnp.float64)
    actions = jax.random.randint(keys[1], (rows,), 0, spec.num_actions)
    advantages = jax.random.normal(keys[2], (rows,), jnp.float64)
    weights = jax.random.uniform(keys[3], (rows,), jnp.float64) if weighted else None
    size = ravel_pytree(params)[0].size  # 30: CG converges within 60 updates
    fit = fit_compatible_critic(
        policy, params, obs, actions, advantages, ridge, 2 * size, weights, tol=1e-30
    )
    psi = compatible.score_rows(one_log_prob(policy), params, obs, actions)
    assert psi.shape == (rows, size)
    expected = compatible.fit_compatible(psi, advantages, weights, ridge)
    np.testing.assert_allclose(ravel_pytree(fit.w)[0], expected, rtol=1e-8, atol=1e-10)
    # The curvature the KL step uses is wᵀ(ΨᵀW̄Ψ + λI)w with the explicit Ψ,
    # and the fit's r² is that of the explicit predictions.
    share = np.ones(rows) if weights is None else np.asarray(weights)
    share = share / share.sum()
    fisher = np.asarray(psi).T @ (share[:, None] * np.asarray(psi))
    w = np.asarray(expected)
    np.testing.assert_allclose(fit.wfw, w @ fisher @ w + ridge * w @ w, rtol=1e-8)
    residual = np.asarray(psi) @ w - np.asarray(advantages)
    r2 = 1 - np.sum(share * residual**2) / np.sum(share * np.asarray(advantages) ** 2)
    np.testing.assert_allclose(fit.r2, r2, rtol=1e-8)
    # The KL step: ½·sᵀ(F̂ + λI)s = δ; the fixed step: η·w.
    step, info = nac.compatible_step(fit, "kl", 0.01, 0.5)
    s = ravel_pytree(step)[0]
    assert bool(info.valid)
    np.testing.assert_allclose(0.5 * (s @ fisher @ s + ridge * s @ s), 0.01, rtol=1e-8)
    scale = np.sqrt(0.02 / (w @ fisher @ w + ridge * w @ w))
    np.testing.assert_allclose(s, scale * w, rtol=1e-8)
    fixed, _ = nac.compatible_step(fit, "fixed", 0.01, 0.5)
    np.testing.assert_allclose(ravel_pytree(fixed)[0], 0.5 * w, rtol=1e-12)


def test_direction_is_npgs_when_every_action_is_weighted_by_pi(x64):
    # Every action at every state, weighted by π(a|s): the empirical Fisher
    # Σ_s Σ_a π ψψᵀ/S is then the Fisher NPG takes as the KL's Hessian, and
    # the right side Σ π ψ A/S the exact policy gradient, so the directions
    # and the KL-scaled steps agree (here with 43 parameters, 4 states).
    spec, policy, params = small_policy("Acrobot-v1", key=2)
    # A policy far from uniform (π from 0.04 to 0.55), so that weighting the
    # actions by π is not the same as weighting them equally.
    head = params["params"]["Dense_1"]
    params["params"]["Dense_1"] = {**head, "kernel": 150.0 * head["kernel"]}
    states, actions_n = 4, spec.num_actions
    keys = jax.random.split(jax.random.PRNGKey(3), 2)
    state_obs = jax.random.normal(keys[0], (states, *spec.obs_shape), jnp.float64)
    advantage = jax.random.normal(keys[1], (states, actions_n), jnp.float64)
    probs = policy.apply(params, state_obs).probs()  # [S, A]
    obs = jnp.repeat(state_obs, actions_n, axis=0)
    actions = jnp.tile(jnp.arange(actions_n), states)
    config = TrainConfig(
        algo="npg", hidden=(4,), kl_envs=8, cg_iters=200, cg_damping=0.01, max_kl=0.01
    )
    hyper = Hyperparams.from_config(config)
    fit = fit_compatible_critic(
        policy,
        params,
        obs,
        actions,
        advantage.reshape(-1),
        hyper.cg_damping,
        config.cg_iters,
        weights=probs.reshape(-1),
        tol=1e-28,
    )

    def expected_objective(theta):
        pi = policy.apply(theta, state_obs).probs()
        return jnp.mean(jnp.sum(pi * advantage, axis=-1))

    exact_gradient = jax.grad(expected_objective)(params)
    np.testing.assert_allclose(
        ravel_pytree(fit.info.gradient)[0],
        ravel_pytree(exact_gradient)[0],
        rtol=1e-10,
        atol=1e-12,
    )
    # NPG's direction: CG on the Hessian of the mean KL at the S states.
    old = jax.lax.stop_gradient(policy.apply(params, state_obs))
    fvp = natural.fisher_vector_product(
        lambda theta: jnp.mean(old.kl(policy.apply(theta, state_obs))),
        params,
        hyper.cg_damping,
    )
    x = natural.conjugate_gradient(fvp, exact_gradient, iters=200, tol=1e-28).x
    np.testing.assert_allclose(
        ravel_pytree(fit.w)[0], ravel_pytree(x)[0], rtol=1e-7, atol=1e-10
    )
    # And NPG's own natural-step phase, on a batch of the S states (T = S,
    # one env), gives the step NAC's KL scaling gives.
    phases = natural_pg.make_natural_phases(config, spec, IDENTITY, line_search=False)
    batch = _StatesOnly(obs=state_obs[:, None])
    gradient = natural_pg.PolicyGradient(
        grads=exact_gradient,
        objective=jnp.zeros(()),
        entropy=jnp.zeros(()),
        old_dist=policy.apply(params, state_obs[:, None]),
    )
    npg_step = phases.natural_step(params, batch, gradient, hyper)
    nac_step, info = nac.compatible_step(fit, "kl", hyper.max_kl, hyper.natural_lr)
    np.testing.assert_allclose(
        ravel_pytree(nac_step)[0],
        ravel_pytree(npg_step.step)[0],
        rtol=1e-6,
        atol=1e-10,
    )
    np.testing.assert_allclose(info.xfx, npg_step.info.xfx, rtol=1e-7)
    # Weighting the sampled actions uniformly instead gives another direction:
    # the check above depends on the weights.
    uniform = fit_compatible_critic(
        policy,
        params,
        obs,
        actions,
        advantage.reshape(-1),
        hyper.cg_damping,
        config.cg_iters,
    )
    gap = ravel_pytree(uniform.w)[0] - ravel_pytree(x)[0]
    assert np.linalg.norm(gap) > 0.1 * np.linalg.norm(ravel_pytree(x)[0])


class _StatesOnly:
    """The part of a rollout NPG's natural-step phase reads: ``obs``."""

    def __init__(self, obs):
        self.obs = obs


def test_update_steps_along_the_fit_on_its_own_batch():
    # The whole update on a collected CartPole batch: the actor moves by
    # √(2δ / wᵀ(F̂ + λI)w)·w, with w fitted explicitly to the batch's GAE
    # advantages.
    config = TrainConfig(
        algo="nac",
        num_envs=4,
        num_steps=6,
        hidden=(4,),
        kl_envs=4,
        cg_iters=40,
        critic_minibatches=2,
    )
    trainer = train.make_train(config)
    state = trainer.init(jax.random.PRNGKey(0))
    algorithm, hyper = trainer.algorithm, state.hyper
    _, batch, _ = algorithm.collect(state.agent, state.env, state.key, hyper)
    new_agent, metrics = jax.jit(algorithm.update)(
        state.agent, batch, state.key, hyper, 0.0
    )
    phases = natural_pg.make_natural_phases(config, trainer.spec, IDENTITY, False)
    advantages = phases.targets(state.agent, batch, hyper).advantages
    policy = networks.make_policy(trainer.spec, config.hidden)
    actor = state.agent.actor
    psi = compatible.score_rows(
        one_log_prob(policy),
        actor,
        batch.obs.reshape(-1, 4),
        batch.action.reshape(-1),
    )
    w = np.asarray(
        compatible.fit_compatible(
            psi, advantages.reshape(-1), ridge=float(hyper.cg_damping)
        ),
        np.float64,
    )
    psi = np.asarray(psi, np.float64)
    curvature = np.mean((psi @ w) ** 2) + float(hyper.cg_damping) * w @ w
    expected = np.sqrt(2 * float(hyper.max_kl) / curvature) * w
    moved = ravel_pytree(new_agent.actor)[0] - ravel_pytree(actor)[0]
    # float32 CG against a float32 SVD: equal to about 1 % of the step.
    error = np.linalg.norm(moved - expected) / np.linalg.norm(expected)
    assert error < 0.02, error
    np.testing.assert_allclose(metrics["xfx"], curvature, rtol=0.02)
    assert float(metrics["accepted"]) == 1.0
    assert 0 < float(metrics["kl"]) < 0.05
    # NPG's critic fit: the critic moved.
    assert not np.allclose(
        ravel_pytree(new_agent.critic)[0], ravel_pytree(state.agent.critic)[0]
    )


# Small settings under which nac solves each probe in the 40 updates given.
PROBE = dict(
    algo="nac",
    num_envs=16,
    num_steps=8,
    hidden=(16,),
    anneal_lr=False,
    critic_lr=0.01,
    kl_envs=16,
    total_timesteps=16 * 8 * 40,
)


@pytest.mark.parametrize(
    ("env_id", "obs", "overrides"),
    [
        ("ProbeOneStep-v0", jnp.ones((1, 1)), {}),
        ("ProbeOneStep-v0", jnp.ones((1, 1)), {"natural_step": "fixed"}),
        ("ProbeTwoStep-v0", jnp.array([[1.0, 0.0, 0.0]]), {"gamma": 0.5}),
    ],
)
def test_nac_learns_the_probes(env_id, obs, overrides):
    # ProbeTwoStep's reward comes a step after the action that earns it: the
    # advantages regressed on the compatible features must carry it back.
    config = TrainConfig(**PROBE, env=env_id, **overrides)
    trainer = train.make_train(config)
    keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(2))
    initial = jax.jit(jax.vmap(trainer.init))(keys)
    trained = jax.jit(jax.vmap(trainer.train, axis_name=parallel.SEEDS))(keys)
    policy = networks.make_policy(trainer.spec, config.hidden)

    def prob(states):
        return np.asarray(
            jax.vmap(lambda p: policy.apply(p, obs).probs())(states.agent.actor)
        )[:, 0, 1]

    assert np.all(np.abs(prob(initial) - 0.5) < 0.2), prob(initial)
    assert np.all(prob(trained) > 0.9), prob(trained)


def test_nac_refuses_an_entropy_bonus(tmp_path, capsys):
    with pytest.raises(ConfigError) as error:
        train.make_train(TrainConfig(algo="nac", ent_coef=0.01))
    assert error.value.flag == "--ent-coef"
    run_dir = tmp_path / "run"
    argv = ["--algo", "nac", "--num-envs", "4", "--total-timesteps", "32"]
    code, out, err = run_main(
        lambda a: cli.train_main(a, start_time=time.time()),
        [*argv, "--no-progress", "--ent-coef", "0.01", "--run-dir", str(run_dir)],
        capsys,
    )
    assert_one_line_error(code, err, "--ent-coef")
    assert not run_dir.exists() and out == ""
