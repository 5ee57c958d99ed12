"""Estimator variance lab: how noisy and how biased is each policy-gradient estimator?

For one environment and one fixed policy ``π_θ``, :func:`compare_estimators`
draws ``B`` independent batches of ``N`` complete episodes each
(:func:`pgjax.rollout.collect_episodes`, one fresh episode per env, vmapped over
the batches' keys) and computes, per batch, the estimate of ``∇_θ J`` (flat,
actor parameters only) of every estimator below. All of them have the form

  ĝ = (1/N) Σ_{i=1..N} Σ_t c_t · ∇_θ log π(a_t^i|s_t^i) · Â_t^i,

``c_t = γ^t`` (``discount_steps``, the default) or ``1`` (the usual form), and
differ only in the weight ``Â_t``:

===================  =========================================================
``return``           whole-episode return (Williams 1992): ``c_t·Â_t = R(τ) =
                     Σ_k γ^k r_k`` with ``γ^t``; without it, ``Q̂_t`` plus the
                     discounted rewards before ``t`` (``R(τ)`` at ``γ = 1``)
``return-const``     the same minus ``J = E[R(τ)]``, the mean return (exact
                     on a tabular MDP, else the fitting sample's mean)
``return-bstar``     the same minus ``b*_R = E[⟨X_R, S⟩] / E[‖S‖²]``, ``S =
                     Σ_t ∇log π_t`` the episode's summed score and ``X_R`` the
                     episode's ``return`` sum; with ``γ^t``, ``X_R = R(τ)·S``
                     and ``b*_R = E[‖S‖²·R(τ)] / E[‖S‖²]``
``rtg``              reward-to-go ``Q̂_t = Σ_{t'≥t} γ^{t'−t} r_{t'}``
``rtg-const``        ``Q̂_t − J``
``rtg-batch-mean``   ``Q̂_t −`` the mean of ``Q̂`` over the batch's steps: the
                     episode's own returns are in it, a bias of O(1/N)
``rtg-loo-mean``     ``Q̂_t −`` the same mean over the other episodes (leave
                     one out, :func:`pgjax.algos.reinforce.leave_one_out_mean`)
``rtg-bstar``        ``Q̂_t − b*``, ``b* = E[⟨X, Y⟩] / E[‖Y‖²]`` with the
                     episode's sums ``X = Σ_t c_t ∇log π_t Q̂_t`` and ``Y =
                     Σ_t c_t ∇log π_t``: the constant of least trace variance
``rtg-V``            ``Q̂_t − V(s_t)``, ``V`` a network regressed on ``Q̂``
``usual-rtg-V``      the same without ``γ^t`` (compared with ``γ^t`` on and
                     ``γ < 1``: its bias is how far the usual direction is
                     from ``∇J_γ``)
``gae-λ``            GAE(λ) advantages with that ``V`` (λ = 1: ``rtg-V``)
``q-critic``         ``Q_w(s_t, a_t)``, the linear critic ``w·one_hot(a)⊗[s,
                     1]`` of :mod:`pgjax.algos.linear_q`, least squares on
                     ``Q̂``
``q-advantage``      ``Q_w(s_t, a_t) − Σ_a π(a|s_t)·Q_w(s_t, a)``
``compatible``       ``ψ_tᵀw``: the compatible critic, ``Q̂ − V`` regressed
                     on ``ψ = ∇_θ log π`` (:mod:`pgjax.compatible`; an exact
                     solve for small policies, conjugate gradient otherwise)
===================  =========================================================

Both optimal constants are the per-episode form: the minimiser of the trace
variance of ``X − b·Y`` over episodes, which is also the minimiser for a
batch (its ``N`` episodes are independent and ``E[Y] = 0``).

Every baseline and critic is fitted on a separate sample of episodes (never on
the batches it is used with), so each baseline is independent of the batch's
actions and the estimators marked unbiased are exactly unbiased;
``rtg-batch-mean`` is not (its mean includes the episode's own return), and
the critic-based ``gae-λ`` (λ < 1), ``q-*`` and ``compatible`` are unbiased
only to the extent that their critic is exact (a critic fitted on a finite
sample also carries that sample's error, which is a bias of the batches'
estimates, fixed for a given fitting sample).

**Normalisation.** Every estimate divides the sum over all steps of all
episodes by ``N``, the number of episodes, fixed in advance. Dividing by the
number of valid steps instead (a per-step mean) makes a ratio of two random
quantities: the step count depends on the actions (a CartPole episode that
balances longer has more steps and a larger return), so it correlates with
the numerator and the ratio is biased by O(1/N).

**Which gradient.** With ``γ^t`` the unbiased estimators estimate the exact
gradient of the discounted objective ``J_γ = E[Σ_t γ^t r_t]`` (Sutton et al.
2000's theorem with the discounted visitation). Without it (the usual form, as
trainers use it) ``rtg`` estimates ``Σ_t E[∇log π_t·Q^γ(s_t, a_t)]``, the
same sum with every visit weighted alike: for ``γ < 1`` not the gradient of
``J_γ`` nor of any other function in general (Nota & Thomas 2020,
https://arxiv.org/abs/1906.07073), though a useful direction; the two agree
at ``γ = 1``.

**Time limits.** An episode cut by the time limit ends there: the objective is
the return of the episode as the environment ends it, and GAE does not
bootstrap from ``V`` of the last observation (that would estimate the
gradient of the untruncated objective, a different quantity).

**Reference.** When the environment is a :class:`pgjax.tabular.TabularEnv`
and the estimators estimate ``∇J_γ`` (``γ^t`` on, or ``γ = 1``): the exact
gradient of the network policy, by differentiating ``J`` solved on the MDP
with the policy evaluated on every state's observation
(:func:`exact_reference`); the time limit is ignored there (at the short
corridor's 100 steps an episode of a near-uniform policy almost never reaches
it). Otherwise: the mean of an unbiased estimator over many episodes of a
separate sample, ``rtg-V`` by default (unbiased since ``V`` comes from the
fitting sample, and far less noisy than plain ``rtg``, so its mean is closer
to ``∇J`` for the same episodes).

**Reported per estimator** (:class:`EstimatorStats`): the trace of the
covariance of one batch's estimate (and per parameter), the bias
``‖mean − reference‖`` with its standard error and the noise floor it would
have if the estimator were unbiased, and the cosine between a batch's
estimate and the reference averaged over batches.

**Cost.** ``Σ_t ∇log π_t·w_t`` for ``K`` weightings is one forward pass and
``K`` backward passes: the vector-Jacobian product of the log-probabilities
of the valid steps (packed into rows) with each weight vector as cotangent
(:func:`weighted_score_sums`), never the per-step gradients.

References:
  Williams 1992, *Simple statistical gradient-following algorithms for
  connectionist reinforcement learning*, https://doi.org/10.1007/BF00992696.
  Sutton et al. 2000, *Policy Gradient Methods for Reinforcement Learning with
  Function Approximation*, NeurIPS 12.
  Greensmith, Bartlett & Baxter 2004, *Variance Reduction Techniques for
  Gradient Estimates in Reinforcement Learning*, JMLR 5 (the optimal constant
  baseline).
  Schulman et al. 2016, *High-Dimensional Continuous Control Using Generalized
  Advantage Estimation*, https://arxiv.org/abs/1506.02438.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.flatten_util import ravel_pytree

from pgjax import envs, losses, parallel, rollout
from pgjax.algos import base, linear_q
from pgjax.algos.reinforce import leave_one_out_mean
from pgjax.config import ConfigError
from pgjax.envs import EnvSpec, ObsNormState
from pgjax.networks import Policy, make_critic

Array = jax.Array
PyTree = Any
# log_prob(flat_params [P], obs [R, ...], actions [R, ...]) -> [R]
LogProbFn = Callable[[Array, Array, Array], Array]

__all__ = [
    "EstimatorStats",
    "FittedCritics",
    "LabConfig",
    "LabResult",
    "compare_estimators",
    "estimator_names",
    "exact_reference",
    "is_unbiased",
    "tabular_available",
    "tabular_spec",
    "validate_lab_config",
    "weighted_score_sums",
]


def tabular_available() -> bool:
    """Whether :mod:`pgjax.tabular` (exact gradients on small MDPs) is installed."""
    return importlib.util.find_spec("pgjax.tabular") is not None


def compatible_available() -> bool:
    """Whether :mod:`pgjax.compatible` (the compatible critic's fit) is installed."""
    return importlib.util.find_spec("pgjax.compatible") is not None


# ---------------------------------------------------------------------------
# Settings.


@dataclasses.dataclass(frozen=True)
class LabConfig:
    """What one comparison samples and fits.

    Attributes:
      batches: ``B``, independent batches whose estimates give the statistics.
      episodes_per_batch: ``N``, complete episodes per batch.
      gamma: discount ``γ`` in (0, 1].
      discount_steps: weight step ``t`` by ``γ^t`` (the exact ``∇J_γ``);
        False: the usual form without it.
      lambdas: the GAE(λ) grid.
      fit_episodes: episodes of the separate sample the critics and the
        constants (``J``, ``b*``) are fitted on.
      reference_episodes: episodes of the sampled reference (unused when the
        reference is exact).
      reference_estimator: the unbiased estimator whose mean over those
        episodes is the sampled reference (``rtg-V``: the reward-to-go with
        the fitted ``V`` as baseline, unbiased since ``V`` comes from the
        separate sample, and many times less noisy than plain ``rtg``).
      critic_hidden: hidden widths of the ``V`` network.
      critic_steps: Adam steps of its regression.
      critic_lr: its learning rate.
      critic_minibatch: rows per Adam step.
      compatible_rows: at most this many steps of the fitting sample (drawn
        at random) form the compatible critic's least-squares problem.
      compatible_ridge: its ridge term ``λ`` (per unit of sample weight).
      compatible_iters: conjugate-gradient iterations of that fit when the
        policy has more than :data:`EXACT_COMPATIBLE_PARAMS` parameters
        (fewer: an exact solve).
      reward_shift: a constant added to every reward. Where every episode has
        the same length (Pendulum) ``∇J`` stays the same and only the
        estimators' variances change; where the length depends on the
        actions the objective itself changes.
      chunk: batches vectorised together by ``lax.map`` (memory vs speed).
    """

    batches: int = 200
    episodes_per_batch: int = 8
    gamma: float = 0.99
    discount_steps: bool = True
    lambdas: tuple[float, ...] = (0.0, 0.5, 0.9, 0.95, 1.0)
    fit_episodes: int = 512
    reference_episodes: int = 4096
    reference_estimator: str = "rtg-V"
    critic_hidden: tuple[int, ...] = (64, 64)
    critic_steps: int = 1000
    critic_lr: float = 1e-3
    critic_minibatch: int = 1024
    compatible_rows: int = 8192
    compatible_ridge: float = 1e-3
    compatible_iters: int = 20
    reward_shift: float = 0.0
    chunk: int = 8


def validate_lab_config(config: LabConfig) -> None:
    """Checks every setting.

    Raises:
      ConfigError: naming the first invalid flag (as on the command line).
    """

    def need(ok: bool, name: str, what: str) -> None:
        if not ok:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(flag, f"must be {what}, got {getattr(config, name)!r}")

    for name in (
        "batches",
        "episodes_per_batch",
        "fit_episodes",
        "reference_episodes",
        "critic_steps",
        "critic_minibatch",
        "compatible_rows",
        "compatible_iters",
        "chunk",
    ):
        value = getattr(config, name)
        need(isinstance(value, int) and value > 0, name, "a positive integer")
    need(config.batches >= 2, "batches", "at least 2 (a variance needs two)")
    need(0 < config.gamma <= 1, "gamma", "in (0, 1]")
    need(
        len(config.lambdas) > 0 and all(0 <= x <= 1 for x in config.lambdas),
        "lambdas",
        "one or more values in [0, 1]",
    )
    need(
        len({f"{x:g}" for x in config.lambdas}) == len(config.lambdas),
        "lambdas",
        "without repeats",
    )
    need(all(w > 0 for w in config.critic_hidden), "critic_hidden", "positive widths")
    need(math.isfinite(config.critic_lr) and config.critic_lr > 0, "critic_lr", "> 0")
    need(
        math.isfinite(config.compatible_ridge) and config.compatible_ridge >= 0,
        "compatible_ridge",
        ">= 0",
    )
    need(math.isfinite(config.reward_shift), "reward_shift", "a finite number")
    need(
        is_unbiased(config.reference_estimator)
        and (config.reference_estimator != "gae-1" or 1.0 in config.lambdas),
        "reference_estimator",
        "an unbiased estimator (" + ", ".join(sorted(_UNBIASED)) + ")",
    )


def estimator_names(
    lambdas: tuple[float, ...],
    discrete: bool,
    compatible: bool = True,
    usual: bool = False,
) -> tuple[str, ...]:
    """The estimators compared, in table order (see the module docstring).

    ``q-*`` need discrete actions; ``compatible`` needs :mod:`pgjax.compatible`;
    ``usual-rtg-V`` is compared when ``usual`` (with ``γ^t`` and ``γ < 1``).
    """
    names = [
        "return",
        "return-const",
        "return-bstar",
        "rtg",
        "rtg-const",
        "rtg-batch-mean",
        "rtg-loo-mean",
        "rtg-bstar",
        "rtg-V",
        *(["usual-rtg-V"] if usual else []),
        *(f"gae-{lam:g}" for lam in lambdas),
    ]
    if discrete:
        names += ["q-critic", "q-advantage"]
    if compatible:
        names.append("compatible")
    return tuple(names)


_UNBIASED = frozenset(
    {
        "return",
        "return-const",
        "return-bstar",
        "rtg",
        "rtg-const",
        "rtg-loo-mean",
        "rtg-bstar",
        "rtg-V",
        "gae-1",
    }
)


def is_unbiased(name: str) -> bool:
    """Whether estimator ``name`` is exactly unbiased whatever its critic."""
    return name in _UNBIASED


# ---------------------------------------------------------------------------
# Sampling.


def tabular_spec(env: Any, env_id: str | None = None) -> EnvSpec:
    """The :class:`~pgjax.envs.EnvSpec` of a tabular gymnax environment object
    (a :class:`pgjax.tabular.TabularEnv`, registered or not)."""
    params = env.default_params
    return EnvSpec(
        env_id=env_id or env.name,
        env=env,
        params=params,
        obs_shape=tuple(env.observation_space(params).shape),
        discrete=True,
        num_actions=int(env.action_space(params).n),
        action_shape=(),
        action_low=(),
        action_high=(),
        max_episode_steps=int(params.max_steps_in_episode),
    )


def collect_batches(
    spec: EnvSpec,
    policy: Policy,
    params: PyTree,
    key: Array,
    batches: int,
    episodes: int,
    obs_norm: ObsNormState | None = None,
) -> rollout.Transition:
    """``batches`` independent batches of ``episodes`` complete episodes.

    One :func:`pgjax.rollout.collect_episodes` per batch key, vmapped over the
    keys (as the seeds axis, so the episode loop stays one loop and stops at
    the last batch's end). Observations are normalised with ``obs_norm``
    (frozen) when it is given.

    Returns:
      A :class:`~pgjax.rollout.Transition` of host (numpy) arrays with
      ``[B, T, N, ...]`` leaves, ``T`` the longest episode of all (rows after
      an episode's end are padding, ``valid = False``).
    """
    batch, steps = _collect(spec, policy, batches, episodes, params, key, obs_norm)
    batch, steps = jax.device_get((batch, steps))
    used = max(int(np.max(steps)), 1)
    # Host arrays: slicing them compiles nothing.
    return jax.tree.map(lambda x: np.asarray(x)[:, :used], batch)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _collect(spec, policy, batches, episodes, params, key, obs_norm):
    """The compiled part of :func:`collect_batches` (untrimmed)."""
    normalize = obs_norm is not None
    act = base.sampling_act_fn(policy, params)

    def one(batch_key):
        reset_key, run_key = jax.random.split(batch_key)
        state = envs.reset(spec, reset_key, episodes)
        if normalize:
            state = state.replace(obs_norm=obs_norm)
        _, batch, steps = rollout.collect_episodes(spec, act, state, run_key, normalize)
        return batch, steps

    return jax.vmap(one, axis_name=parallel.SEEDS)(jax.random.split(key, batches))


# ---------------------------------------------------------------------------
# Per-step weights.


@struct.dataclass
class EpisodeTerms:
    """Per-step quantities of one batch of episodes, every field ``[T, n]``.

    Attributes:
      valid: 1.0 on the episodes' steps, 0.0 on padding.
      rewards: ``(r_t + shift)·valid``.
      ends: the episode ends after step ``t`` (terminated, truncated, or
        padding: nothing flows across padding).
      to_go: ``Q̂_t = Σ_{t'≥t} γ^{t'−t} r_{t'}`` within the episode.
      step_weight: ``c_t``: ``γ^t`` or 1.
      whole: the ``return`` estimator's ``c_t·Â_t = c_t·Q̂_t + Σ_{t'<t} γ^{t'}
        r_{t'}`` (``R(τ)`` when ``c_t = γ^t``).
    """

    valid: Array
    rewards: Array
    ends: Array
    to_go: Array
    step_weight: Array
    whole: Array


def episode_terms(
    batch: rollout.Transition,
    gamma: float,
    discount_steps: bool,
    reward_shift: float = 0.0,
) -> EpisodeTerms:
    """:class:`EpisodeTerms` of a batch ``[T, n]`` from ``collect_episodes``
    (every episode starts at row 0, so row ``t`` is the episode's step ``t``)."""
    valid = batch.valid.astype(jnp.float32)
    rewards = (batch.reward + reward_shift) * valid
    ends = batch.done | ~batch.valid
    to_go = losses.reward_to_go(rewards, jnp.full_like(rewards, gamma), ends)
    time = jnp.arange(rewards.shape[0], dtype=jnp.float32)[:, None]
    powers = jnp.broadcast_to(jnp.asarray(gamma, jnp.float32) ** time, rewards.shape)
    step_weight = powers if discount_steps else jnp.ones_like(powers)
    # Σ_{t'<t} γ^{t'} r_{t'} = R(τ) − γ^t·Q̂_t.
    past = to_go[0][None, :] - powers * to_go
    return EpisodeTerms(
        valid=valid,
        rewards=rewards,
        ends=ends,
        to_go=to_go,
        step_weight=step_weight,
        whole=(step_weight * to_go + past) * valid,
    )


# ---------------------------------------------------------------------------
# Σ_t ∇log π_t · w_t for several weightings at once.


def flat_log_prob(policy: Policy, params: PyTree) -> tuple[Array, LogProbFn]:
    """``(θ [P], log_prob)``: the actor's parameters as one vector
    (``ravel_pytree`` order) and ``log_prob(θ, obs [R, ...], actions [R, ...])
    → log π(a_r|s_r) [R]``."""
    flat, unravel = ravel_pytree(params)

    def log_prob(theta: Array, obs: Array, actions: Array) -> Array:
        return policy.apply(unravel(theta), obs).log_prob(actions)

    return flat, log_prob


def weighted_score_sums(
    log_prob: LogProbFn, theta: Array, obs: Array, actions: Array, weights: Array
) -> Array:
    """``g_k = Σ_r w_k[r]·∇_θ log π(a_r|s_r)`` for ``K`` weightings, ``[K, P]``.

    ``Σ_r w_r ∇log π_r`` is the vector-Jacobian product of the map
    ``θ ↦ [log π(a_r|s_r)]_r`` with the cotangent ``w``: one forward pass for
    all ``K``, one backward pass per weighting, and no ``[R, P]`` matrix of
    per-step gradients.

    Args:
      log_prob: from :func:`flat_log_prob`.
      theta: ``[P]``.
      obs: ``[R, *obs_shape]`` rows.
      actions: ``[R, *action_shape]``.
      weights: ``[K, R]`` (0 on rows that are not steps).
    """
    _, vjp = jax.vjp(lambda th: log_prob(th, obs, actions), theta)
    return jax.vmap(lambda w: vjp(w)[0])(weights)


def pack_rows(valid: Array, rows: int) -> tuple[Array, Array]:
    """Flat indices of the valid entries of a ``[T, n]`` mask, packed first.

    Returns:
      ``(index [rows], in_range [rows])``: ``index`` is ``t·n + i`` of the
      valid entries in order, then ``T·n`` (out of range); ``rows`` must be at
      least the number of valid entries.
    """
    flat = valid.reshape(-1)
    (index,) = jnp.nonzero(flat, size=rows, fill_value=flat.shape[0])
    return index, index < flat.shape[0]


def _gather(x: Array, index: Array) -> Array:
    """Rows ``index`` of ``x [T, n, ...]`` flattened to ``[T·n, ...]``; an
    out-of-range index reads the last row (its weight is 0)."""
    flat = x.reshape(-1, *x.shape[2:])
    return flat[jnp.minimum(index, flat.shape[0] - 1)]


def _scatter(values: Array, index: Array, shape: tuple[int, int]) -> Array:
    """``[rows]`` values back to a ``[T, n]`` array (0 elsewhere)."""
    flat = jnp.zeros(shape[0] * shape[1], values.dtype)
    return flat.at[index].set(values, mode="drop").reshape(shape)


# ---------------------------------------------------------------------------
# Baselines and critics, fitted on their own sample.


@struct.dataclass
class FittedCritics:
    """Everything the estimators subtract or regress, fitted on a sample of
    episodes independent of the batches.

    Attributes:
      value_params: the ``V`` network's parameters; it predicts
        ``(V − value_loc) / value_scale``.
      value_loc, value_scale: the standardisation of its regression targets.
      value_explained: ``1 − Var(Q̂ − V) / Var(Q̂)`` on the fitting sample.
      q_weights: the linear Q critic's ``w``, ``[A, D + 1]`` (zeros when the
        actions are continuous).
      compatible_weights: the compatible critic's ``w``, ``[P]`` (zeros when
        :mod:`pgjax.compatible` is missing).
      mean_return: ``J``, the constant of ``rtg-const`` (exact on a tabular
        MDP).
      b_star: ``b* = Σ_i ⟨X_i, Y_i⟩ / Σ_i ‖Y_i‖²`` of ``rtg-bstar``.
      b_star_return: ``b*_R`` of ``return-bstar``.
    """

    value_params: PyTree
    value_loc: Array
    value_scale: Array
    value_explained: Array
    q_weights: Array
    compatible_weights: Array
    mean_return: Array
    b_star: Array
    b_star_return: Array


@dataclasses.dataclass(frozen=True)
class _Lab:
    """The static parts of one comparison (networks, settings)."""

    spec: EnvSpec
    policy: Policy
    unravel: Callable[[Array], PyTree]
    value_net: Any
    q_net: linear_q.LinearQCritic | None
    config: LabConfig
    names: tuple[str, ...]

    def log_prob(self, theta: Array, obs: Array, actions: Array) -> Array:
        """``log π_θ(a|s)`` of rows, ``θ`` flat (a :data:`LogProbFn`)."""
        return self.policy.apply(self.unravel(theta), obs).log_prob(actions)

    def values(self, critics: FittedCritics, obs: Array) -> Array:
        """``V(s)`` of observations ``[..., *obs_shape]``."""
        net = self.value_net.apply(critics.value_params, obs)
        return critics.value_loc + critics.value_scale * net

    def terms(self, batch: rollout.Transition) -> EpisodeTerms:
        config = self.config
        return episode_terms(
            batch, config.gamma, config.discount_steps, config.reward_shift
        )


def fit_value(
    value_net: Any, key: Array, obs: Array, targets: Array, config: LabConfig
) -> tuple[PyTree, Array, Array]:
    """Regresses ``V(s)`` on ``targets`` by minibatch Adam on standardised
    targets: ``½·mean((net(s) − (y − loc)/scale)²)``.

    Args:
      value_net: a :class:`~pgjax.networks.Critic`.
      key: initialisation and minibatch draws.
      obs: ``[R, *obs_shape]`` rows.
      targets: ``[R]`` (the reward-to-go).
      config: steps, learning rate and minibatch size.

    Returns:
      ``(params, loc, scale)``; ``V(s) = loc + scale·net(s)``.
    """
    loc = jnp.mean(targets)
    spread = jnp.std(targets)
    scale = jnp.where(spread > 1e-6, spread, 1.0)
    standard = (targets - loc) / scale
    init_key, draw_key = jax.random.split(key)
    optimiser = optax.adam(config.critic_lr)
    params = value_net.init(init_key)
    rows = targets.shape[0]
    size = min(config.critic_minibatch, rows)

    def loss(p, idx):
        return 0.5 * jnp.mean(jnp.square(value_net.apply(p, obs[idx]) - standard[idx]))

    def step(carry, step_key):
        p, opt_state = carry
        idx = jax.random.randint(step_key, (size,), 0, rows)
        grads = jax.grad(loss)(p, idx)
        updates, opt_state = optimiser.update(grads, opt_state, p)
        return (optax.apply_updates(p, updates), opt_state), None

    keys = jax.random.split(draw_key, config.critic_steps)
    (params, _), _ = jax.lax.scan(step, (params, optimiser.init(params)), keys)
    return params, loc, scale


def q_features(q_net: linear_q.LinearQCritic, obs: Array, actions: Array) -> Array:
    """``φ(s, a) = one_hot(a) ⊗ [s, 1]`` flattened, ``[R, A·(D + 1)]``."""
    one_hot = jax.nn.one_hot(actions, q_net.num_actions, dtype=jnp.float32)
    inputs = q_net.inputs(obs)
    return (one_hot[:, :, None] * inputs[:, None, :]).reshape(obs.shape[0], -1)


def fit_linear_q(
    q_net: linear_q.LinearQCritic,
    obs: Array,
    actions: Array,
    targets: Array,
    weights: Array,
) -> Array:
    """Least squares ``min_w Σ_r c_r (w·φ(s_r, a_r) − Q̂_r)²`` (minimum-norm
    solution), ``[A, D + 1]``: the linear Q critic regressed on the reward-to-go
    with the gradient's step weights ``c_r``."""
    features = q_features(q_net, obs, actions)
    root = jnp.sqrt(weights)
    solution, *_ = jnp.linalg.lstsq(root[:, None] * features, root * targets)
    return solution.reshape(q_net.num_actions, -1)


def _optimal_constants(
    lab: _Lab, theta: Array, episodes: rollout.Transition, rows: int
) -> tuple[Array, Array]:
    """``(b*, b*_R)`` from single episodes ``[M, T, 1]``.

    Per episode ``i``: ``X_i = Σ_t c_t ψ_t Q̂_t``, ``Y_i = Σ_t c_t ψ_t`` and
    ``X_R,i = Σ_t ψ_t·whole_t``, ``S_i = Σ_t ψ_t`` (``ψ = ∇log π``). The trace
    variance of ``X − b·Y`` is ``E‖X‖² − 2b·E⟨X, Y⟩ + b²·E‖Y‖² − ‖E X‖²``
    (``E Y = 0``), least at ``b* = E⟨X, Y⟩ / E‖Y‖²``; likewise ``b*_R`` for
    ``X_R − b·S``.
    """

    def one(episode):
        terms = lab.terms(episode)
        index, in_range = pack_rows(episode.valid, rows)
        obs = _gather(episode.obs, index)
        actions = _gather(episode.action, index)
        columns = (
            terms.step_weight * terms.to_go,
            terms.step_weight,
            terms.whole,
            jnp.ones_like(terms.whole),
        )
        weights = jnp.stack([_gather(c, index) for c in columns]) * in_range
        x, y, x_r, s = weighted_score_sums(lab.log_prob, theta, obs, actions, weights)
        return jnp.stack([x @ y, y @ y, x_r @ s, s @ s])

    sums = jnp.sum(jax.lax.map(one, episodes, batch_size=lab.config.chunk), axis=0)
    return sums[0] / sums[1], sums[2] / sums[3]


#: Policies with at most this many parameters get the compatible critic by
#: an exact least-squares solve (:func:`pgjax.compatible.fit_compatible`, an
#: SVD of the ``[R, P]`` features); larger ones by conjugate gradient without
#: forming the features (:func:`pgjax.compatible.fit_compatible_matrix_free`).
EXACT_COMPATIBLE_PARAMS = 256


def _compatible_weights(
    lab: _Lab, params: PyTree, key: Array, rows: dict[str, Array], advantages: Array
) -> Array:
    """The compatible critic's ``w``, ``[P]``: ``Â = Q̂ − V`` regressed on
    ``ψ = ∇log π`` (weighted least squares, ridge ``λ``) over at most
    ``compatible_rows`` steps drawn from the fitting sample, each weighted by
    its ``c_t`` (the visitation the gradient weights states by). Solved
    exactly for small policies, else by ``compatible_iters`` CG steps."""
    from pgjax import compatible

    config = lab.config
    count = rows["to_go"].shape[0]
    take = min(config.compatible_rows, count)
    index = jax.random.choice(key, count, (take,), replace=False)
    obs, actions = rows["obs"][index], rows["action"][index]
    targets, weights = advantages[index], rows["step_weight"][index]

    def log_prob_fn(p, one_obs, one_action):
        return lab.policy.apply(p, one_obs).log_prob(one_action)

    if ravel_pytree(params)[0].shape[0] <= EXACT_COMPATIBLE_PARAMS:
        psi = compatible.score_rows(log_prob_fn, params, obs, actions)
        return compatible.fit_compatible(
            psi, targets, weights=weights, ridge=config.compatible_ridge
        )
    w, _ = compatible.fit_compatible_matrix_free(
        log_prob_fn,
        params,
        obs,
        actions,
        targets,
        weights=weights,
        ridge=config.compatible_ridge,
        iters=config.compatible_iters,
    )
    return ravel_pytree(w)[0]


def _valid_rows(
    episodes: rollout.Transition, terms: EpisodeTerms, rows: int
) -> dict[str, Array]:
    """The ``rows`` steps of ``[M, T, 1]`` episodes as flat rows."""
    index, _ = pack_rows(episodes.valid, rows)

    def flat(x):
        return x.reshape(-1, *x.shape[3:])[index]

    return {
        "obs": flat(episodes.obs),
        "action": flat(episodes.action),
        "to_go": flat(terms.to_go),
        "step_weight": flat(terms.step_weight),
    }


def fit_critics(
    lab: _Lab,
    theta: Array,
    episodes: rollout.Transition,
    key: Array,
    exact_return: Array | None = None,
) -> FittedCritics:
    """Fits every baseline and critic on a sample of episodes ``[M, T, 1]``,
    in one compiled program.

    ``V`` by :func:`fit_value` on the reward-to-go; the linear Q critic by
    :func:`fit_linear_q`; ``J`` as the sample's mean return (or
    ``exact_return``); ``b*`` and ``b*_R`` by :func:`_optimal_constants`; the
    compatible critic by :func:`_compatible_weights` on ``Q̂ − V``.
    """
    rows = int(np.sum(episodes.valid))
    program = jax.jit(functools.partial(_fit_program, lab, rows=rows))
    return program(theta, episodes, key, exact_return)


def _fit_program(
    lab: _Lab,
    theta: Array,
    episodes: rollout.Transition,
    key: Array,
    exact_return: Array | None,
    rows: int,
) -> FittedCritics:
    """The body of :func:`fit_critics` (``rows``: the sample's step count)."""
    value_key, compatible_key = jax.random.split(key)
    terms = jax.vmap(lab.terms)(episodes)
    data = _valid_rows(episodes, terms, rows)
    value_params, loc, scale = fit_value(
        lab.value_net, value_key, data["obs"], data["to_go"], lab.config
    )
    if exact_return is None:
        exact_return = jnp.mean(terms.to_go[:, 0, 0])
    b_star, b_star_return = _optimal_constants(
        lab, theta, episodes, episodes.valid.shape[1]
    )
    critics = FittedCritics(
        value_params=value_params,
        value_loc=loc,
        value_scale=scale,
        value_explained=jnp.zeros(()),
        q_weights=jnp.zeros((1, 1)),
        compatible_weights=jnp.zeros_like(theta),
        mean_return=jnp.asarray(exact_return, jnp.float32),
        b_star=b_star,
        b_star_return=b_star_return,
    )
    residual = data["to_go"] - lab.values(critics, data["obs"])
    spread = jnp.maximum(jnp.var(data["to_go"]), 1e-12)
    critics = critics.replace(value_explained=1.0 - jnp.var(residual) / spread)
    if lab.q_net is not None:
        q_weights = fit_linear_q(
            lab.q_net, data["obs"], data["action"], data["to_go"], data["step_weight"]
        )
        critics = critics.replace(q_weights=q_weights)
    if "compatible" in lab.names:
        weights = _compatible_weights(
            lab, lab.unravel(theta), compatible_key, data, residual
        )
        critics = critics.replace(compatible_weights=weights)
    return critics


def _gae(lab: _Lab, terms: EpisodeTerms, values: Array) -> Array:
    """GAE(λ) advantages ``[L, T, n]`` for the grid; an episode's end (a
    termination or the time limit) stops the recursion without bootstrap."""
    gamma = lab.config.gamma
    next_values = jnp.concatenate([values[1:], jnp.zeros_like(values[:1])], axis=0)
    discounts = gamma * (1.0 - terms.ends.astype(jnp.float32))
    lambdas = jnp.asarray(lab.config.lambdas, jnp.float32)
    return jax.vmap(
        lambda lam: losses.gae_advantages(
            terms.rewards, values, next_values, discounts, terms.ends, lam
        )
    )(lambdas)


def _time_weights(
    lab: _Lab,
    batch: rollout.Transition,
    terms: EpisodeTerms,
    values: Array,
    critics: FittedCritics,
) -> dict[str, Array]:
    """``c_t·Â_t`` ``[T, n]`` of the estimators that need the episode's time
    structure (returns, baselines, GAE)."""
    q, c = terms.to_go, terms.step_weight
    weights = {
        "return": terms.whole,
        "return-const": terms.whole - critics.mean_return,
        "return-bstar": terms.whole - critics.b_star_return,
        "rtg": c * q,
        "rtg-const": c * (q - critics.mean_return),
        "rtg-batch-mean": c * (q - losses.masked_mean(q, batch.valid)),
        "rtg-loo-mean": c * (q - leave_one_out_mean(q, batch.valid)),
        "rtg-bstar": c * (q - critics.b_star),
        "rtg-V": c * (q - values),
        "usual-rtg-V": q - values,
    }
    if any(name.startswith("gae-") for name in lab.names):
        advantages = _gae(lab, terms, values)
        for lam, adv in zip(lab.config.lambdas, advantages, strict=True):
            weights[f"gae-{lam:g}"] = c * adv
    return weights


def _row_weights(
    lab: _Lab,
    theta: Array,
    critics: FittedCritics,
    obs: Array,
    actions: Array,
    step_weight: Array,
) -> dict[str, Array]:
    """``c_r·Â_r`` ``[R]`` of the critic estimators, functions of each step
    alone (computed on the packed rows)."""
    weights = {}
    if lab.q_net is not None:
        q_all = lab.q_net.apply({"w": critics.q_weights}, obs)  # [R, A]
        q_taken = jnp.take_along_axis(q_all, actions[:, None].astype(jnp.int32), 1)
        probs = lab.policy.apply(lab.unravel(theta), obs).probs()
        weights["q-critic"] = step_weight * q_taken[:, 0]
        weights["q-advantage"] = step_weight * (
            q_taken[:, 0] - jnp.sum(probs * q_all, axis=-1)
        )
    if "compatible" in lab.names:
        # ψ_rᵀw for every row at once: a forward-mode derivative of log π
        # along w.
        _, psi_w = jax.jvp(
            lambda th: lab.log_prob(th, obs, actions),
            (theta,),
            (critics.compatible_weights,),
        )
        weights["compatible"] = step_weight * psi_w
    return weights


def batch_estimates(
    lab: _Lab,
    theta: Array,
    critics: FittedCritics,
    batch: rollout.Transition,
    rows: int,
) -> Array:
    """Every estimator's estimate from one batch ``[T, n]``, ``[K, P]``:
    ``(1/n)·Σ_i Σ_t c_t ∇log π_t Â_t`` (see the module docstring on why the
    divisor is ``n``, the number of episodes). ``rows`` bounds the batch's
    valid steps (they are packed into that many rows)."""
    terms = lab.terms(batch)
    index, in_range = pack_rows(batch.valid, rows)
    obs = _gather(batch.obs, index)
    actions = _gather(batch.action, index)
    row_values = jnp.where(in_range, lab.values(critics, obs), 0.0)
    values = _scatter(row_values, index, batch.valid.shape)
    by_time = _time_weights(lab, batch, terms, values, critics)
    by_row = _row_weights(
        lab, theta, critics, obs, actions, _gather(terms.step_weight, index)
    )
    weights = jnp.stack(
        [
            by_row[name] if name in by_row else _gather(by_time[name], index)
            for name in lab.names
        ]
    )
    weights = weights * in_range
    sums = weighted_score_sums(lab.log_prob, theta, obs, actions, weights)
    return sums / batch.valid.shape[1]


def _all_estimates(
    lab: _Lab, theta: Array, critics: FittedCritics, batches: rollout.Transition
) -> Array:
    """:func:`batch_estimates` of ``[B, T, n]`` batches, ``[B, K, P]``
    (``lax.map`` over chunks of ``config.chunk`` vmapped batches)."""
    rows = max(int(np.max(np.sum(batches.valid, axis=(1, 2)))), 1)
    run = jax.jit(
        lambda th, cr, b: jax.lax.map(
            lambda one: batch_estimates(lab, th, cr, one, rows),
            b,
            batch_size=lab.config.chunk,
        )
    )
    return run(theta, critics, batches)


# ---------------------------------------------------------------------------
# The reference and the statistics.


def exact_reference(
    spec: EnvSpec,
    policy: Policy,
    params: PyTree,
    gamma: float,
    reward_shift: float = 0.0,
    obs_norm: ObsNormState | None = None,
) -> tuple[Array, Array] | None:
    """``(∇J_γ [P], J_γ)`` exactly, when ``spec`` is a tabular environment.

    The network policy is evaluated on every state's observation (the one-hot
    state of a :class:`pgjax.tabular.TabularEnv` by default, normalised with
    ``obs_norm`` when given), ``policy_fn(θ) = softmax(logits(θ; O))``, and
    :func:`pgjax.tabular.exact_gradient` differentiates ``J`` solved on the
    MDP (with ``γ`` and the rewards shifted by ``reward_shift`` on the
    non-terminal states).

    Returns:
      None when :mod:`pgjax.tabular` is missing or ``spec.env`` is not tabular.
    """
    if not tabular_available():
        return None
    from pgjax import tabular

    env = spec.env
    if not isinstance(env, tabular.TabularEnv):
        return None
    mdp = jax.tree.map(jnp.asarray, env.mdp)
    mdp = mdp.replace(
        gamma=jnp.asarray(gamma, jnp.float32), rewards=mdp.rewards + reward_shift
    )
    observations = jnp.asarray(env.observations)
    if obs_norm is not None:
        observations = envs.normalize_obs(obs_norm, observations)

    def policy_fn(p):
        return policy.apply(p, observations).probs()

    @jax.jit
    def exact(p):
        gradient = tabular.exact_gradient(mdp, policy_fn, p)
        return ravel_pytree(gradient)[0], tabular.objective(mdp, policy_fn(p))

    return exact(params)


@struct.dataclass
class EstimatorStats:
    """Statistics of ``B`` batch estimates of each of ``K`` estimators.

    Attributes:
      mean: ``[K, P]`` mean estimate over the batches.
      std_error: ``[K, P]`` its standard error, ``std / √B`` per parameter.
      variance: ``[K]`` trace of the covariance of one batch's estimate,
        ``Σ_p Var(ĝ_p)``.
      param_variance: ``[K]`` its mean per parameter, ``variance / P``.
      bias: ``[K]`` ``‖mean − reference‖``.
      bias_se: ``[K]`` its standard error (delta method: the spread of the
        batch estimates, and of the reference's samples, along ``mean −
        reference``).
      noise_floor: ``[K]`` ``√(variance/B + tr Cov(reference))``: about what
        ``bias`` is for an unbiased estimator, from noise alone.
      cosine: ``[K]`` ``cos(ĝ_b, reference)`` averaged over the batches.
      cosine_se: ``[K]`` its standard error.
    """

    mean: Array
    std_error: Array
    variance: Array
    param_variance: Array
    bias: Array
    bias_se: Array
    noise_floor: Array
    cosine: Array
    cosine_se: Array


def estimator_stats(
    estimates: Array, reference: Array, reference_samples: Array | None = None
) -> EstimatorStats:
    """:class:`EstimatorStats` of ``estimates [B, K, P]`` against ``reference
    [P]``, the mean of ``reference_samples [G, P]`` (None: exact)."""
    est = np.asarray(estimates, np.float64)
    ref = np.asarray(reference, np.float64)
    batches, _, params = est.shape
    mean = est.mean(axis=0)
    var = est.var(axis=0, ddof=1)
    variance = var.sum(axis=-1)
    diff = mean - ref
    bias = np.linalg.norm(diff, axis=-1)
    unit = diff / np.maximum(bias, 1e-30)[:, None]
    along = np.einsum("bkp,kp->bk", est, unit).var(axis=0, ddof=1) / batches
    ref_trace = 0.0
    if reference_samples is not None:
        samples = np.asarray(reference_samples, np.float64)
        count = samples.shape[0]
        ref_trace = samples.var(axis=0, ddof=1).sum() / count
        along = along + (samples @ unit.T).var(axis=0, ddof=1) / count
    norms = np.linalg.norm(est, axis=-1) * np.linalg.norm(ref)
    cosines = (est @ ref) / np.maximum(norms, 1e-30)  # [B, K]
    return EstimatorStats(
        mean=mean,
        std_error=np.sqrt(var / batches),
        variance=variance,
        param_variance=variance / params,
        bias=bias,
        bias_se=np.sqrt(along),
        noise_floor=np.sqrt(variance / batches + ref_trace),
        cosine=cosines.mean(axis=0),
        cosine_se=cosines.std(axis=0, ddof=1) / math.sqrt(batches),
    )


@struct.dataclass
class LabResult:
    """What :func:`compare_estimators` measured.

    Attributes:
      stats: per-estimator statistics, rows in the order of ``names``.
      reference: ``[P]`` the reference gradient.
      reference_norm: ``‖reference‖``.
      critics: the fitted baselines and critics.
      mean_return: mean (shifted, discounted) return ``R(τ)`` of the batches'
        episodes.
      mean_length: their mean length in steps.
      names: the estimators.
      reference_kind: ``"exact"`` or ``"sampled"``.
      config: the settings.
    """

    stats: EstimatorStats
    reference: Array
    reference_norm: Array
    critics: FittedCritics
    mean_return: Array
    mean_length: Array
    names: tuple[str, ...] = struct.field(pytree_node=False)
    reference_kind: str = struct.field(pytree_node=False)
    config: LabConfig = struct.field(pytree_node=False)

    def index(self, name: str) -> int:
        """Row of estimator ``name``."""
        return self.names.index(name)

    def row(self, name: str) -> dict[str, float | bool | str]:
        """The scalar statistics of estimator ``name``."""
        k = self.index(name)
        fields = (
            "variance",
            "param_variance",
            "bias",
            "bias_se",
            "noise_floor",
            "cosine",
            "cosine_se",
        )
        values = {f: float(getattr(self.stats, f)[k]) for f in fields}
        return {"estimator": name, "unbiased": is_unbiased(name), **values}

    def summary(self) -> dict[str, Any]:
        """JSON-ready: settings, constants and one row per estimator."""
        critics = self.critics
        return {
            "config": dataclasses.asdict(self.config),
            "reference": self.reference_kind,
            "reference_norm": float(self.reference_norm),
            "num_params": int(self.reference.shape[0]),
            "mean_return": float(self.mean_return),
            "mean_length": float(self.mean_length),
            "constants": {
                "mean_return_J": float(critics.mean_return),
                "b_star": float(critics.b_star),
                "b_star_return": float(critics.b_star_return),
                "value_explained_variance": float(critics.value_explained),
            },
            "estimators": [self.row(name) for name in self.names],
        }


# ---------------------------------------------------------------------------
# The comparison.


def _make_lab(
    spec: EnvSpec, policy: Policy, params: PyTree, config: LabConfig
) -> tuple[_Lab, Array]:
    theta, unravel = ravel_pytree(params)
    names = estimator_names(
        config.lambdas,
        spec.discrete,
        compatible_available(),
        usual=config.discount_steps and config.gamma < 1,
    )
    lab = _Lab(
        spec=spec,
        policy=policy,
        unravel=unravel,
        value_net=make_critic(spec, config.critic_hidden),
        q_net=linear_q.make_critic(spec) if spec.discrete else None,
        config=config,
        names=names,
    )
    return lab, theta


def _returns_and_lengths(
    batches: rollout.Transition, config: LabConfig
) -> tuple[np.ndarray, np.ndarray]:
    """``R(τ) = Σ_t γ^t (r_t + shift)`` and the length of every episode of
    host batches ``[B, T, N]`` (numpy)."""
    valid = np.asarray(batches.valid, np.float64)
    rewards = (np.asarray(batches.reward, np.float64) + config.reward_shift) * valid
    powers = config.gamma ** np.arange(valid.shape[1], dtype=np.float64)
    return np.einsum("btn,t->bn", rewards, powers), valid.sum(axis=1)


def _single_episodes(batches: rollout.Transition) -> rollout.Transition:
    """``[G, T, N, ...]`` batches as ``[G·N, T, 1, ...]`` single episodes."""

    def split(x):
        x = np.moveaxis(x, 2, 1)
        return x.reshape(-1, *x.shape[2:])[:, :, None]

    return jax.tree.map(split, batches)


def _draw_samples(
    spec: EnvSpec,
    policy: Policy,
    params: PyTree,
    key: Array,
    config: LabConfig,
    exact: bool,
    obs_norm: ObsNormState | None,
) -> tuple[rollout.Transition, rollout.Transition, rollout.Transition]:
    """The fitting sample, the batches and the reference's sample, as host
    batches of ``N`` episodes: one rollout (one compiled program) for all three,
    the first and last rounded up to whole batches (the last empty when the
    reference is ``exact``)."""
    size = config.episodes_per_batch
    fit_groups = -(-config.fit_episodes // size)
    reference_groups = 0 if exact else max(2, -(-config.reference_episodes // size))
    sample = collect_batches(
        spec,
        policy,
        params,
        key,
        fit_groups + config.batches + reference_groups,
        size,
        obs_norm,
    )
    ends = (fit_groups, fit_groups + config.batches)
    return tuple(
        jax.tree.map(lambda x, a=a, b=b: x[a:b], sample)
        for a, b in ((0, ends[0]), (ends[0], ends[1]), (ends[1], None))
    )


def compare_estimators(
    spec: EnvSpec,
    policy: Policy,
    params: PyTree,
    key: Array,
    config: LabConfig | None = None,
    obs_norm: ObsNormState | None = None,
) -> LabResult:
    """Measures the variance and bias of every estimator (module docstring).

    1. Fits the baselines and critics on ``fit_episodes`` episodes
       (:func:`fit_critics`).
    2. Draws ``batches × episodes_per_batch`` episodes and computes every
       estimator's estimate per batch (:func:`batch_estimates`, compiled).
    3. Takes the reference: exact on a tabular environment when the
       estimators estimate ``∇J_γ`` (:func:`exact_reference`), else the mean
       ``reference_estimator`` estimate of ``reference_episodes`` more
       episodes.
    4. Reduces the ``[B, K, P]`` estimates to :class:`EstimatorStats`.

    The three samples are independent (:func:`_draw_samples`).

    Args:
      spec: the environment.
      policy: the actor network.
      params: its parameters (the estimators differentiate these).
      key: PRNG key of all the sampling.
      config: the settings (default :class:`LabConfig`).
      obs_norm: observation statistics the policy was trained with (None: the
        raw observations).

    Raises:
      ConfigError: for an invalid setting (naming its flag).
    """
    config = config or LabConfig()
    validate_lab_config(config)
    lab, theta = _make_lab(spec, policy, params, config)
    sample_key, fit_key = jax.random.split(key)
    exact = exact_reference(
        spec, policy, params, config.gamma, config.reward_shift, obs_norm
    )
    use_exact = exact is not None and (config.discount_steps or config.gamma == 1.0)
    fit, batches, extra = _draw_samples(
        spec, policy, params, sample_key, config, use_exact, obs_norm
    )
    critics = fit_critics(
        lab,
        theta,
        _single_episodes(fit),
        fit_key,
        None if exact is None else exact[1],
    )
    estimates = _all_estimates(lab, theta, critics, batches)
    if use_exact:
        reference, samples, kind = exact[0], None, "exact"
    else:
        one = dataclasses.replace(lab, names=(config.reference_estimator,))
        samples = _all_estimates(one, theta, critics, extra)[:, 0]
        reference, kind = jnp.mean(samples, axis=0), "sampled"
    returns, lengths = _returns_and_lengths(batches, config)
    return LabResult(
        stats=estimator_stats(estimates, reference, samples),
        reference=reference,
        reference_norm=np.linalg.norm(reference),
        critics=critics,
        mean_return=np.mean(returns),
        mean_length=np.mean(lengths),
        names=lab.names,
        reference_kind=kind,
        config=config,
    )
