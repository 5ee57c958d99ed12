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

from pgjax import losses, parallel, rollout, value_norm
from pgjax.config import Hyperparams, TrainConfig
from pgjax.envs import EnvSpec
from pgjax.networks import Critic, Policy, make_critic, make_policy
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

    The leaves are concatenated into one vector first: XLA:CPU compiles each
    leaf's own sum of squares as two kernels (its tree-reduction rewriter
    splits every long reduction in two), and each distinct kernel costs ~10 ms
    of compile; the concatenation and one sum are a few. 4–9 fewer distinct
    kernels per chunk (docs/performance.md, "Thirteenth session"); at run
    time the copy of a few thousand parameters is negligible.
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


CPU_BLOCK_ROWS = 2048


def resolve_block_rows(config: TrainConfig) -> int:
    """``config.block_rows``, with -1 resolved for the default backend."""
    if config.block_rows >= 0:
        return config.block_rows
    return CPU_BLOCK_ROWS if jax.default_backend() == "cpu" else 0


def num_blocks(rows: int, block_rows: int) -> int:
    """Fewest equal blocks of at most ``block_rows`` rows that tile ``rows``.

    ``block_rows <= 0`` means one block (no blocking).
    """
    if block_rows <= 0 or rows <= block_rows:
        return 1
    for count in range(-(-rows // block_rows), rows + 1):
        if rows % count == 0:
            return count
    return rows


def block_count(time: int, envs: int, block_rows: int) -> int:
    """How many blocks :func:`blocked_grad` sums over for ``[T, N]`` rows.

    Each device's share of the envs (:mod:`pgjax.parallel`) is tiled on its
    own, so this is ``shards × num_blocks(T·N / shards, block_rows)``; divide
    block means by it to get batch means.
    """
    shards = parallel.env_shards(envs)
    return shards * num_blocks(time * envs // shards, block_rows)


def _to_blocks(data, count: int):
    """Reshapes every leaf ``[T, N, ...]`` to ``[count, T·N / count, ...]``."""

    def reshape(x):
        flat = x.reshape(-1, *x.shape[2:])
        return flat.reshape(count, flat.shape[0] // count, *flat.shape[1:])

    return jax.tree.map(reshape, data)


def blocked_grad(loss_fn, params, data, block_rows: int, with_outputs: bool = False):
    """``Σ_b ∇loss_fn(params, block_b)`` and ``Σ_b aux_b`` over row blocks,
    each device's share of the envs on its own (:mod:`pgjax.parallel`).

    See :func:`blocked_grad_local` for the contract; divide block means by
    :func:`block_count`.
    """
    envs = jax.tree.leaves(data)[0].shape[1]
    specs = parallel.SUM
    if with_outputs:
        specs = (parallel.SUM, parallel.SUM, parallel.ROWS)
    run = parallel.map_env_shards(
        lambda p, d: blocked_grad_local(loss_fn, p, d, block_rows, with_outputs),
        envs,
        (parallel.REPLICATED, parallel.ROWS),
        specs,
    )
    return run(params, data)


def blocked_grad_local(
    loss_fn, params, data, block_rows: int, with_outputs: bool = False
):
    """``Σ_b ∇loss_fn(params, block_b)`` and ``Σ_b aux_b`` over row blocks.

    ``data`` is a pytree of ``[T, N, ...]`` arrays whose rows are independent
    (returns and advantages already computed); ``loss_fn(params, block)`` gets
    leaves ``[rows, ...]`` and must return ``(loss, aux)`` where summing over
    blocks gives the full-batch value (e.g. block means divided by the number of
    blocks). On a CPU, blocks of a few thousand rows keep every activation in
    cache, which made the update 2-3x faster than one pass over the whole batch
    (docs/performance.md); on accelerators one block is best.

    With ``with_outputs``, ``aux`` is ``(summed, outputs)``: ``summed`` is
    summed over blocks as above, ``outputs`` a pytree of per-row ``[rows, ...]``
    leaves (e.g. the forward pass's action distribution) that comes back as
    ``[T, N, ...]``, so a later phase need not run the forward pass again.
    Returns ``(grads, summed, outputs)`` then, else ``(grads, aux)``.
    """
    leaf = jax.tree.leaves(data)[0]
    time, envs = leaf.shape[:2]
    count = num_blocks(time * envs, block_rows)
    blocks = _to_blocks(data, count)
    # jit: eval_shape below fills its trace cache and the scan body reuses the
    # trace (the loss is traced once, not twice).
    grad_fn = jax.jit(jax.grad(loss_fn, has_aux=True))

    def summed_and_outputs(grads_and_aux):
        grads, aux = grads_and_aux
        if not with_outputs:
            return (grads, aux), None
        summed, outputs = aux
        return (grads, summed), outputs

    if count == 1:
        total, outputs = summed_and_outputs(
            grad_fn(params, jax.tree.map(lambda x: x[0], blocks))
        )
        outputs = jax.tree.map(lambda y: y[None], outputs)
    else:

        def body(total, block):
            block_total, outputs = summed_and_outputs(grad_fn(params, block))
            return jax.tree.map(jnp.add, total, block_total), outputs

        first_block = jax.tree.map(lambda x: x[0], blocks)
        zeros = jax.tree.map(
            lambda s: jnp.zeros(s.shape, s.dtype),
            jax.eval_shape(
                lambda p, b: summed_and_outputs(grad_fn(p, b))[0], params, first_block
            ),
        )
        total, outputs = jax.lax.scan(body, zeros, blocks)
    if not with_outputs:
        return total
    outputs = jax.tree.map(lambda y: y.reshape(time, envs, *y.shape[2:]), outputs)
    return (*total, outputs)


def blocked_map(fn, data, block_rows: int):
    """``fn`` over row blocks of ``[T, N, ...]`` leaves; outputs back to ``[T, N]``.

    For forward passes without gradients (values for GAE), with the same cache
    argument as :func:`blocked_grad`; each device maps its share of the envs.
    """
    envs = jax.tree.leaves(data)[0].shape[1]
    run = parallel.map_env_shards(
        lambda d: blocked_map_local(fn, d, block_rows),
        envs,
        (parallel.ROWS,),
        parallel.ROWS,
    )
    return run(data)


def blocked_map_local(fn, data, block_rows: int):
    """:func:`blocked_map` on one device."""
    leaf = jax.tree.leaves(data)[0]
    time, envs = leaf.shape[:2]
    count = num_blocks(time * envs, block_rows)
    out = jax.lax.map(fn, _to_blocks(data, count))
    return jax.tree.map(lambda y: y.reshape(time, envs, *y.shape[2:]), out)


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
):
    """Critic regression: ``epochs × minibatches`` clipped Adam steps.

    Each epoch splits the envs into ``minibatches`` equal groups; a minibatch
    is all ``T`` steps of one group. The first epoch takes the envs in order
    (they are exchangeable, so that is already a random split), each later one
    shuffles them first (a sort of ``N`` envs by random keys, ~1/20 of the cost
    of shuffling ``T·N`` rows on a CPU). Targets are fixed before the fit, so
    one epoch of ``M`` minibatches costs the FLOPs of one full-batch step but
    moves the critic ``M`` times.

    Args:
      loss_fn: ``(params, block) → mean loss`` of a block whose leaves are
        ``[rows, ...]`` (e.g. ``(obs, targets)``).
      params, opt_state: the critic's parameters and Adam state.
      data: pytree of ``[T, N, ...]`` leaves (observations, targets, ...).
      key: shuffles the envs of the epochs after the first (unused for one):
        each env gets 64 random bits per such epoch and the epoch takes the
        envs in the order of their bits.
      lr, max_grad_norm: the step size and each step's gradient-norm clip.
      epochs, minibatches: static counts; ``minibatches`` divides ``N``.
      block_rows: cache-sized blocks inside a minibatch (:func:`blocked_grad`).

    Returns:
      ``(params, opt_state, loss, grad_norm)``: the fitted critic, its Adam
      state, and the first minibatch's loss and gradient norm (before clipping)
      before any step.
    """
    time, envs = jax.tree.leaves(data)[0].shape[:2]
    # Split across the devices, each one fits on its share of the envs (its
    # minibatch m is the m-th group of its envs) and the steps average the
    # devices' gradients: every device takes the same steps.
    sharded = parallel.env_mesh(envs // minibatches) is not None

    def fit(params, opt_state, data, sort_keys, lr, max_grad_norm):
        local_envs = jax.tree.leaves(data)[0].shape[1]
        count = num_blocks(time * local_envs // minibatches, block_rows)

        def block_loss(critic_params, block):
            loss = loss_fn(critic_params, block)
            return loss / count, loss / count

        def step(carry, minibatch):
            critic_params, critic_opt = carry
            grads, loss = blocked_grad_local(
                block_loss, critic_params, minibatch, block_rows
            )
            grads, loss = parallel.mean_over_shards((grads, loss), sharded)
            grads, norm = clip_by_global_norm(grads, max_grad_norm)
            critic_params, critic_opt = adam_step(critic_params, critic_opt, grads, lr)
            return (critic_params, critic_opt), (loss, norm)

        def split(x, order):
            """``[T, N, ...]`` → ``[M, T, N/M, ...]``, envs in ``order``
            (None: as is)."""
            if order is not None:
                x = x[:, order]
            x = x.reshape(time, minibatches, local_envs // minibatches, *x.shape[2:])
            return jnp.swapaxes(x, 0, 1)

        def epoch(carry, order):
            minibatches_data = jax.tree.map(lambda x: split(x, order), data)
            return jax.lax.scan(step, carry, minibatches_data)

        # The envs are exchangeable (independent resets, none chosen by its
        # index), so groups of consecutive envs are already random minibatches:
        # the first epoch takes them in order, and only the later ones shuffle.
        # Relative to the first, each later epoch's order is then a uniform
        # permutation, as when all shuffle.
        def any_epoch(carry, epoch_input):
            index, epoch_sort_keys = epoch_input
            # One scan over all epochs, the first one's order picked by a
            # branch: the minibatch step (a blocked gradient and an Adam
            # step) is then compiled once, not once for the first epoch and
            # again for the others (with CG's single Fisher product, 16 %
            # fewer fused kernels in NPG's chunk; docs/performance.md,
            # "Eleventh session").
            order = jax.lax.cond(
                index == 0,
                lambda: jnp.arange(local_envs),
                lambda: _order_of(epoch_sort_keys),
            )
            return epoch(carry, order)

        if epochs == 1:
            carry, (step_losses, step_norms) = epoch((params, opt_state), None)
        else:
            # Epoch 0 takes the envs in order: its sort keys are unused.
            sort_keys = jnp.concatenate([sort_keys[:1], sort_keys])
            carry, (step_losses, step_norms) = jax.lax.scan(
                any_epoch, (params, opt_state), (jnp.arange(epochs), sort_keys)
            )
            step_losses, step_norms = step_losses[0], step_norms[0]
        params, opt_state = carry
        return params, opt_state, step_losses[0], step_norms[0]

    # Epochs 1.. order the envs by 64 random bits each, drawn here for the
    # whole env axis in one threefry call: every device gets the bits of its
    # own envs (ROWS), so none needs a key of its own, and a sort replaces
    # jax.random.permutation's rounds of splits and sorts (40 fewer fused
    # kernels in NPG's chunk; docs/performance.md, "Twelfth session"). One
    # epoch draws nothing.
    sort_keys = jax.random.bits(key, (epochs - 1, envs, 2)) if epochs > 1 else None
    run = parallel.map_env_shards(
        fit,
        envs // minibatches,
        (parallel.REPLICATED, parallel.REPLICATED, parallel.ROWS, parallel.ROWS)
        + (parallel.REPLICATED,) * 2,
        parallel.REPLICATED,
    )
    return run(params, opt_state, data, sort_keys, lr, max_grad_norm)


def _order_of(sort_keys: Array) -> Array:
    """The permutation that sorts ``[N, 2]`` uint32 keys (the first one major).

    For independent uniform keys it is a uniform permutation of ``N``, but for
    ties, whose chance is below ``N² / 2⁶⁵`` (10⁻¹² at 8192 envs).
    """
    envs = sort_keys.shape[0]
    return jax.lax.sort(
        (sort_keys[:, 0], sort_keys[:, 1], jnp.arange(envs)), num_keys=2
    )[2]


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


def gae_targets(value_fn, batch, hyper: Hyperparams, block_rows: int, spec: EnvSpec):
    """GAE(λ) advantages and λ-return targets ``[T, N]`` under ``value_fn``.

    Values come from one blocked pass over ``batch.obs``; next-state values from
    :func:`next_state_values`. Rewards are scaled by ``hyper.reward_scale``;
    termination zeroes the discount, truncation does not.
    """
    values = blocked_map(value_fn, batch.obs, block_rows)
    next_values = next_state_values(value_fn, batch, values, spec.max_episode_steps)
    rewards = batch.reward * hyper.reward_scale
    discounts = hyper.gamma * (1.0 - batch.terminated.astype(rewards.dtype))
    advantages = losses.gae_advantages(
        rewards, values, next_values, discounts, batch.done, hyper.gae_lambda
    )
    return advantages, advantages + values


def valid_rows(valid: Array) -> tuple[Array, Array]:
    """Flat indices of the valid rows of a ``[T, N]`` mask, valid ones first.

    Returns ``(index, count)``: ``index`` is ``[T·N]`` int32 (row ``t·N + n``),
    its first ``count`` entries the valid rows in order, the rest 0.
    """
    flat = valid.reshape(-1)
    (index,) = jnp.nonzero(flat, size=flat.shape[0], fill_value=0)
    return index.astype(jnp.int32), jnp.sum(flat, dtype=jnp.int32)


def _valid_blocks(data, valid, block_rows: int):
    """What :func:`compacted_grad` and :func:`compacted_map` share.

    Returns ``(block_at, num_blocks)``: ``block_at(i)`` gives block ``i``
    of the valid rows, ``((leaves [size, ...], in_range [size]), rows [size])``,
    where ``in_range`` marks the slots holding a valid row (the last block's
    tail does not) and ``rows`` their flat indices; ``num_blocks`` (traced) is
    how many blocks hold any valid row: under a vmap over seeds, the most
    of any seed (:func:`pgjax.parallel.max_over_seeds`), as the blocks past a
    seed's own are empty (``in_range`` all False).
    """
    index, count = valid_rows(valid)
    total = index.shape[0]
    size = block_rows if 0 < block_rows < total else total
    index = jnp.pad(index, (0, -total % size))
    flat = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), data)

    def block_at(i):
        start = i * size
        rows = jax.lax.dynamic_slice_in_dim(index, start, size)
        in_range = start + jnp.arange(size) < count
        return (jax.tree.map(lambda x: x[rows], flat), in_range), rows

    return block_at, parallel.max_over_seeds((count + size - 1) // size)


def compacted_grad(loss_fn, params, data, valid, block_rows: int):
    """``Σ_b ∇loss_fn(params, block_b)`` over blocks of the *valid* rows only.

    Like :func:`blocked_grad`, but the rows are first packed: blocks are
    gathered from the flat indices of the rows where ``valid`` (``[T, N]``) is
    True, and the loop stops after the last block that holds one. For a
    REINFORCE buffer, where rows after each episode's end are padding, the
    work is ``⌈valid rows / block_rows⌉`` full blocks wherever the valid rows
    lie. ``loss_fn(params, (block, in_range))`` gets leaves ``[block_rows,
    ...]`` and a bool mask ``[block_rows]`` of the slots that hold a valid row
    (weight the loss by it) and returns ``(loss, aux)``, summed over blocks.
    ``block_rows <= 0``: one block of all rows. Each device packs and sums
    its own share of the envs (:mod:`pgjax.parallel`).
    """
    run = parallel.map_env_shards(
        lambda p, d, v: compacted_grad_local(loss_fn, p, d, v, block_rows),
        valid.shape[1],
        (parallel.REPLICATED, parallel.ROWS, parallel.ROWS),
        parallel.SUM,
    )
    return run(params, data, valid)


def compacted_grad_local(loss_fn, params, data, valid, block_rows: int):
    """:func:`compacted_grad` on one device."""
    block_at, num_blocks = _valid_blocks(data, valid, block_rows)
    grad_fn = jax.jit(jax.grad(loss_fn, has_aux=True))  # traced once (blocked_grad)
    zeros = jax.tree.map(
        lambda s: jnp.zeros(s.shape, s.dtype),
        jax.eval_shape(grad_fn, params, block_at(0)[0]),
    )

    def body(i, total):
        return jax.tree.map(jnp.add, total, grad_fn(params, block_at(i)[0]))

    return jax.lax.fori_loop(0, num_blocks, body, zeros)


def compacted_map(fn, data, valid, block_rows: int):
    """``fn`` on the blocks of :func:`compacted_grad`; back as ``[T, N, ...]``
    leaves, 0 at the rows where ``valid`` is False. ``fn(block)`` gets leaves
    ``[block_rows, ...]`` (no mask: its outputs at out-of-range slots are
    dropped). Each device maps its own share of the envs."""
    run = parallel.map_env_shards(
        lambda d, v: compacted_map_local(fn, d, v, block_rows),
        valid.shape[1],
        (parallel.ROWS, parallel.ROWS),
        parallel.ROWS,
    )
    return run(data, valid)


def compacted_map_local(fn, data, valid, block_rows: int):
    """:func:`compacted_map` on one device."""
    time, envs = valid.shape
    block_at, num_blocks = _valid_blocks(data, valid, block_rows)
    sample = jax.eval_shape(lambda: fn(block_at(0)[0][0]))
    out = jax.tree.map(
        lambda s: jnp.zeros((time * envs, *s.shape[1:]), s.dtype), sample
    )

    def body(i, out):
        (block, in_range), rows = block_at(i)
        # Slots past the valid rows scatter out of bounds, and are dropped.
        rows = jnp.where(in_range, rows, time * envs)
        return jax.tree.map(lambda o, y: o.at[rows].set(y, mode="drop"), out, fn(block))

    out = jax.lax.fori_loop(0, num_blocks, body, out)
    return jax.tree.map(lambda y: y.reshape(time, envs, *y.shape[1:]), out)


def make_networks(
    config: TrainConfig, spec: EnvSpec, q_critic: bool = False
) -> tuple[Policy, Critic]:
    """The actor and critic of ``config``.

    On a CPU their Dense layers use :func:`pgjax.networks.dense_dot`: the same
    values and derivatives, with weight gradients XLA:CPU computes faster
    (A2C at 4096 envs 1.3–1.5×, docs/performance.md "Sixth session").
    """
    fast = jax.default_backend() == "cpu"
    policy = make_policy(spec, config.hidden, config.activation, fast_weight_grads=fast)
    critic = make_critic(
        spec,
        config.hidden,
        config.activation,
        q_values=q_critic,
        fast_weight_grads=fast,
    )
    return policy, critic


def init_actor_critic(policy: Policy, critic: Critic, key: Array) -> ActorCriticState:
    actor_key, critic_key = jax.random.split(key)
    actor = policy.init(actor_key)
    critic_params = critic.init(critic_key)
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
