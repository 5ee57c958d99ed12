"""PopArt value normalisation: the critic learns values in standardised units.

A critic regressing raw returns must follow their scale as the policy improves:
on CartPole with γ = 0.999 the λ-return targets grow from ~10 to ~1000 within a
few hundred updates. With a fixed Adam step the output layer can only move so
far per update, so the learning rate sets both how fast the critic follows that
growth and how much it jitters once there. PopArt (van Hasselt et al. 2016,
https://arxiv.org/abs/1602.07714) separates the two: running statistics
``μ, σ`` of the targets carry the scale, the network predicts the standardised
value ``n(s)``, and

  V(s) = σ·n(s) + μ,      loss = (n(s) − (G − μ)/σ)².

Whenever ``μ, σ`` change, the output layer is rescaled so that ``V(s)`` stays
exactly what it was ("preserving outputs precisely"):

  W' = W·σ / σ',      b' = (σ·b + μ − μ') / σ'.

The statistics are exponential moving averages over updates of the batch mean
and mean square of the targets, debiased like Adam's moments. All functions are
pure and work under ``jit`` and ``vmap``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

Array = jax.Array

#: Decay of the moving averages per update (memory of about 20 updates).
DECAY = 0.95
#: Smallest σ, so that constant targets do not divide by zero.
MIN_SCALE = 1e-2


@struct.dataclass
class ValueNormState:
    """Moving averages of the value targets.

    Attributes:
      mean: EMA of the batch mean of the targets (biased towards 0).
      mean_square: EMA of the batch mean of the squared targets (biased).
      weight: ``1 − decayⁿ`` after ``n`` updates, the EMAs' total weight; 0
        before the first update, when ``μ = 0`` and ``σ = 1``.
    """

    mean: Array
    mean_square: Array
    weight: Array


def init() -> ValueNormState:
    """Statistics before any target was seen (``μ = 0``, ``σ = 1``)."""
    zero = jnp.zeros((), jnp.float32)
    return ValueNormState(mean=zero, mean_square=zero, weight=zero)


def statistics(state: ValueNormState) -> tuple[Array, Array]:
    """``(μ, σ)``: debiased mean and standard deviation of the targets.

    ``σ = max(√(E[G²] − μ²), MIN_SCALE)``; ``(0, 1)`` before the first update.
    """
    seen = state.weight > 0
    weight = jnp.where(seen, state.weight, 1.0)
    mean = state.mean / weight
    variance = jnp.maximum(state.mean_square / weight - jnp.square(mean), 0.0)
    scale = jnp.maximum(jnp.sqrt(variance), MIN_SCALE)
    return jnp.where(seen, mean, 0.0), jnp.where(seen, scale, 1.0)


def update(
    state: ValueNormState, targets: Array, decay: float = DECAY
) -> ValueNormState:
    """Folds one batch of targets (any shape) into the moving averages."""
    targets = jax.lax.stop_gradient(targets).astype(jnp.float32)
    return ValueNormState(
        mean=decay * state.mean + (1 - decay) * jnp.mean(targets),
        mean_square=decay * state.mean_square
        + (1 - decay) * jnp.mean(jnp.square(targets)),
        weight=decay * state.weight + (1 - decay),
    )


def normalize(state: ValueNormState, values: Array) -> Array:
    """``(G − μ) / σ``: targets in the units the network learns."""
    mean, scale = statistics(state)
    return (values - mean) / scale


def denormalize(state: ValueNormState, outputs: Array) -> Array:
    """``σ·n + μ``: the network's output as a value."""
    mean, scale = statistics(state)
    return outputs * scale + mean


def fold_targets(state: ValueNormState, params, targets: Array):
    """One PopArt step before the critic's regression.

    Folds ``targets`` into the statistics, rescales ``params``' output layer so
    the denormalised values are unchanged (:func:`preserve_outputs`) and
    standardises the targets with the new statistics.

    Returns:
      ``(new_state, new_params, standardised_targets)``.
    """
    new_state = update(state, targets)
    new_params = preserve_outputs(params, state, new_state)
    return new_state, new_params, normalize(new_state, targets)


def preserve_outputs(params, old: ValueNormState, new: ValueNormState):
    """Rescales the last ``Dense`` layer so ``denormalize`` gives the same values.

    ``params`` is a flax parameter dict of an MLP whose output layer is the
    ``Dense_k`` with the largest ``k``; the new kernel and bias are
    ``W·σ/σ'`` and ``(σ·b + μ − μ')/σ'``.
    """
    mean, scale = statistics(old)
    new_mean, new_scale = statistics(new)
    layers = params["params"]
    name = max((k for k in layers if k.startswith("Dense_")), key=_layer_index)
    head = layers[name]
    head = {
        **head,
        "kernel": head["kernel"] * (scale / new_scale),
        "bias": (head["bias"] * scale + mean - new_mean) / new_scale,
    }
    return {**params, "params": {**layers, name: head}}


def _layer_index(name: str) -> int:
    return int(name.split("_")[1])
