"""Natural actor-critic (``--algo nac``): the natural gradient as the weights
of a critic fitted on the compatible features.

Peters & Schaal 2008, *Natural Actor-Critic*, Neurocomputing 71(7-9),
https://doi.org/10.1016/j.neucom.2007.11.054 (the batch form). Per rollout:

1. A learned ``V(s)`` gives GAE(λ) advantages ``Â`` and λ-return targets,
   exactly as NPG's (:func:`pgjax.algos.natural_pg.make_natural_phases`:
   the same targets phase, the same critic fit after the policy step).
2. ``Â`` is regressed on the compatible features ``ψ_i = ∇_θ log π(a_i|s_i)``
   of the sampled state-action pairs by ridge least squares,

     w = argmin_w mean_i (Â_i − ψ_iᵀw)² + λ·‖w‖²,
     i.e. (F̂ + λI)·w = ĝ,   F̂ = mean_i ψ_i ψ_iᵀ,   ĝ = mean_i ψ_i·Â_i,

   solved matrix-free by conjugate gradient with ``Ψ``-vector products
   (:func:`pgjax.compatible.fit_compatible_matrix_free`; ``λ`` is
   ``--cg-damping``, the iterations ``--cg-iters``). ``ĝ`` is the batch's
   policy gradient, and the compatible critic's weights ``w`` are the natural
   gradient ``F̂⁻¹ĝ`` (Sutton et al. 2000; Kakade 2001).
3. The actor steps along ``w``: ``--natural-step kl`` scales it so that the
   step's quadratic KL ``½·sᵀ(F̂ + λI)s`` equals ``--max-kl``,
   ``s = √(2δ / wᵀ(F̂ + λI)w)·w``; ``--natural-step fixed`` takes
   ``s = η·w`` (``η`` = ``--natural-lr``).

The difference from NPG is the metric. NPG solves with the Hessian of the KL
at the batch's states, where the expectation over actions is exact:
``F = mean_s Σ_a π(a|s)·ψ(s,a)ψ(s,a)ᵀ``. NAC's ``F̂`` is the empirical Fisher
of the sampled actions only, which enters through the critic's regression.
Both estimate the same Fisher matrix; when a batch holds every action at
every state, weighted by ``π``, they are equal and so are the steps
(``tests/test_nac.py``).

With ``--normalize-advantages`` (the default) the regression targets are the
standardised advantages: ``w`` scales with them, which the KL step undoes and
the fixed step does not. There is no entropy bonus (``--ent-coef`` must be 0):
the compatible regression has no term for it. The observations of
``--kl-envs`` strided envs measure the step's real KL, as NPG's do.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jax.flatten_util import ravel_pytree

from pgjax import compatible, natural
from pgjax.algos import base, natural_pg
from pgjax.algos.natural_pg import NaturalStep, make_natural_phases
from pgjax.backend import Backend
from pgjax.config import ConfigError, Hyperparams, TrainConfig
from pgjax.envs import EnvSpec
from pgjax.networks import Policy

Array = jax.Array

METRICS = (*natural_pg.METRICS, "compatible_r2")


@struct.dataclass
class CompatibleFit:
    """The compatible critic fitted to a batch of advantages.

    Attributes:
      w: the critic's weights, shaped like the actor's parameters: the
        natural gradient ``(F̂ + λI)⁻¹ĝ``.
      wfw: ``wᵀ(F̂ + λI)w``, the curvature the KL step is scaled by.
      r2: ``1 − Σ_i W_i(Â_i − ψ_iᵀw)² / Σ_i W_i·Â_i²``: the fraction of the
        advantages' second moment the compatible features explain.
      info: the solve's diagnostics
        (:class:`pgjax.compatible.CompatibleFitInfo`: ``ĝ``, CG's residual
        and iterations, the weighted squared error).
    """

    w: Any
    wfw: Array
    r2: Array
    info: compatible.CompatibleFitInfo


def fit_compatible_critic(
    policy: Policy,
    actor_params,
    obs: Array,
    actions: Array,
    advantages: Array,
    ridge: Array,
    iters: int,
    weights: Array | None = None,
    tol: float | Array = 1e-10,
) -> CompatibleFit:
    """Least squares of the advantages on ``ψ = ∇_θ log π(a|s)``, matrix-free.

    Solves ``(ΨᵀWΨ/ΣW + λI)·w = ΨᵀW·Â/ΣW`` by CG with Jacobian-vector
    products (:func:`pgjax.compatible.fit_compatible_matrix_free`), ``Ψ``
    never formed.

    Args:
      policy: the actor network.
      actor_params: ``θ``, where ``ψ`` is taken.
      obs: ``[B, *obs_shape]`` states.
      actions: ``[B, *action_shape]`` the actions taken in them.
      advantages: ``[B]`` regression targets ``Â``.
      ridge: ``λ ≥ 0`` (may be traced).
      iters: static CG iterations.
      weights: ``[B]`` row weights ``W`` (None: all 1).
      tol: CG's tolerance on the squared residual norm.

    Returns:
      :class:`CompatibleFit`.
    """

    def log_prob(params, one_obs, one_action):
        return policy.apply(params, one_obs).log_prob(one_action)

    w, info = compatible.fit_compatible_matrix_free(
        log_prob,
        actor_params,
        obs,
        actions,
        advantages,
        weights,
        ridge=ridge,
        iters=iters,
        tol=tol,
    )
    # Ψw in one Jacobian-vector product: the fit's predictions, whose weighted
    # mean square plus λ‖w‖² is wᵀ(F̂ + λI)w, the solve's own operator
    # measured directly (not through CG's identities, which rounding breaks).
    fitted = jax.jvp(
        lambda params: policy.apply(params, obs).log_prob(actions),
        (actor_params,),
        (w,),
    )[1]
    if weights is None:
        weights = jnp.ones_like(advantages)

    def weighted_mean(x):
        return jnp.sum(weights * x) / jnp.sum(weights)

    flat_w = ravel_pytree(w)[0]
    wfw = weighted_mean(jnp.square(fitted)) + ridge * jnp.vdot(flat_w, flat_w)
    r2 = 1.0 - info.fit_error / weighted_mean(jnp.square(advantages))
    return CompatibleFit(w=w, wfw=wfw, r2=r2, info=info)


def compatible_step(
    fit: CompatibleFit,
    mode: str,
    max_kl: Array,
    natural_lr: Array,
) -> tuple[Any, natural.NaturalStepInfo]:
    """The actor's step along the compatible weights ``w``.

    ``mode="kl"``: ``s = √(2δ / wᵀ(F̂ + λI)w)·w``, so ``½·sᵀ(F̂ + λI)s = δ``;
    ``mode="fixed"``: ``s = η·w``.

    Args:
      fit: the fitted compatible critic (:func:`fit_compatible_critic`); its
        ``ĝ`` gives the predicted improvement ``ĝᵀs``.
      mode: ``"kl"`` or ``"fixed"`` (``--natural-step``).
      max_kl: ``δ``.
      natural_lr: ``η``.

    Returns:
      ``(step, info)``: the step shaped like ``w``, all zeros (never NaN) when
      ``w`` or its scale is not finite, or its curvature not positive in
      ``"kl"`` mode; and :class:`pgjax.natural.NaturalStepInfo`.
    """
    flat_w, unravel = ravel_pytree(fit.w)
    if mode == "kl":
        curvature_ok = jnp.isfinite(fit.wfw) & (fit.wfw > 0)
        scale = jnp.sqrt(2.0 * max_kl / jnp.where(curvature_ok, fit.wfw, 1.0))
    else:
        curvature_ok = jnp.isfinite(fit.wfw)
        scale = natural_lr
    valid = curvature_ok & jnp.isfinite(scale) & jnp.all(jnp.isfinite(flat_w))
    # `where` rather than 0·w, so a NaN in w cannot leak into the step.
    flat_step = jnp.where(valid, scale * flat_w, 0.0).astype(flat_w.dtype)
    flat_grads = ravel_pytree(fit.info.gradient)[0]
    info = natural.NaturalStepInfo(
        xfx=fit.wfw,
        cg_residual=fit.info.cg_residual,
        cg_iterations=fit.info.cg_iterations,
        step_norm=jnp.sqrt(jnp.vdot(flat_step, flat_step)),
        expected_improvement=jnp.where(valid, jnp.vdot(flat_grads, flat_step), 0.0),
        valid=valid,
    )
    return unravel(flat_step), info


def _env_major_rows(x: Array) -> Array:
    """``[T, N, ...]`` → ``[N·T, ...]``, each env's steps together: with the
    envs split over devices, each device's rows stay a contiguous block."""
    return jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:])


def make_nac(config: TrainConfig, spec: EnvSpec, backend: Backend) -> base.Algorithm:
    """Natural actor-critic: NPG's targets and critic, the compatible
    critic's weights as the natural direction."""
    if config.ent_coef != 0:
        raise ConfigError(
            "--ent-coef",
            f"must be 0 for nac (the compatible regression has no entropy "
            f"term), got {config.ent_coef!r}",
        )
    phases = make_natural_phases(config, spec, backend, line_search=False)

    natural_step = _compatible_natural_step(config, phases.policy)

    def update(agent: base.ActorCriticState, batch, key, hyper, progress):
        hyper = natural_pg.annealed_step_size(config, hyper, progress)
        actor = agent.actor
        targets = phases.targets(agent, batch, hyper)
        # ĝ (the surrogate's gradient at θ_old, with no entropy term), the
        # entropy and π_old, from NPG's blocked pass.
        gradient = phases.policy_gradient(actor, batch, targets, hyper)
        step, fit = natural_step(actor, batch, targets, gradient, hyper)
        policy = phases.line_search(actor, batch, targets, gradient, step, hyper)
        critic = phases.fit_critic(
            agent.critic_opt, batch, targets, key, hyper, progress
        )
        agent = agent.replace(
            actor=policy.actor,
            critic=critic.critic,
            critic_opt=critic.critic_opt,
            value_stats=targets.value_stats,
        )
        metrics = natural_pg.update_metrics(
            config,
            gradient,
            step.info,
            policy,
            critic,
            agent.value_stats,
            hyper,
            progress,
        )
        return agent, {**metrics, "compatible_r2": fit.r2}

    return base.Algorithm(
        name="nac",
        init=base.actor_critic_init(phases.policy, phases.critic),
        collect=base.fixed_length_collect(config, spec, phases.policy),
        update=update,
        act=base.policy_act(phases.policy),
        metric_names=METRICS,
    )


def _compatible_natural_step(config: TrainConfig, policy):
    """NAC's natural-step phase: the compatible critic's weights as the
    direction, in place of NPG's conjugate-gradient solve."""

    def natural_step(actor_params, batch, targets, gradient, hyper: Hyperparams):
        """The compatible fit over the whole batch, and the step along it.

        Returns:
          ``(NaturalStep, CompatibleFit)``; the step's ``kl_obs``/``kl_old``
          are the strided KL envs, on which NPG's plain step measures the KL.
        """
        fit = fit_compatible_critic(
            policy,
            actor_params,
            _env_major_rows(batch.obs),
            _env_major_rows(batch.action),
            _env_major_rows(targets.advantages),
            hyper.cg_damping,
            config.cg_iters,
        )
        step, info = compatible_step(
            fit, config.natural_step, hyper.max_kl, hyper.natural_lr
        )
        kl_obs, kl_old = natural_pg.kl_subset(
            batch.obs, gradient.old_dist, config.kl_envs
        )
        return NaturalStep(step, info, kl_obs, kl_old), fit

    return natural_step
