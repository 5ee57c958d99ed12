"""pgjax.compatible against explicit matrices and exact tabular gradients.

On a small MDP every (s, a) pair is a sample and its weight d(s)·π(a|s) is
known, so the compatible fit must reproduce the natural gradient exactly (in
float64): w = F⁻¹∇J, ∇J = F·w, the same w from Q or A targets, from the SVD or
from conjugate gradient, for a tabular softmax and for a network. A critic
linear in other features must give a visibly different gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from pgjax import compatible, natural, tabular

GAMMA = 0.8
S, A = 4, 3


def _tabular_policy(seed=0):
    logits = jax.random.normal(jax.random.key(seed), (S, A))

    def log_prob_fn(params, obs, action):
        return jax.nn.log_softmax(obs @ params["logits"])[action]

    return {"logits": logits}, log_prob_fn


def _mlp_policy(seed=1, hidden=5):
    k1, k2 = jax.random.split(jax.random.key(seed))
    params = {
        "w1": jax.random.normal(k1, (S, hidden)),
        "b1": jnp.zeros((hidden,)),
        "w2": jax.random.normal(k2, (hidden, A)),
        "b2": jnp.zeros((A,)),
    }

    def log_prob_fn(p, obs, action):
        logits = jnp.tanh(obs @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
        return jax.nn.log_softmax(logits)[action]

    return params, log_prob_fn


def _all_pairs():
    """Every (s, a) as a sample: one-hot states [S·A, S] and actions [S·A]."""
    states = jnp.repeat(jnp.arange(S), A)
    return jax.nn.one_hot(states, S), jnp.tile(jnp.arange(A), S)


def _problem(policy):
    params, log_prob_fn = _tabular_policy() if policy == "softmax" else _mlp_policy()
    mdp = tabular.random_mdp(jax.random.key(2), S, A, GAMMA)
    obs, actions = _all_pairs()

    def policy_fn(p):
        log_probs = jax.vmap(log_prob_fn, in_axes=(None, 0, 0))(p, obs, actions)
        return jnp.exp(log_probs).reshape(S, A)

    return mdp, params, log_prob_fn, policy_fn, obs, actions


def test_score_rows_match_loop_and_softmax_closed_form():
    params, log_prob_fn = _tabular_policy()
    obs, actions = _all_pairs()
    psi = compatible.score_rows(log_prob_fn, params, obs, actions)
    assert psi.shape == (S * A, S * A)
    for i in (0, 5, 11):
        expected = jax.grad(log_prob_fn)(params, obs[i], actions[i])["logits"]
        np.testing.assert_allclose(psi[i], expected.ravel(), rtol=1e-6)
    # ∇_θ log softmax(θ_s)[a] = e_{s,a} − π(·|s) on row s, 0 elsewhere.
    probs = jax.nn.softmax(params["logits"], axis=-1)
    s, a = 2, 1
    expected = jnp.zeros((S, A)).at[s].set(-probs[s]).at[s, a].add(1.0)
    np.testing.assert_allclose(psi[s * A + a], expected.ravel(), atol=1e-6)


def test_fit_compatible_solves_the_weighted_normal_equations():
    key_psi, key_t, key_w = jax.random.split(jax.random.key(3), 3)
    psi = jax.random.normal(key_psi, (40, 6))
    targets = jax.random.normal(key_t, (40,))
    weights = jax.random.uniform(key_w, (40,))
    share = weights / weights.sum()
    for ridge in (0.0, 0.05):
        w = compatible.fit_compatible(psi, targets, weights, ridge)
        lhs = psi.T @ (share[:, None] * psi) + ridge * jnp.eye(6)
        np.testing.assert_allclose(
            w, jnp.linalg.solve(lhs, psi.T @ (share * targets)), rtol=1e-4, atol=1e-5
        )
    # Weights matter only through their shares; None is uniform.
    np.testing.assert_allclose(
        compatible.fit_compatible(psi, targets, 7.0 * weights, 0.05),
        compatible.fit_compatible(psi, targets, weights, 0.05),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        compatible.fit_compatible(psi, targets),
        compatible.fit_compatible(psi, targets, jnp.ones(40)),
        rtol=1e-5,
    )
    # Dependent columns: the minimum-norm solution, pinv(ΨᵀW̄Ψ)·ΨᵀW̄t.
    dependent = jnp.concatenate([psi, psi[:, :2] + psi[:, 2:4]], axis=1)
    w = compatible.fit_compatible(dependent, targets, weights)
    fisher = dependent.T @ (share[:, None] * dependent)
    expected = jnp.linalg.pinv(fisher, hermitian=True) @ (
        dependent.T @ (share * targets)
    )
    np.testing.assert_allclose(w, expected, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("policy", ["softmax", "mlp"])
def test_compatible_weights_are_the_natural_gradient(policy):
    with jax.enable_x64(True):
        mdp, params, log_prob_fn, policy_fn, obs, actions = _problem(policy)
        probs = policy_fn(params)
        eta = tabular.discounted_visitation(mdp, probs, normalize=False)
        _, q = tabular.policy_evaluation(mdp, probs)
        weights = (eta[:, None] * probs).ravel()
        psi = compatible.score_rows(log_prob_fn, params, obs, actions)
        w = compatible.fit_compatible(psi, q.ravel(), weights)
        # A^π targets give the same w: Σ_a π ψ V(s) = 0.
        w_adv = compatible.fit_compatible(
            psi, tabular.advantage(mdp, probs).ravel(), weights
        )
        np.testing.assert_allclose(w_adv, w, rtol=1e-9, atol=1e-12)

        # F and ∇J weighted alike (by η): ∇J = F·w and w = F⁺∇J.
        grad = ravel_pytree(tabular.exact_gradient(mdp, policy_fn, params))[0]
        f_eta = tabular.fisher(mdp, policy_fn, params, weighting=eta)
        np.testing.assert_allclose(f_eta @ w, grad, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(
            tabular.natural_gradient(mdp, policy_fn, params, weighting=eta),
            w,
            rtol=1e-7,
            atol=1e-10,
        )
        # With F weighted by the normalised d: w = F_d⁺∇J·(1 − γ).
        np.testing.assert_allclose(
            (1 - GAMMA) * tabular.natural_gradient(mdp, policy_fn, params),
            w,
            rtol=1e-7,
            atol=1e-10,
        )
        # Conjugate gradient on F·x = ∇J from Fisher products alone.
        cg = natural.conjugate_gradient(lambda v: f_eta @ v, grad, iters=60, tol=1e-24)
        np.testing.assert_allclose(cg.x, w, rtol=1e-6, atol=1e-9)
        assert jnp.linalg.norm(w) > 0.1


@pytest.mark.parametrize("policy", ["softmax", "mlp"])
def test_matrix_free_fit_matches_explicit_fit(policy):
    mdp, params, log_prob_fn, policy_fn, obs, actions = _problem(policy)
    probs = policy_fn(params)
    d = tabular.discounted_visitation(mdp, probs)
    adv = tabular.advantage(mdp, probs).ravel()
    weights = (d[:, None] * probs).ravel()
    psi = compatible.score_rows(log_prob_fn, params, obs, actions)
    for ridge in (1e-2, 1e-3):
        w, info = compatible.fit_compatible_matrix_free(
            log_prob_fn, params, obs, actions, adv, weights, ridge=ridge, iters=100
        )
        flat = ravel_pytree(w)[0]
        expected = compatible.fit_compatible(psi, adv, weights, ridge)
        np.testing.assert_allclose(flat, expected, rtol=2e-3, atol=2e-4)
        assert jax.tree.structure(w) == jax.tree.structure(params)
        # ĝ = ΨᵀW̄Â = Σ d π ψ A = (1 − γ)·∇J.
        grad = ravel_pytree(tabular.exact_gradient(mdp, policy_fn, params))[0]
        np.testing.assert_allclose(
            ravel_pytree(info.gradient)[0], (1 - GAMMA) * grad, rtol=1e-4, atol=1e-6
        )
        share = weights / weights.sum()
        fit_error = jnp.sum(share * jnp.square(psi @ flat - adv))
        np.testing.assert_allclose(info.fit_error, fit_error, rtol=1e-3, atol=1e-6)
        assert info.cg_iterations > 0


def test_incompatible_critic_gives_a_biased_gradient():
    # The notes' Q actor-critic: Q_u = φ(s, a)ᵀu fitted to Q^π by the same
    # weighted least squares, with features φ that are not the scores.
    with jax.enable_x64(True):
        mdp, params, log_prob_fn, policy_fn, obs, actions = _problem("softmax")
        probs = policy_fn(params)
        eta = tabular.discounted_visitation(mdp, probs, normalize=False)
        _, q = tabular.policy_evaluation(mdp, probs)
        weights = (eta[:, None] * probs).ravel()
        psi = compatible.score_rows(log_prob_fn, params, obs, actions)
        grad = ravel_pytree(tabular.exact_gradient(mdp, policy_fn, params))[0]

        def critic_gradient(features):
            u = compatible.fit_compatible(features, q.ravel(), weights)
            return psi.T @ (weights * (features @ u))

        # Compatible features: exact. One-hot (s, a) features: Q itself, exact.
        np.testing.assert_allclose(critic_gradient(psi), grad, rtol=1e-8)
        np.testing.assert_allclose(
            critic_gradient(jnp.eye(S * A)), grad, rtol=1e-8, atol=1e-12
        )
        # Random features (fewer than the pairs) and one-hot features of half
        # the pairs: biased.
        random_features = jax.random.normal(jax.random.key(4), (S * A, 6))
        for features in (random_features, jnp.eye(S * A)[:, ::2]):
            error = jnp.linalg.norm(critic_gradient(features) - grad)
            assert error > 0.1 * jnp.linalg.norm(grad)


def test_bad_shapes_raise():
    psi = jnp.ones((5, 3))
    with pytest.raises(ValueError, match="targets"):
        compatible.fit_compatible(psi, jnp.ones((4,)))
    with pytest.raises(ValueError, match="weights"):
        compatible.fit_compatible(psi, jnp.ones((5,)), jnp.ones((4,)))
    params, log_prob_fn = _tabular_policy()
    obs, actions = _all_pairs()
    with pytest.raises(ValueError, match="targets"):
        compatible.fit_compatible_matrix_free(
            log_prob_fn, params, obs, actions, jnp.ones((S * A, 1))
        )
