"""The critic's part of an update: value targets and the critic's fit.

* :func:`gae_targets`: GAE(λ) advantages and λ-return targets from a value
  function, with truncated steps bootstrapping from the value of the true
  final observation (:func:`next_state_values`).
* :func:`fit_critic`: regression of the critic on fixed targets by epochs of
  minibatch Adam steps, the minibatches drawn over global env indices so that
  a seed's fit is the same on any number of devices.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from pgjax import losses, parallel, value_norm
from pgjax.algos import blocks
from pgjax.algos.base import adam_step, clip_by_global_norm
from pgjax.backend import Backend
from pgjax.config import Hyperparams, TrainConfig
from pgjax.envs import EnvSpec
from pgjax.networks import Critic

Array = jax.Array


def next_state_values(value_fn, batch, values: Array, max_episode_steps: int):
    """``V(s_{t+1})`` of the true next states ``[T, N]`` without a second full pass.

    Inside an episode the next state is the next row's state, so its value is
    ``values[t + 1]``; after the last row it is ``V(next_obs[T − 1])``. Where the
    episode ended the next row holds a reset observation instead: after a
    termination the discount is 0 and the value is never used, but after a
    truncation the value of the true final observation is needed. gymnax
    truncates when an episode's step count reaches ``max_episode_steps``, so
    one env is truncated at most ``m = ⌈T / max_episode_steps⌉`` times in ``T``
    steps: gathering those ``m·N`` observations is exact, and costs ``(1 + m)/T``
    of evaluating every ``next_obs``.

    Args:
      value_fn: ``obs [..., *obs_shape] → values [...]``.
      batch: a :class:`~pgjax.rollout.Transition` ``[T, N, ...]``.
      values: ``[T, N]`` ``V(obs)`` under the same ``value_fn``.
      max_episode_steps: the env's time limit.
    """
    time = values.shape[0]
    last = value_fn(batch.next_obs[-1])
    shifted = jnp.concatenate([values[1:], last[None]], axis=0)
    per_env = -(-time // max_episode_steps)
    rows = jax.vmap(
        lambda column: jnp.nonzero(column, size=per_env, fill_value=time - 1)[0],
        in_axes=1,
        out_axes=1,
    )(batch.truncated)  # [m, N]
    final_obs = jax.vmap(lambda obs, r: obs[r], in_axes=(1, 1), out_axes=1)(
        batch.next_obs, rows
    )  # [m, N, *obs_shape]
    final_values = value_fn(final_obs)  # [m, N]
    # Dense scatter: Σ_j onehot(row_j)·v_j (a fill index T−1 repeats row T−1,
    # whose value it equals, so averaging the hits keeps it exact).
    hits = jax.nn.one_hot(rows, time, axis=0, dtype=values.dtype)  # [T, m, N]
    truncated_values = jnp.sum(hits * final_values[None], axis=1) / jnp.maximum(
        jnp.sum(hits, axis=1), 1.0
    )
    return jnp.where(batch.truncated, truncated_values, shifted)


def minibatch_split(x: Array, minibatches: int) -> Array:
    """``[T, N, ...]`` → ``[M, T, N/M, ...]``: minibatch ``m`` holds the envs
    at positions ``j ≡ m (mod M)``.

    Strided rather than consecutive: when the envs are split across devices
    (consecutive envs on each) and the devices divide ``N / M``, every device
    holds an equal share of every minibatch, so the split moves no data and
    each minibatch step keeps every device busy.
    """
    time, envs = x.shape[:2]
    x = x.reshape(time, envs // minibatches, minibatches, *x.shape[2:])
    return jnp.moveaxis(x, 2, 0)


#: Most groups an epoch's shuffle is stratified over (:func:`shuffle_groups`).
MAX_SHUFFLE_GROUPS = 64


def shuffle_groups(envs: int, minibatches: int) -> int:
    """``G``, the groups of consecutive envs an epoch shuffles within: the
    largest power of two up to :data:`MAX_SHUFFLE_GROUPS` that divides
    ``N / M`` (so that each group's ``N / G`` envs fill every minibatch
    equally). A function of the config alone, like everything a seed
    computes."""
    per_minibatch = envs // minibatches
    groups = 1
    while groups * 2 <= MAX_SHUFFLE_GROUPS and per_minibatch % (groups * 2) == 0:
        groups *= 2
    return groups


def epoch_orders(key: Array, epochs: int, envs: int, groups: int) -> Array:
    """``[E, G, N/G]`` env orders of the fit's epochs, within each of ``G``
    groups of consecutive envs: the first epoch in index order, each later
    one a uniform random permutation of each group.

    With the strided minibatches of :func:`minibatch_split`, each minibatch
    then takes an equal random share of every group: a stratified shuffle.
    The envs are exchangeable (independent resets, none chosen by its index),
    so it draws minibatches as a shuffle of all ``N`` envs does, and the
    first epoch's strided minibatches are already a random split. Unlike a
    shuffle of all envs, it moves no data between devices whose envs are
    whole groups (when the devices divide ``G``). A permutation is the order
    that sorts 64 random bits per env, drawn in one threefry call over the
    global env axis: the same on any number of devices.
    """
    size = envs // groups
    first = jnp.broadcast_to(jnp.arange(size), (1, groups, size))
    if epochs == 1:
        return first
    bits = jax.random.bits(key, (epochs - 1, groups, size, 2))
    return jnp.concatenate([first, jax.vmap(jax.vmap(_order_of))(bits)])


def shuffled(x: Array, order: Array) -> Array:
    """``x [T, N, ...]`` with each group's envs in ``order [G, N/G]``."""
    time = x.shape[0]
    groups, size = order.shape
    grouped = x.reshape(time, groups, size, *x.shape[2:])
    index = order.reshape(1, groups, size, *([1] * (x.ndim - 2)))
    return jnp.take_along_axis(grouped, index, axis=2).reshape(x.shape)


def _order_of(sort_keys: Array) -> Array:
    """The permutation that sorts ``[N, 2]`` uint32 keys (the first one major).

    For independent uniform keys it is a uniform permutation of ``N``, but for
    ties, whose chance is below ``N² / 2⁶⁵`` (10⁻¹² at 8192 envs).
    """
    envs = sort_keys.shape[0]
    return jax.lax.sort(
        (sort_keys[:, 0], sort_keys[:, 1], jnp.arange(envs)), num_keys=2
    )[2]


def fit_critic(
    loss_fn,
    params,
    opt_state,
    data,
    key: Array,
    lr: Array,
    max_grad_norm: Array,
    epochs: int,
    minibatches: int,
    block_rows: int,
    backend: Backend,
):
    """Critic regression: ``epochs × minibatches`` clipped Adam steps.

    Each epoch takes the envs in an order (:func:`epoch_orders`, a shuffle
    stratified over groups of envs) and splits them into ``minibatches``
    equal groups (:func:`minibatch_split`); a
    minibatch is all ``T`` steps of one group. Targets are fixed before the
    fit, so one epoch of ``M`` minibatches costs the FLOPs of one full-batch
    step but moves the critic ``M`` times.

    Args:
      loss_fn: ``(params, block) → mean loss`` of a block whose leaves are
        ``[rows, ...]`` (e.g. ``(obs, targets)``).
      params, opt_state: the critic's parameters and Adam state.
      data: pytree of ``[T, N, ...]`` leaves (observations, targets, ...).
      key: draws the orders of the epochs after the first (unused for one).
      lr, max_grad_norm: the step size and each step's gradient-norm clip.
      epochs, minibatches: static counts; ``minibatches`` divides ``N``.
      block_rows: row blocks inside a minibatch (:mod:`pgjax.algos.blocks`).
      backend: where the envs are (each minibatch's blocked pass runs split
        when the devices divide ``N / M``).

    Returns:
      ``(params, opt_state, loss, grad_norm)``: the fitted critic, its Adam
      state, and the first minibatch's loss and gradient norm (before clipping)
      before any step.
    """
    time, envs = jax.tree.leaves(data)[0].shape[:2]
    group = envs // minibatches
    count = blocks.block_count(time, group, block_rows, backend)

    def block_loss(critic_params, block):
        loss = loss_fn(critic_params, block)
        return loss / count, loss / count

    def step(carry, minibatch):
        critic_params, critic_opt = carry
        minibatch = parallel.split_envs(minibatch, backend, axis=1)
        grads, loss = blocks.blocked_grad(
            block_loss, critic_params, minibatch, block_rows, backend
        )
        grads, norm = clip_by_global_norm(grads, max_grad_norm)
        critic_params, critic_opt = adam_step(critic_params, critic_opt, grads, lr)
        return (critic_params, critic_opt), (loss, norm)

    def epoch(carry, order):
        # One epoch body for all epochs: the minibatch step compiles once.
        ordered = data
        if order is not None:
            ordered = jax.tree.map(lambda x: shuffled(x, order), data)
        split = jax.tree.map(lambda x: minibatch_split(x, minibatches), ordered)
        return jax.lax.scan(step, carry, split)

    if epochs == 1:
        carry, (losses_, norms) = epoch((params, opt_state), None)
    else:
        orders = epoch_orders(key, epochs, envs, shuffle_groups(envs, minibatches))
        carry, (losses_, norms) = jax.lax.scan(epoch, (params, opt_state), orders)
        losses_, norms = losses_[0], norms[0]
    params, opt_state = carry
    return params, opt_state, losses_[0], norms[0]


def critic_value_fn(
    config: TrainConfig, critic: Critic, critic_params, stats
) -> Callable[[Array], Array]:
    """``obs ↦ V(obs)``: the critic's outputs, denormalised by ``stats`` when
    ``config.value_norm`` (PopArt, :mod:`pgjax.value_norm`)."""

    def value_fn(obs: Array) -> Array:
        outputs = critic.apply(critic_params, obs)
        if config.value_norm:
            return value_norm.denormalize(stats, outputs)
        return outputs

    return value_fn


def gae_targets(
    value_fn,
    batch,
    hyper: Hyperparams,
    block_rows: int,
    spec: EnvSpec,
    backend: Backend,
):
    """GAE(λ) advantages and λ-return targets ``[T, N]`` under ``value_fn``.

    Values come from one blocked pass over ``batch.obs``; next-state values from
    :func:`next_state_values`. Rewards are scaled by ``hyper.reward_scale``;
    termination zeroes the discount, truncation does not.
    """
    values = blocks.blocked_map(value_fn, batch.obs, block_rows, backend)
    next_values = next_state_values(value_fn, batch, values, spec.max_episode_steps)
    rewards = batch.reward * hyper.reward_scale
    discounts = hyper.gamma * (1.0 - batch.terminated.astype(rewards.dtype))
    advantages = losses.gae_advantages(
        rewards, values, next_values, discounts, batch.done, hyper.gae_lambda
    )
    return advantages, advantages + values


def prepared_targets(
    config: TrainConfig, advantages: Array, targets: Array, critic_params, stats
):
    """``(advantages, targets, critic_params, stats)`` as an update uses them.

    With ``--normalize-advantages`` the advantages are standardised per batch;
    with ``--value-norm`` the targets are folded into the PopArt statistics
    and the critic's output layer rescaled so that its values are unchanged
    (:func:`pgjax.value_norm.fold_targets`), so that it regresses on
    standardised targets.
    """
    if config.normalize_advantages:
        advantages = losses.normalize_advantages(advantages)
    if config.value_norm:
        stats, critic_params, targets = value_norm.fold_targets(
            stats, critic_params, targets
        )
    return advantages, targets, critic_params, stats
