"""Advantage actor-critic (A2C) on fixed-length rollouts.

``--critic v`` (default): the critic learns ``V(s)`` by regression on λ-returns;
the actor is weighted by GAE(λ) advantages (λ = 0: the TD error
``r + γV(s') − V(s)``; λ = 1: the Monte-Carlo return over the rollout minus V,
bootstrapped at its end). Truncated steps bootstrap from V of the true final
observation.

``--critic q``: the action-value actor-critic. The critic learns ``Q(s, a)`` by
TD(0) towards ``r + γ·Σ_a' π(a'|s')·Q(s', a')`` (expected SARSA), and the actor
is weighted by ``Q(s, a) − Σ_a π(a|s)·Q(s, a)``, the advantage with the
action-independent baseline ``V = E_π[Q]``. Discrete actions only.

``--critic linear-q``: the notes' Q actor-critic. The critic is linear in the
features ``φ(s, a) = one_hot(a) ⊗ [s, 1]`` and learns by semi-gradient TD(0)
steps of plain gradient descent (expected form), and the actor is weighted by
``Q_w(s, a)`` itself (:mod:`pgjax.algos.linear_q`). Discrete actions only.

The actor takes one Adam step per rollout on ``L_π − c_H·H[π]`` (``--lr``).
By default the critic takes one step on ``c_v·L_V`` in the same blocked pass
(``--critic-lr``); with ``--critic-epochs E --critic-minibatches M`` beyond 1 × 1
it is fitted after the actor's step by ``E·M`` Adam steps on minibatches of
shuffled envs (:func:`pgjax.algos.critic.fit_critic`; ``c_v`` then plays no part).
Each network's gradient is clipped to ``--max-grad-norm`` on its own. Mnih et
al. 2016, https://arxiv.org/abs/1602.01783.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pgjax import losses, parallel, rollout, value_norm
from pgjax.algos import base, blocks, linear_q
from pgjax.algos import critic as critic_lib
from pgjax.backend import Backend
from pgjax.config import ConfigError, Hyperparams, TrainConfig, critic_fit
from pgjax.envs import EnvSpec

METRICS = (
    "policy_loss",
    "value_loss",
    "entropy",
    "grad_norm",
    "critic_grad_norm",
    "learning_rate",
    "kl",
    "value_scale",
)


def _q_targets_fn(policy, critic, block_rows: int, backend: Backend):
    """The Q critic's targets: ``(params, batch, hyper, stats) -> (A, y)``."""

    def q_targets(params, batch: rollout.Transition, hyper: Hyperparams, stats):
        """``Q(s,a) − Σ_a π(a|s)Q(s,a)`` and TD(0) targets ``[T, N]``."""
        del stats  # --value-norm is refused with --critic q

        def forward(b):
            obs, next_obs, action = b
            q_values = critic.apply(params["critic"], obs)
            probs = policy.apply(params["actor"], obs).probs()
            next_v = losses.expected_value_baseline(
                critic.apply(params["critic"], next_obs),
                policy.apply(params["actor"], next_obs).probs(),
            )
            one_hot = jax.nn.one_hot(action, q_values.shape[-1], dtype=q_values.dtype)
            q_taken = jnp.sum(one_hot * q_values, axis=-1)
            return q_taken - losses.expected_value_baseline(q_values, probs), next_v

        advantages, next_v = blocks.blocked_map(
            forward, (batch.obs, batch.next_obs, batch.action), block_rows, backend
        )
        rewards = batch.reward * hyper.reward_scale
        discounts = hyper.gamma * (1.0 - batch.terminated.astype(rewards.dtype))
        return advantages, rewards + discounts * next_v

    return q_targets


def _joint_critic_step(config: TrainConfig) -> bool:
    """Whether the critic's one step per rollout shares the actor's blocked
    pass (one epoch of one minibatch); more steps fit it on its own after the
    actor's step, and linear-q takes TD steps."""
    epochs, minibatches = critic_fit(config)
    return epochs * minibatches == 1 and config.critic != "linear-q"


def _critic_step_fn(
    config: TrainConfig,
    critic_prediction,
    block_rows: int,
    backend: Backend,
):
    """The critic's part of an update, chosen once:
    ``(agent, critic_params, grads, batch, targets, key, lr, hyper)
    -> (critic_params, critic_opt, metrics)``.

    :func:`_joint_critic_step`: one Adam step on the gradient the actor's pass
    already took (``grads["critic"]``). ``--critic linear-q``: TD(0) steps. Otherwise
    :func:`pgjax.algos.critic.fit_critic`'s epochs of minibatches.
    """
    epochs, minibatches = critic_fit(config)
    q_critic = config.critic in ("q", "linear-q")

    def joint_step(agent, critic_params, grads, batch, targets, key, lr, hyper):
        critic_grads, grad_norm = base.clip_by_global_norm(
            grads["critic"], hyper.max_grad_norm
        )
        critic_params, critic_opt = base.adam_step(
            critic_params, agent.critic_opt, critic_grads, lr
        )
        return critic_params, critic_opt, {"critic_grad_norm": grad_norm}

    def td_step(agent, critic_params, grads, batch, targets, key, lr, hyper):
        critic_params, value_loss, grad_norm = linear_q.td_fit(
            critic_params, targets, key, lr, epochs, minibatches
        )
        metrics = {"value_loss": value_loss, "critic_grad_norm": grad_norm}
        return critic_params, agent.critic_opt, metrics  # no Adam state

    def critic_loss(critic_params, block):
        obs, action, block_targets = block
        prediction = critic_prediction(critic_params, obs, action)
        return losses.value_loss(prediction, block_targets)

    def fitted_step(agent, critic_params, grads, batch, targets, key, lr, hyper):
        critic_params, critic_opt, value_loss, grad_norm = critic_lib.fit_critic(
            critic_loss,
            critic_params,
            agent.critic_opt,
            # Only the Q critic reads the actions: don't shuffle them for V.
            (batch.obs, batch.action if q_critic else None, targets),
            key,
            lr,
            hyper.max_grad_norm,
            epochs,
            minibatches,
            block_rows,
            backend,
        )
        metrics = {"value_loss": value_loss, "critic_grad_norm": grad_norm}
        return critic_params, critic_opt, metrics

    if _joint_critic_step(config):
        return joint_step
    return td_step if config.critic == "linear-q" else fitted_step


def make_a2c(config: TrainConfig, spec: EnvSpec, backend: Backend) -> base.Algorithm:
    """Builds A2C for ``spec``; ``config.critic`` picks ``v``, ``q`` or ``linear-q``."""
    if config.critic not in ("v", "q", "linear-q"):
        raise ConfigError(
            "--critic", f"must be v, q or linear-q, got {config.critic!r}"
        )
    q_critic = config.critic in ("q", "linear-q")
    if q_critic and not spec.discrete:
        raise ConfigError("--critic", f"{config.critic} needs a discrete action space")
    policy, critic = base.make_networks(config, spec, backend, q_critic=q_critic)
    if config.critic == "linear-q":
        critic = linear_q.make_critic(spec)

    init = base.actor_critic_init(policy, critic)
    collect = base.fixed_length_collect(config, spec, policy)

    block_rows = blocks.block_rows_for(config, backend)
    targets_fn = _targets_fn(config, spec, policy, critic, block_rows, backend)
    joint_critic_step = _joint_critic_step(config)
    critic_prediction = _critic_prediction_fn(critic, q_critic)
    critic_step = _critic_step_fn(config, critic_prediction, block_rows, backend)
    make_block_loss = _block_loss_fn(policy, critic_prediction, joint_critic_step)

    def update(agent: base.ActorCriticState, batch, key, hyper, progress):
        params, advantages, targets, value_stats = _targets_and_stats(
            config, targets_fn, agent, batch, hyper
        )
        count = blocks.block_count(*batch.reward.shape, block_rows, backend)
        # The critic's targets (and its parameters) enter this pass only when
        # its step is taken here; None leaves are empty pytrees.
        grads, metrics = blocks.blocked_grad(
            make_block_loss(hyper, count),
            params if joint_critic_step else {"actor": params["actor"]},
            (
                batch.obs,
                batch.action,
                advantages,
                targets if joint_critic_step else None,
            ),
            block_rows,
            backend,
        )
        # Each network is clipped on its own: early on the critic's large
        # regression errors would otherwise throttle the actor's gradient.
        actor_grads, grad_norm = base.clip_by_global_norm(
            grads["actor"], hyper.max_grad_norm
        )
        lr = base.learning_rate(hyper.lr, progress, config.anneal_lr) * agent.lr_scale
        critic_lr = base.learning_rate(hyper.critic_lr, progress, config.anneal_lr)
        actor, actor_opt = base.adam_step(agent.actor, agent.actor_opt, actor_grads, lr)
        critic_params, critic_opt, critic_metrics = critic_step(
            agent, params["critic"], grads, batch, targets, key, critic_lr, hyper
        )
        metrics.update(critic_metrics)
        # KL of this update on a subset of the envs (plenty for a mean estimate).
        kl_obs = parallel.strided_envs(batch.obs, config.kl_envs)
        kl = base.mean_kl(policy, agent.actor, actor, kl_obs)
        agent = base.ActorCriticState(
            actor,
            critic_params,
            actor_opt,
            critic_opt,
            base.adapt_lr_scale(agent.lr_scale, kl, hyper.target_kl),
            value_stats,
        )
        return agent, {
            **metrics,
            "grad_norm": grad_norm,
            "learning_rate": lr,
            "kl": kl,
            "value_scale": value_norm.statistics(value_stats)[1],
        }

    return base.Algorithm(
        name="a2c",
        init=init,
        collect=collect,
        update=update,
        act=base.policy_act(policy),
        metric_names=METRICS,
    )


def _targets_and_stats(config: TrainConfig, targets_fn, agent, batch, hyper):
    """``(params, advantages, targets, value_stats)`` for one update.

    ``params`` is ``{"actor", "critic"}``, its critic rescaled under
    ``--value-norm`` (:func:`pgjax.algos.critic.prepared_targets`).
    """
    params = {"actor": agent.actor, "critic": agent.critic}
    advantages, targets = targets_fn(params, batch, hyper, agent.value_stats)
    advantages, targets, params["critic"], value_stats = critic_lib.prepared_targets(
        config, advantages, targets, agent.critic, agent.value_stats
    )
    return params, advantages, targets, value_stats


def _targets_fn(config, spec, policy, critic, block_rows, backend):
    """``(params, batch, hyper, value_stats) ↦ (advantages, targets)`` ``[T, N]``
    for the critic ``config.critic`` names (no gradient)."""
    if config.critic == "linear-q":
        # Q_w(s, a) for the actor, and what TD(0) reads for the critic.
        return linear_q.make_targets(policy, critic, block_rows, backend)
    if config.critic == "q":
        return _q_targets_fn(policy, critic, block_rows, backend)

    def v_targets(params, batch: rollout.Transition, hyper: Hyperparams, stats):
        """GAE advantages and λ-return targets."""
        value_fn = critic_lib.critic_value_fn(config, critic, params["critic"], stats)
        return critic_lib.gae_targets(value_fn, batch, hyper, block_rows, spec, backend)

    return v_targets


def _critic_prediction_fn(critic, q_critic: bool):
    """``(critic_params, obs, action) ↦`` V(s), or Q(s, a) for a Q critic."""

    def critic_prediction(critic_params, obs, action):
        if not q_critic:
            return critic.apply(critic_params, obs)
        q_values = critic.apply(critic_params, obs)
        one_hot = jax.nn.one_hot(action, q_values.shape[-1], dtype=q_values.dtype)
        return jnp.sum(one_hot * q_values, axis=-1)

    return critic_prediction


def _block_loss_fn(policy, critic_prediction, joint_critic_step: bool):
    """``(hyper, count) ↦`` the loss of one block of rows, ``L_π − c_H·H``
    (``+ c_v·L_V`` when the critic steps in the same pass), divided by the
    number of blocks so that block losses sum to the batch loss."""

    def make_block_loss(hyper: Hyperparams, count: int):
        def block_loss(params, block):
            obs, action, advantages, targets = block
            dist = policy.apply(params["actor"], obs)
            policy_loss = losses.policy_gradient_loss(dist.log_prob(action), advantages)
            entropy_loss = losses.entropy_loss(dist.entropy())
            total = policy_loss + hyper.ent_coef * entropy_loss
            metrics = {"policy_loss": policy_loss, "entropy": -entropy_loss}
            if joint_critic_step:
                value_loss = losses.value_loss(
                    critic_prediction(params["critic"], obs, action), targets
                )
                total = total + hyper.vf_coef * value_loss
                metrics["value_loss"] = value_loss
            return total / count, jax.tree.map(lambda m: m / count, metrics)

        return block_loss

    return make_block_loss
