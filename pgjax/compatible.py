"""Compatible function approximation: critics whose weights are the natural gradient.

A critic linear in the policy's own score features,
``f_w(s, a) = ψ(s, a)ᵀw`` with ``ψ(s, a) = ∇_θ log π_θ(a|s)``, is *compatible*
(Sutton et al. 2000): if ``w`` minimises the squared error to ``Q^π`` (or
``A^π``) weighted by how often the gradient visits each pair,
``Σ_{s,a} η(s)·π(a|s)·(ψᵀw − Q^π)²``, the normal equations read

    Σ η π ψ ψᵀ · w = Σ η π ψ Q^π,    i.e.    F·w = ∇J,

so replacing ``Q^π`` by ``f_w`` in the policy gradient theorem changes nothing,
and ``w = F⁻¹∇J`` is the natural gradient (Kakade 2001). Natural actor-critic
estimates ``w`` from samples and steps along it (Peters & Schaal 2008). A
critic linear in other features ``φ(s, a)`` gives ``Σ η π ψ φᵀu ≠ ∇J`` in
general: a biased gradient.

Weights are normalised to sum to 1 in every fit here, so the ridge ``λ`` means
the same whatever the batch size or the scale of the weights; with ``λ = 0``
the solution does not depend on that scale at all. Then ``Ψᵀ·W̄·Ψ`` is the
Fisher under the sampled weighting and ``Ψᵀ·W̄·targets`` the policy-gradient
estimate, both per unit of weight: with ``W̄ ∝ d(s)·π(a|s)``, ``d`` the
normalised visitation and ``H = 1/(1 − γ)`` without terminal states, the fit
gives ``w = F_d⁻¹·∇J / H``, the natural gradient up to the constant ``H``.

References:
  Sutton et al. 2000, *Policy Gradient Methods for Reinforcement Learning with
  Function Approximation*, NeurIPS 12.
  Kakade 2001, *A Natural Policy Gradient*, NeurIPS 14.
  Peters & Schaal 2008, *Natural Actor-Critic*, Neurocomputing 71(7-9).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jax.flatten_util import ravel_pytree

from pgjax import natural

Array = jax.Array
PyTree = Any
LogProbFn = Callable[[PyTree, Array, Array], Array]

__all__ = [
    "CompatibleFitInfo",
    "fit_compatible",
    "fit_compatible_matrix_free",
    "score_rows",
]


def score_rows(
    log_prob_fn: LogProbFn, params: PyTree, obs: Array, actions: Array
) -> Array:
    """The compatible features ``ψ_i = ∇_θ log π(a_i|s_i)``, one row per sample.

    Args:
      log_prob_fn: ``(params, obs, action) ↦`` scalar ``log π(action|obs)`` for
        one sample.
      params: the policy's parameters (any pytree).
      obs: ``[B, ...]`` observations.
      actions: ``[B, ...]`` actions.

    Returns:
      ``Ψ``, ``[B, P]``: each row the flattened gradient, in
      :func:`jax.flatten_util.ravel_pytree` order.
    """

    def row(one_obs: Array, action: Array) -> Array:
        return ravel_pytree(jax.grad(log_prob_fn)(params, one_obs, action))[0]

    return jax.vmap(row)(obs, actions)


def _normalized_weights(weights: Array | None, like: Array) -> Array:
    """``W̄ = W / ΣW`` (uniform when ``weights`` is None), shaped like ``like``."""
    if weights is None:
        return jnp.full_like(like, 1.0 / like.shape[0])
    weights = jnp.asarray(weights, like.dtype)
    if weights.shape != like.shape:
        raise ValueError(
            f"weights must have shape {like.shape} like targets, got {weights.shape}"
        )
    return weights / jnp.sum(weights)


def fit_compatible(
    psi: Array,
    targets: Array,
    weights: Array | None = None,
    ridge: float | Array = 0.0,
) -> Array:
    """Weighted least squares of ``targets`` on the features ``ψ``.

    ``w = argmin_w Σ_i W̄_i·(ψ_iᵀw − target_i)² + λ‖w‖²``, ``W̄ = W/ΣW``, i.e.
    ``(ΨᵀW̄Ψ + λI)·w = ΨᵀW̄·targets``. It is solved through the SVD of
    ``W̄^½·Ψ = U·diag(σ)·Vᵀ`` as ``w = V·diag(σ/(σ² + λ))·Uᵀ·W̄^½·targets``
    rather than by forming ``ΨᵀW̄Ψ``, whose condition number is the square of
    ``W̄^½Ψ``'s. With ``λ = 0`` singular values below
    ``10·max(B, P)·ε·σ_max`` count as zero, which gives the minimum-norm
    solution ``(ΨᵀW̄Ψ)⁺·ΨᵀW̄·targets``: score features are often linearly
    dependent (a softmax's scores in a state sum to zero under ``π``), and the
    pseudo-inverse is the natural gradient's usual choice among the solutions.

    Args:
      psi: ``Ψ``, ``[B, P]``, e.g. from :func:`score_rows`.
      targets: ``[B]``, e.g. estimates of ``Q^π(s_i, a_i)`` or ``A^π``.
      weights: ``[B]`` non-negative sample weights (uniform when None).
      ridge: ``λ ≥ 0``.

    Returns:
      ``w``, ``[P]``.
    """
    if psi.ndim != 2 or targets.shape != psi.shape[:1]:
        raise ValueError(
            f"psi must be [B, P] and targets [B], got {psi.shape} and {targets.shape}"
        )
    root = jnp.sqrt(_normalized_weights(weights, targets))
    u, sigma, vt = jnp.linalg.svd(root[:, None] * psi, full_matrices=False)
    cutoff = 10.0 * max(psi.shape) * jnp.finfo(sigma.dtype).eps * jnp.max(sigma)
    kept = sigma > cutoff
    gain = jnp.where(kept, sigma / jnp.where(kept, sigma**2 + ridge, 1.0), 0.0)
    return vt.T @ (gain * (u.T @ (root * targets)))


@struct.dataclass
class CompatibleFitInfo:
    """Diagnostics of :func:`fit_compatible_matrix_free`.

    Attributes:
      gradient: ``ĝ = ΨᵀW̄·targets``, a pytree shaped like the parameters: the
        policy-gradient estimate the fit preconditions.
      cg_residual: ``‖ĝ − (F̂ + λI)·w‖`` as reported by CG.
      cg_iterations: int32 number of CG updates.
      fit_error: ``Σ_i W̄_i·(ψ_iᵀw − target_i)²``, the critic's weighted squared
        error.
    """

    gradient: PyTree
    cg_residual: Array
    cg_iterations: Array
    fit_error: Array


def fit_compatible_matrix_free(
    log_prob_fn: LogProbFn,
    params: PyTree,
    obs: Array,
    actions: Array,
    targets: Array,
    weights: Array | None = None,
    ridge: float | Array = 1e-3,
    iters: int = 10,
    tol: float | Array = 1e-10,
) -> tuple[PyTree, CompatibleFitInfo]:
    """:func:`fit_compatible` without forming ``Ψ``: conjugate gradient on

        (ΨᵀW̄Ψ + λI)·w = ΨᵀW̄·targets,       W̄ = W/ΣW.

    ``F̂ = ΨᵀW̄Ψ`` is the empirical Fisher matrix with the sampled actions and
    ``ĝ = ΨᵀW̄·targets`` (with advantage targets) the policy-gradient estimate,
    so ``w = (F̂ + λI)⁻¹ĝ``, the natural gradient of natural actor-critic
    (Peters & Schaal 2008). Each product ``F̂·v`` is a Jacobian-vector product
    through the batched log-probability (``Ψ·v``, one forward-mode pass),
    weighted, then its transpose (``Ψᵀ·u``, one reverse-mode pass), both
    linearised once here; memory is that of one backward pass, never
    ``[B, P]``. Solved by :func:`pgjax.natural.conjugate_gradient` from
    ``w = 0``; for a singular ``F̂`` and ``λ = 0`` CG's iterates stay in the
    range of ``F̂`` and tend to the minimum-norm solution.

    Args:
      log_prob_fn: ``(params, obs, action) ↦`` scalar log-probability of one
        sample.
      params: the policy's parameters.
      obs: ``[B, ...]`` observations.
      actions: ``[B, ...]`` actions.
      targets: ``[B]`` regression targets (``Q̂`` or ``Â``).
      weights: ``[B]`` non-negative sample weights (uniform when None).
      ridge: ``λ ≥ 0`` (may be traced).
      iters: static maximum number of CG iterations.
      tol: CG tolerance on the squared residual norm.

    Returns:
      ``(w, info)``: ``w`` shaped like ``params`` and a
      :class:`CompatibleFitInfo`.
    """
    targets = jnp.asarray(targets)
    if targets.ndim != 1:
        raise ValueError(f"targets must be [B], got shape {targets.shape}")
    share = _normalized_weights(weights, targets)

    def log_probs(theta: PyTree) -> Array:
        return jax.vmap(log_prob_fn, in_axes=(None, 0, 0))(theta, obs, actions)

    out, psi_times = jax.linearize(log_probs, params)
    psi_transpose_times = jax.linear_transpose(psi_times, params)

    def psi_t(u: Array) -> PyTree:
        return psi_transpose_times(u.astype(out.dtype))[0]

    def matvec(v: PyTree) -> PyTree:
        fisher_v = psi_t(share * psi_times(v))
        return jax.tree.map(lambda f, x: (f + ridge * x).astype(x.dtype), fisher_v, v)

    gradient = psi_t(share * targets)
    cg = natural.conjugate_gradient(matvec, gradient, iters, tol)
    residuals = psi_times(cg.x) - targets
    info = CompatibleFitInfo(
        gradient=gradient,
        cg_residual=cg.residual_norm,
        cg_iterations=cg.iterations,
        fit_error=jnp.sum(share * jnp.square(residuals)),
    )
    return cg.x, info
