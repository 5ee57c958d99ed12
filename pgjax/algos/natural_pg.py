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

* ``npg`` takes that step as is (Kakade 2001; Peters & Schaal 2008).
* ``trpo`` backtracks ``Δθ·ratio^k`` until the surrogate improves and the real
  mean KL(π_old ‖ π_θ) ≤ δ; if no k passes, the policy is left bit-identical
  (Schulman et al. 2015, https://arxiv.org/abs/1502.05477).

With ``--value-norm`` the critic learns standardised values (PopArt,
:mod:`pgjax.value_norm`). The critic is fitted after the policy step by
``--critic-epochs`` passes over the batch, each in ``--critic-minibatches``
minibatches of shuffled envs with one Adam step per minibatch, on the λ-return
targets at ``--critic-lr`` (as in TRPO's reference implementation: several
cheap steps rather than a few full-batch ones). The
Fisher-vector products use the observations of the first ``--kl-envs`` envs (a
subsample, as in TRPO's reference implementation), the surrogate and line search
the whole batch. The old policy runs once per update: the pass that computes the
policy gradient at θ_old also returns π_old on every row
(``blocks.blocked_grad(..., with_outputs=True)``), which is what the KL terms
compare against, and TRPO's line search evaluates a candidate's surrogate and KL
together in one blocked pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pgjax import losses, natural, parallel, value_norm
from pgjax.algos import base, blocks
from pgjax.algos import critic as critic_lib
from pgjax.backend import Backend
from pgjax.config import Hyperparams, TrainConfig, critic_fit
from pgjax.envs import EnvSpec

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


#: The phases of one update, in order (see :func:`phase_prefix_updates`).
PHASES = ("policy_gradient", "cg_solve", "line_search", "critic_fit")


def _make_natural(
    config: TrainConfig,
    spec: EnvSpec,
    backend: Backend,
    line_search: bool,
    until: str | None = None,
):
    policy, critic = base.make_networks(config, spec, backend)
    block_rows = blocks.block_rows_for(config, backend)
    # The linearised KL keeps every block's residuals and each CG iteration
    # streams them twice (J·v, then Jᵀ·u): half-size blocks stay in cache.
    fvp_block_rows = max(block_rows // 2, 1) if block_rows > 0 else 0
    name = "trpo" if line_search else "npg"

    init = base.actor_critic_init(policy, critic)
    collect = base.fixed_length_collect(config, spec, policy)

    def advantages_and_targets(critic_params, batch, hyper: Hyperparams, stats):
        value_fn = critic_lib.critic_value_fn(config, critic, critic_params, stats)
        return critic_lib.gae_targets(value_fn, batch, hyper, block_rows, spec, backend)

    def fit_critic(agent, batch, targets, key, hyper, progress):
        """Value regression on the λ-returns (:func:`critic_lib.fit_critic`)."""

        def loss_fn(params, block):
            block_obs, target = block
            return losses.value_loss(critic.apply(params, block_obs), target)

        params, opt_state, value_loss, _ = critic_lib.fit_critic(
            loss_fn,
            agent.critic,
            agent.critic_opt,
            (batch.obs, targets),
            key,
            base.learning_rate(hyper.critic_lr, progress, config.anneal_lr),
            hyper.max_grad_norm,
            *critic_fit(config),
            block_rows,
            backend,
        )
        return params, opt_state, value_loss

    def update(agent: base.ActorCriticState, batch, key, hyper, progress):
        advantages, targets = advantages_and_targets(
            agent.critic, batch, hyper, agent.value_stats
        )
        critic_agent = agent
        if config.value_norm:
            # PopArt: regress on standardised targets, V kept unchanged.
            value_stats, rescaled_critic, targets = value_norm.fold_targets(
                agent.value_stats, agent.critic, targets
            )
            critic_agent = agent.replace(
                critic=rescaled_critic, value_stats=value_stats
            )
        if config.normalize_advantages:
            advantages = losses.normalize_advantages(advantages)
        old_log_prob = jax.lax.stop_gradient(batch.log_prob)
        count = blocks.block_count(*batch.reward.shape, block_rows, backend)

        def surrogate_rows(actor_params, obs, action, old, adv):
            """The surrogate's per-row terms and π_θ on rows ``[B, ...]``:
            ``(π_θ(a|s)/π_old(a|s)·Â, H[π_θ(·|s)], π_θ)``. The gradient pass
            (L at θ_old) and TRPO's candidates (L at θ) share it, so the line
            search's improvements compare like with like."""
            dist = policy.apply(actor_params, obs)
            weighted = jnp.exp(dist.log_prob(action) - old) * adv
            return weighted, dist.entropy(), dist

        def block_surrogate(actor_params, block):
            weighted, entropies, dist = surrogate_rows(actor_params, *block)
            entropy = jnp.mean(entropies)
            objective = jnp.mean(weighted) + hyper.ent_coef * entropy
            summed = (objective / count, entropy / count)
            return objective / count, (summed, dist)

        # The gradient of the surrogate at θ_old (cache-sized blocks on a CPU),
        # and π_old over the batch from the same forward pass: the KL terms
        # below need it, and running the policy again would cost a pass.
        grads, (objective, entropy), old_dist = blocks.blocked_grad(
            block_surrogate,
            agent.actor,
            (batch.obs, batch.action, old_log_prob, advantages),
            block_rows,
            backend,
            with_outputs=True,
        )
        if until == "policy_gradient":
            return agent, {"checksum": base.global_norm((grads, targets))}
        # The Fisher is measured on a strided subset of the envs, defined
        # over global env indices (the same on any number of devices).
        kl_obs = parallel.strided_envs(batch.obs, config.kl_envs)
        kl_old = jax.tree.map(
            lambda x: parallel.strided_envs(x, config.kl_envs), old_dist
        )
        kl_envs = kl_obs.shape[1]
        sharded = parallel.env_shards_of(backend, kl_envs) > 1

        def solve(actor_params, grads, kl_obs, kl_old, damping, max_kl):
            """The natural step; split across devices, each one linearises
            the KL on its own envs and the products are averaged."""
            # Gauss-Newton form of the same product: 1.05-1.5x faster on a CPU.
            local_fvp = natural.gauss_newton_fisher_vector_product(
                lambda params: blocks.blocked_map_local(
                    lambda obs: policy.apply(params, obs), kl_obs, fvp_block_rows
                ),
                lambda dist: jnp.mean(kl_old.kl(dist)),
                actor_params,
                damping,
            )
            return natural.natural_gradient_step(
                grads,
                lambda v: parallel.mean_over_shards(local_fvp(v), sharded),
                max_kl,
                iters=config.cg_iters,
            )

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
        step, step_info = solve(
            agent.actor, grads, kl_obs, kl_old, hyper.cg_damping, hyper.max_kl
        )
        if until == "cg_solve":
            return agent, {"checksum": base.global_norm(step)}
        if line_search:

            def surrogate_and_kl(actor_params):
                """``(L(θ), mean KL(π_old ‖ π_θ))`` over the batch, one pass."""

                def block_terms(block):
                    *surrogate_block, old_block_dist = block
                    weighted, entropies, dist = surrogate_rows(
                        actor_params, *surrogate_block
                    )
                    gain = weighted + hyper.ent_coef * entropies
                    return gain, old_block_dist.kl(dist)

                gain, kl = blocks.blocked_map(
                    block_terms,
                    (batch.obs, batch.action, old_log_prob, advantages, old_dist),
                    block_rows,
                    backend,
                )
                return jnp.mean(gain), jnp.mean(kl)

            actor, search = natural.backtracking_line_search(
                surrogate_and_kl,
                None,
                agent.actor,
                step,
                step_info.expected_improvement,
                hyper.max_kl,
                hyper.backtrack_ratio,
                config.max_backtracks,
                objective_at_params=objective,
            )
            accepted, backtracks = search.accepted, search.backtracks
            step_fraction = jnp.where(search.accepted, search.step_fraction, 0.0)
            # The real KL over the whole batch, measured by the search (0 when
            # the policy was left unchanged).
            kl = search.kl
        else:
            actor = jax.tree.map(jnp.add, agent.actor, step)
            accepted, backtracks = step_info.valid, jnp.zeros((), jnp.int32)
            step_fraction = jnp.ones(())
            kl = jnp.mean(kl_old.kl(policy.apply(actor, kl_obs)))
        if until == "line_search":
            return agent, {"checksum": base.global_norm(actor)}
        critic_params, critic_opt, value_loss = fit_critic(
            critic_agent, batch, targets, key, hyper, progress
        )
        agent = critic_agent.replace(
            actor=actor, critic=critic_params, critic_opt=critic_opt
        )
        return agent, {
            "policy_loss": -objective,
            "value_loss": value_loss,
            "entropy": entropy,
            "grad_norm": base.global_norm(grads),
            "kl": kl,
            "cg_residual": step_info.cg_residual,
            "cg_iterations": step_info.cg_iterations.astype(jnp.float32),
            "xfx": step_info.xfx,
            "step_norm": step_fraction * step_info.step_norm,
            "backtracks": backtracks.astype(jnp.float32),
            "accepted": accepted.astype(jnp.float32),
            "learning_rate": base.learning_rate(
                hyper.critic_lr, progress, config.anneal_lr
            ),
            "value_scale": value_norm.statistics(agent.value_stats)[1],
        }

    return base.Algorithm(
        name=name,
        init=init,
        collect=collect,
        update=update,
        act=base.policy_act(policy),
        metric_names=METRICS,
    )


def make_npg(config: TrainConfig, spec: EnvSpec, backend: Backend) -> base.Algorithm:
    """Natural policy gradient: the KL-scaled natural step, no line search."""
    return _make_natural(config, spec, backend, line_search=False)


def make_trpo(config: TrainConfig, spec: EnvSpec, backend: Backend) -> base.Algorithm:
    """TRPO: the natural step with a backtracking line search on KL ≤ δ."""
    return _make_natural(config, spec, backend, line_search=True)


def phase_prefix_updates(
    config: TrainConfig, spec: EnvSpec, backend: Backend
) -> dict[str, object]:
    """Update functions that stop after each phase, for timing (benchmark.py).

    ``{phase: update}`` for each name in :data:`PHASES` (``line_search`` only
    for TRPO): ``update`` has the signature of ``Algorithm.update`` and runs the
    phases up to and including ``phase``, returning the agent unchanged and a
    ``checksum`` metric that depends on the phase's output (so XLA cannot drop
    it). The cost of phase k is the time of prefix k minus that of prefix k−1;
    the last prefix is the full update.
    """
    line_search = config.algo == "trpo"
    updates = {}
    for phase in PHASES:
        if phase == "line_search" and not line_search:
            continue
        until = None if phase == "critic_fit" else phase
        updates[phase] = _make_natural(config, spec, backend, line_search, until).update
    return updates
