"""Tuned default hyperparameters per (algorithm, environment), like rl-zoo's.

The CLI resolves a run's settings as: :class:`~pgjax.config.TrainConfig`
defaults, then the preset for ``(algo, env)`` (or ``(algo, "*")``), then the
flags the user gave. Presets were chosen by grid sweeps over 4-8 seeds (run as one
vmapped program, tune-style); docs/performance.md lists what they reach.
"""

from __future__ import annotations

from typing import Any

#: TRPO's and NPG's brax/hopper settings (see the presets below).
_BRAX_HOPPER_NATURAL: dict[str, Any] = {
    "num_envs": 32,
    "num_steps": 64,
    "total_timesteps": 1_000_000,
    "max_kl": 0.01,
    "cg_iters": 25,
    "critic_epochs": 20,
    "critic_minibatches": 16,
    "critic_lr": 0.001,
    "value_norm": True,
    "normalize_obs": True,
}

#: TRPO and NPG on brax's ant and halfcheetah: hopper's settings, from a
#: Gaussian of std e^-2 (see the presets below).
_BRAX_NARROW_NATURAL: dict[str, Any] = {**_BRAX_HOPPER_NATURAL, "init_log_std": -2.0}

#: TRPO's Pendulum settings; NPG's anneal its step too (see the presets below).
_PENDULUM_NATURAL: dict[str, Any] = {
    "num_steps": 64,
    "total_timesteps": 4_000_000,
    "gamma": 0.95,
    "init_log_std": -0.5,
    "max_kl": 0.01,
    "gae_lambda": 0.9,
    "critic_epochs": 5,
    "critic_lr": 0.01,
    "reward_scale": 0.1,
    "normalize_obs": True,
}

#: A2C's brax/hopper settings (see the presets below).
_BRAX_HOPPER_A2C: dict[str, Any] = {
    "num_envs": 16,
    "num_steps": 8,
    "critic_minibatches": 1,
    "total_timesteps": 1_000_000,
    "lr": 0.0003,
    "critic_lr": 0.001,
    "value_norm": True,
    "normalize_obs": True,
}

#: A2C on brax's ant and halfcheetah: hopper's settings, from a Gaussian of
#: std e^-2 (see the presets below).
_BRAX_NARROW_A2C: dict[str, Any] = {**_BRAX_HOPPER_A2C, "init_log_std": -2.0}

#: NPG on MinAtar's [10, 10, C] frames (the CNN torso: 16 3×3 filters, then
#: 128 ReLU units, as in MinAtar's reference agents). 64 envs × 32 steps give
#: 4,900 natural steps in 10 M env steps (128 × 32 reached 15.4 on Breakout
#: after 3 M steps where 64 × 32 reached 19.1; 32 × 32, 8.5). The Fisher is
#: measured on 16 of the 64 envs, a quarter of the rows (see --kl-envs).
#: 10 M steps, as gymnax's published PPO agents train for.
_MINATAR_NPG: dict[str, Any] = {
    "num_envs": 64,
    "num_steps": 32,
    "hidden": (128,),
    "activation": "relu",
    "max_kl": 0.02,
    "kl_envs": 16,
    "total_timesteps": 10_000_000,
}

PRESETS: dict[tuple[str, str], dict[str, Any]] = {
    # The estimate sums each episode's terms (divided by episodes, not steps):
    # its norm is in the tens, so the other algorithms' clip at 0.5 would cut
    # every update to a fixed length; Adam already normalises the step.
    ("reinforce", "*"): {"num_envs": 64, "max_grad_norm": 100.0},
    # AC(λ) is online: one step of every env per update (it refuses more),
    # plain gradient steps of the sizes that suit them, not Adam's 3e-4.
    ("ac-lambda", "*"): {
        "num_envs": 32,
        "num_steps": 1,
        "lr": 0.01,
        "critic_lr": 0.01,
        "gae_lambda": 0.9,
    },
    # 8 of 8 seeds evaluate at 500 (one 499) after 0.5 M steps; most reach
    # 475 by 0.2 M.
    ("ac-lambda", "CartPole-v1"): {"total_timesteps": 500_000},
    ("npg", "*"): {"num_envs": 256, "num_steps": 32},
    ("trpo", "*"): {"num_envs": 256, "num_steps": 32},
    ("nac", "*"): {"num_envs": 256, "num_steps": 32},
    # Large-batch A2C on CartPole: plain Adam at a moderate step, with the
    # critic fitted in 4 minibatches per rollout (4 Adam steps for the FLOPs of
    # one) so that it keeps up with the actor. A critic taking one step per
    # rollout lags the actor and lets seeds collapse to pushing one way; a
    # KL-adaptive actor step keeps moving the policy once every episode
    # reaches 500 and the advantages carry no signal.
    # 1024 envs rather than 4096: the return reaches 475 after about 0.5 M
    # steps instead of 2.1 M, sooner in wall time despite the smaller batch's
    # lower steps/s. The 3 M steps leave `--num-envs 4096` the steps it needs.
    ("a2c", "CartPole-v1"): {
        "num_envs": 1024,
        "num_steps": 4,
        "total_timesteps": 3_000_000,
        "lr": 0.001,
        "critic_lr": 0.01,
        "critic_minibatches": 4,
        "gamma": 0.999,
        "ent_coef": 0.003,
        "normalize_obs": True,
    },
    # The critic in 4 minibatches here too: with a single joint critic step
    # some seeds of Acrobot and Pendulum fail to solve.
    ("a2c", "Acrobot-v1"): {
        "num_envs": 64,
        "num_steps": 16,
        "critic_minibatches": 4,
        "total_timesteps": 1_500_000,
        "lr": 0.003,
        "critic_lr": 0.01,
        "ent_coef": 0.01,
        "normalize_obs": True,
    },
    # PopArt instead of a hand-set reward scale: Pendulum's returns move from
    # about −1500 to −150 as it learns, and the critic tracks that scale where
    # a fixed reward_scale suits only some seeds.
    # γ 0.95, as REINFORCE's and NPG's: seeds 0-14 in one program all reach
    # −200 (mean −156.5); at γ 0.99, 14 of 15 (−188.9), and seeds 0-4, 10-14
    # and 15-19 in three programs 12 of 15, a failed seed's policy settling
    # at −720 without swinging up while its entropy falls to 0.
    ("a2c", "Pendulum-v1"): {
        "num_envs": 64,
        "num_steps": 64,
        "critic_minibatches": 4,
        "total_timesteps": 3_000_000,
        "gamma": 0.95,
        "lr": 0.003,
        "critic_lr": 0.03,
        "value_norm": True,
        "target_kl": 0.01,
        "normalize_obs": True,
    },
    # MountainCar's only reward is −1 per step until the goal, which random
    # actions never reach in 200 steps. With observations normalised, the
    # critic's errors over the (then unit-scale) position and velocity give
    # the advantages a direction, and small batches take enough updates to
    # follow it to the goal: the recipe rl-baselines3-zoo uses (normalize:
    # true) for A2C and PPO. The same settings reach the goal of the
    # continuous task, whose action cost otherwise teaches standing still.
    ("a2c", "MountainCar-v0"): {
        "num_envs": 64,
        "num_steps": 16,
        "critic_minibatches": 4,
        "total_timesteps": 1_000_000,
        "lr": 0.001,
        "critic_lr": 0.003,
        "normalize_obs": True,
    },
    ("a2c", "MountainCarContinuous-v0"): {
        "num_envs": 64,
        "num_steps": 16,
        "critic_minibatches": 4,
        "total_timesteps": 1_000_000,
        "lr": 0.001,
        "critic_lr": 0.003,
        "normalize_obs": True,
    },
    # Natural steps on MountainCar and Acrobot: normalised observations and
    # small batches (64 × 16), so a million steps give 1,000 updates, each
    # within a KL of 0.02; 256 × 32 leaves too few updates to reach the goal.
    # The critic fitted as TRPO's is (10 epochs of 8 minibatches): on seeds
    # 10-19, 9 of 10 reach −110 (mean −101.8), against 6 of 10 (mean −126.3;
    # two seeds without a single success) with 2 epochs of 4.
    ("npg", "MountainCar-v0"): {
        "num_envs": 64,
        "num_steps": 16,
        "total_timesteps": 1_000_000,
        "max_kl": 0.02,
        "critic_epochs": 10,
        "critic_minibatches": 8,
        "normalize_obs": True,
    },
    # Whole-episode returns less the leave-one-out mean: a batch in which no
    # episode reaches the goal (all −500) gets weights of exactly 0, so the
    # policy keeps its uniform play until one does. Reward-to-go less a
    # learned V turns such a batch's critic residuals into full-size steps of
    # noise that can carry the policy away from the play that finds the goal:
    # on seeds 100-115, 4 of 16 end at −500 that way, none with this preset
    # (16 of 16 at −76 to −86).
    ("reinforce", "Acrobot-v1"): {
        "total_timesteps": 3_000_000,
        "lr": 0.005,
        "returns": "total",
        "baseline": "mean",
        "normalize_obs": True,
    },
    # Pendulum's dense reward over 200-step episodes: small batches (16
    # episodes) and many updates; 30 M steps run in about 3 minutes.
    # γ 0.95 (rl-baselines3-zoo's PPO takes 0.9 here): Pendulum's reward is
    # local, and a shorter horizon cuts the variance of the reward-to-go. In
    # one program of 5 seeds × lr 0.001/0.003 × γ, every seed at γ 0.95 and
    # 0.9 evaluates between −145 and −185; at 0.99, 5 of 10 end at −700 to
    # −1,050, still climbing slowly after 30 M steps.
    ("reinforce", "Pendulum-v1"): {
        "num_envs": 16,
        "total_timesteps": 30_000_000,
        "gamma": 0.95,
        "lr": 0.001,
        "critic_lr": 0.003,
        "normalize_obs": True,
    },
    ("npg", "Acrobot-v1"): {
        "num_envs": 64,
        "num_steps": 16,
        "total_timesteps": 1_000_000,
        "max_kl": 0.02,
        "normalize_obs": True,
    },
    # TRPO's line search keeps only steps whose surrogate improves, which
    # needs advantages from a critic fitted hard (as rl-baselines3-zoo's 20
    # critic updates per batch): 10 epochs of 8 minibatches. With 2 × 4,
    # 2 of 5 seeds reach the goal; with 10 × 8, 5 of 5 (one at −121).
    ("trpo", "MountainCar-v0"): {
        "num_envs": 64,
        "num_steps": 16,
        "total_timesteps": 1_000_000,
        "max_kl": 0.02,
        "critic_epochs": 10,
        "critic_minibatches": 8,
        "normalize_obs": True,
    },
    # The continuous MountainCar with natural steps: γ = 0.999. At 0.99 the
    # goal's +100, a few hundred steps away, is discounted below the action
    # cost of getting there, and most seeds settle on standing still.
    ("npg", "MountainCarContinuous-v0"): {
        "total_timesteps": 3_000_000,
        "gamma": 0.999,
        "critic_epochs": 10,
        "critic_minibatches": 8,
        "normalize_obs": True,
    },
    # And a critic fitted hard, as on MountainCar: 10 epochs of 8 minibatches
    # bring 5 of 5 seeds to the goal (95.3 ± 0.4), 2 × 4 only 3 of 5.
    ("trpo", "MountainCarContinuous-v0"): {
        "total_timesteps": 3_000_000,
        "gamma": 0.999,
        "critic_epochs": 10,
        "critic_minibatches": 8,
        "normalize_obs": True,
    },
    ("trpo", "Acrobot-v1"): {
        "num_envs": 64,
        "num_steps": 16,
        "total_timesteps": 1_000_000,
        "max_kl": 0.02,
        "normalize_obs": True,
    },
    # The policy gradient is a sum over each episode's steps divided by the
    # episodes (--pg-normalizer episodes): its norm is 3-20 here, so the
    # default clip of 0.5 would cut every update to the same length; 100 only
    # guards against outliers. With it lr 0.005 brings each of 16 seeds to an
    # eval return ≥ 475; clipped at 0.5, no lr in 0.01-0.03 does.
    ("reinforce", "CartPole-v1"): {
        "num_envs": 64,
        "total_timesteps": 1_000_000,
        "lr": 0.005,
        "critic_lr": 0.01,
        "max_grad_norm": 100.0,
    },
    # max KL 0.02: with 0.03 runs can fall back from 500 mid-run; 0.01 is as
    # reliable but reaches 475 later.
    ("npg", "CartPole-v1"): {
        "total_timesteps": 1_000_000,
        "max_kl": 0.02,
        "critic_lr": 0.01,
    },
    # max KL 0.02: with 0.03 some seeds fall back after reaching 475.
    ("trpo", "CartPole-v1"): {
        "total_timesteps": 1_000_000,
        "max_kl": 0.02,
        "critic_lr": 0.01,
    },
    # NPG's CartPole settings: the compatible fit's empirical Fisher takes
    # the same KL-scaled step size.
    ("nac", "CartPole-v1"): {
        "total_timesteps": 1_000_000,
        "max_kl": 0.02,
        "critic_lr": 0.01,
    },
    # TRPO's Pendulum settings, with the step annealed (--anneal-kl). Over
    # seeds 0-4 and 10-24, 17 of 20 seeds reach −200 (mean −195); the
    # earlier preset (λ 0.95, 2 critic epochs, PopArt, no annealing), 9 of 20
    # (mean −285). TRPO's settings without annealing: −208.1 on seeds 10-14.
    # γ 0.95, as REINFORCE's: in one program per block of seeds, 14 of 15
    # (seeds 0-4 and 10-19) reach −200 (mean −166), against 11 of 15 at
    # γ 0.99 (mean −212). (Failures at 0.99 are chaotic: they move between
    # seeds from one program to another.)
    # The Gaussian starts at std e^-0.5 = 0.61: seeds 0-4, 10-14 and 15-19 all
    # reach −200 (means −157.6, −161.5, −163.8); from std 1, 14 of 15, and
    # from e^-1 seed 1 of 0-4 ends at −220.
    ("npg", "Pendulum-v1"): {**_PENDULUM_NATURAL, "anneal_kl": True},
    # GAE λ 0.9 and 5 critic epochs: advantages with less variance, from a
    # critic that keeps up; λ 0.95 with 2 epochs leaves some seeds short of −250.
    # γ 0.95 and a Gaussian from std e^-0.5, as NPG's. TRPO's Pendulum runs
    # are chaotic (a run's rounding moves with the program that holds it):
    # seeds 0-4 evaluate at −194.1 alone (4 of 5 reach −200) and −170.8
    # beside γ 0.99 in one program (5 of 5); seeds 10-14 at −189.1 (4 of 5).
    # At γ 0.99 from std 1, seeds 0-4 evaluate at −236.1 alone (1 of 5) and
    # −167.3 beside γ 0.95; γ 0.95 from std 1, −187.7 (3 of 5); γ 0.99 from
    # e^-0.5, −205.7 (2 of 5).
    ("trpo", "Pendulum-v1"): _PENDULUM_NATURAL,
    # brax's inverted_pendulum (pgjax[brax]): +1 a step for up to 1000 steps.
    # Rollouts of 64 steps, so that γ = 0.99 values see far enough ahead (16
    # learn slowly), PopArt for returns that grow from ~20 to ~100 discounted.
    # 8 of 8 seeds evaluate at 1000: a2c after 0.5 M steps (the return
    # reaches 1000 near 0.25 M), npg and trpo after 0.3 M (near 0.1 M).
    ("a2c", "brax/inverted_pendulum"): {
        "num_envs": 64,
        "num_steps": 64,
        "critic_minibatches": 4,
        "total_timesteps": 500_000,
        "lr": 0.003,
        "critic_lr": 0.01,
        "value_norm": True,
        "normalize_obs": True,
    },
    ("npg", "brax/inverted_pendulum"): {
        "num_envs": 64,
        "num_steps": 64,
        "total_timesteps": 300_000,
        "max_kl": 0.01,
        "critic_lr": 0.01,
        "value_norm": True,
        "normalize_obs": True,
    },
    ("trpo", "brax/inverted_pendulum"): {
        "num_envs": 64,
        "num_steps": 64,
        "total_timesteps": 300_000,
        "max_kl": 0.01,
        "critic_lr": 0.01,
        "value_norm": True,
        "normalize_obs": True,
    },
    # brax's hopper (MuJoCo's hopper.xml, Gym's reward: forward velocity + 1
    # a step alive − 0.001·|a|², ended when it falls). TRPO and NPG take
    # rl-baselines3-zoo's TRPO settings for MuJoCo: 2,048 steps a batch (32 ×
    # 64), 20 critic epochs of 16 minibatches, 25 CG iterations, KL 0.01. The
    # zoo also normalises rewards; here PopArt scales the critic's targets,
    # which grow to a few hundred: on seeds 10-11 TRPO evaluates at 2,527
    # with it and 1,908 without, after 1 M steps. A2C takes many small
    # batches (16 × 8, 7,800 updates in 1 M steps): with 32 × 32 its
    # policy's std stayed near 1 and both seeds evaluated near 635.
    # Unlike ant and halfcheetah, hopper starts at std 1: from e^-2, TRPO's
    # 5 seeds returned 250-1,240 after 0.5 M steps (1,600-2,000 from std 1).
    ("a2c", "brax/hopper"): _BRAX_HOPPER_A2C,
    ("npg", "brax/hopper"): _BRAX_HOPPER_NATURAL,
    ("trpo", "brax/hopper"): _BRAX_HOPPER_NATURAL,
    # brax's ant (Gym Ant's reward: forward velocity + 1 a step alive − 0.5·|a|²,
    # ended when the torso leaves 0.2-1.0 m) takes hopper's settings, which
    # are the zoo's TRPO settings for MuJoCo's Ant too.
    # A2C starts its Gaussian at std e^-2 = 0.14 on ant, as rl-baselines3-zoo's
    # A2C does on PyBullet's Ant (log_std_init -2, with gSDE): at std 1 the control
    # cost outweighs the reward for staying up, so short episodes pay best,
    # and the policy learned to fall within 15-25 steps (5 seeds, 1 M steps:
    # eval 41.6). 2 seeds, 0.3 M steps: -0.5 evaluates at 70, -1 at 271, -2
    # at 1,220 (its training episodes by then last all 1000 steps).
    ("a2c", "brax/ant"): _BRAX_NARROW_A2C,
    # TRPO and NPG too: from std 1, TRPO's 5 seeds returned 30-50 until 0.5 M
    # steps and evaluated at 1,210 after 1 M; from e^-2, 1,622 (each seed
    # 1,460-1,700, training return 1,260-1,560).
    ("npg", "brax/ant"): _BRAX_NARROW_NATURAL,
    ("trpo", "brax/ant"): _BRAX_NARROW_NATURAL,
    # brax's halfcheetah (Gym HalfCheetah's reward: forward velocity −
    # 0.1·|a|², never ends before the 1000-step limit) takes hopper's
    # settings too: the zoo's TRPO settings for MuJoCo are the same on
    # HalfCheetah.
    # A2C starts at ant's log std -2: from std 1, seed 0's training return
    # stayed between −400 and −110 for 0.35 M steps while its entropy fell
    # only from 8.5 to 8.1.
    ("a2c", "brax/halfcheetah"): _BRAX_NARROW_A2C,
    # TRPO and NPG too: from std 1, TRPO's 5 seeds returned 430 after 0.3 M
    # steps and 1,670 after 1 M; from e^-2, 2 seeds 2,740-3,200 after 0.3 M.
    ("npg", "brax/halfcheetah"): _BRAX_NARROW_NATURAL,
    ("trpo", "brax/halfcheetah"): _BRAX_NARROW_NATURAL,
    # Asterix and SpaceInvaders take the PPO reference's entropy bonus (0.01),
    # as Freeway does: single seeds without it learned (evaluated at 40.8 and
    # 145) while their entropy fell to 0.06 and 0.01, and Freeway showed that
    # 3 of 5 seeds can turn deterministic where one did not. With it, Asterix's
    # 5 seeds keep an entropy of 0.13-0.37 and evaluate at 43-63.
    **{
        ("npg", game): {**_MINATAR_NPG, "ent_coef": 0.01}
        for game in ("Asterix-MinAtar", "SpaceInvaders-MinAtar")
    },
    # Breakout takes a larger entropy bonus than the PPO reference's 0.01:
    # with none or with 0.01, 2-3 of 5 seeds settle within the first 1 M
    # steps on a nearly deterministic play (entropy < 0.05) that scores 6.5-7
    # a game, and never leave it. 0.1 keeps the entropy near 0.6 and no seed
    # settles: 5 seeds evaluate at 86.6, 24.5, 17.4, 24.2 and 23.5 after 10 M
    # steps (with none: 12.4 ± 7.0). --kl-guard 2 shrinks any step whose
    # measured KL exceeds 2 × max-kl: as the policy sharpens the quadratic
    # model ½·xᵀFx stops measuring the step (unguarded, two seeds collapsed
    # to return 0 after steps of 150× and 2000× max-kl). --anneal-kl shrinks
    # the steps to 0 by the end, so that the final policy settles and its
    # evaluation matches its training return.
    ("npg", "Breakout-MinAtar"): {
        **_MINATAR_NPG,
        "ent_coef": 0.1,
        "kl_guard": 2.0,
        "anneal_kl": True,
    },
    # Freeway rewards each crossing, and "always up" already earns ~20. With
    # 64 envs the natural steps drove the policy there for good (entropy
    # 1e-22 by 0.6 M steps, return 17 at 3 M); 128 envs' larger batches keep
    # it stochastic (entropy ~0.015) and reached 41 at 2.9 M, still rising.
    # Yet 3 of 5 seeds of that preset still collapsed (entropy < 2e-6 by
    # 0.4 M steps, gradient 5e-15: nothing left to learn from). The entropy
    # bonus of the PPO reference (0.01) keeps every seed's entropy above 0.1
    # through 0.5 M steps (5 seeds; 0.003 keeps it above 0.045). 5 seeds of
    # this preset: every training return past 58 by 1.6 M steps, evaluation
    # 61.3 ± 1.6 at 10 M (each seed 58.6-63.2).
    ("npg", "Freeway-MinAtar"): {
        **_MINATAR_NPG,
        "num_envs": 128,
        "kl_envs": 32,
        "ent_coef": 0.01,
    },
}


def preset(algo: str, env: str) -> dict[str, Any]:
    """The tuned overrides for ``algo`` on ``env`` (empty when none)."""
    return {**PRESETS.get((algo, "*"), {}), **PRESETS.get((algo, env), {})}
