"""Learning, not plumbing: trained policies get better.

The fast tests train NPG and TRPO on the probe environments (pgjax.probes),
whose right answers are known, and check the *policy*: it starts near
uniform and ends on the right action (ProbeOneStep), gives the credit for a
delayed reward to the action that earned it (ProbeTwoStep), and moves a
Gaussian's mean to the target (ProbeContinuous). Their critics are checked
elsewhere (tests/test_train.py); a policy that never moved would pass those.

The slow tests (``-m slow``, minutes each) run every algorithm's plain
CartPole command as a user would and require each of 3 seeds to evaluate at
the solved threshold of 475.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgjax import networks, parallel, train
from pgjax.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
SEEDS = (0, 1)

# Small settings, with the default trust region (max KL 0.01), under which
# NPG and TRPO solve each probe well within the 40 updates given.
PROBE = dict(
    num_envs=16,
    num_steps=8,
    hidden=(16,),
    anneal_lr=False,
    critic_lr=0.01,
    kl_envs=16,
    eval_episodes=8,
    total_timesteps=16 * 8 * 40,
)

ONE = jnp.ones((1, 1))  # the constant observation of ProbeOneStep/Continuous
S0 = jnp.array([[1.0, 0.0, 0.0]])  # ProbeTwoStep, step 0


def initial_and_trained(**overrides):
    """The policies of :data:`SEEDS` before and after training, and the
    trained states (leaves ``[S, ...]``)."""
    config = TrainConfig(**{**PROBE, **overrides})
    trainer = train.make_train(config)
    keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray(SEEDS))
    initial = jax.jit(jax.vmap(trainer.init))(keys)
    trained = jax.jit(jax.vmap(trainer.train, axis_name=parallel.SEEDS))(keys)
    assert np.all(np.asarray(trained.experience) >= config.total_timesteps)
    # The plain network: the trainer's may compute its products another way,
    # with the same values.
    policy = networks.make_policy(trainer.spec, config.hidden, config.activation)

    def distribution(states, obs):
        return jax.vmap(lambda p: policy.apply(p, obs))(states.agent.actor)

    return trainer, initial, trained, distribution


@pytest.mark.parametrize("algo", ["npg", "trpo"])
def test_policy_learns_the_rewarded_action(algo):
    _, initial, trained, distribution = initial_and_trained(
        algo=algo, env="ProbeOneStep-v0"
    )
    before = np.asarray(distribution(initial, ONE).probs())[:, 0, 1]
    after = np.asarray(distribution(trained, ONE).probs())[:, 0, 1]
    assert np.all(np.abs(before - 0.5) < 0.2), before  # starts near uniform
    assert np.all(after > 0.9), after


@pytest.mark.parametrize("algo", ["npg", "trpo"])
def test_policy_credits_the_first_action_for_a_delayed_reward(algo):
    # The reward comes a step after the action that earns it: only returns or
    # bootstrapped values carry it back, so this checks the advantages that
    # the natural gradient is taken of, not only the step itself.
    _, initial, trained, distribution = initial_and_trained(
        algo=algo, env="ProbeTwoStep-v0", gamma=0.5
    )
    before = np.asarray(distribution(initial, S0).probs())[:, 0, 1]
    after = np.asarray(distribution(trained, S0).probs())[:, 0, 1]
    assert np.all(np.abs(before - 0.5) < 0.2), before
    assert np.all(after > 0.9), after


@pytest.mark.parametrize("algo", ["npg", "trpo"])
def test_gaussian_policy_moves_to_the_target(algo):
    trainer, initial, trained, distribution = initial_and_trained(
        algo=algo, env="ProbeContinuous-v0"
    )
    before = np.asarray(distribution(initial, ONE).mode())[:, 0, 0]
    after = np.asarray(distribution(trained, ONE).mode())[:, 0, 0]
    assert np.all(np.abs(before - 0.5) > 0.3), before
    np.testing.assert_allclose(after, 0.5, atol=0.1)
    returns = jax.jit(jax.vmap(lambda s, k: trainer.evaluate(s, k, 4)))(
        trained, jax.random.split(jax.random.PRNGKey(9), len(SEEDS))
    )
    assert np.all(np.asarray(returns) > -0.01), returns


# ------------------------------------------------ the CartPole commands (slow)


@pytest.mark.slow
@pytest.mark.parametrize(
    "algo", ["a2c", "reinforce", "npg", "trpo", "nac", "ac-lambda"]
)
def test_plain_cartpole_command_solves_every_seed(algo, tmp_path):
    # The command a user runs, with its preset: no tuning flags.
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        str(ROOT / "scripts" / "train.py"),
        "--algo",
        algo,
        "--env",
        "CartPole-v1",
        "--num-seeds",
        "3",
        "--no-progress",
        "--run-dir",
        str(run_dir),
    ]
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=1800
    )
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    per_seed = summary["eval_return_per_seed"]
    assert len(per_seed) == 3, per_seed
    assert all(value >= 475.0 for value in per_seed), per_seed
