"""The one rollout shared by every algorithm: ``lax.scan`` over time of a batched step.

Two collectors produce the same time-major :class:`Transition`:

* :func:`collect_steps` — a fixed number of steps from wherever the envs are
  (actor-critic methods; episodes continue across rollouts).
* :func:`collect_episodes` — exactly one complete episode from every env, started
  fresh, stopping as soon as the last one ends (Monte-Carlo REINFORCE). Rows after
  an env's episode ended are padding, marked by ``valid = False``.

Observations stored in the transition are the ones the policy saw (normalised if
normalisation is on, with statistics frozen for the whole rollout so that the
log-probabilities recorded here and recomputed in the update agree). The shared
statistics are updated after the rollout from the raw observations it visited.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import struct

from pgjax import envs, parallel
from pgjax.envs import EnvBatchState, EnvSpec

Array = jax.Array

# act_fn(obs [N, *obs_shape], key) -> (action [N, *action_shape], log_prob [N])
ActFn = Callable[[Array, Array], tuple[Array, Array]]


@struct.dataclass
class Transition:
    """A time-major batch of experience; every field is ``[T, N, ...]``.

    Attributes:
      obs: observation the policy acted on (normalised if enabled).
      action: action sampled by the policy (before clipping to the box).
      log_prob: ``log π(a_t|s_t)`` under the policy that acted.
      reward: reward of the step.
      terminated: the step reached a terminal state (no bootstrap).
      truncated: the time limit ended the episode (bootstrap from ``next_obs``).
      next_obs: the true next observation, before any auto-reset (normalised
        with the same statistics as ``obs``).
      completed_return: return of the episode that ended at this step, else 0.
      completed_length: its length, else 0.
      valid: the row holds real experience (False only for padding).
    """

    obs: Array
    action: Array
    log_prob: Array
    reward: Array
    terminated: Array
    truncated: Array
    next_obs: Array
    completed_return: Array
    completed_length: Array
    valid: Array

    @property
    def done(self) -> Array:
        """``terminated or truncated``: the next row starts a new episode."""
        return self.terminated | self.truncated


def _normalizer(env_state: EnvBatchState, normalize: bool) -> Callable[[Array], Array]:
    if not normalize:
        return lambda obs: obs
    return lambda obs: envs.normalize_obs(env_state.obs_norm, obs)


def _transition(obs, action, log_prob, result, norm, valid) -> Transition:
    """One time step's row of a :class:`Transition` from a batched env step."""
    return Transition(
        obs=obs,
        action=action,
        log_prob=log_prob,
        reward=result.reward,
        terminated=result.terminated,
        truncated=result.truncated,
        next_obs=norm(result.final_obs),
        completed_return=result.completed_return,
        completed_length=result.completed_length,
        valid=valid,
    )


def _update_obs_norm(
    env_state: EnvBatchState, raw_obs: Array, valid: Array, normalize: bool
) -> EnvBatchState:
    """Merges the raw observations of a rollout ``[T, N, ...]`` into the stats."""
    if not normalize:
        return env_state
    weights = valid.reshape(valid.shape + (1,) * (raw_obs.ndim - valid.ndim))
    weights = weights.astype(raw_obs.dtype)
    norm = envs.merge_obs_stats(
        env_state.obs_norm,
        jnp.sum(raw_obs * weights, axis=(0, 1)),
        jnp.sum(jnp.square(raw_obs) * weights, axis=(0, 1)),
        jnp.sum(valid.astype(jnp.float32)),
    )
    return env_state.replace(obs_norm=norm)


def collect_steps(
    spec: EnvSpec,
    act_fn: ActFn,
    env_state: EnvBatchState,
    key: Array,
    num_steps: int,
    normalize_obs: bool = False,
) -> tuple[EnvBatchState, Transition]:
    """Steps ``N`` envs ``num_steps`` times under ``act_fn``.

    Returns:
      The env state after the rollout and a ``[num_steps, N, ...]`` transition
      with ``valid`` all True.
    """
    norm = _normalizer(env_state, normalize_obs)
    num_envs = env_state.obs.shape[0]
    # Every key of the rollout in one threefry call: per step the action key
    # and every env's step and reset keys (instead of one split per step, plus
    # gymnax's own per env). Each call site is its own loop of hash rounds in
    # the compiled program, so one call also compiles faster than three.
    keys = jax.random.split(key, (num_steps, 1 + 2 * num_envs))
    act_keys = keys[:, 0]
    env_keys = keys[:, 1:].reshape(num_steps, 2, num_envs, *keys.shape[2:])

    def one_step(state: EnvBatchState, keys: tuple[Array, Array]):
        step_act_key, step_env_keys = keys
        obs = norm(state.obs)
        action, log_prob = act_fn(obs, step_act_key)
        next_state, result = envs.step_with_keys(
            spec, state, action, step_env_keys[0], step_env_keys[1]
        )
        transition = _transition(
            obs, action, log_prob, result, norm, jnp.ones_like(result.terminated)
        )
        return next_state, (transition, state.obs)

    final_state, (batch, raw_obs) = jax.lax.scan(
        one_step, env_state, (act_keys, env_keys)
    )
    final_state = _update_obs_norm(final_state, raw_obs, batch.valid, normalize_obs)
    return final_state, batch


def collect_episodes(
    spec: EnvSpec,
    act_fn: ActFn,
    env_state: EnvBatchState,
    key: Array,
    normalize_obs: bool = False,
) -> tuple[EnvBatchState, Transition, Array]:
    """Runs one fresh episode in each of ``N`` envs, until the last one ends.

    The buffer has ``max_episode_steps`` rows; the loop (a ``lax.while_loop``)
    stops at the first step where every env's episode has ended, so no steps are
    spent past the longest episode. An env whose episode ended keeps stepping
    (vmap steps all envs) but its rows are padding: ``valid = False``. Under a
    ``vmap`` named :data:`pgjax.parallel.SEEDS`, the loop stops where every
    seed's episodes have ended (rows past a seed's own end are its padding).

    Returns:
      ``(env_state, transition, num_steps_run)``: the transition is
      ``[max_episode_steps, N, ...]``; ``num_steps_run`` (int32) is how many rows
      were filled.
    """
    num_envs = env_state.obs.shape[0]
    reset_key, loop_key = jax.random.split(key)
    fresh = envs.reset(spec, reset_key, num_envs)
    state = fresh.replace(obs_norm=env_state.obs_norm)
    norm = _normalizer(state, normalize_obs)
    horizon = spec.max_episode_steps

    init_buffers, raw_obs_buffer = _episode_buffers(
        act_fn, spec, state, loop_key, norm, horizon
    )

    def cond(carry):
        t, _, _, _, finished, _ = carry
        # Under a vmap over seeds, all of them run until the last one's
        # episodes end (parallel.all_seeds): a done seed's extra rows are
        # padding, as an env's are after its episode ended.
        return (t < horizon) & ~parallel.all_seeds(jnp.all(finished))

    def body(carry):
        t, s, buffers, raw_buffer, finished, k = carry
        k, act_key, env_key = jax.random.split(k, 3)
        obs = norm(s.obs)
        action, log_prob = act_fn(obs, act_key)
        next_s, result = envs.step(spec, s, action, env_key)
        valid = ~finished
        transition = _transition(obs, action, log_prob, result, norm, valid)
        buffers = jax.tree.map(lambda b, x: b.at[t].set(x), buffers, transition)
        raw_buffer = raw_buffer.at[t].set(s.obs)
        finished = finished | result.terminated | result.truncated
        return t + 1, next_s, buffers, raw_buffer, finished, k

    t, state, batch, raw_obs, _, _ = jax.lax.while_loop(
        cond,
        body,
        (
            jnp.asarray(0, jnp.int32),
            state,
            init_buffers,
            raw_obs_buffer,
            jnp.zeros((num_envs,), jnp.bool_),
            loop_key,
        ),
    )
    state = _update_obs_norm(state, raw_obs, batch.valid, normalize_obs)
    return state, batch, t


def _episode_buffers(
    act_fn: ActFn, spec: EnvSpec, state, key: Array, norm, horizon: int
):
    """Zeroed buffers of ``horizon`` rows for :func:`collect_episodes`: the
    :class:`Transition` ``[H, N, ...]`` and the raw observations
    ``[H, N, ...]`` (for the normaliser's statistics), ``N`` envs in
    ``state``."""
    num_envs = state.obs.shape[0]

    # Shapes of one row, found by tracing a step abstractly (no compute).
    def row(s, k):
        obs = norm(s.obs)
        action, log_prob = act_fn(obs, k)
        _, result = envs.step(spec, s, action, k)
        return obs, action, log_prob, result

    obs_s, action_s, logp_s, result_s = jax.eval_shape(row, state, key)

    def buffer(shape_dtype):
        return jnp.zeros((horizon, *shape_dtype.shape), shape_dtype.dtype)

    init_buffers = Transition(
        obs=buffer(obs_s),
        action=buffer(action_s),
        log_prob=buffer(logp_s),
        reward=buffer(result_s.reward),
        terminated=buffer(result_s.terminated),
        truncated=buffer(result_s.truncated),
        next_obs=buffer(obs_s),
        completed_return=buffer(result_s.completed_return),
        completed_length=buffer(result_s.completed_length),
        valid=jnp.zeros((horizon, num_envs), jnp.bool_),
    )
    raw_obs_buffer = buffer(obs_s)
    return init_buffers, raw_obs_buffer
