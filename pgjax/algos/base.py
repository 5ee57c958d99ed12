"""What every algorithm is: an init/collect/update triple over explicit state.

Like an optax ``GradientTransformation``, an :class:`Algorithm` is a bundle of pure
functions. The trainer calls them without knowing which algorithm it runs:

* ``init(key, hyper) → agent``: parameters and optimiser states;
* ``collect(agent, env_state, key, hyper) → (env_state, transition, rows)``:
  experience from the shared rollout (:mod:`pgjax.rollout`);
* ``update(agent, transition, key, hyper, progress) → (agent, metrics)``: one
  learning step; ``progress`` in [0, 1] is the fraction of training done;
* ``act(agent, obs, key, deterministic) → action``: for evaluation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from pgjax import rollout, value_norm
from pgjax.backend import Backend
from pgjax.config import ConfigError, Hyperparams, TrainConfig
from pgjax.envs import EnvSpec
from pgjax.networks import Critic, Policy, make_critic, make_policy, resolve_network
from pgjax.rollout import ActFn

Array = jax.Array
Metrics = dict[str, Array]


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """Pure functions that define one policy-gradient algorithm."""

    name: str
    init: Callable[[Array, Hyperparams], Any]
    collect: Callable[..., Any]
    update: Callable[..., tuple[Any, Metrics]]
    act: Callable[[Any, Array, Array, bool], Array]
    metric_names: tuple[str, ...]


@struct.dataclass
class ActorCriticState:
    """Parameters and Adam moments of a separate actor and critic, the actor's
    KL-adapted learning-rate scale and the critic's PopArt statistics (unused
    unless ``--value-norm``)."""

    actor: Any
    critic: Any
    actor_opt: Any
    critic_opt: Any
    lr_scale: jax.Array = struct.field(default_factory=lambda: jnp.ones(()))
    value_stats: value_norm.ValueNormState = struct.field(
        default_factory=value_norm.init
    )


ADAM = optax.scale_by_adam(eps=1e-5)


def adam_step(params, opt_state, grads, lr: Array):
    """One Adam step with a traced learning rate: ``θ ← θ − lr·adam(g)``."""
    updates, opt_state = ADAM.update(grads, opt_state, params)
    params = jax.tree.map(lambda p, u: p - lr * u, params, updates)
    return params, opt_state


def global_norm(tree) -> Array:
    """``sqrt(Σ x²)`` over every leaf of ``tree``.

    The leaves are concatenated into one vector first: XLA compiles each
    leaf's own sum of squares as separate kernels, and each distinct kernel
    adds compile time; the concatenation and one sum are a few. At run time
    the copy of a few thousand parameters is negligible.
    """
    leaves = [jnp.ravel(x) for x in jax.tree.leaves(tree)]
    if not leaves:
        return jnp.zeros((), jnp.float32)
    return jnp.sqrt(jnp.sum(jnp.square(jnp.concatenate(leaves))))


def clip_by_global_norm(grads, max_norm: Array) -> tuple[Any, Array]:
    """Scales ``grads`` so their global norm is at most ``max_norm``.

    Returns the clipped gradients and the norm before clipping.
    """
    norm = global_norm(grads)
    scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
    return jax.tree.map(lambda g: g * scale, grads), norm


def learning_rate(lr: Array, progress: Array, anneal: bool) -> Array:
    """``lr·(1 − progress)`` when annealing, else ``lr``."""
    return lr * (1.0 - progress) if anneal else lr


def adapt_lr_scale(scale: Array, kl: Array, target_kl: Array) -> Array:
    """KL-adaptive step size: keeps each update's KL(old‖new) near ``target_kl``.

    ``scale / 1.5`` when ``kl > 2·target``, ``scale · 1.5`` when
    ``kl < target / 2``, unchanged otherwise, kept in ``[1e-3, 10]``;
    ``target_kl = 0`` turns it off. A first-order cousin of the trust region of
    TRPO (Schulman et al. 2015; the same rule as Schulman et al. 2017's adaptive
    KL penalty, applied to the learning rate as in rsl_rl and Brax).
    """
    adapted = jnp.where(kl > 2.0 * target_kl, scale / 1.5, scale)
    adapted = jnp.where(kl < 0.5 * target_kl, adapted * 1.5, adapted)
    return jnp.where(target_kl > 0, jnp.clip(adapted, 1e-3, 10.0), scale)


def mean_kl(policy: Policy, old_params, new_params, obs: Array) -> Array:
    """``mean_s KL(π_old(·|s) ‖ π_new(·|s))`` over a batch of observations."""
    old = policy.apply(old_params, obs)
    new = policy.apply(new_params, obs)
    return jnp.mean(old.kl(new))


def make_networks(
    config: TrainConfig, spec: EnvSpec, backend: Backend, q_critic: bool = False
) -> tuple[Policy, Critic]:
    """The actor and critic of ``config``, their Dense layers computed with the
    backend's product (:attr:`pgjax.backend.Backend.dot_general`)."""
    try:
        resolve_network(config.network, spec.obs_shape)
    except ValueError as error:
        raise ConfigError("--network", str(error)) from None
    policy = make_policy(
        spec,
        config.hidden,
        config.activation,
        init_log_std=config.init_log_std,
        dot_general=backend.dot_general,
        network=config.network,
    )
    critic = make_critic(
        spec,
        config.hidden,
        config.activation,
        q_values=q_critic,
        dot_general=backend.dot_general,
        network=config.network,
    )
    return policy, critic


def init_networks(policy: Policy, critic: Critic, key: Array) -> tuple[Any, Any]:
    """``(actor parameters, critic parameters)``, each from its half of ``key``."""
    actor_key, critic_key = jax.random.split(key)
    return policy.init(actor_key), critic.init(critic_key)


def init_actor_critic(policy: Policy, critic: Critic, key: Array) -> ActorCriticState:
    actor, critic_params = init_networks(policy, critic, key)
    return ActorCriticState(
        actor=actor,
        critic=critic_params,
        actor_opt=ADAM.init(actor),
        critic_opt=ADAM.init(critic_params),
    )


def actor_critic_init(policy: Policy, critic: Critic):
    """``init(key, hyper) → ActorCriticState`` for an algorithm."""

    def init(key: Array, hyper: Hyperparams) -> ActorCriticState:
        del hyper
        return init_actor_critic(policy, critic, key)

    return init


def fixed_length_collect(config: TrainConfig, spec: EnvSpec, policy: Policy):
    """``collect`` of the fixed-length rollout shared by a2c, npg and trpo."""

    def collect(agent: ActorCriticState, env_state, key: Array, hyper: Hyperparams):
        del hyper
        env_state, batch = rollout.collect_steps(
            spec,
            sampling_act_fn(policy, agent.actor),
            env_state,
            key,
            config.num_steps,
            config.normalize_obs,
        )
        return env_state, batch, jnp.asarray(config.num_steps, jnp.int32)

    return collect


def sampling_act_fn(policy: Policy, actor_params) -> ActFn:
    """``obs, key ↦ (a ~ π(·|obs), log π(a|obs))`` for the rollout."""

    def act(obs: Array, key: Array) -> tuple[Array, Array]:
        dist = policy.apply(actor_params, obs)
        action = dist.sample(key)
        return action, dist.log_prob(action)

    return act


def policy_act(policy: Policy) -> Callable[[Any, Array, Array, bool], Array]:
    """Evaluation action: the mode when ``deterministic``, else a sample."""

    def act(agent: ActorCriticState, obs: Array, key: Array, deterministic: bool):
        dist = policy.apply(agent.actor, obs)
        return dist.mode() if deterministic else dist.sample(key)

    return act
