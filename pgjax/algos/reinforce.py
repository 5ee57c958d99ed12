"""REINFORCE: Monte-Carlo policy gradient on complete episodes.

Each update runs one fresh, complete episode in every env (the rollout stops as
soon as the last one ends) and ascends

  ∇J(θ) ≈ mean_{i,t} ∇log π(a_t|s_t) · (Ĝ_t − b_t)

with no bootstrapping. Options (the classic cures for its variance):

* ``--returns total``: Ĝ_t = R(τ), the whole (discounted) episode return, for
  every step of the episode — the original estimator (Williams 1992).
* ``--returns reward-to-go``: Ĝ_t = Σ_{t'≥t} γ^{t'−t} r_{t'}, causal; still
  unbiased, lower variance.
* ``--baseline none | mean | value``: b = 0; the batch mean of Ĝ over valid
  steps; or a learned ``V(s_t)`` regressed on the reward-to-go with its own Adam
  (``--critic-lr``). None of them depends on the action, so the estimate stays
  unbiased (up to the batch mean's O(1/n) self-correlation).

Williams 1992, *Simple statistical gradient-following algorithms for
connectionist reinforcement learning*, https://doi.org/10.1007/BF00992696.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pgjax import losses, rollout
from pgjax.algos import base, blocks
from pgjax.backend import Backend
from pgjax.config import ConfigError, Hyperparams, TrainConfig
from pgjax.envs import EnvSpec

METRICS = (
    "policy_loss",
    "value_loss",
    "entropy",
    "grad_norm",
    "learning_rate",
)
RETURNS = ("total", "reward-to-go")
BASELINES = ("none", "mean", "value")


def make_reinforce(
    config: TrainConfig, spec: EnvSpec, backend: Backend
) -> base.Algorithm:
    """Builds REINFORCE for ``spec`` with ``config.returns`` and ``config.baseline``."""
    if config.returns not in RETURNS:
        raise ConfigError(
            "--returns", f"must be one of {RETURNS}, got {config.returns!r}"
        )
    if config.baseline not in BASELINES:
        raise ConfigError(
            "--baseline", f"must be one of {BASELINES}, got {config.baseline!r}"
        )
    policy, critic = base.make_networks(config, spec, backend)

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

    def weights(batch: rollout.Transition, hyper: Hyperparams):
        rewards = batch.reward * hyper.reward_scale
        gammas = jnp.broadcast_to(hyper.gamma, rewards.shape)
        # Padding rows after an episode ended must not leak into any return:
        # treating every padding row as an episode end keeps them separate.
        ends = batch.done | ~batch.valid
        to_go = losses.reward_to_go(rewards * batch.valid, gammas, ends)
        if config.returns == "total":
            return losses.episode_returns(rewards * batch.valid, gammas, ends), to_go
        return to_go, to_go

    block_rows = blocks.block_rows_for(config, backend)
    use_critic = config.baseline == "value"

    def make_block_loss(hyper: Hyperparams, num_valid):
        """Masked sums over a block divided by the batch's valid count, so block
        losses add up to the masked means of the whole batch."""

        def block_loss(params, block):
            (obs, action, advantages, targets), in_range = block
            weight = in_range.astype(advantages.dtype) / num_valid
            dist = policy.apply(params["actor"], obs)
            policy_loss = -jnp.sum(weight * advantages * dist.log_prob(action))
            entropy = jnp.sum(weight * dist.entropy())
            total = policy_loss - hyper.ent_coef * entropy
            value_loss = jnp.zeros(())
            if use_critic:
                errors = critic.apply(params["critic"], obs) - targets
                value_loss = 0.5 * jnp.sum(weight * jnp.square(errors))
                total = total + value_loss
            return total, (policy_loss, entropy, value_loss)

        return block_loss

    def update(agent: base.ActorCriticState, batch, key, hyper, progress):
        del key
        # The networks see only the valid rows, packed into full blocks
        # (base.compacted_grad): an untrained policy's 4096 CartPole episodes
        # fill ~16 % of the buffer's rows up to the longest episode.
        g_hat, to_go = weights(batch, hyper)
        if config.baseline == "mean":
            advantages = g_hat - losses.masked_mean(g_hat, batch.valid)
        elif use_critic:
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
        advantages = jax.lax.stop_gradient(advantages)
        num_valid = jnp.maximum(jnp.sum(batch.valid), 1).astype(jnp.float32)
        params = {"actor": agent.actor, "critic": agent.critic}
        grads, (policy_loss, entropy, value_loss) = blocks.compacted_grad(
            make_block_loss(hyper, num_valid),
            params,
            (batch.obs, batch.action, advantages, to_go),
            batch.valid,
            block_rows,
            backend,
        )
        actor_grads, grad_norm = base.clip_by_global_norm(
            grads["actor"], hyper.max_grad_norm
        )
        lr = base.learning_rate(hyper.lr, progress, config.anneal_lr)
        actor, actor_opt = base.adam_step(agent.actor, agent.actor_opt, actor_grads, lr)
        critic_params, critic_opt = agent.critic, agent.critic_opt
        if use_critic:
            critic_grads, _ = base.clip_by_global_norm(
                grads["critic"], hyper.max_grad_norm
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
            "policy_loss": policy_loss,
            "value_loss": value_loss,
            "entropy": entropy,
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
