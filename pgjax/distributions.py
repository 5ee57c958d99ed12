"""Action distributions: categorical and diagonal Gaussian.

Each is an immutable pytree (so it passes through ``jit``, ``vmap`` and ``scan``)
with ``log_prob``, ``entropy``, ``kl``, ``sample`` and ``mode``. Batch axes are
leading: a categorical over ``A`` actions holds logits ``[..., A]``; a Gaussian
over ``D`` dimensions holds ``mean`` and ``log_std`` ``[..., D]`` and treats the
``D`` dimensions as one event (log-probabilities and entropies are summed over
them).

Numerics: values and gradients stay finite for logits as large as ±1e9 (and
``-inf`` logits, i.e. masked actions) and for log standard deviations anywhere in
``[LOG_STD_MIN, LOG_STD_MAX]``; log-std outside that range is clipped.
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
from flax import struct

Array = jax.Array

LOG_STD_MIN = -20.0
LOG_STD_MAX = 2.0
_HALF_LOG_TWO_PI = 0.5 * math.log(2.0 * math.pi)


def _safe_log_softmax(logits: Array) -> Array:
    # Clamp -inf (masked actions) to the most negative finite number so that
    # p·log p = 0·(finite) = 0 instead of 0·(−inf) = NaN.
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return jnp.maximum(log_p, jnp.finfo(log_p.dtype).min)


@struct.dataclass
class Categorical:
    """Categorical distribution ``π(a) = softmax(logits)_a``.

    Attributes:
      logits: ``[..., A]`` unnormalised log-probabilities.
    """

    logits: Array

    def log_probs(self) -> Array:
        """``[..., A]`` normalised log-probabilities."""
        return _safe_log_softmax(self.logits)

    def probs(self) -> Array:
        """``[..., A]`` probabilities."""
        return jax.nn.softmax(self.logits, axis=-1)

    def log_prob(self, action: Array) -> Array:
        """``log π(a)`` for integer actions ``[...]``; returns ``[...]``."""
        log_p = self.log_probs()
        action = jnp.asarray(action).astype(jnp.int32)
        chex.assert_shape(action, log_p.shape[:-1])
        # A one-hot product instead of a gather: its gradient is a dense
        # multiply rather than a scatter, which is much faster on CPU.
        one_hot = jax.nn.one_hot(action, log_p.shape[-1], dtype=log_p.dtype)
        return jnp.sum(one_hot * log_p, axis=-1)

    def entropy(self) -> Array:
        """``H = −Σ_a π(a)·log π(a)``; returns ``[...]``."""
        log_p = self.log_probs()
        return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)

    def kl(self, other: Categorical) -> Array:
        """``KL(self ‖ other) = Σ_a p(a)·(log p(a) − log q(a))``; returns ``[...]``."""
        log_p = self.log_probs()
        log_q = other.log_probs()
        return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)

    def sample(self, key: Array) -> Array:
        """Draws integer actions ``[...]``."""
        return jax.random.categorical(key, self.logits, axis=-1)

    def mode(self) -> Array:
        """The most likely action ``[...]``."""
        return jnp.argmax(self.logits, axis=-1)


@struct.dataclass
class DiagGaussian:
    """Gaussian with diagonal covariance, ``N(mean, diag(exp(log_std))²)``.

    Attributes:
      mean: ``[..., D]``.
      log_std: ``[..., D]`` (or broadcastable to it, e.g. ``[D]``), clipped to
        ``[LOG_STD_MIN, LOG_STD_MAX]`` when used.
    """

    mean: Array
    log_std: Array

    def _log_std(self) -> Array:
        log_std = jnp.clip(self.log_std, LOG_STD_MIN, LOG_STD_MAX)
        return jnp.broadcast_to(log_std, self.mean.shape).astype(self.mean.dtype)

    def log_prob(self, action: Array) -> Array:
        """``Σ_d [−½·z_d² − log σ_d − ½·log 2π]`` with ``z = (a − μ)/σ``.

        Args:
          action: ``[..., D]``.

        Returns:
          ``[...]``.
        """
        chex.assert_equal_shape([action, self.mean])
        log_std = self._log_std()
        # Multiply by exp(−log σ) instead of dividing by σ: no 1/0 at tiny σ.
        z = (action - self.mean) * jnp.exp(-log_std)
        return jnp.sum(-0.5 * jnp.square(z) - log_std - _HALF_LOG_TWO_PI, axis=-1)

    def entropy(self) -> Array:
        """``Σ_d (log σ_d + ½·log 2πe)``; returns ``[...]``."""
        return jnp.sum(self._log_std() + _HALF_LOG_TWO_PI + 0.5, axis=-1)

    def kl(self, other: DiagGaussian) -> Array:
        """``KL(self ‖ other)``, summed over dimensions; returns ``[...]``.

        ``Σ_d [log σ₂/σ₁ + (σ₁² + (μ₁ − μ₂)²)/(2σ₂²) − ½]``, written with
        exponentials of log-std differences so no σ² underflows.
        """
        log_std_p, log_std_q = self._log_std(), other._log_std()
        variance_ratio = jnp.exp(2.0 * (log_std_p - log_std_q))
        scaled_diff = (self.mean - other.mean) * jnp.exp(-log_std_q)
        terms = 0.5 * (variance_ratio + jnp.square(scaled_diff) - 1.0)
        return jnp.sum(terms + log_std_q - log_std_p, axis=-1)

    def sample(self, key: Array) -> Array:
        """Draws ``μ + σ·ε`` with ``ε ~ N(0, I)``; returns ``[..., D]``."""
        noise = jax.random.normal(key, self.mean.shape, self.mean.dtype)
        return self.mean + jnp.exp(self._log_std()) * noise

    def mode(self) -> Array:
        """The mean ``[..., D]``."""
        return self.mean


Distribution = Categorical | DiagGaussian
