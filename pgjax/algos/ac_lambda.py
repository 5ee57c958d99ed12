"""Online actor-critic with accumulating eligibility traces, AC(λ).

The backward view of λ-returns (Sutton & Barto 2018, *Reinforcement Learning:
An Introduction*, 2nd ed., section 13.6, "Actor–Critic with Eligibility
Traces"; traces in chapter 12). Each env ``i`` keeps one trace per network,
and every environment step is followed by one update of both::

    δ_i   = r_i + γ·(1 − terminated_i)·V_w(s'_i) − V_w(s_i)
    e^θ_i ← γλ·e^θ_i + ∇_θ log π_θ(a_i|s_i)        e^w_i ← γλ·e^w_i + ∇_w V_w(s_i)
    θ     ← θ + α_θ·mean_i δ_i·e^θ_i               w     ← w + α_w·mean_i δ_i·e^w_i

with plain gradient steps, as in the book (``--lr`` is α_θ, ``--critic-lr``
α_w; both decay linearly to 0 with ``--anneal-lr``). A truncated step keeps
its discount and bootstraps from V of the true final observation (the
rollout's ``next_obs``), never the reset one. A trace is set to zero once
its episode ends (terminated or truncated), so the next episode starts from
``e = 0``. ``--reward-scale`` multiplies the rewards; the clipping,
entropy-bonus and KL-adaptation flags of the batch methods play no part.
The book's episodic pseudocode also weights the actor's gradient at step
``t`` by ``I = γ^t``, which makes it the gradient of the discounted
objective; the actor here takes the usual form without it, the one whose
episode sum is GAE's policy gradient below.

**Why λ is GAE's λ.** Unrolled, ``e^θ_t = Σ_{k≤t} (γλ)^{t−k}·∇log π(a_k|s_k)``
over the steps ``k`` of the current episode, so summed over an episode with
θ and w held fixed,

    Σ_t δ_t·e^θ_t = Σ_k ∇log π(a_k|s_k)·Σ_{t≥k} (γλ)^{t−k}·δ_t
                  = Σ_k ∇log π(a_k|s_k)·A^GAE(λ)_k,

the forward view's GAE(λ) advantages (:func:`pgjax.losses.gae_advantages`,
Schulman et al. 2016, https://arxiv.org/abs/1506.02438); likewise
``Σ_t δ_t·e^w_t = Σ_k ∇V(s_k)·(G^λ_k − V(s_k))``, the semi-gradient of the
regression on λ-returns (:func:`pgjax.losses.lambda_returns`). ``--gae-lambda``
is that one λ: 0 gives one-step actor-critic (the TD error alone), 1 the
Monte-Carlo return minus V (bootstrapped where an episode is truncated).
The equality is exact offline, for episodes ending either way
(``tests/test_ac_lambda.py``); online, θ and w change at every step, so the
traces mix gradients taken at older parameters and the sum only approximates
the forward view (closely for small steps).

**Why one step per update.** The method is online: each action must be drawn
from the current θ and each δ measured with the current w. So the rollout is
one step of every env (``--num-steps 1``, the ``ac-lambda`` preset, required),
then one update; the envs add a batch dimension only, each with its own
traces, and their directions are averaged.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from pgjax import losses, parallel
from pgjax.algos import base
from pgjax.backend import Backend
from pgjax.config import ConfigError, Hyperparams, TrainConfig
from pgjax.envs import EnvSpec
from pgjax.networks import Critic, Policy

Array = jax.Array

METRICS = (
    "policy_loss",
    "value_loss",
    "td_error",
    "td_error_abs",
    "entropy",
    "grad_norm",
    "critic_grad_norm",
    "trace_norm",
    "learning_rate",
    "kl",
)


@struct.dataclass
class TraceState:
    """Parameters and per-env eligibility traces of AC(λ).

    Attributes:
      actor: policy parameters θ.
      critic: value parameters w.
      actor_trace: ``e^θ``, the structure of ``actor`` with each leaf ``[N, ...]``.
      critic_trace: ``e^w``, the structure of ``critic`` with each leaf ``[N, ...]``.
    """

    actor: Any
    critic: Any
    actor_trace: Any
    critic_trace: Any


def zero_traces(params, num_envs: int):
    """One zero trace per env: each leaf of ``params`` as ``[num_envs, ...]``."""
    return jax.tree.map(lambda p: jnp.zeros((num_envs, *p.shape), p.dtype), params)


def _per_env(x: Array, leaf: Array) -> Array:
    """``x [N]`` shaped to broadcast against a trace leaf ``[N, ...]``."""
    return x.reshape(x.shape + (1,) * (leaf.ndim - 1)).astype(leaf.dtype)


def accumulate_traces(traces, grads, decay: Array):
    """``e_i ← decay·e_i + g_i`` for every env ``i`` and leaf.

    Args:
      traces: pytree, leaves ``[N, ...]``: the traces after the previous step.
      grads: the same structure: this step's per-env gradients ``g_i``.
      decay: scalar or ``[N]``: ``γλ`` inside an episode.

    Returns:
      The traces of this step, leaves ``[N, ...]``.
    """
    decay = jnp.asarray(decay)

    def one(e: Array, g: Array) -> Array:
        d = _per_env(decay, e) if decay.ndim else decay.astype(e.dtype)
        return d * e + g

    return jax.tree.map(one, traces, grads)


def end_episodes(traces, dones: Array):
    """The traces with those of envs whose episode ended (``dones [N]``) set
    to zero: the next step starts a new episode from ``e = 0``."""
    return jax.tree.map(
        lambda e: jnp.where(_per_env(dones, e) > 0, jnp.zeros_like(e), e), traces
    )


def traced_direction(traces, deltas: Array):
    """``mean_i δ_i·e_i``: the update direction of one step.

    Args:
      traces: pytree, leaves ``[N, ...]``.
      deltas: ``[N]`` TD errors.

    Returns:
      A pytree of the parameters' structure (leaves without the env axis).
    """
    return jax.tree.map(
        lambda e: jnp.mean(_per_env(deltas, e) * e, axis=0).astype(e.dtype), traces
    )


def trace_step(traces, grads, deltas: Array, dones: Array, decay: Array):
    """One step of the backward view for ``N`` envs.

    ``e_i ← decay·e_i + g_i``; the direction is ``mean_i δ_i·e_i``; then the
    traces of envs whose episode ended are reset to zero.

    Args:
      traces: pytree, leaves ``[N, ...]``: the traces carried from the
        previous step (zero at an episode's start).
      grads: the same structure: ``∇log π(a_i|s_i)`` or ``∇V(s_i)`` per env.
      deltas: ``[N]`` TD errors ``δ_i`` of this step.
      dones: ``[N]`` the step ended the env's episode (terminated or truncated).
      decay: ``γλ``.

    Returns:
      ``(direction, traces)``: ``mean_i δ_i·e_i`` (the parameters' structure)
      and the traces to carry to the next step.
    """
    traces = accumulate_traces(traces, grads, decay)
    return traced_direction(traces, deltas), end_episodes(traces, dones)


def per_env_log_prob_grads(
    policy: Policy, params, obs: Array, actions: Array
) -> tuple[Array, Any]:
    """``log π(a_i|s_i) [N]`` and its gradient per env (leaves ``[N, ...]``).

    ``vmap`` of ``grad`` over the envs: each env's trace needs its own
    gradient, not the batch's sum.
    """

    def log_prob(p, o, a):
        return policy.apply(p, o[None]).log_prob(a[None])[0]

    return jax.vmap(jax.value_and_grad(log_prob), in_axes=(None, 0, 0))(
        params, obs, actions
    )


def per_env_value_grads(critic: Critic, params, obs: Array) -> tuple[Array, Any]:
    """``V(s_i) [N]`` and ``∇_w V(s_i)`` per env (leaves ``[N, ...]``)."""

    def value(p, o):
        return critic.apply(p, o[None])[0]

    return jax.vmap(jax.value_and_grad(value), in_axes=(None, 0))(params, obs)


def td_errors_of_step(
    critic: Critic, params, step, values: Array, hyper: Hyperparams
) -> Array:
    """``δ_i = r_i·c + γ·(1 − terminated_i)·V(s'_i) − V(s_i)`` ``[N]`` for one
    step of ``N`` envs, ``s'`` the true next observation (the final one on
    truncation), ``c`` the reward scale."""
    next_values = critic.apply(params, step.next_obs)
    rewards = step.reward * hyper.reward_scale
    discounts = hyper.gamma * (1.0 - step.terminated.astype(rewards.dtype))
    return losses.td_errors(
        rewards[None], values[None], next_values[None], discounts[None]
    )[0]


def _add_scaled(params, direction, step_size: Array):
    """``θ + α·d``: gradient *ascent* on the traced direction."""
    return jax.tree.map(lambda p, d: p + step_size * d, params, direction)


def make_ac_lambda(
    config: TrainConfig, spec: EnvSpec, backend: Backend
) -> base.Algorithm:
    """Builds AC(λ) for ``spec``.

    Raises:
      ConfigError: ``--num-steps`` other than 1 (the method is online).
    """
    if config.num_steps != 1:
        raise ConfigError(
            "--num-steps",
            f"must be 1 for ac-lambda (one update per environment step), got "
            f"{config.num_steps}",
        )
    if config.value_norm:
        raise ConfigError(
            "--value-norm",
            "must be off for ac-lambda (its critic steps by the traced TD error, "
            "unscaled)",
        )
    policy, critic = base.make_networks(config, spec, backend)
    collect = base.fixed_length_collect(config, spec, policy)

    init = _init_fn(policy, critic, config.num_envs)

    def update(agent: TraceState, batch, key, hyper: Hyperparams, progress):
        del key
        step = jax.tree.map(lambda x: x[0], batch)  # the one row, [N, ...]
        # The traces are per env: each device works on the envs it steps.
        actor_trace, critic_trace = parallel.split_envs(
            (agent.actor_trace, agent.critic_trace), backend
        )
        log_probs, actor_grads = per_env_log_prob_grads(
            policy, agent.actor, step.obs, step.action
        )
        values, critic_grads = per_env_value_grads(critic, agent.critic, step.obs)
        deltas = td_errors_of_step(critic, agent.critic, step, values, hyper)
        decay = hyper.gamma * hyper.gae_lambda
        actor_dir, actor_trace = trace_step(
            actor_trace, actor_grads, deltas, step.done, decay
        )
        critic_dir, critic_trace = trace_step(
            critic_trace, critic_grads, deltas, step.done, decay
        )
        lr = base.learning_rate(hyper.lr, progress, config.anneal_lr)
        critic_lr = base.learning_rate(hyper.critic_lr, progress, config.anneal_lr)
        actor = _add_scaled(agent.actor, actor_dir, lr)
        critic_params = _add_scaled(agent.critic, critic_dir, critic_lr)
        new_agent = TraceState(actor, critic_params, actor_trace, critic_trace)
        return new_agent, _step_metrics(
            policy,
            agent,
            new_agent,
            step.obs,
            log_probs,
            deltas,
            actor_dir,
            critic_dir,
            lr,
        )

    return base.Algorithm(
        name="ac-lambda",
        init=init,
        collect=collect,
        update=update,
        act=base.policy_act(policy),
        metric_names=METRICS,
    )


def _init_fn(policy, critic, num_envs: int):
    """``(key, hyper) ↦`` the initial :class:`TraceState`, traces zero."""

    def init(key: Array, hyper: Hyperparams) -> TraceState:
        del hyper
        actor, critic_params = base.init_networks(policy, critic, key)
        return TraceState(
            actor=actor,
            critic=critic_params,
            actor_trace=zero_traces(actor, num_envs),
            critic_trace=zero_traces(critic_params, num_envs),
        )

    return init


def _step_metrics(policy, old, new, obs, log_probs, deltas, actor_dir, critic_dir, lr):
    """Scalars of one update (means over the envs); ``actor_dir`` and
    ``critic_dir`` are the trace-weighted steps."""
    old_dist = policy.apply(old.actor, obs)
    trace_norms = jax.vmap(base.global_norm)(new.actor_trace)
    return {
        # −mean δ·log π: its gradient with δ held fixed is the one-step
        # (λ = 0) part of the actor's direction.
        "policy_loss": -jnp.mean(jax.lax.stop_gradient(deltas) * log_probs),
        "value_loss": 0.5 * jnp.mean(jnp.square(deltas)),
        "td_error": jnp.mean(deltas),
        "td_error_abs": jnp.mean(jnp.abs(deltas)),
        "entropy": jnp.mean(old_dist.entropy()),
        "grad_norm": base.global_norm(actor_dir),
        "critic_grad_norm": base.global_norm(critic_dir),
        "trace_norm": jnp.mean(trace_norms),
        "learning_rate": lr,
        "kl": jnp.mean(old_dist.kl(policy.apply(new.actor, obs))),
    }


__all__ = [
    "METRICS",
    "TraceState",
    "accumulate_traces",
    "end_episodes",
    "make_ac_lambda",
    "per_env_log_prob_grads",
    "per_env_value_grads",
    "td_errors_of_step",
    "trace_step",
    "traced_direction",
    "zero_traces",
]
