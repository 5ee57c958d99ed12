"""Tuned default hyperparameters per (algorithm, environment), like rl-zoo's.

The CLI resolves a run's settings as: :class:`~pgjax.config.TrainConfig`
defaults, then the preset for ``(algo, env)`` (or ``(algo, "*")``), then the
flags the user gave. Each preset was tuned on a 2-core CPU; docs/performance.md
lists what it reaches.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[tuple[str, str], dict[str, Any]] = {
    ("a2c", "*"): {},
    # Large-batch A2C is unstable on CartPole with plain Adam; what made it
    # reliable here: short rollouts (many updates), a KL-adaptive actor step,
    # a fast critic, a long horizon (γ = 0.999) and normalised observations.
    ("a2c", "CartPole-v1"): {
        "num_steps": 4,
        "total_timesteps": 10_000_000,
        "lr": 0.05,
        "critic_lr": 0.1,
        "target_kl": 0.01,
        "gamma": 0.999,
        "ent_coef": 0.003,
        "normalize_obs": True,
    },
    ("reinforce", "*"): {"num_envs": 256},
    ("reinforce", "CartPole-v1"): {},
    ("a2c", "Pendulum-v1"): {},
    ("a2c", "Acrobot-v1"): {},
}


def preset(algo: str, env: str) -> dict[str, Any]:
    """The tuned overrides for ``algo`` on ``env`` (empty when none)."""
    return {**PRESETS.get((algo, "*"), {}), **PRESETS.get((algo, env), {})}
