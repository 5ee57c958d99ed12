"""Batched gymnax environments with episode statistics and observation normalisation.

:func:`make_env` turns an environment id into an :class:`EnvSpec` (static facts:
spaces, time limit). An id is a gymnax id (``CartPole-v1``), an id given to
:func:`register` (a user's :class:`pgjax.adapters.EnvAdapter`), ``module:id``
or ``path/to/file.py:id`` (the module is imported first, and registers ``id``),
or ``suite/name`` (``navix/Navix-Empty-5x5-v0``; :data:`pgjax.adapters.SUITES`).
:func:`reset` and :func:`step` act on a whole batch of ``N`` environments at
once (``vmap`` inside) and keep, on device:

* the running return and length of each env's current episode, and the return
  and length of the episode that ended at each step;
* optional observation normalisation with running statistics *shared* by all
  envs (one mean/variance, merged from every batch of observations);
* the true final observation of an episode (gymnax's
  ``info["final_observation"]``), needed to bootstrap on truncation.

Continuous actions are clipped to the action space before the env sees them.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from typing import Any

import chex
import gymnax
import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import environment as gymnax_environment
from gymnax.environments import spaces

from pgjax import (
    adapters,
    probes,  # noqa: F401  (registers the probe environments)
)

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """Static description of an environment (hashable, compile-time).

    Attributes:
      env_id: the gymnax id, e.g. ``"CartPole-v1"``.
      env: the gymnax environment object.
      params: its default ``EnvParams``.
      obs_shape: shape of one observation.
      discrete: whether actions are integers in ``[0, num_actions)``.
      num_actions: number of discrete actions (0 when continuous).
      action_shape: shape of one action (``()`` when discrete).
      action_low, action_high: bounds of a continuous action (as tuples).
      max_episode_steps: the time limit after which an episode is truncated.
    """

    env_id: str
    env: Any = dataclasses.field(repr=False, compare=False)
    params: Any = dataclasses.field(repr=False, compare=False)
    obs_shape: tuple[int, ...]
    discrete: bool
    num_actions: int
    action_shape: tuple[int, ...]
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    max_episode_steps: int


_REGISTRY: dict[str, Callable[[], adapters.EnvAdapter]] = {}


def register(env_id: str, factory: Callable[[], adapters.EnvAdapter]) -> None:
    """Registers a user environment: ``make_env(env_id)`` then builds it.

    Registering an id again replaces its factory (re-importing a module, or
    re-running a notebook cell, re-registers its environments).

    Args:
      env_id: the id for ``make_env`` and ``--env``, e.g. ``"MyEnv-v0"``; not a
        gymnax id, without ``:`` and not ``suite/...`` of a known suite.
      factory: ``() -> EnvAdapter``, called by each :func:`make_env`.

    Raises:
      ValueError: for an id that is taken or malformed.
      TypeError: for a factory that is not callable.
    """
    if not isinstance(env_id, str) or not env_id or ":" in env_id:
        raise ValueError(f"environment ids are non-empty, without ':'; got {env_id!r}")
    if env_id in gymnax.registered_envs:
        raise ValueError(f"{env_id!r} is a gymnax environment; choose another id")
    if env_id.partition("/")[0] in adapters.SUITES:
        raise ValueError(f"{env_id!r}: ids starting with a suite's name are taken")
    if not callable(factory):
        raise TypeError(f"the factory of {env_id!r} must be callable, got {factory!r}")
    _REGISTRY[env_id] = factory


def env_ids() -> list[str]:
    """All environment ids gymnax can make, then those given to :func:`register`."""
    return [*gymnax.registered_envs, *_REGISTRY]


def _adapter(env_id: str) -> tuple[str, adapters.EnvAdapter | None]:
    """``(name, adapter)`` of a registered, ``module:id`` or ``suite/name`` id;
    the adapter is None for any other id."""
    name = env_id
    if ":" in env_id:
        module, _, name = env_id.rpartition(":")
        adapters.import_env_module(module)
        if name not in _REGISTRY:
            close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise adapters.AdapterError(
                f"{module} registered no environment {name!r}{hint}"
            )
    if name in _REGISTRY:
        return name, _REGISTRY[name]()
    return name, adapters.suite_adapter(env_id)


def make_env(env_id: str) -> EnvSpec:
    """Makes an environment by id (see the module docstring for the forms).

    A user's or a suite's adapter is checked first (:func:`pgjax.adapters.check`
    traces one reset and one step) and wrapped in a gymnax environment.

    Raises:
      ValueError: for an unknown id (the message lists the closest valid
        ids), a module that cannot be imported, a suite that is not installed,
        or an adapter whose outputs disagree with its spaces.
    """
    name, adapter = _adapter(env_id)
    if adapter is not None:
        adapters.check(name, adapter)
        env = adapters.AdapterEnvironment(name, adapter)
        return _spec(env_id, env, adapter.default_params, adapter.max_episode_steps)
    if env_id not in gymnax.registered_envs:
        close = difflib.get_close_matches(env_id, env_ids(), n=3, cutoff=0.3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown environment {env_id!r}{hint}")
    env, params = gymnax.make(env_id)
    return _spec(env_id, env, params, int(params.max_steps_in_episode))


def _spec(env_id: str, env: Any, params: Any, max_episode_steps: int) -> EnvSpec:
    """The :class:`EnvSpec` of a gymnax(-like) environment object."""
    obs_shape = tuple(env.observation_space(params).shape)
    action_space = env.action_space(params)
    if isinstance(action_space, spaces.Discrete):
        discrete, num_actions, action_shape = True, int(action_space.n), ()
        low, high = (), ()
    elif isinstance(action_space, spaces.Box):
        discrete, num_actions = False, 0
        action_shape = tuple(action_space.shape) or (1,)
        low = tuple(float(x) for x in jnp.broadcast_to(action_space.low, action_shape))
        high = tuple(
            float(x) for x in jnp.broadcast_to(action_space.high, action_shape)
        )
    else:
        raise ValueError(
            f"environment {env_id!r} has an unsupported action space {action_space}"
        )
    return EnvSpec(
        env_id=env_id,
        env=env,
        params=params,
        obs_shape=obs_shape,
        discrete=discrete,
        num_actions=num_actions,
        action_shape=action_shape,
        action_low=low,
        action_high=high,
        max_episode_steps=max_episode_steps,
    )


@struct.dataclass
class ObsNormState:
    """Running mean and variance of observations, shared by all envs.

    Attributes:
      mean: ``obs_shape``.
      var: ``obs_shape`` (population variance).
      count: scalar number of observations merged so far (float32).
    """

    mean: Array
    var: Array
    count: Array


def init_obs_norm(obs_shape: tuple[int, ...]) -> ObsNormState:
    return ObsNormState(
        mean=jnp.zeros(obs_shape, jnp.float32),
        var=jnp.ones(obs_shape, jnp.float32),
        # A tiny prior count keeps the first merge well defined.
        count=jnp.asarray(1e-4, jnp.float32),
    )


def normalize_obs(norm: ObsNormState, obs: Array, clip: float = 10.0) -> Array:
    """``clip((obs − mean) / sqrt(var + 1e-8), ±clip)``."""
    return jnp.clip((obs - norm.mean) / jnp.sqrt(norm.var + 1e-8), -clip, clip)


def merge_obs_stats(
    norm: ObsNormState, batch_sum: Array, batch_sq_sum: Array, batch_count: Array
) -> ObsNormState:
    """Merges a batch's sums into the running statistics (Chan et al.'s formula).

    Args:
      norm: running statistics.
      batch_sum: ``Σ x`` over the batch, ``obs_shape``.
      batch_sq_sum: ``Σ x²``, ``obs_shape``.
      batch_count: number of observations in the batch (scalar).
    """
    batch_count = jnp.maximum(batch_count, 1.0)
    batch_mean = batch_sum / batch_count
    batch_var = jnp.maximum(batch_sq_sum / batch_count - jnp.square(batch_mean), 0.0)
    total = norm.count + batch_count
    delta = batch_mean - norm.mean
    mean = norm.mean + delta * batch_count / total
    m2 = (
        norm.var * norm.count
        + batch_var * batch_count
        + jnp.square(delta) * norm.count * batch_count / total
    )
    return ObsNormState(mean=mean, var=m2 / total, count=total)


@struct.dataclass
class EnvBatchState:
    """State of ``N`` environments stepped together.

    Attributes:
      env_state: the gymnax state, every leaf ``[N, ...]``.
      obs: ``[N, *obs_shape]`` current raw (unnormalised) observations.
      episode_return: ``[N]`` undiscounted return of the episode so far.
      episode_length: ``[N]`` int32 steps of the episode so far.
      obs_norm: shared observation statistics.
    """

    env_state: Any
    obs: Array
    episode_return: Array
    episode_length: Array
    obs_norm: ObsNormState


@struct.dataclass
class StepResult:
    """What one batched step returns besides the new state (all ``[N, ...]``).

    Attributes:
      reward: float32 rewards.
      terminated: bool, a terminal state was reached.
      truncated: bool, the time limit cut the episode.
      final_obs: raw observation reached by the step, before any auto-reset.
      completed_return: return of the episode that ended here (0 elsewhere).
      completed_length: its length in steps (0 elsewhere).
    """

    reward: Array
    terminated: Array
    truncated: Array
    final_obs: Array
    completed_return: Array
    completed_length: Array


def reset(spec: EnvSpec, key: Array, num_envs: int) -> EnvBatchState:
    """Resets ``num_envs`` environments with independent keys."""
    keys = jax.random.split(key, num_envs)
    obs, env_state = jax.vmap(spec.env.reset, in_axes=(0, None))(keys, spec.params)
    return EnvBatchState(
        env_state=env_state,
        obs=obs.astype(jnp.float32),
        episode_return=jnp.zeros((num_envs,), jnp.float32),
        episode_length=jnp.zeros((num_envs,), jnp.int32),
        obs_norm=init_obs_norm(spec.obs_shape),
    )


def env_action(spec: EnvSpec, action: Array) -> Array:
    """The action handed to the env: clipped to the box when continuous."""
    if spec.discrete:
        return action
    low = jnp.asarray(spec.action_low, action.dtype)
    high = jnp.asarray(spec.action_high, action.dtype)
    clipped = jnp.clip(action, low, high)
    # gymnax's scalar-action envs (e.g. Pendulum) expect shape () or (1,); keep
    # the declared shape.
    return clipped


def step(
    spec: EnvSpec, state: EnvBatchState, action: Array, key: Array
) -> tuple[EnvBatchState, StepResult]:
    """Steps every env once; envs whose episode ended are reset.

    Args:
      spec: the environment.
      state: batch state with ``N`` envs.
      action: ``[N, *action_shape]`` actions as sampled (clipped here).
      key: one key, split into a step key and a reset key per env (one
        ``jax.random.split`` for the batch; see :func:`step_with_keys`).

    Returns:
      The new state (``obs`` already reset where an episode ended) and a
      :class:`StepResult`.
    """
    num_envs = state.obs.shape[0]
    keys = jax.random.split(key, (2, num_envs))
    return step_with_keys(spec, state, action, keys[0], keys[1])


def _standard_auto_reset(env) -> bool:
    """Whether ``env`` steps with gymnax's own ``Environment.step`` (auto-reset)."""
    return type(env).step is gymnax_environment.Environment.step


def _auto_reset_step(env, params, step_key, reset_key, env_state, action):
    """One env's step with auto-reset, as gymnax's ``Environment.step`` does it,
    but with the step and reset keys given instead of split from one key."""
    obs_st, state_st, reward, terminated, _ = env.step_env(
        step_key, env_state, action, params
    )
    truncated = env.is_truncated(state_st, params)
    done = jnp.logical_or(terminated, truncated)
    obs_re, state_re = env.reset_env(reset_key, params)

    def select(reset, stepped):
        return jax.lax.select(done, reset, stepped)

    next_state = jax.tree.map(select, state_re, state_st)
    obs = jax.tree.map(select, obs_re, obs_st)
    return obs, next_state, reward, terminated, truncated, obs_st


def step_with_keys(
    spec: EnvSpec,
    state: EnvBatchState,
    action: Array,
    step_keys: Array,
    reset_keys: Array,
) -> tuple[EnvBatchState, StepResult]:
    """:func:`step` with each env's keys given: ``step_keys``, ``reset_keys``
    ``[N, 2]`` (raw uint32 keys).

    gymnax's ``Environment.step`` splits its one key into a step and a reset
    key, a threefry call per env per step; a rollout can instead draw all its
    keys at once (:func:`pgjax.rollout.collect_steps`), which makes A2C at 4096
    envs on a CPU about 1.1× faster. Environments that override ``step`` get
    it called with ``step_keys`` (``reset_keys`` unused).
    """
    num_envs = state.obs.shape[0]
    chex.assert_shape(action, (num_envs, *spec.action_shape))
    env_actions = env_action(spec, action)
    if _standard_auto_reset(spec.env):
        obs, env_state, reward, terminated, truncated, final_obs = jax.vmap(
            lambda k_step, k_reset, s, a: _auto_reset_step(
                spec.env, spec.params, k_step, k_reset, s, a
            )
        )(step_keys, reset_keys, state.env_state, env_actions)
    else:
        obs, env_state, reward, terminated, truncated, info = jax.vmap(
            spec.env.step, in_axes=(0, 0, 0, None)
        )(step_keys, state.env_state, env_actions, spec.params)
        final_obs = info["final_observation"]
    reward = reward.astype(jnp.float32)
    terminated = terminated.astype(jnp.bool_)
    truncated = truncated.astype(jnp.bool_)
    done = terminated | truncated
    episode_return = state.episode_return + reward
    episode_length = state.episode_length + 1
    result = StepResult(
        reward=reward,
        terminated=terminated,
        truncated=truncated,
        final_obs=final_obs.astype(jnp.float32),
        completed_return=jnp.where(done, episode_return, 0.0),
        completed_length=jnp.where(done, episode_length, 0),
    )
    new_state = state.replace(
        env_state=env_state,
        obs=obs.astype(jnp.float32),
        episode_return=jnp.where(done, 0.0, episode_return),
        episode_length=jnp.where(done, 0, episode_length),
    )
    return new_state, result
