"""Training configuration: one typed dataclass whose field docs become ``--help``.

Fields split in two kinds:

* static fields fix shapes and code paths and are compile-time constants
  (``num_envs``, ``num_steps``, ``hidden``, ``baseline``, ``cg_iters``, ...);
* numeric hyperparameters that users sweep are copied into :class:`Hyperparams`,
  a pytree of traced scalars, so seeds and sweeps are a ``vmap`` over one program.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from pgjax.distributions import LOG_STD_MAX, LOG_STD_MIN


def _field(default: Any, help: str, **kwargs) -> Any:
    return dataclasses.field(default=default, metadata={"help": help, **kwargs})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run."""

    algo: str = _field("a2c", "algorithm: a2c, ac-lambda, reinforce, npg, trpo or nac")
    env: str = _field(
        "CartPole-v1",
        "environment id: a gymnax id, suite/name (navix/..., brax/...), or "
        "file.py:id or "
        "module:id, whose module registers id (docs/environments.md)",
    )
    num_envs: int = _field(4096, "parallel environments stepped with vmap")
    num_steps: int = _field(
        16,
        "rollout length per update (a2c/npg/trpo; ac-lambda takes 1; reinforce runs "
        "whole episodes)",
    )
    total_timesteps: int = _field(
        1_000_000, "environment steps of experience to train for, per seed"
    )
    seed: int = _field(0, "first random seed")
    num_seeds: int = _field(1, "independent seeds trained together by vmap")

    # Optimisation (traced: sweepable).
    lr: float = _field(3e-4, "actor learning rate (Adam)")
    critic_lr: float = _field(1e-3, "critic learning rate (Adam)")
    gamma: float = _field(0.99, "discount factor γ in (0, 1]")
    gae_lambda: float = _field(0.95, "GAE λ in [0, 1]: 0 = TD error, 1 = MC return")
    ent_coef: float = _field(0.0, "entropy bonus coefficient")
    vf_coef: float = _field(
        0.5, "value-loss coefficient (a2c, when its critic step is joint)"
    )
    max_grad_norm: float = _field(0.5, "global gradient-norm clip")
    reward_scale: float = _field(1.0, "rewards are multiplied by this for learning")
    target_kl: float = _field(
        0.0,
        "adapt the actor learning rate so each update's KL stays near this (0 = off)",
    )
    anneal_lr: bool = _field(True, "decay learning rates linearly to 0 over training")
    normalize_advantages: bool = _field(
        True, "standardise advantages per batch (mean 0, std 1)"
    )
    normalize_obs: bool = _field(
        False, "normalise observations with running statistics shared by all envs"
    )
    value_norm: bool = _field(
        False,
        "PopArt: the critic learns values standardised by running statistics of "
        "its targets, its output layer rescaled when they change (a2c with "
        "--critic v, npg, trpo)",
    )

    # Networks.
    hidden: tuple[int, ...] = _field((64, 64), "hidden widths of both MLPs, e.g. 64,64")
    activation: str = _field("tanh", "hidden activation: tanh, relu, elu, gelu, silu")
    network: str = _field(
        "auto",
        "torso of both networks: mlp (on the flattened observation), cnn (a 3×3 "
        "convolution with 16 filters before the MLP, for image observations "
        "[H, W, C]) or auto (cnn for images, else mlp)",
    )
    init_log_std: float = _field(
        0.0,
        "initial log standard deviation of a continuous policy's Gaussian, the "
        "same for every action dimension (learned from there; e.g. -1 starts at "
        "std 0.37)",
    )

    # REINFORCE.
    returns: str = _field(
        "reward-to-go",
        "reinforce weights: total (whole-episode return) or reward-to-go",
    )
    baseline: str = _field(
        "value",
        "reinforce baseline: none, mean (mean return of the batch's other "
        "episodes) or value (learned V)",
    )
    pg_normalizer: str = _field(
        "episodes",
        "reinforce: what the batch's sum Σ_episodes Σ_t ∇log π·Ĝ_t is divided by: "
        "episodes (the number of episodes, a constant: Williams' unbiased "
        "estimate of ∇J) or steps (the number of valid steps, a random count "
        "that correlates with the gradient: a ratio estimator biased by O(1/N) "
        "for N episodes, kept for comparison)",
    )
    discounted_gradient: bool = _field(
        False,
        "reinforce: weight step t of each episode by γ^t, which makes the "
        "reward-to-go estimator the exact gradient of the discounted objective "
        "E[Σ_t γ^t r_t] (--returns total already is). Without it (the usual "
        "form) the estimator is not the gradient of any objective in general "
        "when γ < 1 (Nota & Thomas 2020)",
    )

    # A2C.
    critic: str = _field(
        "v",
        "a2c critic: v (state value, GAE), q (action value) or linear-q (Q linear "
        "in one_hot(a) ⊗ [obs, 1], learned by TD(0); the actor weighted by Q)",
    )

    # Natural gradient / TRPO.
    max_kl: float = _field(0.01, "trust region: KL(old‖new) allowed per update")
    cg_iters: int = _field(10, "conjugate-gradient iterations for F⁻¹g")
    cg_damping: float = _field(0.1, "damping added to the Fisher matrix")
    natural_step: str = _field(
        "kl",
        "npg/nac step: kl (scale the natural direction x so that ½·xᵀFx = max-kl) "
        "or fixed (θ += natural-lr·x, the textbook step)",
    )
    natural_lr: float = _field(
        0.1, "η of the fixed natural step θ += η·F⁻¹g (--natural-step fixed)"
    )
    backtrack_ratio: float = _field(
        0.8, "trpo line-search (and npg/nac --kl-guard) step shrink factor"
    )
    max_backtracks: int = _field(
        10, "trpo line-search (and npg/nac --kl-guard) attempts"
    )
    kl_guard: float = _field(
        0.0,
        "npg/nac: shrink the natural step by --backtrack-ratio until the KL it "
        "causes, measured on the KL envs, is at most kl-guard × max-kl, keeping "
        "the policy when no fraction passes; guards against steps whose real "
        "KL far exceeds the quadratic model's once the policy is nearly "
        "deterministic (0 = off: the step as is)",
    )
    anneal_kl: bool = _field(
        False,
        "npg/trpo/nac: shrink the step linearly to 0 over training, as "
        "--anneal-lr does a learning rate: max-kl·(1 − progress) "
        "(natural-lr·(1 − progress) with --natural-step fixed), so that a "
        "nearly deterministic policy settles instead of moving by max-kl every "
        "update (progress counts toward --total-timesteps: resuming with more "
        "steps widens the step again)",
    )
    critic_epochs: int = _field(
        0,
        "critic regression epochs (passes over the batch) per update "
        "(a2c, npg, trpo, nac; 0 = the algorithm's default: a2c 1, npg/trpo/nac 2)",
    )
    critic_minibatches: int = _field(
        0,
        "minibatches (groups of shuffled envs) per critic epoch, one Adam step "
        "each; must divide num_envs (0 = the algorithm's default: a2c 1, "
        "npg/trpo/nac 4). a2c with 1 epoch of 1 minibatch takes its one critic "
        "step in the actor's pass; anything more fits the critic after the "
        "actor's step",
    )

    # Host loop.
    updates_per_chunk: int = _field(
        0,
        "updates per compiled chunk between host syncs and checkpoints (0 = "
        "automatic, about 20 per run; the resolved value is stored in config.json "
        "and kept by --resume)",
    )
    block_rows: int = _field(
        -1,
        "rows per block of the update's forward/backward passes (-1 = auto: 2048 "
        "on CPU, whole batch on accelerators; 0 = whole batch)",
    )
    devices: int = _field(
        0,
        "local devices of each process the run uses (0 = auto: on a CPU, one "
        "JAX device per core, as many as the batch keeps busy enough to gain "
        "from the split; on accelerators, all). Seeds are split over the "
        "devices first, envs over the rest; results do not depend on it",
    )
    kl_envs: int = _field(
        512,
        "envs whose observations estimate each update's KL: a2c's target-kl and "
        "kl metric, npg/trpo's Fisher-vector products and npg's kl metric (trpo "
        "reports its line search's KL over the whole batch)",
    )
    eval_episodes: int = _field(128, "episodes per seed for the final evaluation")
    checkpoint_every: int = _field(
        0,
        "updates between checkpoints of the whole training state, taken at the "
        "first chunk boundary after each interval (0 = automatic: past each tenth "
        "of total-timesteps, at most once a minute; -1 = only at the end and on "
        "Ctrl-C/SIGTERM)",
    )
    keep_checkpoints: int = _field(
        3, "newest checkpoints kept in <run-dir>/checkpoints (older are deleted)"
    )
    tensorboard: bool = _field(
        False,
        "also log the metrics for TensorBoard in <run-dir>/tensorboard (needs "
        "tensorboardX: pip install 'pgjax[tensorboard]')",
    )


#: ``(critic_epochs, critic_minibatches)`` each algorithm uses when they are 0.
CRITIC_FIT_DEFAULTS = {"a2c": (1, 1), "npg": (2, 4), "trpo": (2, 4), "nac": (2, 4)}


def critic_fit(config: TrainConfig) -> tuple[int, int]:
    """``(epochs, minibatches)`` of the critic fit, 0 resolved for the algorithm."""
    epochs, minibatches = CRITIC_FIT_DEFAULTS.get(config.algo, (1, 1))
    return config.critic_epochs or epochs, config.critic_minibatches or minibatches


def resolve_algorithm_defaults(config: TrainConfig) -> TrainConfig:
    """``config`` with the algorithm-dependent zeros (:func:`critic_fit`) made
    explicit, so that config.json says what ran."""
    epochs, minibatches = critic_fit(config)
    return dataclasses.replace(
        config, critic_epochs=epochs, critic_minibatches=minibatches
    )


# Fields copied into Hyperparams (traced scalars that vmap can sweep).
SWEEPABLE = (
    "lr",
    "critic_lr",
    "gamma",
    "gae_lambda",
    "ent_coef",
    "vf_coef",
    "max_grad_norm",
    "reward_scale",
    "target_kl",
    "max_kl",
    "cg_damping",
    "backtrack_ratio",
    "natural_lr",
)


@struct.dataclass
class Hyperparams:
    """Numeric hyperparameters as traced float32 scalars (or ``[S]`` when swept)."""

    lr: jax.Array
    critic_lr: jax.Array
    gamma: jax.Array
    gae_lambda: jax.Array
    ent_coef: jax.Array
    vf_coef: jax.Array
    max_grad_norm: jax.Array
    reward_scale: jax.Array
    target_kl: jax.Array
    max_kl: jax.Array
    cg_damping: jax.Array
    backtrack_ratio: jax.Array
    natural_lr: jax.Array

    @classmethod
    def from_config(cls, config: TrainConfig) -> Hyperparams:
        return cls(
            **{
                name: jnp.asarray(getattr(config, name), jnp.float32)
                for name in SWEEPABLE
            }
        )


class ConfigError(ValueError):
    """A setting is invalid; ``flag`` names it as on the command line."""

    def __init__(self, flag: str, message: str):
        super().__init__(f"{flag}: {message}")
        self.flag = flag


def flag_name(field_name: str) -> str:
    """``num_envs`` → ``--num-envs``."""
    return "--" + field_name.replace("_", "-")


_CHOICES = {
    "returns": ("total", "reward-to-go"),
    "baseline": ("none", "mean", "value"),
    "critic": ("v", "q", "linear-q"),
    "natural_step": ("kl", "fixed"),
    "pg_normalizer": ("episodes", "steps"),
    "activation": ("tanh", "relu", "elu", "gelu", "silu"),
    "network": ("auto", "mlp", "cnn"),
}


def validate(config: TrainConfig) -> None:
    """Checks every setting that can be checked without building anything.

    Raises:
      ConfigError: naming the first invalid flag.
    """
    need = _requirement(config)
    _check_sizes(config, need)
    _check_critic(config, need)
    _check_numbers(config, need)
    _check_algorithm_flags(config, need)
    need(
        len(config.hidden) > 0 and all(w > 0 for w in config.hidden),
        "hidden",
        "one or more positive widths, e.g. 64,64",
    )
    for name, choices in _CHOICES.items():
        need(getattr(config, name) in choices, name, "one of " + ", ".join(choices))


_Need = Callable[[bool, str, str], None]


def _requirement(config: TrainConfig) -> _Need:
    """``need(ok, name, what)``: raise :class:`ConfigError` for ``name`` unless
    ``ok``, quoting the value ``config`` holds."""

    def need(ok: bool, name: str, what: str) -> None:
        if not ok:
            value = getattr(config, name)
            raise ConfigError(flag_name(name), f"must be {what}, got {value!r}")

    return need


def _check_sizes(config: TrainConfig, need: _Need) -> None:
    """Counts, sizes and the integer-valued switches."""
    for name in (
        "num_envs",
        "num_steps",
        "num_seeds",
        "cg_iters",
        "eval_episodes",
        "kl_envs",
    ):
        need(getattr(config, name) > 0, name, "a positive integer")
    # Counters are int32 on device: one update's steps must fit, and so must
    # the total.
    need(config.num_envs <= 2**24, "num_envs", "at most 2**24 (16,777,216)")
    need(
        config.num_envs * config.num_steps <= 2**31 - 1,
        "num_steps",
        "small enough that num_envs × num_steps < 2**31",
    )
    need(
        0 < config.total_timesteps <= 2**31 - 1,
        "total_timesteps",
        "a positive integer below 2**31",
    )
    need(config.seed >= 0, "seed", "a non-negative integer")
    need(config.updates_per_chunk >= 0, "updates_per_chunk", ">= 0 (0 = automatic)")
    need(config.block_rows >= -1, "block_rows", ">= -1 (-1 = auto)")
    need(config.devices >= 0, "devices", ">= 0 (0 = auto)")
    need(config.checkpoint_every >= -1, "checkpoint_every", ">= -1 (0 = automatic)")
    need(config.keep_checkpoints > 0, "keep_checkpoints", "a positive integer")
    need(config.max_backtracks > 0, "max_backtracks", "a positive integer")
    need(config.critic_epochs >= 0, "critic_epochs", ">= 0 (0 = the default)")
    need(
        config.critic_minibatches >= 0,
        "critic_minibatches",
        ">= 0 (0 = the default)",
    )


def _check_critic(config: TrainConfig, need: _Need) -> None:
    """The critic's fit and value normalisation against the algorithm."""
    if config.algo in CRITIC_FIT_DEFAULTS:
        minibatches = critic_fit(config)[1]
        need(
            config.num_envs % minibatches == 0,
            "critic_minibatches",
            f"a divisor of num_envs ({config.num_envs}"
            + (
                f"; 0 stands for {config.algo}'s {minibatches})"
                if config.critic_minibatches == 0
                else ")"
            ),
        )
    need(
        not (
            config.value_norm
            and config.algo == "a2c"
            and config.critic in ("q", "linear-q")
        ),
        "value_norm",
        "used with --critic v (the Q critic has no value normalisation)",
    )
    need(
        not (config.value_norm and config.algo == "reinforce"),
        "value_norm",
        "used with a2c, npg or trpo (reinforce's baseline has none)",
    )
    # AC(λ) is online: one env step, then one update with the new parameters.
    need(
        config.algo != "ac-lambda" or config.num_steps == 1,
        "num_steps",
        "1 for ac-lambda (one update per environment step)",
    )
    need(
        not (config.value_norm and config.algo == "ac-lambda"),
        "value_norm",
        "off for ac-lambda (its critic steps by the traced TD error, unscaled)",
    )


def _check_numbers(config: TrainConfig, need: _Need) -> None:
    """The real-valued (sweepable) hyperparameters' ranges."""
    for name in SWEEPABLE:
        value = getattr(config, name)
        finite = isinstance(value, (int, float)) and math.isfinite(value)
        need(finite, name, "a finite number")
    need(config.lr > 0, "lr", "> 0")
    need(config.critic_lr > 0, "critic_lr", "> 0")
    need(0 < config.gamma <= 1, "gamma", "in (0, 1]")
    need(0 <= config.gae_lambda <= 1, "gae_lambda", "in [0, 1]")
    need(config.ent_coef >= 0, "ent_coef", ">= 0")
    need(config.vf_coef >= 0, "vf_coef", ">= 0")
    need(config.max_grad_norm > 0, "max_grad_norm", "> 0")
    need(config.reward_scale > 0, "reward_scale", "> 0")
    need(config.target_kl >= 0, "target_kl", ">= 0 (0 = off)")
    need(config.max_kl > 0, "max_kl", "> 0")
    need(config.cg_damping >= 0, "cg_damping", ">= 0")
    need(0 < config.backtrack_ratio < 1, "backtrack_ratio", "in (0, 1)")
    need(config.natural_lr > 0, "natural_lr", "> 0")
    need(config.kl_guard >= 0, "kl_guard", ">= 0 (0 = off)")
    need(
        isinstance(config.init_log_std, (int, float))
        and LOG_STD_MIN <= config.init_log_std <= LOG_STD_MAX,
        "init_log_std",
        f"in [{LOG_STD_MIN:g}, {LOG_STD_MAX:g}] (the log std's clip range)",
    )


def _check_algorithm_flags(config: TrainConfig, need: _Need) -> None:
    """Flags that only some algorithms take."""
    need(
        not config.anneal_kl or config.algo in ("npg", "trpo", "nac"),
        "anneal_kl",
        "off unless --algo npg, trpo or nac (the others anneal with --anneal-lr)",
    )
    need(
        config.kl_guard == 0 or config.algo in ("npg", "nac"),
        "kl_guard",
        "0 unless --algo npg or nac (trpo's line search already checks the KL)",
    )
    need(
        not (config.natural_step == "fixed" and config.algo == "trpo"),
        "natural_step",
        "kl with trpo (its line search needs the KL-scaled step)",
    )
    need(
        not config.discounted_gradient or config.algo == "reinforce",
        "discounted_gradient",
        "used with reinforce (the other algorithms' advantages have no γ^t)",
    )
