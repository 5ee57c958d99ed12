"""A minimal hand-written JAX A2C: the yardstick of scripts/benchmark.py.

Two 64-unit tanh MLPs (actor and critic) on the flattened observation,
fixed-length rollouts of a vmapped gymnax env, GAE(λ), one Adam step per
rollout, everything inside one ``jit``. No truncation handling, no
normalisation, no metrics beyond the loss: the least work an A2C update can
do, so pgjax's speed can be stated as a ratio against it
measured in the same process.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import gymnax
import jax
import jax.numpy as jnp
import optax


def _init_mlp(key, sizes):
    params = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        key, sub = jax.random.split(key)
        scale = 0.01 if i == len(sizes) - 2 else 2**0.5
        w = jax.nn.initializers.orthogonal(scale)(sub, (n_in, n_out))
        params.append((w, jnp.zeros(n_out)))
    return params


def _mlp(params, x):
    for w, b in params[:-1]:
        x = jnp.tanh(x @ w + b)
    w, b = params[-1]
    return x @ w + b


class RefState(NamedTuple):
    actor: list
    critic: list
    opt_state: optax.OptState
    env_state: object
    obs: jax.Array
    key: jax.Array


def make_reference_a2c(
    env_id: str = "CartPole-v1",
    num_envs: int = 4096,
    num_steps: int = 16,
    lr: float = 1e-3,
    gamma: float = 0.99,
    gae_lambda: float = 0.95,
):
    """Returns ``(init(key) -> state, chunk(state) -> state, loss)`` for K updates.

    ``chunk`` is built by :func:`reference_chunk` with a static number of updates.
    """
    env, env_params = gymnax.make(env_id)
    obs_shape = env.observation_space(env_params).shape
    obs_dim = math.prod(obs_shape)

    def flat(obs):  # [..., *obs_shape] -> [..., obs_dim]
        return obs.reshape((*obs.shape[: obs.ndim - len(obs_shape)], obs_dim))

    num_actions = env.action_space(env_params).n
    optimizer = optax.adam(lr)

    def init(key):
        k1, k2, k3 = jax.random.split(key, 3)
        actor = _init_mlp(k1, [obs_dim, 64, 64, num_actions])
        critic = _init_mlp(k2, [obs_dim, 64, 64, 1])
        obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(
            jax.random.split(k3, num_envs), env_params
        )
        opt_state = optimizer.init((actor, critic))
        return RefState(actor, critic, opt_state, env_state, obs, key)

    def update(state: RefState, _):
        def step(carry, key):
            env_state, obs = carry
            k_act, k_env = jax.random.split(key)
            logits = _mlp(state.actor, flat(obs))
            action = jax.random.categorical(k_act, logits)
            obs2, env_state, reward, terminated, truncated, _ = jax.vmap(
                env.step, in_axes=(0, 0, 0, None)
            )(jax.random.split(k_env, num_envs), env_state, action, env_params)
            done = jnp.logical_or(terminated, truncated)
            return (env_state, obs2), (obs, action, reward, done)

        key, rollout_key = jax.random.split(state.key)
        (env_state, last_obs), (obs, actions, rewards, dones) = jax.lax.scan(
            step, (state.env_state, state.obs), jax.random.split(rollout_key, num_steps)
        )

        def loss_fn(params):
            actor, critic = params
            logits = _mlp(actor, flat(obs))
            values = _mlp(critic, flat(obs))[..., 0]
            last_value = _mlp(critic, flat(last_obs))[..., 0]
            log_probs = jax.nn.log_softmax(logits)
            log_prob = jnp.take_along_axis(log_probs, actions[..., None], -1)[..., 0]
            entropy = -jnp.sum(jnp.exp(log_probs) * log_probs, -1).mean()

            def gae_step(carry, x):
                advantage, next_value = carry
                reward, value, done = x
                delta = reward + gamma * next_value * (1 - done) - value
                advantage = delta + gamma * gae_lambda * (1 - done) * advantage
                return (advantage, value), advantage

            sg_values = jax.lax.stop_gradient(values)
            _, advantages = jax.lax.scan(
                gae_step,
                (jnp.zeros(num_envs), jax.lax.stop_gradient(last_value)),
                (rewards, sg_values, dones.astype(jnp.float32)),
                reverse=True,
            )
            targets = advantages + sg_values
            actor_loss = -jnp.mean(advantages * log_prob)
            value_loss = 0.5 * jnp.mean((values - targets) ** 2)
            return actor_loss + 0.5 * value_loss - 0.01 * entropy

        loss, grads = jax.value_and_grad(loss_fn)((state.actor, state.critic))
        updates, opt_state = optimizer.update(grads, state.opt_state)
        actor, critic = optax.apply_updates((state.actor, state.critic), updates)
        return RefState(actor, critic, opt_state, env_state, last_obs, key), loss

    def chunk(state: RefState, num_updates: int):
        return jax.lax.scan(update, state, None, length=num_updates)

    return init, chunk
