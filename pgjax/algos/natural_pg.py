"""Natural policy gradient (``--algo npg``) and TRPO (``--algo trpo``).

Both collect fixed-length rollouts (like A2C), estimate advantages with GAE(λ)
from a learned ``V(s)``, and ascend the importance-ratio surrogate

  L(θ) = mean_t [π_θ(a_t|s_t) / π_old(a_t|s_t) · Â_t] + c_H·mean_t H[π_θ(·|s_t)]

whose gradient at θ_old is the policy gradient g. Instead of a plain gradient
step they step along the natural gradient ``x = F⁻¹g``, found by conjugate
gradient on Fisher-vector products (F never formed; Gauss-Newton form,
:func:`pgjax.natural.gauss_newton_fisher_vector_product`), scaled
so the quadratic model of the KL equals ``--max-kl``:

  Δθ = sqrt(2δ / xᵀFx) · x.

* ``npg`` takes that step as is (Kakade 2001; Peters & Schaal 2008). With
  ``--natural-step fixed`` it takes the textbook step instead,
  ``Δθ = η·x`` with ``η = --natural-lr`` (constant unless ``--anneal-kl``)
  and no KL scaling (:func:`pgjax.natural.fixed_natural_step`; Kakade 2001; Agarwal
  et al. 2021, https://arxiv.org/abs/1908.00261), its CG stopping where the
  residual stops falling.
* ``trpo`` backtracks ``Δθ·ratio^k`` until the surrogate improves and the real
  mean KL(π_old ‖ π_θ) ≤ δ; if no k passes, the policy is left bit-identical
  (Schulman et al. 2015, https://arxiv.org/abs/1502.05477).

With ``--value-norm`` the critic learns standardised values (PopArt,
:mod:`pgjax.value_norm`). The critic is fitted after the policy step by
``--critic-epochs`` passes over the batch, each in ``--critic-minibatches``
minibatches of shuffled envs with one Adam step per minibatch, on the λ-return
targets at ``--critic-lr`` (as in TRPO's reference implementation: several
cheap steps rather than a few full-batch ones). The
Fisher-vector products use every step of ``--kl-envs`` envs strided over the
batch (a subsample, as in TRPO's reference implementation), the surrogate and
line search the whole batch. The subsample keeps the gradient's weighting of
states: ``F⁻¹g`` is the natural gradient only when the Fisher averages over the
states the gradient ``g`` averages over (the batch's on-policy visitation), and
whole envs drawn independently of the data are an unbiased sample of them.
The old policy runs once per update: the pass that computes the
policy gradient at θ_old also returns π_old on every row
(``blocks.blocked_grad(..., with_outputs=True)``), which is what the KL terms
compare against, and TRPO's line search evaluates a candidate's surrogate and KL
together in one blocked pass.

One update is the composition of five phases, each a pure function of
:class:`NaturalPhases` (:func:`make_natural_phases`): the targets, the policy
gradient, the natural step, the line search and the critic's fit. What one
phase hands the next is a small named pytree (:class:`Targets`,
:class:`PolicyGradient`, :class:`NaturalStep`, :class:`PolicyStep`,
:class:`CriticFit`), so a caller can run a prefix of the update (as
scripts/benchmark.py does to time each phase) from the same code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from pgjax import losses, natural, parallel, value_norm
from pgjax.algos import base, blocks
from pgjax.algos import critic as critic_lib
from pgjax.backend import Backend
from pgjax.config import ConfigError, Hyperparams, TrainConfig, critic_fit
from pgjax.envs import EnvSpec
from pgjax.networks import Critic, Policy

Array = jax.Array

METRICS = (
    "policy_loss",
    "value_loss",
    "entropy",
    "grad_norm",
    "kl",
    "cg_residual",
    "cg_iterations",
    "xfx",
    "step_norm",
    "backtracks",
    "accepted",
    "learning_rate",
    "value_scale",
)


@struct.dataclass
class Targets:
    """What the targets phase hands on: the policy's advantages, and the
    critic's regression targets with the critic they are targets for.

    Attributes:
      advantages: ``[T, N]`` GAE(λ) advantages, standardised over the batch
        with ``--normalize-advantages``.
      returns: ``[T, N]`` λ-return targets, standardised by the new PopArt
        statistics with ``--value-norm``.
      critic: the critic's parameters the fit starts from: the agent's, with
        the output layer rescaled by PopArt's fold under ``--value-norm``.
      value_stats: the PopArt statistics after the fold (the agent's without
        ``--value-norm``).
    """

    advantages: Array
    returns: Array
    critic: Any
    value_stats: value_norm.ValueNormState


@struct.dataclass
class PolicyGradient:
    """The surrogate at θ_old, its gradient, and π_old on every row.

    Attributes:
      grads: ``∇_θ L(θ_old)``, a pytree shaped like the actor's parameters.
      objective: scalar ``L(θ_old)``, surrogate plus entropy bonus.
      entropy: scalar mean entropy of π_old over the batch.
      old_dist: π_old's action distribution on every row, leaves
        ``[T, N, ...]``: what the KL terms compare against.
    """

    grads: Any
    objective: Array
    entropy: Array
    old_dist: Any


@struct.dataclass
class NaturalStep:
    """The natural step and the envs whose KL it was measured on.

    Attributes:
      step: ``Δθ = sqrt(2δ / xᵀFx)·x`` (``--natural-step kl``) or ``η·x``
        (``fixed``), shaped like the actor's parameters.
      info: the solve's diagnostics (:class:`pgjax.natural.NaturalStepInfo`).
      kl_obs: ``[T, K, ...]`` observations of the ``K`` strided KL envs.
      kl_old: π_old on them, leaves ``[T, K, ...]``.
    """

    step: Any
    info: natural.NaturalStepInfo
    kl_obs: Array
    kl_old: Any


@struct.dataclass
class PolicyStep:
    """The actor after the step (TRPO: the line search's choice).

    Attributes:
      actor: the new actor parameters.
      kl: scalar mean KL(π_old ‖ π_new): over the batch for TRPO (0 when the
        policy is left unchanged), over the KL envs for NPG.
      accepted: bool, whether the policy moved (NPG: whether the step is valid).
      backtracks: int32 backtracking steps taken (0 for NPG).
      step_fraction: the fraction of ``Δθ`` applied (0 when none was).
    """

    actor: Any
    kl: Array
    accepted: Array
    backtracks: Array
    step_fraction: Array


@struct.dataclass
class CriticFit:
    """The critic after its regression on the λ-returns.

    Attributes:
      critic: the fitted critic's parameters.
      critic_opt: its Adam state.
      value_loss: the first minibatch's loss before any step.
    """

    critic: Any
    critic_opt: Any
    value_loss: Array


@dataclasses.dataclass(frozen=True)
class NaturalPhases:
    """The phases of one NPG/TRPO update, as pure functions, in order.

    ``agent`` is a :class:`~pgjax.algos.base.ActorCriticState`, ``batch`` a
    :class:`~pgjax.rollout.Transition` ``[T, N, ...]`` and ``hyper`` the
    :class:`~pgjax.config.Hyperparams`; ``actor`` is ``agent.actor``
    (θ_old). The update (:func:`make_npg`, :func:`make_trpo`) is

      hyper = annealed_step_size(config, hyper, progress)  # --anneal-kl
      targets = targets(agent, batch, hyper)
      gradient = policy_gradient(actor, batch, targets, hyper)
      step = natural_step(actor, batch, gradient, hyper)
      policy = line_search(actor, batch, targets, gradient, step, hyper)
      fit = fit_critic(agent.critic_opt, batch, targets, key, hyper, progress)

    Attributes:
      policy: the actor network the phases apply.
      critic: the critic network the phases apply.
      targets: ``→`` :class:`Targets`.
      policy_gradient: ``→`` :class:`PolicyGradient`.
      natural_step: ``→`` :class:`NaturalStep`.
      line_search: ``→`` :class:`PolicyStep`.
      fit_critic: ``→`` :class:`CriticFit`.
    """

    policy: Policy
    critic: Critic
    targets: Callable[..., Targets]
    policy_gradient: Callable[..., PolicyGradient]
    natural_step: Callable[..., NaturalStep]
    line_search: Callable[..., PolicyStep]
    fit_critic: Callable[..., CriticFit]


def _surrogate_inputs(batch, targets: Targets):
    """The surrogate's per-row data ``(obs, action, log π_old(a|s), Â)``."""
    old_log_prob = jax.lax.stop_gradient(batch.log_prob)
    return batch.obs, batch.action, old_log_prob, targets.advantages


def _surrogate_rows(policy: Policy, actor_params, obs, action, old, adv):
    """The surrogate's per-row terms and π_θ on rows ``[B, ...]``:
    ``(π_θ(a|s)/π_old(a|s)·Â, H[π_θ(·|s)], π_θ)``. The gradient pass
    (L at θ_old) and TRPO's candidates (L at θ) share it, so the line
    search's improvements compare like with like."""
    dist = policy.apply(actor_params, obs)
    weighted = jnp.exp(dist.log_prob(action) - old) * adv
    return weighted, dist.entropy(), dist


def _natural_step_phase(
    config: TrainConfig, policy: Policy, backend: Backend, fvp_block_rows: int
):
    """:attr:`NaturalPhases.natural_step` under the config's ``--natural-step``,
    ``--kl-envs`` and ``--cg-iters``."""
    fixed = config.natural_step == "fixed"

    def natural_step(actor_params, batch, gradient: PolicyGradient, hyper: Hyperparams):
        """The natural step: conjugate gradient on the KL's Fisher-vector
        products over the strided KL envs, scaled to the trust region
        (``--natural-step kl``) or by ``η`` (``fixed``).

        Args:
          actor_params: θ_old, where the KL is linearised.
          batch: the rollout ``[T, N, ...]``.
          gradient: ``g`` and π_old on every row (:class:`PolicyGradient`).
          hyper: the hyperparameters (CG damping, ``max_kl`` δ or
            ``natural_lr`` η).

        Returns:
          :class:`NaturalStep`. When the backend splits the KL envs across
          devices, each one linearises the KL on its own envs and the products
          are averaged.
        """
        kl_obs, kl_old = kl_subset(batch.obs, gradient.old_dist, config.kl_envs)
        kl_envs = kl_obs.shape[1]
        sharded = parallel.env_shards_of(backend, kl_envs) > 1

        solve = _fisher_solver(policy, fvp_block_rows, fixed, config.cg_iters, sharded)
        if sharded:
            kl_obs, kl_old = parallel.split_envs((kl_obs, kl_old), backend, axis=1)
            solve = parallel.map_env_shards(
                solve,
                backend,
                kl_envs,
                (parallel.REPLICATED,) * 2
                + (parallel.ROWS,) * 2
                + (parallel.REPLICATED,) * 2,
                parallel.REPLICATED,
            )
        size = hyper.natural_lr if fixed else hyper.max_kl
        step, step_info = solve(
            actor_params, gradient.grads, kl_obs, kl_old, hyper.cg_damping, size
        )
        return NaturalStep(step, step_info, kl_obs, kl_old)

    return natural_step


def kl_subset(obs: Array, old_dist, kl_envs: int):
    """``(obs, π_old)`` on the ``kl_envs`` strided envs of ``[T, N, ...]``
    rows, where the Fisher (and the guarded step's KL) is measured: a subset
    defined over global env indices, the same on any number of devices."""
    return parallel.strided_envs(obs, kl_envs), jax.tree.map(
        lambda x: parallel.strided_envs(x, kl_envs), old_dist
    )


def _fisher_solver(
    policy: Policy, fvp_block_rows: int, fixed: bool, cg_iters: int, sharded: bool
):
    """``(θ, g, kl_obs, kl_old, damping, size) ↦ (step, info)``: conjugate
    gradient on the Fisher-vector products of the mean ``KL(π_old ‖ π_θ)``
    over ``kl_obs``, averaged over the env shards when ``sharded``; the step
    filled to KL ``size`` or scaled by it (``fixed``)."""

    def solve(actor_params, grads, kl_obs, kl_old, damping, size):
        # Gauss-Newton form of the same product: 1.05-1.5x faster on a CPU.
        local_fvp = natural.gauss_newton_fisher_vector_product(
            lambda params: blocks.blocked_map_local(
                lambda obs: policy.apply(params, obs), kl_obs, fvp_block_rows
            ),
            lambda dist: jnp.mean(kl_old.kl(dist)),
            actor_params,
            damping,
        )
        step_fn = natural.fixed_natural_step if fixed else natural.natural_gradient_step
        return step_fn(
            grads,
            lambda v: parallel.mean_over_shards(local_fvp(v), sharded),
            size,
            iters=cg_iters,
        )

    return solve


def _backtracking_phase(
    config: TrainConfig, policy: Policy, block_rows: int, backend: Backend
):
    """TRPO's :attr:`NaturalPhases.line_search`: backtracking within δ."""

    def backtracking(
        actor_params,
        batch,
        targets: Targets,
        gradient: PolicyGradient,
        step: NaturalStep,
        hyper: Hyperparams,
    ):
        """TRPO's step: backtracking on ``Δθ·ratio^k`` until the surrogate
        improves and the mean KL over the batch is at most δ.

        Args:
          actor_params: θ_old.
          batch: the rollout ``[T, N, ...]``.
          targets: the advantages (:class:`Targets`).
          gradient: ``L(θ_old)`` and π_old on every row.
          step: the full step ``Δθ`` and its predicted improvement.
          hyper: the hyperparameters (δ, backtracking ratio, entropy bonus).

        Returns:
          :class:`PolicyStep`; when no fraction passes, the actor is θ_old bit
          for bit.
        """
        surrogate_and_kl = _surrogate_and_kl_fn(
            policy,
            _surrogate_inputs(batch, targets),
            gradient.old_dist,
            hyper.ent_coef,
            block_rows,
            backend,
        )
        actor, search = natural.backtracking_line_search(
            surrogate_and_kl,
            None,
            actor_params,
            step.step,
            step.info.expected_improvement,
            hyper.max_kl,
            hyper.backtrack_ratio,
            config.max_backtracks,
            objective_at_params=gradient.objective,
        )
        step_fraction = jnp.where(search.accepted, search.step_fraction, 0.0)
        # The real KL over the whole batch, measured by the search (0 when
        # the policy was left unchanged).
        return PolicyStep(
            actor, search.kl, search.accepted, search.backtracks, step_fraction
        )

    return backtracking


def _surrogate_and_kl_fn(policy, inputs, old_dist, ent_coef, block_rows, backend):
    """``θ ↦ (L(θ), mean KL(π_old ‖ π_θ))`` over the batch in one blocked
    pass; ``L`` is the surrogate plus the entropy bonus ``ent_coef·H``."""

    def surrogate_and_kl(actor_params):
        def block_terms(block):
            *surrogate_block, old_block_dist = block
            weighted, entropies, dist = _surrogate_rows(
                policy, actor_params, *surrogate_block
            )
            gain = weighted + ent_coef * entropies
            return gain, old_block_dist.kl(dist)

        gain, kl = blocks.blocked_map(
            block_terms, (*inputs, old_dist), block_rows, backend
        )
        return jnp.mean(gain), jnp.mean(kl)

    return surrogate_and_kl


def _plain_step_phase(config: TrainConfig, policy: Policy):
    """NPG's :attr:`NaturalPhases.line_search`: the step as is, or with
    ``--kl-guard`` shrunk until its KL on the KL envs is within the guard."""

    def plain_step(actor_params, batch, targets, gradient, step: NaturalStep, hyper):
        """NPG's step: ``θ_old + Δθ``, with the same signature as TRPO's
        line search.

        Returns:
          :class:`PolicyStep`, its KL measured on the KL envs.
        """
        del batch, targets, gradient

        def kl_at(actor):
            return jnp.mean(step.kl_old.kl(policy.apply(actor, step.kl_obs)))

        if config.kl_guard > 0:
            actor, search = natural.kl_limited_step(
                kl_at,
                actor_params,
                step.step,
                config.kl_guard * hyper.max_kl,
                hyper.backtrack_ratio,
                config.max_backtracks,
            )
            fraction = jnp.where(search.accepted, search.step_fraction, 0.0)
            accepted = search.accepted & step.info.valid
            return PolicyStep(actor, search.kl, accepted, search.backtracks, fraction)
        actor = jax.tree.map(jnp.add, actor_params, step.step)
        return PolicyStep(
            actor, kl_at(actor), step.info.valid, jnp.zeros((), jnp.int32), jnp.ones(())
        )

    return plain_step


def _critic_fit_phase(
    config: TrainConfig, critic: Critic, block_rows: int, backend: Backend
):
    """:attr:`NaturalPhases.fit_critic`: the config's critic-fit epochs."""

    def fit_critic(critic_opt, batch, targets: Targets, key, hyper, progress):
        """Value regression on the λ-returns (:func:`critic_lib.fit_critic`).

        Args:
          critic_opt: the critic's Adam state before the update.
          batch: the rollout ``[T, N, ...]`` (its observations).
          targets: the λ-returns and the critic they start from.
          key: draws the envs' orders of the epochs after the first.
          hyper: the hyperparameters (critic learning rate, gradient clip).
          progress: the fraction of training done, for the annealed rate.

        Returns:
          :class:`CriticFit`.
        """

        def loss_fn(params, block):
            block_obs, target = block
            return losses.value_loss(critic.apply(params, block_obs), target)

        params, opt_state, value_loss, _ = critic_lib.fit_critic(
            loss_fn,
            targets.critic,
            critic_opt,
            (batch.obs, targets.returns),
            key,
            base.learning_rate(hyper.critic_lr, progress, config.anneal_lr),
            hyper.max_grad_norm,
            *critic_fit(config),
            block_rows,
            backend,
        )
        return CriticFit(params, opt_state, value_loss)

    return fit_critic


def make_natural_phases(
    config: TrainConfig, spec: EnvSpec, backend: Backend, line_search: bool
) -> NaturalPhases:
    """The phases of NPG's (``line_search=False``) or TRPO's update.

    Raises:
      ConfigError: ``--natural-step fixed`` with the line search (TRPO's
        search backtracks from the step that fills the trust region).
    """
    fixed = config.natural_step == "fixed"
    if fixed and line_search:
        raise ConfigError(
            "--natural-step", "must be kl with trpo, got 'fixed' (use --algo npg)"
        )
    policy, critic = base.make_networks(config, spec, backend)
    block_rows = blocks.block_rows_for(config, backend)
    # The linearised KL keeps every block's residuals and each CG iteration
    # streams them twice (J·v, then Jᵀ·u): half-size blocks stay in cache.
    fvp_block_rows = max(block_rows // 2, 1) if block_rows > 0 else 0

    return NaturalPhases(
        policy=policy,
        critic=critic,
        targets=_targets_phase(config, critic, block_rows, spec, backend),
        policy_gradient=_policy_gradient_phase(policy, block_rows, backend),
        natural_step=_natural_step_phase(config, policy, backend, fvp_block_rows),
        line_search=(
            _backtracking_phase(config, policy, block_rows, backend)
            if line_search
            else _plain_step_phase(config, policy)
        ),
        fit_critic=_critic_fit_phase(config, critic, block_rows, backend),
    )


def _targets_phase(
    config: TrainConfig, critic, block_rows: int, spec: EnvSpec, backend: Backend
):
    """:attr:`NaturalPhases.targets`: GAE(λ) under the agent's critic."""

    def targets_phase(agent: base.ActorCriticState, batch, hyper: Hyperparams):
        """GAE(λ) advantages and λ-return targets under the agent's critic.

        Args:
          agent: the agent before the update.
          batch: the rollout ``[T, N, ...]``.
          hyper: the hyperparameters (γ, λ, reward scale).

        Returns:
          :class:`Targets`. With ``--value-norm`` the λ-returns are folded into
          the PopArt statistics and the critic's output layer rescaled so that
          its values are unchanged; with ``--normalize-advantages`` the
          advantages are standardised.
        """
        value_fn = critic_lib.critic_value_fn(
            config, critic, agent.critic, agent.value_stats
        )
        advantages, returns = critic_lib.gae_targets(
            value_fn, batch, hyper, block_rows, spec, backend
        )
        advantages, returns, critic_params, value_stats = critic_lib.prepared_targets(
            config, advantages, returns, agent.critic, agent.value_stats
        )
        return Targets(advantages, returns, critic_params, value_stats)

    return targets_phase


def _policy_gradient_phase(policy, block_rows: int, backend: Backend):
    """:attr:`NaturalPhases.policy_gradient`: the surrogate's gradient at θ_old."""

    def policy_gradient(actor_params, batch, targets: Targets, hyper: Hyperparams):
        """The surrogate's gradient at θ_old, in blocked passes over the batch.

        Args:
          actor_params: θ_old.
          batch: the rollout ``[T, N, ...]`` (its ``log_prob`` is π_old's).
          targets: the advantages (:class:`Targets`).
          hyper: the hyperparameters (entropy coefficient).

        Returns:
          :class:`PolicyGradient`, with π_old over the batch from the same
          forward pass: the KL terms need it, and running the policy again
          would cost a pass.
        """
        inputs = _surrogate_inputs(batch, targets)
        count = blocks.block_count(*batch.reward.shape, block_rows, backend)

        def block_surrogate(actor_params, block):
            weighted, entropies, dist = _surrogate_rows(policy, actor_params, *block)
            entropy = jnp.mean(entropies)
            objective = jnp.mean(weighted) + hyper.ent_coef * entropy
            summed = (objective / count, entropy / count)
            return objective / count, (summed, dist)

        # Cache-sized blocks on a CPU (pgjax.algos.blocks).
        grads, (objective, entropy), old_dist = blocks.blocked_grad(
            block_surrogate,
            actor_params,
            inputs,
            block_rows,
            backend,
            with_outputs=True,
        )
        return PolicyGradient(grads, objective, entropy, old_dist)

    return policy_gradient


def annealed_step_size(config: TrainConfig, hyper, progress: Array):
    """``hyper`` with the natural step's size shrunk for ``--anneal-kl``:
    ``max_kl·(1 − progress)`` and ``natural_lr·(1 − progress)``, progress
    being the fraction of ``--total-timesteps`` collected before this update
    (< 1, so the step never vanishes). Without it, ``hyper`` as it is.

    A KL-scaled step moves the policy by ``max_kl`` every update however
    little signal the batch holds; once the policy is nearly deterministic,
    that keeps switching it between behaviours. Shrinking the step lets it
    settle, as an annealed learning rate does for the first-order methods.
    """
    if not config.anneal_kl:
        return hyper
    remaining = 1.0 - progress
    return hyper.replace(
        max_kl=hyper.max_kl * remaining, natural_lr=hyper.natural_lr * remaining
    )


def update_metrics(
    config: TrainConfig,
    gradient: PolicyGradient,
    step_info: natural.NaturalStepInfo,
    policy: PolicyStep,
    fit: CriticFit,
    value_stats: value_norm.ValueNormState,
    hyper,
    progress: Array,
) -> dict[str, Array]:
    """One update's :data:`METRICS`, from what its phases returned.

    Shared by npg, trpo and nac, whose updates differ only in how the natural
    direction is found. ``step_norm`` is the length of the step applied:
    ``‖Δθ‖`` times the fraction the line search or KL guard kept.
    """
    return {
        "policy_loss": -gradient.objective,
        "value_loss": fit.value_loss,
        "entropy": gradient.entropy,
        "grad_norm": base.global_norm(gradient.grads),
        "kl": policy.kl,
        "cg_residual": step_info.cg_residual,
        "cg_iterations": step_info.cg_iterations.astype(jnp.float32),
        "xfx": step_info.xfx,
        "step_norm": policy.step_fraction * step_info.step_norm,
        "backtracks": policy.backtracks.astype(jnp.float32),
        "accepted": policy.accepted.astype(jnp.float32),
        "learning_rate": base.learning_rate(
            hyper.critic_lr, progress, config.anneal_lr
        ),
        "value_scale": value_norm.statistics(value_stats)[1],
    }


def _make_natural(
    config: TrainConfig, spec: EnvSpec, backend: Backend, line_search: bool
) -> base.Algorithm:
    phases = make_natural_phases(config, spec, backend, line_search)

    def update(agent: base.ActorCriticState, batch, key, hyper, progress):
        hyper = annealed_step_size(config, hyper, progress)
        actor = agent.actor
        targets = phases.targets(agent, batch, hyper)
        gradient = phases.policy_gradient(actor, batch, targets, hyper)
        step = phases.natural_step(actor, batch, gradient, hyper)
        policy = phases.line_search(actor, batch, targets, gradient, step, hyper)
        fit = phases.fit_critic(agent.critic_opt, batch, targets, key, hyper, progress)
        agent = agent.replace(
            actor=policy.actor,
            critic=fit.critic,
            critic_opt=fit.critic_opt,
            value_stats=targets.value_stats,
        )
        return agent, update_metrics(
            config, gradient, step.info, policy, fit, agent.value_stats, hyper, progress
        )

    return base.Algorithm(
        name="trpo" if line_search else "npg",
        init=base.actor_critic_init(phases.policy, phases.critic),
        collect=base.fixed_length_collect(config, spec, phases.policy),
        update=update,
        act=base.policy_act(phases.policy),
        metric_names=METRICS,
    )


def make_npg(config: TrainConfig, spec: EnvSpec, backend: Backend) -> base.Algorithm:
    """Natural policy gradient: the KL-scaled natural step (or ``η·F⁻¹g`` with
    ``--natural-step fixed``), no line search."""
    return _make_natural(config, spec, backend, line_search=False)


def make_trpo(config: TrainConfig, spec: EnvSpec, backend: Backend) -> base.Algorithm:
    """TRPO: the natural step with a backtracking line search on KL ≤ δ."""
    return _make_natural(config, spec, backend, line_search=True)
