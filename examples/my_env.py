"""A complete JAX environment brought to pgjax: walk to the origin of a line.

The agent starts ``start_distance`` cells left or right of the origin (a coin
flip) and moves one cell per step, left (action 0) or right (action 1). Every
step costs -1; reaching the origin terminates the episode, and after
``MAX_STEPS`` steps the time limit truncates it. The observation is the
position, so the optimal policy walks straight to the origin: return
``-start_distance`` (-3 by default) in every episode. A policy that ignores
the observation reaches the origin in only half of the episodes.

Truncation matters here: most early episodes end at the time limit, some
cells away from the origin. Their last state is worth ``-distance``, not 0, so
the learner must bootstrap from the true final observation, which pgjax keeps
because ``step`` never resets (pgjax does, after the step).

Train it (the module registers ``MyReach-v0`` when imported)::

  python scripts/train.py --env examples/my_env.py:MyReach-v0 --algo a2c \\
      --num-envs 64 --num-steps 8 --total-timesteps 20000

or, from Python: ``import my_env`` then ``pgjax.envs.make_env("MyReach-v0")``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import spaces

from pgjax import adapters, envs

MAX_STEPS = 20


@struct.dataclass
class ReachParams:
    """``start_distance``: cells between the start and the origin (traced as
    an int32 array inside pgjax's programs)."""

    start_distance: int = 3


@struct.dataclass
class ReachState:
    """``position``: the agent's cell, int32 (the origin is 0)."""

    position: jax.Array


def _obs(state: ReachState) -> jax.Array:
    return state.position.astype(jnp.float32)[None]  # shape (1,)


def reset(key: jax.Array, params: ReachParams) -> tuple[jax.Array, ReachState]:
    """Starts ``±start_distance`` from the origin, each side with probability ½."""
    side = jnp.where(jax.random.bernoulli(key), 1, -1)
    state = ReachState(position=(side * params.start_distance).astype(jnp.int32))
    return _obs(state), state


def step(
    key: jax.Array, state: ReachState, action: jax.Array, params: ReachParams
) -> adapters.EnvStep:
    """One move; no reset here (pgjax resets after a step that ends the episode)."""
    del key, params  # deterministic dynamics
    position = state.position + jnp.where(action == 1, 1, -1).astype(jnp.int32)
    new = ReachState(position=position)
    return adapters.EnvStep(
        obs=_obs(new),
        state=new,
        reward=jnp.asarray(-1.0, jnp.float32),
        terminated=position == 0,  # the time limit is pgjax's: MAX_STEPS
    )


def make_reach() -> adapters.EnvAdapter:
    """The adapter pgjax builds ``MyReach-v0`` from."""
    return adapters.EnvAdapter(
        reset=reset,
        step=step,
        observation_space=spaces.Box(-MAX_STEPS, MAX_STEPS, (1,), jnp.float32),
        action_space=spaces.Discrete(2),
        max_episode_steps=MAX_STEPS,
        default_params=ReachParams(),
    )


envs.register("MyReach-v0", make_reach)
