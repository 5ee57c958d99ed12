"""REINFORCE: Monte-Carlo policy gradient on complete episodes.

Each update runs one fresh, complete episode in every env (the rollout stops as
soon as the last one ends) and ascends

  ∇J(θ) ≈ mean_{i,t} ∇log π(a_t|s_t) · (Ĝ_t − b_t)

with no bootstrapping. Options (the variance-reduction cures of SCIENCE.md):

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
from pgjax.algos import base
from pgjax.config import Hyperparams, TrainConfig
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


def make_reinforce(config: TrainConfig, spec: EnvSpec) -> base.Algorithm:
    """Builds REINFORCE for ``spec`` with ``config.returns`` and ``config.baseline``."""
    if config.returns not in RETURNS:
        raise ValueError(f"--returns must be one of {RETURNS}, got {config.returns!r}")
    if config.baseline not in BASELINES:
        raise ValueError(
            f"--baseline must be one of {BASELINES}, got {config.baseline!r}"
        )
    policy, critic = base.make_networks(config, spec)

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

    def actor_loss(actor_params, batch, advantages):
        dist = policy.apply(actor_params, batch.obs)
        log_prob = dist.log_prob(batch.action)
        policy_loss = losses.policy_gradient_loss(log_prob, advantages, batch.valid)
        entropy = -losses.entropy_loss(dist.entropy(), batch.valid)
        return policy_loss, (policy_loss, entropy)

    def critic_loss(critic_params, batch, targets):
        values = critic.apply(critic_params, batch.obs)
        return losses.value_loss(values, targets, batch.valid)

    def update(agent: base.ActorCriticState, batch, key, hyper, progress):
        del key
        g_hat, to_go = weights(batch, hyper)
        if config.baseline == "mean":
            advantages = g_hat - losses.masked_mean(g_hat, batch.valid)
        elif config.baseline == "value":
            values = critic.apply(agent.critic, batch.obs)
            advantages = g_hat - values
        else:
            advantages = g_hat
        if config.normalize_advantages:
            advantages = losses.normalize_advantages(advantages, batch.valid)
        advantages = jax.lax.stop_gradient(advantages)

        def total_loss(actor_params):
            policy_loss, aux = actor_loss(actor_params, batch, advantages)
            return policy_loss - hyper.ent_coef * aux[1], aux

        actor_grads, (policy_loss, entropy) = jax.grad(total_loss, has_aux=True)(
            agent.actor
        )
        actor_grads, grad_norm = base.clip_by_global_norm(
            actor_grads, hyper.max_grad_norm
        )
        lr = base.learning_rate(hyper.lr, progress, config.anneal_lr)
        actor, actor_opt = base.adam_step(agent.actor, agent.actor_opt, actor_grads, lr)

        critic_params, critic_opt = agent.critic, agent.critic_opt
        value_loss = jnp.zeros(())
        if config.baseline == "value":
            value_loss, critic_grads = jax.value_and_grad(critic_loss)(
                agent.critic, batch, to_go
            )
            critic_grads, _ = base.clip_by_global_norm(
                critic_grads, hyper.max_grad_norm
            )
            critic_lr = base.learning_rate(hyper.critic_lr, progress, config.anneal_lr)
            critic_params, critic_opt = base.adam_step(
                agent.critic, agent.critic_opt, critic_grads, critic_lr
            )
        agent = base.ActorCriticState(actor, critic_params, actor_opt, critic_opt)
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
