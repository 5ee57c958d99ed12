"""The Q actor-critic's linear critic (``--algo a2c --critic linear-q``).

The critic is linear in hand-made features of the state and action,

  φ(s, a) = one_hot(a) ⊗ [s, 1],     Q_w(s, a) = w·φ(s, a) = w[a]·[s, 1],

with ``w`` an ``[A, D + 1]`` matrix: one linear function of the (flattened)
observation, plus a bias, per action. The observation is the one the policy
acted on, so it is normalised when ``--normalize-obs`` is on. ``w`` starts at
zero.

It learns by TD(0) in the expected form (expected SARSA):

  δ = r + γ·(1 − terminated)·Σ_a' π(a'|s')·Q_w(s', a') − Q_w(s, a),
  w ← w + α·mean_i δ_i·φ(s_i, a_i),

a semi-gradient step (the bootstrapped target is held fixed) of plain
gradient descent at ``α = --critic-lr``, neither clipped nor Adam-scaled.
The expected form rather than SARSA's sampled next action ``a'``: after a
time limit the next state is the true final observation, at which the policy
never acted, and after the rollout's last step no next action was drawn; the
expectation is defined at every row, and it has less variance. On the
policy's own data its fixed point is ``Q^π`` wherever the features can
represent it (one-hot observations: a table). Termination zeroes the
discount; truncation bootstraps from ``s'``, the true final observation.
The expectation is linear in ``w``: ``Σ_a' π(a'|s')·φ(s', a') = π(·|s') ⊗ [s', 1]``
is computed once per update under the policy that acted, and every TD step
reuses it.

The actor is weighted by ``Q_w(s, a)`` itself, as in the notes' Q
actor-critic: ``Δθ = α·∇log π(a|s)·Q_w(s, a)``. With ``--normalize-advantages``
(the default) the weights are standardised over the batch: the batch mean
acts as a constant (action-independent) baseline, and the scale only sets the
step size. A critic linear in features other than ``∇log π`` is not
compatible (Sutton et al. 2000): its policy gradient is biased, however well
it is fitted.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import struct

from pgjax.algos import blocks
from pgjax.algos import critic as critic_lib
from pgjax.backend import Backend
from pgjax.config import Hyperparams
from pgjax.envs import EnvSpec
from pgjax.networks import Policy

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class LinearQCritic:
    """``Q_w(s, ·) = w·[s, 1]``: the critic, with a network's ``init``/``apply``.

    Attributes:
      num_actions: ``A``.
      obs_shape: shape of one observation (flattened to ``D`` numbers).
      q_values: always True (``apply`` gives one value per action).
    """

    num_actions: int
    obs_shape: tuple[int, ...]
    q_values: bool = True

    def init(self, key: Array) -> dict[str, Array]:
        """``{"w": zeros [A, D + 1]}`` (``key`` unused: TD starts from 0)."""
        del key
        return {"w": jnp.zeros((self.num_actions, math.prod(self.obs_shape) + 1))}

    def inputs(self, obs: Array) -> Array:
        """``[s, 1]``: ``[..., D + 1]`` from observations ``[..., *obs_shape]``."""
        batch = obs.shape[: obs.ndim - len(self.obs_shape)]
        flat = obs.reshape(*batch, -1)
        return jnp.concatenate([flat, jnp.ones((*batch, 1), flat.dtype)], axis=-1)

    def apply(self, params: dict[str, Array], obs: Array) -> Array:
        """``Q_w(s, a)`` for every action: ``[..., A]``."""
        return self.inputs(obs) @ params["w"].T


def make_critic(spec: EnvSpec) -> LinearQCritic:
    """The linear Q critic for ``spec`` (discrete actions)."""
    if not spec.discrete:
        raise ValueError("a linear Q critic needs a discrete action space")
    return LinearQCritic(num_actions=spec.num_actions, obs_shape=spec.obs_shape)


@struct.dataclass
class TDBatch:
    """What TD(0) reads of a rollout; leaves ``[T, N, ...]`` (or ``[B, ...]``).

    Attributes:
      inputs: ``[s, 1]``, ``[..., D + 1]``.
      action: ``one_hot(a)``, ``[..., A]``: with ``inputs``, ``φ(s, a)``.
      next_inputs: ``[s', 1]`` of the true next observation, ``[..., D + 1]``.
      next_probs: ``π(·|s')`` under the policy that acted, ``[..., A]``.
      reward: scaled rewards ``[...]``.
      discount: ``γ·(1 − terminated)``, ``[...]``.
    """

    inputs: Array
    action: Array
    next_inputs: Array
    next_probs: Array
    reward: Array
    discount: Array


def q_taken(params: dict[str, Array], batch: TDBatch) -> Array:
    """``Q_w(s, a) = Σ_a one_hot(a)·w[a]·[s, 1]``, ``[...]``."""
    return jnp.einsum("...a,ad,...d->...", batch.action, params["w"], batch.inputs)


def td_errors(params: dict[str, Array], batch: TDBatch) -> Array:
    """``δ = r + γ(1 − term)·Σ_a' π(a'|s')·Q_w(s', a') − Q_w(s, a)``, ``[...]``."""
    next_q = jnp.einsum(
        "...a,ad,...d->...", batch.next_probs, params["w"], batch.next_inputs
    )
    return batch.reward + batch.discount * next_q - q_taken(params, batch)


def td_step(
    params: dict[str, Array], batch: TDBatch, lr: Array
) -> tuple[dict[str, Array], Array, Array]:
    """One semi-gradient TD(0) step over the rows of ``batch``.

    ``w ← w + α·u``, ``u = mean_i δ_i·φ(s_i, a_i)`` (``u[a] = mean_i δ_i·
    one_hot(a_i)[a]·[s_i, 1]``): minus the gradient of ``½·mean δ²`` with the
    target held fixed.

    Args:
      params: ``{"w": [A, D + 1]}``.
      batch: a :class:`TDBatch` with any leading row axes.
      lr: ``α``.

    Returns:
      ``(params, loss, norm)``: the stepped parameters, ``½·mean δ²`` and
      ``‖u‖`` before the step.
    """
    delta = td_errors(params, batch)
    rows = delta.size
    update = jnp.einsum("...,...a,...d->ad", delta, batch.action, batch.inputs) / rows
    loss = 0.5 * jnp.mean(jnp.square(delta))
    return {"w": params["w"] + lr * update}, loss, jnp.sqrt(jnp.sum(update**2))


def td_fit(
    params: dict[str, Array],
    batch: TDBatch,
    key: Array,
    lr: Array,
    epochs: int,
    minibatches: int,
) -> tuple[dict[str, Array], Array, Array]:
    """``epochs × minibatches`` TD(0) steps (:func:`td_step`) over a rollout.

    Each epoch splits the envs into strided minibatches, shuffled within
    fixed groups after the first epoch, as the network critics' fit does
    (:func:`pgjax.algos.critic.fit_critic`): the same steps on any number of
    devices. Each step recomputes ``δ`` with the current ``w``.

    Args:
      params: ``{"w": [A, D + 1]}``.
      batch: a :class:`TDBatch` ``[T, N, ...]``.
      key: draws the env orders of the epochs after the first.
      lr: ``α``.
      epochs, minibatches: static counts; ``minibatches`` divides ``N``.

    Returns:
      ``(params, loss, norm)``: the fitted critic, and the first step's
      ``½·mean δ²`` and ``‖u‖``.
    """
    envs = batch.reward.shape[1]

    def step(params, minibatch):
        params, loss, norm = td_step(params, minibatch, lr)
        return params, (loss, norm)

    def epoch(params, order):
        ordered = batch
        if order is not None:
            ordered = jax.tree.map(lambda x: critic_lib.shuffled(x, order), batch)
        split = jax.tree.map(
            lambda x: critic_lib.minibatch_split(x, minibatches), ordered
        )
        return jax.lax.scan(step, params, split)

    if epochs == 1:
        params, (loss, norm) = epoch(params, None)
    else:
        groups = critic_lib.shuffle_groups(envs, minibatches)
        orders = critic_lib.epoch_orders(key, epochs, envs, groups)
        params, (loss, norm) = jax.lax.scan(epoch, params, orders)
        loss, norm = loss[0], norm[0]
    return params, loss[0], norm[0]


def make_targets(
    policy: Policy, critic: LinearQCritic, block_rows: int, backend: Backend
):
    """``targets(params, batch, hyper, stats) → (Q_w(s, a) [T, N], TDBatch)``:
    the actor's weights and the TD(0) data, in the form of A2C's targets.

    ``params`` holds ``"actor"`` (the policy that acted) and ``"critic"``;
    ``stats`` is unused (``--value-norm`` is refused with this critic).
    """

    def targets(params, batch, hyper: Hyperparams, stats):
        del stats
        next_probs = blocks.blocked_map(
            lambda obs: policy.apply(params["actor"], obs).probs(),
            batch.next_obs,
            block_rows,
            backend,
        )
        rewards = batch.reward * hyper.reward_scale
        one_hot = jax.nn.one_hot(batch.action, critic.num_actions, dtype=rewards.dtype)
        td_batch = TDBatch(
            inputs=critic.inputs(batch.obs),
            action=one_hot,
            next_inputs=critic.inputs(batch.next_obs),
            next_probs=jax.lax.stop_gradient(next_probs),
            reward=rewards,
            discount=hyper.gamma * (1.0 - batch.terminated.astype(rewards.dtype)),
        )
        return q_taken(params["critic"], td_batch), td_batch

    return targets


__all__ = [
    "LinearQCritic",
    "TDBatch",
    "make_critic",
    "make_targets",
    "q_taken",
    "td_errors",
    "td_fit",
    "td_step",
]
