"""The pure training loop: ``make_train(config)`` → init, one update, chunks, train.

Everything here is jittable and vmappable and does no I/O. One *update* is
``collect`` (the shared rollout) followed by the algorithm's ``update``. A
*chunk* is a ``lax.scan`` over ``K`` update slots; a slot does nothing once the
seed has collected ``total_timesteps`` steps of experience, so every chunk has
the same shape (one compilation) and the last one simply idles.

Seeds and sweeps are a ``vmap`` over :class:`TrainState` (its hyperparameters
are traced leaves): see :meth:`Trainer.init_batch`. How the work is laid over
devices is the :class:`~pgjax.backend.Backend`'s business (seeds over its
``seeds`` axis, envs over its ``envs`` axis); what a seed computes is not.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jax.sharding import NamedSharding, PartitionSpec

from pgjax import algos, envs, parallel, rollout
from pgjax.backend import ENVS, IDENTITY, SEEDS, Backend
from pgjax.config import ConfigError, Hyperparams, TrainConfig
from pgjax.envs import EnvBatchState, EnvSpec

Array = jax.Array

# Largest total_timesteps the int32 experience counter holds.
MAX_TIMESTEPS = 2**31 - 1


@struct.dataclass
class TrainState:
    """Everything one seed's training carries from update to update.

    Attributes:
      agent: the algorithm's parameters and optimiser states.
      env: the batch of environments (with observation statistics).
      key: the seed's PRNG key (split once per update).
      update: int32 number of updates done.
      experience: int32 environment steps of experience collected.
      hyper: traced numeric hyperparameters.
    """

    agent: Any
    env: EnvBatchState
    key: Array
    update: Array
    experience: Array
    hyper: Hyperparams


def per_env_leaves(env: EnvBatchState, fn) -> EnvBatchState:
    """``env`` with ``fn`` applied to its per-env parts (``[N, ...]`` leaves);
    the shared observation statistics as they are."""
    return env.replace(
        env_state=fn(env.env_state),
        obs=fn(env.obs),
        episode_return=fn(env.episode_return),
        episode_length=fn(env.episode_length),
    )


def split_env_batch(env: EnvBatchState, backend: Backend) -> EnvBatchState:
    """``env`` with its per-env leaves split across the envs axis
    (:func:`pgjax.parallel.split_envs`); the observation statistics whole."""
    return per_env_leaves(env, lambda tree: parallel.split_envs(tree, backend))


BASE_METRICS = ("env_steps", "episode_return", "episode_length", "episodes")


def episode_metrics(batch: rollout.Transition) -> dict[str, Array]:
    """Return and length of the episodes that ended in ``batch`` (NaN if none)."""
    ended = batch.done & batch.valid
    count = jnp.sum(ended)
    safe = jnp.maximum(count, 1)
    nan = jnp.asarray(jnp.nan, jnp.float32)
    mean_return = jnp.sum(jnp.where(ended, batch.completed_return, 0.0)) / safe
    mean_length = jnp.sum(jnp.where(ended, batch.completed_length, 0)) / safe
    return {
        "env_steps": jnp.sum(batch.valid, dtype=jnp.int32),
        "episode_return": jnp.where(count > 0, mean_return, nan),
        "episode_length": jnp.where(count > 0, mean_length.astype(jnp.float32), nan),
        "episodes": count.astype(jnp.int32),
    }


@dataclasses.dataclass(frozen=True)
class Trainer:
    """Pure training functions for one config (see :func:`make_train`)."""

    config: TrainConfig
    spec: EnvSpec
    algorithm: algos.Algorithm
    updates_per_chunk: int
    backend: Backend = IDENTITY

    @property
    def metric_names(self) -> tuple[str, ...]:
        return BASE_METRICS + self.algorithm.metric_names

    def init(self, key: Array, hyper: Hyperparams | None = None) -> TrainState:
        """Initial state of one seed."""
        if hyper is None:
            hyper = Hyperparams.from_config(self.config)
        agent_key, env_key, loop_key = jax.random.split(key, 3)
        return TrainState(
            agent=self.algorithm.init(agent_key, hyper),
            env=envs.reset(self.spec, env_key, self.config.num_envs),
            key=loop_key,
            update=jnp.asarray(0, jnp.int32),
            experience=jnp.asarray(0, jnp.int32),
            hyper=hyper,
        )

    def init_batch(self, keys: Array, hyper: Hyperparams | None = None) -> TrainState:
        """States of several seeds ``[S]``; ``hyper`` leaves may be ``[S]`` too."""
        if hyper is None:
            hyper = Hyperparams.from_config(self.config)
        rows = keys.shape[0]
        hyper = jax.tree.map(
            lambda x: x if jnp.ndim(x) else jnp.broadcast_to(x, (rows,)), hyper
        )
        # lax.map, not vmap: under vmap the orthogonal initialisers' QR becomes
        # one batched LAPACK call that fans out over XLA's CPU thread pool and
        # waits for it from inside that pool, which deadlocked (process idle
        # forever) on 2-core machines. One seed at a time also makes each
        # row's initial state exactly the single-seed one.
        return jax.lax.map(lambda args: self.init(*args), (keys, hyper))

    def state_shardings(self, abstract: TrainState) -> TrainState | None:
        """Shardings of a ``[R]`` state shaped like ``abstract`` on the
        backend's mesh (None without one): every leaf split over the seeds
        axis by row, the per-env leaves also over the envs axis. A chunk
        takes and returns its state so, which keeps it where it is between
        chunks; checkpoints save and restore it so."""
        mesh = self.backend.mesh
        if mesh is None:
            return None
        rows = NamedSharding(mesh, PartitionSpec(SEEDS))
        row_envs = NamedSharding(mesh, PartitionSpec(SEEDS, ENVS))
        shardings = jax.tree.map(lambda _: rows, abstract)
        return shardings.replace(
            env=per_env_leaves(
                shardings.env, lambda tree: jax.tree.map(lambda _: row_envs, tree)
            )
        )

    def done(self, state: TrainState) -> Array:
        """Whether the seed has collected its ``total_timesteps``."""
        return state.experience >= self.config.total_timesteps

    def update(self, state: TrainState) -> tuple[TrainState, dict[str, Array]]:
        """One rollout and one learning step."""
        key, collect_key, update_key = jax.random.split(state.key, 3)
        progress = jnp.clip(
            state.experience.astype(jnp.float32) / self.config.total_timesteps, 0, 1
        )
        # With the envs split across devices, the rollout and the update's
        # passes run on each one's share.
        env_state, batch, _ = self.algorithm.collect(
            state.agent,
            split_env_batch(state.env, self.backend),
            collect_key,
            state.hyper,
        )
        env_state = split_env_batch(env_state, self.backend)
        batch = parallel.split_envs(batch, self.backend, axis=1)
        agent, metrics = self.algorithm.update(
            state.agent, batch, update_key, state.hyper, progress
        )
        metrics = {**episode_metrics(batch), **metrics}
        state = TrainState(
            agent=agent,
            env=env_state,
            key=key,
            update=state.update + 1,
            experience=state.experience + metrics["env_steps"],
            hyper=state.hyper,
        )
        return state, metrics

    def train_chunk(self, state: TrainState) -> tuple[TrainState, dict[str, Array]]:
        """``updates_per_chunk`` update slots; idle once the seed is done.

        Returns the new state and metrics stacked ``[K]``, with ``active`` marking
        the slots that ran an update.
        """

        # Traced once: eval_shape fills jit's trace cache and the cond below
        # reuses that trace (tracing the update twice cost ~0.1 s of start-up).
        update = jax.jit(self.update)
        metric_shapes = jax.eval_shape(update, state)[1]

        def idle(state: TrainState):
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes)
            return state, zeros

        def slot(state: TrainState, _):
            active = ~self.done(state)
            # A branch, not a select: idle slots cost nothing (under vmap over
            # seeds JAX turns it into a select of both sides).
            state, metrics = jax.lax.cond(active, update, idle, state)
            return state, {**metrics, "active": active}

        return jax.lax.scan(slot, state, None, length=self.updates_per_chunk)

    def train_chunk_batch(
        self, state: TrainState
    ) -> tuple[TrainState, dict[str, Array]]:
        """:meth:`train_chunk` over a leading seed axis ``[S]``.

        ``vmap`` for several seeds (split over the mesh's seeds axis,
        :func:`pgjax.parallel.vmap_seeds`); with one seed the axis is dropped
        and added back instead, so the program is the unbatched one
        (``lax.cond`` stays a branch rather than becoming a select of both
        sides).
        """
        rows = jax.tree.leaves(state)[0].shape[0]
        if rows > 1 and rows == self.backend.devices == self.backend.seed_shards:
            return self._one_seed_per_device(state)
        if rows > 1:
            return parallel.vmap_seeds(self.train_chunk, self.backend)(state)
        single = jax.tree.map(lambda x: x[0], state)
        single, metrics = self.train_chunk(single)
        return jax.tree.map(lambda x: x[None], (single, metrics))

    def _one_seed_per_device(
        self, state: TrainState
    ) -> tuple[TrainState, dict[str, Array]]:
        """:meth:`train_chunk_batch` with each seed on a device of its own.

        Each device runs the unbatched one-seed program on its seed, as a
        single seed does: under ``vmap`` a batch of one seed per device would
        turn the idle slots' branch into a select of both sides and every
        product into a batched one, which ran far slower. The seeds' programs
        never communicate (:func:`pgjax.parallel.seeds_apart`): REINFORCE's
        episode loop ends for each on its own, and a seed that has finished
        idles while the others train on.
        """

        def per_device(rows: TrainState):
            single = jax.tree.map(lambda x: x[0], rows)
            single, metrics = self.train_chunk(single)
            return jax.tree.map(lambda x: x[None], (single, metrics))

        seeds = PartitionSpec(SEEDS)
        with parallel.seeds_apart():
            return jax.shard_map(
                per_device,
                mesh=self.backend.mesh,
                in_specs=seeds,
                out_specs=seeds,
                check_vma=False,
            )(state)

    def train(self, key: Array, hyper: Hyperparams | None = None) -> TrainState:
        """Trains one seed to ``total_timesteps`` in one compiled loop.

        For library use (``jax.jit(jax.vmap(trainer.train, axis_name=SEEDS))(keys)``
        with ``SEEDS`` = :data:`pgjax.parallel.SEEDS`, which lets REINFORCE's
        episode loop stop for all seeds at once); the CLI uses
        :meth:`train_chunk` to report progress between chunks.
        """
        state = self.init(key, hyper)
        return jax.lax.while_loop(
            lambda s: ~self.done(s), lambda s: self.update(s)[0], state
        )

    def evaluate(
        self,
        state: TrainState,
        key: Array,
        num_episodes: int,
        deterministic: bool = True,
    ) -> Array:
        """Undiscounted returns ``[num_episodes]`` of fresh episodes.

        Uses the mode action when ``deterministic``; observations are normalised
        with the seed's statistics (frozen). The episodes are split over the
        envs axis like training's envs (when the devices divide them).
        """
        agent = state.agent

        def act_fn(obs, act_key):
            action = self.algorithm.act(agent, obs, act_key, deterministic)
            return action, jnp.zeros(obs.shape[0], jnp.float32)

        env_key, run_key = jax.random.split(key)
        env_state = envs.reset(self.spec, env_key, num_episodes)
        env_state = env_state.replace(obs_norm=state.env.obs_norm)
        env_state = split_env_batch(env_state, self.backend)
        _, batch, _ = rollout.collect_episodes(
            self.spec, act_fn, env_state, run_key, self.config.normalize_obs
        )
        return jnp.sum(jnp.where(batch.valid, batch.reward, 0.0), axis=0)


def default_updates_per_chunk(config: TrainConfig) -> int:
    """About 20 host syncs over a run, between 1 and 100 updates each."""
    if config.updates_per_chunk > 0:
        return config.updates_per_chunk
    steps_per_update = config.num_envs * (
        config.num_steps if config.algo != "reinforce" else 100
    )
    updates = max(1, config.total_timesteps // steps_per_update)
    return int(min(100, max(1, updates // 20)))


def make_train(config: TrainConfig, backend: Backend = IDENTITY) -> Trainer:
    """Builds the pure training functions for ``config`` on ``backend`` (the
    default: one device, nothing tuned).

    Raises:
      ConfigError: for an unknown environment or algorithm, or settings that
        do not fit together (its ``flag`` names the setting).
    """
    try:
        spec = envs.make_env(config.env)
    except ValueError as error:
        raise ConfigError("--env", str(error)) from None
    algorithm = algos.make_algorithm(config, spec, backend)
    return Trainer(
        config=config,
        spec=spec,
        algorithm=algorithm,
        updates_per_chunk=default_updates_per_chunk(config),
        backend=backend,
    )


__all__ = [
    "BASE_METRICS",
    "TrainState",
    "Trainer",
    "episode_metrics",
    "make_train",
]
