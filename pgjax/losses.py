"""Return estimators and losses for policy-gradient methods.

Pure, jittable, vmappable building blocks in the style of rlax. Conventions:

* Time is axis 0. Any trailing batch axes ``...`` are allowed and must agree
  across the arguments of one call; shapes are checked with chex when the
  function is traced, so a ``(T, N, 1)`` value beside ``(T, N)`` rewards raises
  instead of broadcasting silently.
* ``discounts[t]`` is ``γ·(1 − terminated_t)``: zero where the episode reached a
  terminal state at step ``t``. Truncation (a time limit) is *not* a terminal
  state, so a truncated step keeps its discount and bootstraps from the value of
  the true final observation, ``next_values[t]``.
* ``dones[t]`` is ``terminated_t or truncated_t``: the episode ended after step
  ``t`` and the next row of the batch belongs to a new episode. No return or
  advantage flows across such a boundary.
* Flags (``dones``, ``mask``) may be booleans or 0/1 floats.
* ``mask`` marks valid entries of a padded batch (1 = valid); means are taken
  over valid entries only.

References:
  Sutton & Barto, *Reinforcement Learning: An Introduction*, 2nd ed., ch. 7, 12, 13.
  Schulman et al. 2016, *High-Dimensional Continuous Control Using Generalized
  Advantage Estimation*, https://arxiv.org/abs/1506.02438.
  Pardo et al. 2018, *Time Limits in Reinforcement Learning*,
  https://arxiv.org/abs/1712.00378.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = [
    "discounted_returns",
    "entropy_loss",
    "episode_returns",
    "expected_value_baseline",
    "gae_advantages",
    "lambda_returns",
    "masked_mean",
    "n_step_returns",
    "normalize_advantages",
    "policy_gradient_loss",
    "reward_to_go",
    "td_errors",
    "value_loss",
]


def _as_float(x: Array, like: Array) -> Array:
    """Casts a flag or number array to the float dtype of ``like``."""
    return jnp.asarray(x).astype(jnp.result_type(like))


def _check_time_major(*arrays: Array) -> None:
    chex.assert_rank(arrays[0], {1, 2, 3, 4, 5, 6})
    chex.assert_equal_shape(arrays)


def _reverse_scan(step, init, xs):
    """``lax.scan`` from the last time step to the first."""
    _, ys = jax.lax.scan(step, init, xs, reverse=True)
    return ys


def masked_mean(x: Array, mask: Array | None = None) -> Array:
    """Mean of ``x`` over the entries where ``mask`` is set.

    Args:
      x: array of any shape.
      mask: ``None`` (plain mean) or an array of the same shape; booleans or 0/1.

    Returns:
      A scalar: ``Σ mask·x / max(Σ mask, 1)``. An all-zero mask gives 0, not NaN.
    """
    if mask is None:
        return jnp.mean(x)
    chex.assert_equal_shape([x, mask])
    mask = _as_float(mask, x)
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def discounted_returns(
    rewards: Array, discounts: Array, bootstrap_value: Array
) -> Array:
    """Discounted returns ``G_t = r_t + d_t·G_{t+1}`` with ``G_T = bootstrap``.

    With ``discounts = γ·(1 − done)`` and a zero bootstrap this is the
    reward-to-go of each step within its episode.

    Args:
      rewards: ``[T, ...]`` rewards ``r_t``.
      discounts: ``[T, ...]`` discounts ``d_t`` (0 where the return must stop).
      bootstrap_value: ``[...]`` value ``G_T`` that follows the last step.

    Returns:
      ``[T, ...]`` returns ``G_t``.
    """
    _check_time_major(rewards, discounts)
    chex.assert_shape(bootstrap_value, rewards.shape[1:])
    discounts = _as_float(discounts, rewards)

    def step(next_return, inputs):
        reward, discount = inputs
        value = reward + discount * next_return
        return value, value

    return _reverse_scan(
        step, _as_float(bootstrap_value, rewards), (rewards, discounts)
    )


def td_errors(
    rewards: Array, values: Array, next_values: Array, discounts: Array
) -> Array:
    """One-step temporal-difference errors ``δ_t = r_t + d_t·V'_t − V_t``.

    Args:
      rewards: ``[T, ...]`` rewards ``r_t``.
      values: ``[T, ...]`` values ``V(s_t)``.
      next_values: ``[T, ...]`` values ``V(s_{t+1})`` of the true next state (the
        final observation, not the reset one, where an episode ended).
      discounts: ``[T, ...]`` ``γ·(1 − terminated_t)``.

    Returns:
      ``[T, ...]`` TD errors ``δ_t``; an unbiased estimate of the advantage
      ``A(s_t, a_t)`` when ``V`` is the true value of the policy.
    """
    _check_time_major(rewards, values, next_values, discounts)
    return rewards + _as_float(discounts, rewards) * next_values - values


def gae_advantages(
    rewards: Array,
    values: Array,
    next_values: Array,
    discounts: Array,
    dones: Array,
    lambda_: float | Array,
) -> Array:
    """Generalised advantage estimates, GAE(λ), aware of truncation.

    ``A_t = δ_t + λ·d_t·(1 − done_t)·A_{t+1}``, ``A_T = 0``, with ``δ_t`` from
    :func:`td_errors`. A truncated step bootstraps from ``V'_t`` (the final
    observation's value) through ``δ_t``; the ``(1 − done_t)`` factor keeps the
    next episode's advantages out. λ = 0 gives the TD errors; λ = 1 on data whose
    episodes end only by termination gives discounted returns minus values.

    Args:
      rewards: ``[T, ...]``.
      values: ``[T, ...]`` ``V(s_t)``.
      next_values: ``[T, ...]`` ``V(s_{t+1})`` of the true next state.
      discounts: ``[T, ...]`` ``γ·(1 − terminated_t)``.
      dones: ``[T, ...]`` ``terminated_t or truncated_t``.
      lambda_: scalar λ in [0, 1] (may be traced).

    Returns:
      ``[T, ...]`` advantages ``A_t`` (Schulman et al. 2016, eq. 16).
    """
    _check_time_major(rewards, values, next_values, discounts, dones)
    deltas = td_errors(rewards, values, next_values, discounts)
    continues = _as_float(discounts, rewards) * (1.0 - _as_float(dones, rewards))
    lambda_ = jnp.asarray(lambda_, dtype=rewards.dtype)

    def step(next_advantage, inputs):
        delta, cont = inputs
        advantage = delta + lambda_ * cont * next_advantage
        return advantage, advantage

    return _reverse_scan(step, jnp.zeros_like(rewards[0]), (deltas, continues))


def lambda_returns(
    rewards: Array,
    values: Array,
    next_values: Array,
    discounts: Array,
    dones: Array,
    lambda_: float | Array,
) -> Array:
    """λ-returns ``G^λ_t = A^GAE_t + V_t``, the usual critic targets.

    Equivalently ``G^λ_t = r_t + d_t·[(1 − λ)·V'_t + λ·G^λ_{t+1}]`` inside an
    episode, and ``r_t + d_t·V'_t`` at its last step. Arguments as in
    :func:`gae_advantages`; returns ``[T, ...]``.
    """
    return (
        gae_advantages(rewards, values, next_values, discounts, dones, lambda_) + values
    )


def n_step_returns(
    rewards: Array, next_values: Array, discounts: Array, dones: Array, n: int
) -> Array:
    """Truncation-aware n-step returns.

    ``G^(n)_t = Σ_{k<m} (Π_{j<k} d_{t+j}) r_{t+k} + (Π_{j<m} d_{t+j}) V'_{t+m−1}``
    where ``m ≤ n`` stops early at the end of the episode or of the batch, so the
    return bootstraps from the value of the last real next state it reaches and
    never sums rewards of the following episode. ``n = 1`` gives the one-step
    target ``r_t + d_t·V'_t``; ``n ≥ T`` gives the λ = 1 return over the batch.

    Args:
      rewards: ``[T, ...]``.
      next_values: ``[T, ...]`` ``V(s_{t+1})`` of the true next state.
      discounts: ``[T, ...]`` ``γ·(1 − terminated_t)``.
      dones: ``[T, ...]`` ``terminated_t or truncated_t``.
      n: static number of steps, ``n ≥ 1``.

    Returns:
      ``[T, ...]`` n-step returns.
    """
    _check_time_major(rewards, next_values, discounts, dones)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    discounts = _as_float(discounts, rewards)
    # Where the recursion must stop and bootstrap: the episode ended at t, or t is
    # the last row of the batch.
    stop = _as_float(dones, rewards).at[-1].set(1.0)
    returns = rewards + discounts * next_values  # G^(1)
    for _ in range(n - 1):
        shifted = jnp.concatenate([returns[1:], returns[-1:]], axis=0)
        tail = stop * next_values + (1.0 - stop) * shifted
        returns = rewards + discounts * tail
    return returns


def reward_to_go(rewards: Array, discounts: Array, dones: Array) -> Array:
    """Causal Monte-Carlo return of each step: ``Q̂_t = Σ_{t'≥t} γ^{t'−t} r_{t'}``.

    Sums to the end of the episode that step ``t`` belongs to and no further
    (no bootstrapping). Every episode must end inside the batch for the result to
    be a full Monte-Carlo return.

    Args:
      rewards: ``[T, ...]``.
      discounts: ``[T, ...]`` γ (termination makes no difference here because the
        sum stops at every episode end anyway).
      dones: ``[T, ...]`` ``terminated_t or truncated_t``.

    Returns:
      ``[T, ...]`` reward-to-go.
    """
    _check_time_major(rewards, discounts, dones)
    continues = _as_float(discounts, rewards) * (1.0 - _as_float(dones, rewards))
    return discounted_returns(rewards, continues, jnp.zeros_like(rewards[0]))


def episode_returns(rewards: Array, discounts: Array, dones: Array) -> Array:
    """Whole-episode return ``R(τ) = Σ_k γ^k r_k`` broadcast to every step of τ.

    The weight of vanilla REINFORCE: every action of an episode is credited with
    the episode's total (discounted) return, including rewards that came before
    it. Arguments as in :func:`reward_to_go`; the first row starts an episode.

    Returns:
      ``[T, ...]`` where entry ``t`` is the return of the episode containing ``t``.
    """
    to_go = reward_to_go(rewards, discounts, dones)
    dones = _as_float(dones, rewards)
    # Step t starts an episode when t = 0 or the episode ended at t − 1.
    starts = jnp.concatenate([jnp.ones_like(dones[:1]), dones[:-1]], axis=0)

    def step(current, inputs):
        start, value = inputs
        current = start * value + (1.0 - start) * current
        return current, current

    _, totals = jax.lax.scan(step, jnp.zeros_like(rewards[0]), (starts, to_go))
    return totals


def expected_value_baseline(q_values: Array, probs: Array) -> Array:
    """``V(s) = Σ_a π(a|s)·Q(s, a)``: the action-independent baseline of a Q-critic.

    Args:
      q_values: ``[..., A]``.
      probs: ``[..., A]`` policy probabilities.

    Returns:
      ``[...]``; ``Q(s, a) − V(s)`` is the advantage of action ``a``.
    """
    chex.assert_equal_shape([q_values, probs])
    return jnp.sum(probs * q_values, axis=-1)


def policy_gradient_loss(
    log_probs: Array, advantages: Array, mask: Array | None = None
) -> Array:
    """Score-function surrogate ``L = −mean(sg(A_t)·log π(a_t|s_t))``.

    ``−∇_θ L`` is the REINFORCE / actor-critic estimate of ∇J(θ): the gradient
    w.r.t. ``log_probs[i]`` is ``−A_i / n`` and no gradient reaches the
    advantages (they are constants of the estimator).

    Args:
      log_probs: ``[T, ...]`` ``log π(a_t|s_t)``.
      advantages: ``[T, ...]`` weights (returns, advantages, ...).
      mask: optional ``[T, ...]`` valid entries.

    Returns:
      A scalar loss to minimise.
    """
    chex.assert_equal_shape([log_probs, advantages])
    weighted = jax.lax.stop_gradient(advantages) * log_probs
    return -masked_mean(weighted, mask)


def value_loss(values: Array, targets: Array, mask: Array | None = None) -> Array:
    """Squared error ``½·mean((V_t − sg(G_t))²)``; targets get no gradient.

    Args:
      values: ``[T, ...]`` predictions.
      targets: ``[T, ...]`` regression targets (returns, λ-returns, TD targets).
      mask: optional ``[T, ...]`` valid entries.
    """
    chex.assert_equal_shape([values, targets])
    errors = values - jax.lax.stop_gradient(targets)
    return 0.5 * masked_mean(jnp.square(errors), mask)


def entropy_loss(entropies: Array, mask: Array | None = None) -> Array:
    """``−mean(H[π(·|s_t)])``: minimising it raises the policy's entropy.

    Args:
      entropies: ``[T, ...]`` per-state entropies.
      mask: optional ``[T, ...]`` valid entries.
    """
    return -masked_mean(entropies, mask)


def normalize_advantages(
    advantages: Array, mask: Array | None = None, eps: float = 1e-8
) -> Array:
    """``(A − mean(A)) / (std(A) + eps)`` over the valid entries.

    Statistics come from the valid entries only; padded entries come back as 0.
    The result carries no gradient into the statistics' inputs.

    Advantages that are all equal carry no signal, and come back as 0. Equal
    up to the rounding of their mean counts as equal (a spread below 64 units
    in the last place of the largest ``|A|``): divided by ``std + eps``, that
    rounding would otherwise come back at unit scale, a step of pure noise.

    Args:
      advantages: ``[T, ...]``.
      mask: optional ``[T, ...]`` valid entries.
      eps: added to the standard deviation.
    """
    advantages = jax.lax.stop_gradient(advantages)
    weights = jnp.ones_like(advantages) if mask is None else _as_float(mask, advantages)
    mean = masked_mean(advantages, mask)
    std = jnp.sqrt(masked_mean(jnp.square(advantages - mean), mask))
    largest = jnp.max(jnp.where(weights > 0, jnp.abs(advantages), 0.0))
    rounding = 64 * jnp.finfo(advantages.dtype).eps * largest
    normalized = jnp.where(std > rounding, (advantages - mean) / (std + eps), 0.0)
    return normalized * weights
