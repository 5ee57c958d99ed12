"""REINFORCE: Monte-Carlo policy gradient on complete episodes.

Each update runs one fresh, complete episode in every one of the ``N`` envs
(the rollout stops as soon as the last one ends) and ascends Williams'
estimate of the policy gradient

  ∇J(θ) ≈ (1/N) Σ_i Σ_t w_t ∇log π(a_t^i|s_t^i) · (Ĝ_t^i − b_t^i)

with no bootstrapping (``w_t = 1``, or ``γ^t`` with ``--discounted-gradient``).
Options (the classic cures for its variance):

* ``--returns total``: Ĝ_t = R(τ) = Σ_k γ^k r_k, the whole discounted episode
  return, for every step of the episode — the original estimator (Williams
  1992), the gradient of J_γ = E[Σ_t γ^t r_t] as it stands.
* ``--returns reward-to-go``: Ĝ_t = Σ_{t'≥t} γ^{t'−t} r_{t'}, causal: fewer
  terms, lower variance.
* ``--baseline none | mean | value``: b = 0; the mean of Ĝ over the valid
  steps of the *other* episodes of the batch (leave-one-out); or a learned
  ``V(s_t)`` regressed on the reward-to-go with its own Adam (``--critic-lr``).
  None of them depends on the episode's own actions, so the estimate stays
  unbiased. (A mean over the whole batch would include the episode's own
  returns, which correlate with its actions: a bias of O(1/N).)

What the sum is divided by (``--pg-normalizer``):

* ``episodes`` (the default): by ``N``, a constant, so the estimate is unbiased
  for any episode lengths.
* ``steps``: by the number of valid steps in the batch, a random number that
  correlates with the gradient when episode lengths depend on the actions:
  a ratio estimator, biased by O(1/N) (invisible at 64 episodes, clear at 1–4;
  ``ProbeEqualReturn-v0`` shows it). Kept for comparison.

Which gradient (``--discounted-gradient``): with reward-to-go, weighting step
``t`` by ``γ^t`` gives the exact gradient of J_γ (the causal form of
``--returns total``, which is that gradient already and ignores the flag).
Without the weight (the usual form, what practitioners use) the reward-to-go
estimator is not the gradient of any objective in general when γ < 1
(Nota & Thomas 2020, https://arxiv.org/abs/1906.07073; Thomas 2014, *Bias in
natural actor-critic algorithms*, ICML).

``--normalize-advantages`` standardises the weights by their mean and standard
deviation over the valid steps of the batch: statistics of the batch itself,
so it too is biased by O(1/N) (and its mean takes the place of any baseline's
mean). The entropy bonus and the critic's regression stay per-step means:
they are regularisers and a least-squares fit over the visited states, not
estimates of ∇J, and a per-step mean keeps ``--ent-coef`` meaning what it
means for the other algorithms.

Williams 1992, *Simple statistical gradient-following algorithms for
connectionist reinforcement learning*, https://doi.org/10.1007/BF00992696.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from pgjax import losses, rollout
from pgjax.algos import base, blocks
from pgjax.backend import Backend
from pgjax.config import ConfigError, Hyperparams, TrainConfig
from pgjax.envs import EnvSpec
from pgjax.networks import Critic, Policy

Array = jax.Array

METRICS = (
    "policy_loss",
    "value_loss",
    "entropy",
    "grad_norm",
    "learning_rate",
)
RETURNS = ("total", "reward-to-go")
BASELINES = ("none", "mean", "value")
NORMALIZERS = ("episodes", "steps")


def episode_weights(
    batch: rollout.Transition, hyper: Hyperparams, returns: str
) -> tuple[Array, Array]:
    """``(Ĝ, reward-to-go)``, both ``[T, N]``, for a batch of whole episodes.

    ``Ĝ_t`` is the episode's return ``R(τ) = Σ_k γ^k r_k`` (``returns =
    "total"``) or the reward-to-go ``Σ_{t'≥t} γ^{t'−t} r_{t'}``; rewards are
    scaled by ``hyper.reward_scale``. Padding rows (``valid = False``) are 0.
    """
    rewards = batch.reward * hyper.reward_scale * batch.valid
    gammas = jnp.broadcast_to(hyper.gamma, rewards.shape)
    # Padding rows after an episode ended must not leak into any return:
    # treating every padding row as an episode end keeps them separate.
    ends = batch.done | ~batch.valid
    to_go = losses.reward_to_go(rewards, gammas, ends)
    if returns == "total":
        return losses.episode_returns(rewards, gammas, ends), to_go
    return to_go, to_go


def leave_one_out_mean(g_hat: Array, valid: Array) -> Array:
    """The mean baseline of each episode: the mean of ``Ĝ`` over the valid
    steps of the other episodes, ``b_i = Σ_{j≠i} Σ_t Ĝ_t^j / Σ_{j≠i} T_j``.

    Episodes are independent given θ, so ``b_i`` does not depend on episode
    ``i``'s actions and ``E[∇log π · b_i] = 0`` exactly. (0 when the batch
    holds one episode.)

    Args:
      g_hat: ``[T, N]`` weights, one episode per column.
      valid: ``[T, N]`` bool, the episode's steps.

    Returns:
      ``[T, N]``: ``b_i`` broadcast over column ``i``.
    """
    # Sums of Ĝ less one of its values: the same mean in exact arithmetic, and
    # when every episode returns the same, a mean equal to it to the last bit
    # (weights of exactly 0, not rounding noise that Adam makes a full step).
    reference = jnp.max(jnp.where(valid, g_hat, -jnp.inf))
    shifted = jnp.where(valid, g_hat - reference, 0.0)
    sums = jnp.sum(shifted, axis=0)
    counts = jnp.sum(valid.astype(g_hat.dtype), axis=0)
    others = jnp.sum(counts) - counts
    mean = reference + (jnp.sum(sums) - sums) / jnp.maximum(others, 1.0)
    return jnp.broadcast_to(jnp.where(others > 0, mean, 0.0), g_hat.shape)


def discount_weights(time: int, gamma: Array) -> Array:
    """``[T, 1]`` weights ``γ^t`` of step ``t`` (every episode starts at row 0)."""
    return jnp.power(gamma, jnp.arange(time, dtype=jnp.float32))[:, None]


@struct.dataclass
class Estimate:
    """One REINFORCE gradient estimate and the losses it is the gradient of.

    Attributes:
      grads: ``{"actor": ..., "critic": ...}``, the gradient of
        ``policy_loss − ent_coef·entropy + value_loss``: its actor part is
        ``−`` the policy-gradient estimate (minus the entropy bonus's
        gradient); the critic's is 0 unless ``--baseline value``.
      policy_loss: ``−(1/D) Σ_{i,t} w_t·(Ĝ_t − b_t)·log π(a_t|s_t)``, ``D``
        the episodes or the valid steps (``--pg-normalizer``).
      entropy: mean entropy of π over the valid steps.
      value_loss: ``½·mean((V(s_t) − Ĝ_t^{to-go})²)`` over the valid steps
        (0 without a critic).
    """

    grads: Any
    policy_loss: Array
    entropy: Array
    value_loss: Array


@dataclasses.dataclass(frozen=True)
class Estimator:
    """REINFORCE's networks and its gradient estimate, apart from the step.

    ``gradient(agent, batch, hyper) → Estimate`` is the estimate the update
    takes its Adam step along, for ``agent`` a
    :class:`~pgjax.algos.base.ActorCriticState` and ``batch`` a rollout of
    whole episodes (:func:`pgjax.rollout.collect_episodes`).
    """

    policy: Policy
    critic: Critic
    gradient: Callable[[base.ActorCriticState, rollout.Transition, Hyperparams], Any]


def check_config(config: TrainConfig) -> None:
    """Raises :class:`~pgjax.config.ConfigError` for REINFORCE's choices."""
    for name, choices in (
        ("returns", RETURNS),
        ("baseline", BASELINES),
        ("pg_normalizer", NORMALIZERS),
    ):
        value = getattr(config, name)
        if value not in choices:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(flag, f"must be one of {choices}, got {value!r}")


def make_estimator(config: TrainConfig, spec: EnvSpec, backend: Backend) -> Estimator:
    """REINFORCE's gradient estimate for ``config`` (see the module docstring)."""
    check_config(config)
    policy, critic = base.make_networks(config, spec, backend)
    block_rows = blocks.block_rows_for(config, backend)
    use_critic = config.baseline == "value"

    make_block_loss = _block_loss_fn(policy, critic, use_critic)
    advantages_of = _advantages_fn(config, critic, use_critic, block_rows, backend)

    def gradient(agent: base.ActorCriticState, batch, hyper: Hyperparams) -> Estimate:
        advantages, to_go = advantages_of(agent, batch, hyper)
        num_valid = jnp.maximum(jnp.sum(batch.valid), 1).astype(jnp.float32)
        # One episode per env: N is the batch's width, a constant.
        pg_count = (
            float(batch.valid.shape[1])
            if config.pg_normalizer == "episodes"
            else num_valid
        )
        params = {"actor": agent.actor, "critic": agent.critic}
        grads, (policy_loss, entropy, value_loss) = blocks.compacted_grad(
            make_block_loss(hyper, pg_count, num_valid),
            params,
            (batch.obs, batch.action, advantages, to_go),
            batch.valid,
            block_rows,
            backend,
        )
        return Estimate(grads, policy_loss, entropy, value_loss)

    return Estimator(policy=policy, critic=critic, gradient=gradient)


def _block_loss_fn(policy, critic, use_critic: bool):
    """``(hyper, pg_count, num_valid) ↦`` the loss of one block of rows."""

    def make_block_loss(hyper: Hyperparams, pg_count, num_valid):
        """Masked sums over a block divided by the batch's counts, so block
        losses add up to the whole batch's: the policy term by ``pg_count``
        (episodes or steps), the entropy and value terms by the valid steps."""

        def block_loss(params, block):
            (obs, action, advantages, targets), in_range = block
            mask = in_range.astype(advantages.dtype)
            dist = policy.apply(params["actor"], obs)
            weighted = mask * advantages * dist.log_prob(action)
            policy_loss = -jnp.sum(weighted) / pg_count
            entropy = jnp.sum(mask * dist.entropy()) / num_valid
            total = policy_loss - hyper.ent_coef * entropy
            value_loss = jnp.zeros(())
            if use_critic:
                errors = critic.apply(params["critic"], obs) - targets
                value_loss = 0.5 * jnp.sum(mask * jnp.square(errors)) / num_valid
                total = total + value_loss
            return total, (policy_loss, entropy, value_loss)

        return block_loss

    return make_block_loss


def _advantages_fn(
    config: TrainConfig, critic, use_critic: bool, block_rows: int, backend: Backend
):
    """``(agent, batch, hyper) ↦ (advantages, critic targets)`` ``[T, N]``;
    ``use_critic``: the baseline is the critic's value."""

    def advantages_of(agent: base.ActorCriticState, batch, hyper: Hyperparams):
        """``w_t·(Ĝ_t − b_t)`` (standardised before the weight with
        ``--normalize-advantages``) and the critic's targets."""
        g_hat, to_go = episode_weights(batch, hyper, config.returns)
        if config.baseline == "mean":
            advantages = g_hat - leave_one_out_mean(g_hat, batch.valid)
        elif use_critic:
            # The networks see only the valid rows, packed into full blocks
            # (blocks.compacted_map): an untrained policy's 4096 CartPole
            # episodes fill ~16 % of the buffer's rows up to the longest one.
            values = blocks.compacted_map(
                lambda obs: critic.apply(agent.critic, obs),
                batch.obs,
                batch.valid,
                block_rows,
                backend,
            )
            advantages = g_hat - values
        else:
            advantages = g_hat
        if config.normalize_advantages:
            advantages = losses.normalize_advantages(advantages, batch.valid)
        if config.discounted_gradient and config.returns == "reward-to-go":
            # After the standardisation: its shift and positive scale keep
            # the estimate's direction; the weight must multiply what is left.
            advantages = advantages * discount_weights(g_hat.shape[0], hyper.gamma)
        return jax.lax.stop_gradient(advantages), to_go

    return advantages_of


def make_reinforce(
    config: TrainConfig, spec: EnvSpec, backend: Backend
) -> base.Algorithm:
    """Builds REINFORCE for ``spec`` with ``config.returns``, ``config.baseline``,
    ``config.pg_normalizer`` and ``config.discounted_gradient``."""
    estimator = make_estimator(config, spec, backend)
    policy, critic = estimator.policy, estimator.critic
    use_critic = config.baseline == "value"

    def init(key, hyper: Hyperparams):
        del hyper
        return base.init_actor_critic(policy, critic, key)

    def collect(agent, env_state, key, hyper: Hyperparams):
        del hyper
        return rollout.collect_episodes(
            spec,
            base.sampling_act_fn(policy, agent.actor),
            env_state,
            key,
            config.normalize_obs,
        )

    def update(agent: base.ActorCriticState, batch, key, hyper, progress):
        del key
        estimate = estimator.gradient(agent, batch, hyper)
        actor_grads, grad_norm = base.clip_by_global_norm(
            estimate.grads["actor"], hyper.max_grad_norm
        )
        lr = base.learning_rate(hyper.lr, progress, config.anneal_lr)
        actor, actor_opt = base.adam_step(agent.actor, agent.actor_opt, actor_grads, lr)
        critic_params, critic_opt = agent.critic, agent.critic_opt
        if use_critic:
            critic_grads, _ = base.clip_by_global_norm(
                estimate.grads["critic"], hyper.max_grad_norm
            )
            critic_lr = base.learning_rate(hyper.critic_lr, progress, config.anneal_lr)
            critic_params, critic_opt = base.adam_step(
                agent.critic, agent.critic_opt, critic_grads, critic_lr
            )
        agent = agent.replace(
            actor=actor,
            critic=critic_params,
            actor_opt=actor_opt,
            critic_opt=critic_opt,
        )
        return agent, {
            "policy_loss": estimate.policy_loss,
            "value_loss": estimate.value_loss,
            "entropy": estimate.entropy,
            "grad_norm": grad_norm,
            "learning_rate": lr,
        }

    return base.Algorithm(
        name="reinforce",
        init=init,
        collect=collect,
        update=update,
        act=base.policy_act(policy),
        metric_names=METRICS,
    )
