"""Exact policy-gradient quantities on small finite MDPs.

On an MDP with a handful of states everything the estimators approximate can be
computed exactly, in closed form, by linear solves: the values ``V^π`` and
``Q^π``, the discounted state visitation, the objective ``J = ρᵀV^π``, its
gradient for any parametrisation of the policy (``jax.grad`` through the solve),
the Fisher matrix and the natural gradient. The tests check the sampled
estimators (REINFORCE, compatible critics, natural steps) against these.

Conventions, shared by every function here:

* A policy is a table ``probs[s, a] = π(a|s)``, ``[S, A]``; a parametrised policy
  is a function ``policy_fn(params) -> probs`` of any pytree of parameters (a
  logit table, a network on one-hot states, one logit shared by every state).
  Flattened parameter vectors use :func:`jax.flatten_util.ravel_pytree` order.
* Terminal states are absorbing and worth nothing: no reward is earned in them
  and no value flows out of them. Their rows of ``P`` may hold anything.
* ``J(θ) = Σ_s ρ(s) V^π(s)`` with ``V^π(s) = E[Σ_{t<T} γ^t r_t | s_0 = s]``, ``T``
  the (possibly infinite) step at which a terminal state is reached.

References:
  Sutton & Barto 2018, *Reinforcement Learning: An Introduction*, 2nd ed.,
  ch. 13 (Example 13.1, the short corridor).
  Sutton et al. 2000, *Policy Gradient Methods for Reinforcement Learning with
  Function Approximation*, NeurIPS 12.
  Kakade 2001, *A Natural Policy Gradient*, NeurIPS 14.
  Agarwal et al. 2021, *On the Theory of Policy Gradient Methods: Optimality,
  Approximation, and Distribution Shift*, https://arxiv.org/abs/1908.00261.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment, spaces
from jax.flatten_util import ravel_pytree

from pgjax import losses

Array = jax.Array
PyTree = Any
PolicyFn = Callable[[PyTree], Array]

__all__ = [
    "SHORT_CORRIDOR_OPTIMUM",
    "Episodes",
    "TabularEnv",
    "TabularEnvParams",
    "TabularEnvState",
    "TabularMDP",
    "advantage",
    "discounted_visitation",
    "exact_gradient",
    "fisher",
    "natural_gradient",
    "objective",
    "policy_evaluation",
    "policy_gradient_theorem",
    "random_mdp",
    "reinforce_estimates",
    "sample_episodes",
    "short_corridor",
    "short_corridor_env",
    "short_corridor_policy",
    "softmax_policy",
    "state_weights",
]


@struct.dataclass
class TabularMDP:
    """A finite MDP with ``S`` states and ``A`` actions.

    Attributes:
      transitions: ``P[s, a, s']``, ``[S, A, S]``; each row of a non-terminal
        state sums to 1.
      rewards: ``R[s, a]``, ``[S, A]``, the expected reward of taking ``a`` in
        ``s`` (ignored in terminal states).
      initial: ``ρ[s]``, ``[S]``, the distribution of the first state.
      gamma: scalar discount ``γ ∈ [0, 1]``; ``γ = 1`` needs every policy used
        to reach a terminal state with probability 1.
      terminal: ``[S]`` bool, absorbing states that end the episode.
    """

    transitions: Array
    rewards: Array
    initial: Array
    gamma: Array
    terminal: Array

    @property
    def num_states(self) -> int:
        return self.rewards.shape[0]

    @property
    def num_actions(self) -> int:
        return self.rewards.shape[1]


# ---------------------------------------------------------------------------
# Policies.


def softmax_policy(logits: Array) -> Array:
    """Tabular softmax ``π(a|s) = exp θ[s,a] / Σ_b exp θ[s,b]``, ``[S, A]``."""
    return jax.nn.softmax(logits, axis=-1)


# ---------------------------------------------------------------------------
# Values, visitation and the objective.


def _alive(mdp: TabularMDP) -> Array:
    """``[S]`` float mask, 1 on non-terminal states."""
    return 1.0 - jnp.asarray(mdp.terminal).astype(jnp.result_type(mdp.rewards))


def _alive_transitions(mdp: TabularMDP, probs: Array) -> Array:
    """``M = diag(m)·P_π·diag(m)``, ``[S, S]``: the policy's state-to-state
    matrix with every move into or out of a terminal state removed, so that
    ``Σ_t γ^t M^t`` counts only the steps of an episode."""
    alive = _alive(mdp)
    p_pi = jnp.einsum("sa,sat->st", probs, mdp.transitions)
    return alive[:, None] * p_pi * alive[None, :]


def policy_evaluation(mdp: TabularMDP, probs: Array) -> tuple[Array, Array]:
    """``V^π`` and ``Q^π`` by one linear solve.

    With ``m`` the non-terminal mask and ``M = diag(m)·P_π·diag(m)``::

        (I − γ·M)·V = m ⊙ r_π,      r_π(s) = Σ_a π(a|s)·R(s, a)
        Q(s, a) = m(s)·(R(s, a) + γ·Σ_s' P(s'|s, a)·m(s')·V(s'))

    so ``V = Q = 0`` on terminal states.

    Args:
      mdp: the MDP.
      probs: ``[S, A]`` policy ``π(a|s)``.

    Returns:
      ``(V, Q)``, ``[S]`` and ``[S, A]``.
    """
    alive = _alive(mdp)
    r_pi = alive * jnp.sum(probs * mdp.rewards, axis=-1)
    eye = jnp.eye(mdp.num_states, dtype=r_pi.dtype)
    values = jnp.linalg.solve(eye - mdp.gamma * _alive_transitions(mdp, probs), r_pi)
    next_values = jnp.einsum("sat,t->sa", mdp.transitions, alive * values)
    q_values = alive[:, None] * (mdp.rewards + mdp.gamma * next_values)
    return values, q_values


def advantage(mdp: TabularMDP, probs: Array) -> Array:
    """``A^π(s, a) = Q^π(s, a) − V^π(s)``, ``[S, A]`` (0 on terminal states)."""
    values, q_values = policy_evaluation(mdp, probs)
    return q_values - values[:, None]


def discounted_visitation(
    mdp: TabularMDP, probs: Array, normalize: bool = True
) -> Array:
    """The discounted state visitation of ``π`` from ``ρ``.

    Unnormalised, it is the discounted expected number of visits::

        η(s) = Σ_t γ^t·Pr(s_t = s, t < T),    ηᵀ = (m ⊙ ρ)ᵀ·(I − γ·M)⁻¹

    (terminal states get 0: the episode has ended there). Its total
    ``H = Σ_s η(s) = E[Σ_{t<T} γ^t]`` is the effective horizon.

    Normalised (the default), it is ``d(s) = η(s) / H``, a distribution over the
    non-terminal states. Without terminal states ``H = 1/(1 − γ)``, so
    ``d = (1 − γ)·η`` is exactly the ``d^π_ρ`` of Agarwal et al. 2021
    (https://arxiv.org/abs/1908.00261); with terminal states, and in particular
    for ``γ = 1`` where ``(1 − γ)·η`` vanishes, ``d`` is the share of the
    (discounted) expected steps spent in each state.

    Args:
      mdp: the MDP.
      probs: ``[S, A]`` policy.
      normalize: ``d`` (True) or ``η`` (False).

    Returns:
      ``[S]`` visitation.
    """
    alive = _alive(mdp)
    eye = jnp.eye(mdp.num_states, dtype=alive.dtype)
    system = (eye - mdp.gamma * _alive_transitions(mdp, probs)).T
    visits = jnp.linalg.solve(system, alive * mdp.initial)
    return visits / jnp.sum(visits) if normalize else visits


def objective(mdp: TabularMDP, probs: Array) -> Array:
    """``J(π) = ρᵀ·V^π``, a scalar."""
    values, _ = policy_evaluation(mdp, probs)
    return jnp.dot(mdp.initial, values)


# ---------------------------------------------------------------------------
# Gradients.


def exact_gradient(mdp: TabularMDP, policy_fn: PolicyFn, params: PyTree) -> PyTree:
    """``∇_θ J(π_θ)`` by differentiating the linear solve of :func:`objective`.

    Args:
      mdp: the MDP.
      policy_fn: ``params ↦ probs [S, A]``, any differentiable parametrisation.
      params: where the gradient is taken.

    Returns:
      A pytree shaped like ``params``.
    """
    return jax.grad(lambda theta: objective(mdp, policy_fn(theta)))(params)


def policy_gradient_theorem(
    mdp: TabularMDP, policy_fn: PolicyFn, params: PyTree
) -> PyTree:
    """``∇J`` from the policy gradient theorem (Sutton et al. 2000)::

        ∇J = Σ_s η(s) Σ_a π(a|s)·∇log π(a|s)·Q^π(s, a)
           = H·Σ_s d(s) Σ_a π(a|s)·∇log π(a|s)·Q^π(s, a)

    with ``η``, ``d`` and ``H`` from :func:`discounted_visitation`; without
    terminal states ``H = 1/(1 − γ)``. Only ``log π`` is differentiated (``η``,
    ``π`` and ``Q`` are held fixed), so this equals :func:`exact_gradient`
    because the theorem holds, not by construction. It needs ``π > 0``
    wherever ``log π`` is differentiated (e.g. any softmax policy).

    Returns:
      A pytree shaped like ``params``.
    """
    probs = policy_fn(params)
    _, q_values = policy_evaluation(mdp, probs)
    visits = discounted_visitation(mdp, probs, normalize=False)
    coefficients = jax.lax.stop_gradient(visits[:, None] * probs * q_values)
    return jax.grad(lambda theta: jnp.sum(coefficients * jnp.log(policy_fn(theta))))(
        params
    )


def _scores(policy_fn: PolicyFn, params: PyTree) -> Array:
    """``ψ[s, a] = ∇_θ log π(a|s)`` flattened, ``[S, A, P]``."""
    flat, unravel = ravel_pytree(params)
    return jax.jacrev(lambda v: jnp.log(policy_fn(unravel(v))))(flat)


def state_weights(
    mdp: TabularMDP, probs: Array, weighting: str | Array = "visitation"
) -> Array:
    """The state weights ``w(s)`` of a Fisher matrix, ``[S]``.

    Args:
      mdp: the MDP.
      probs: ``[S, A]`` policy.
      weighting: ``"visitation"``: the normalised discounted visitation ``d^π``
        (:func:`discounted_visitation`); ``"initial"``: ``ρ``; ``"uniform"``:
        equal weight on every non-terminal state; or an explicit ``[S]`` array.

    Raises:
      ValueError: for an unknown weighting name.
    """
    if not isinstance(weighting, str):
        return jnp.asarray(weighting)
    if weighting == "visitation":
        return discounted_visitation(mdp, probs)
    if weighting == "initial":
        return jnp.asarray(mdp.initial)
    if weighting == "uniform":
        alive = _alive(mdp)
        return alive / jnp.sum(alive)
    raise ValueError(
        f"weighting must be 'visitation', 'initial', 'uniform' or an array, "
        f"got {weighting!r}"
    )


def fisher(
    mdp: TabularMDP,
    policy_fn: PolicyFn,
    params: PyTree,
    weighting: str | Array = "visitation",
) -> Array:
    """The Fisher information ``F = Σ_s w(s) Σ_a π(a|s)·ψψᵀ``, ``ψ = ∇_θ log π(a|s)``.

    The state weighting must be the one the gradient carries, ``d^π``: the
    policy gradient is ``∇J = H·Σ_s d(s)·E_{a∼π}[ψ·A^π(s, a)]``, and a least-squares
    fit of ``A^π`` on ``ψ`` weighted by ``d(s)·π(a|s)`` has normal equations
    ``F_d·w = ∇J / H`` (see :mod:`pgjax.compatible`). Only with ``w = d`` is
    ``F⁻¹∇J`` the natural gradient, the direction of steepest ascent under the
    KL metric ``E_{s∼d}[KL(π_old(·|s) ‖ π(·|s))]`` of the states the policy
    actually visits; another weighting rescales each state's step by
    ``d(s)/w(s)`` (:func:`natural_gradient`).

    Args:
      mdp: the MDP.
      policy_fn: ``params ↦ probs [S, A]``; needs ``π > 0`` (``log π`` is
        differentiated).
      params: where ``F`` is taken.
      weighting: see :func:`state_weights`.

    Returns:
      ``[P, P]`` with ``P`` the number of parameters, in ``ravel_pytree`` order.
    """
    probs = policy_fn(params)
    weights = state_weights(mdp, probs, weighting)
    psi = _scores(policy_fn, params)
    return jnp.einsum("s,sa,sap,saq->pq", weights, probs, psi, psi)


def natural_gradient(
    mdp: TabularMDP,
    policy_fn: PolicyFn,
    params: PyTree,
    weighting: str | Array = "visitation",
) -> Array:
    """The natural gradient ``F⁺·∇J``, flat ``[P]`` (``F⁺`` the pseudo-inverse).

    Exact check (Kakade 2001; Agarwal et al. 2021,
    https://arxiv.org/abs/1908.00261): for the tabular softmax
    ``π = softmax(θ)`` and ``F`` weighted by ``d^π``, the policy gradient is
    ``∂J/∂θ[s,a] = η(s)·π(a|s)·A^π(s,a)`` and each state's block of ``F`` is
    ``d(s)·(diag π_s − π_s π_sᵀ)``, so

        F⁺∇J [s, a] = H·A^π(s, a) − c(s),      H = 1/(1 − γ) without terminals,

    with ``c(s)`` a per-state constant (the pseudo-inverse picks the solution
    whose every state row sums to zero). One natural step ``θ + α·F⁺∇J`` then
    gives ``π_new(a|s) ∝ π(a|s)·exp(α·A^π(s,a)/(1 − γ))``, the same soft policy
    iteration in every state. With weights ``w(s)`` other than ``d`` the step in
    state ``s`` is scaled by ``d(s)/w(s)`` instead: another update.

    Returns:
      ``[P]``, in ``ravel_pytree`` order.
    """
    matrix = fisher(mdp, policy_fn, params, weighting)
    gradient, _ = ravel_pytree(exact_gradient(mdp, policy_fn, params))
    return jnp.linalg.pinv(matrix, hermitian=True) @ gradient


# ---------------------------------------------------------------------------
# Classic problems.


def _short_corridor_arrays() -> dict[str, np.ndarray]:
    left, right = 0, 1
    transitions = np.zeros((4, 2, 4))
    transitions[0, left, 0] = transitions[0, right, 1] = 1.0
    # The second state swaps the actions' effects.
    transitions[1, left, 2] = transitions[1, right, 0] = 1.0
    transitions[2, left, 1] = transitions[2, right, 3] = 1.0
    transitions[3, :, 3] = 1.0
    rewards = np.full((4, 2), -1.0)
    rewards[3] = 0.0
    return dict(
        transitions=transitions,
        rewards=rewards,
        initial=np.array([1.0, 0.0, 0.0, 0.0]),
        gamma=np.asarray(1.0),
        terminal=np.array([False, False, False, True]),
    )


def short_corridor() -> TabularMDP:
    """Sutton & Barto 2018, Example 13.1: the short corridor with switched actions.

    States 0, 1, 2 and the terminal state 3; actions 0 = left, 1 = right; reward
    −1 per step; ``γ = 1``; the episode starts in state 0. Left in state 0
    stays there; in state 1 the actions are switched (right goes back to 0,
    left on to 2). The intended policy cannot tell the states apart and goes
    right with the same probability ``p`` everywhere
    (:func:`short_corridor_policy`). Solving ``V = −1 + P_π·V``::

        V₀ = V₁ − 1/p,   V₂ = −1 + (1 − p)·V₁,   V₁ = (p − 3) / (p·(1 − p))
        J(p) = V₀ = (4 − 2p) / (p·(p − 1))

    maximised at ``p* = 2 − √2 ≈ 0.586`` with ``J(p*) = −(6 + 4√2) ≈ −11.66``
    (a deterministic state-blind policy never arrives).
    """
    return TabularMDP(
        **{k: jnp.asarray(v) for k, v in _short_corridor_arrays().items()}
    )


def short_corridor_policy(p: float | Array) -> Array:
    """The state-blind policy of the short corridor: right with probability ``p``
    in every state; ``[4, 2]``."""
    p = jnp.asarray(p)
    return jnp.broadcast_to(jnp.stack([1.0 - p, p]), (4, 2))


SHORT_CORRIDOR_OPTIMUM = 2.0 - math.sqrt(2.0)
"""``p*``, the best probability of going right in :func:`short_corridor`."""


def random_mdp(
    key: Array,
    num_states: int,
    num_actions: int,
    gamma: float = 0.9,
) -> TabularMDP:
    """A random MDP without terminal states.

    ``P(·|s, a) ∼ Dirichlet(1)``, ``R(s, a) ∼ N(0, 1)``, ``ρ ∼ Dirichlet(1)``.
    """
    k_p, k_r, k_rho = jax.random.split(key, 3)
    alpha = jnp.ones((num_states,))
    return TabularMDP(
        transitions=jax.random.dirichlet(k_p, alpha, (num_states, num_actions)),
        rewards=jax.random.normal(k_r, (num_states, num_actions)),
        initial=jax.random.dirichlet(k_rho, alpha),
        gamma=jnp.asarray(gamma, float),
        terminal=jnp.zeros((num_states,), bool),
    )


# ---------------------------------------------------------------------------
# Sampling, and the Monte-Carlo estimator it feeds.


@struct.dataclass
class Episodes:
    """``N`` sampled episodes, time-major ``[T, N]``; one episode per column.

    Attributes:
      states: int32 ``s_t``.
      actions: int32 ``a_t``.
      rewards: ``R(s_t, a_t)``; 0 where not ``valid``.
      valid: bool, step ``t`` belongs to the episode (``s_t`` non-terminal and
        the episode has not ended); padding after the end is not.
      terminated: bool, ``s_{t+1}`` is terminal (the episode's last step). An
        episode whose last valid row is not terminated was cut at ``T``.
    """

    states: Array
    actions: Array
    rewards: Array
    valid: Array
    terminated: Array


@functools.partial(jax.jit, static_argnames=("num_episodes", "max_steps"))
def sample_episodes(
    mdp: TabularMDP, probs: Array, key: Array, num_episodes: int, max_steps: int
) -> Episodes:
    """Samples ``num_episodes`` independent episodes of at most ``max_steps``.

    ``s_0 ∼ ρ``, ``a_t ∼ π(·|s_t)``, ``s_{t+1} ∼ P(·|s_t, a_t)``, in one
    ``lax.scan`` over time, every episode in parallel. Each draw inverts a
    cumulative distribution at one uniform number, all drawn before the scan
    in one call: two numbers per episode and step, where ``categorical``
    would draw one Gumbel number per action and per state.

    Args:
      mdp: the MDP.
      probs: ``[S, A]`` policy.
      key: PRNG key.
      num_episodes: ``N`` (static).
      max_steps: ``T`` (static).

    Returns:
      :class:`Episodes` with ``[T, N]`` arrays.
    """
    terminal = jnp.asarray(mdp.terminal)
    policy_cdf = jnp.cumsum(probs, axis=-1)
    transition_cdf = jnp.cumsum(mdp.transitions, axis=-1)
    key_start, key_steps = jax.random.split(key)
    start = _inverse_cdf(
        jnp.cumsum(mdp.initial), jax.random.uniform(key_start, (num_episodes,))
    )
    uniforms = jax.random.uniform(key_steps, (max_steps, 2, num_episodes))

    def step(carry, uniform):
        state, alive = carry
        action = _inverse_cdf(policy_cdf[state], uniform[0])
        next_state = _inverse_cdf(transition_cdf[state, action], uniform[1])
        ends = alive & terminal[next_state]
        reward = jnp.where(alive, mdp.rewards[state, action], 0.0)
        out = Episodes(state, action, reward, alive, ends)
        return (next_state, alive & ~ends), out

    carry = (start, ~terminal[start])
    _, episodes = jax.lax.scan(step, carry, uniforms)
    return episodes


def _inverse_cdf(cdf: Array, uniform: Array) -> Array:
    """The index ``i`` with ``cdf[i−1] ≤ u·cdf[K−1] < cdf[i]``; ``cdf [..., K]``,
    ``uniform [...]`` in ``[0, 1)`` → int32 ``[...]``. Scaling ``u`` by the
    total keeps a cumulative sum that rounds to just below 1 from returning
    ``K`` or an entry of probability 0 (its step of the ``cdf`` is empty)."""
    scaled = uniform[..., None] * cdf[..., -1:]
    index = jnp.sum(cdf <= scaled, axis=-1, dtype=jnp.int32)
    return jnp.minimum(index, cdf.shape[-1] - 1)


def reinforce_estimates(
    mdp: TabularMDP,
    policy_fn: PolicyFn,
    params: PyTree,
    episodes: Episodes,
    reward_to_go: bool = True,
    discount_steps: bool = True,
) -> Array:
    """One REINFORCE estimate of ``∇J`` per episode, ``[N, P]`` (flat).

    Episode ``n`` gives ``g_n = Σ_t ∇log π(a_t|s_t)·c_t`` with

    * ``reward_to_go`` and ``discount_steps`` (default): ``c_t = γ^t·G_t``,
      ``G_t = Σ_{t'≥t} γ^{t'−t} r_{t'}``; unbiased for the exact ``∇J``;
    * ``reward_to_go`` only: ``c_t = G_t``, the usual form without ``γ^t``. For
      ``γ < 1`` it is a different direction (it weights every visit alike, not
      by ``γ^t``), still useful, but not ``∇J``;
    * neither: ``c_t = Σ_{t'} γ^{t'} r_{t'}``, the whole discounted return;
      unbiased, noisier.

    The REINFORCE estimate is ``mean(g, axis=0)``: the sum over episodes over
    ``N``, a number fixed in advance (not the random number of valid steps),
    and its standard error is ``std(g, axis=0) / √N``. Unbiased for ``J``
    itself when no episode is cut at ``T``; else for the ``T``-step objective.

    Args:
      mdp: the MDP the episodes came from (for ``γ``).
      policy_fn: ``params ↦ probs [S, A]``.
      params: the parameters the episodes were sampled with.
      episodes: from :func:`sample_episodes`.
      reward_to_go: weight step ``t`` by the rewards from ``t`` on only.
      discount_steps: multiply step ``t``'s weight by ``γ^t``.

    Returns:
      ``[N, P]`` per-episode estimates, in ``ravel_pytree`` order.
    """
    valid = episodes.valid.astype(episodes.rewards.dtype)
    rewards = episodes.rewards * valid
    num_steps, num_episodes = rewards.shape
    gamma = jnp.asarray(mdp.gamma, rewards.dtype)
    to_go = losses.discounted_returns(
        rewards,
        jnp.full_like(rewards, gamma),
        jnp.zeros((num_episodes,), rewards.dtype),
    )
    powers = gamma ** jnp.arange(num_steps, dtype=rewards.dtype)[:, None]
    if not reward_to_go:
        weights = jnp.broadcast_to(to_go[0], rewards.shape)
    elif discount_steps:
        weights = powers * to_go
    else:
        weights = to_go
    # Coefficient of log π(a|s) in each episode's sum, [N, S, A].
    columns = jnp.broadcast_to(jnp.arange(num_episodes), rewards.shape)
    coefficients = jnp.zeros(
        (num_episodes, mdp.num_states, mdp.num_actions), rewards.dtype
    )
    coefficients = coefficients.at[columns, episodes.states, episodes.actions].add(
        weights * valid
    )
    return jnp.einsum("nsa,sap->np", coefficients, _scores(policy_fn, params))


# ---------------------------------------------------------------------------
# A gymnax environment.


@struct.dataclass
class TabularEnvState(environment.EnvState):
    """``time``: steps taken in the episode; ``state``: int32 index of ``s_t``."""

    time: Array
    state: Array


@struct.dataclass
class TabularEnvParams(environment.EnvParams):
    max_steps_in_episode: int = 100


def _float32_numpy(x: Array | np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    return x.astype(np.float32) if np.issubdtype(x.dtype, np.floating) else x


class TabularEnv(environment.Environment[TabularEnvState, TabularEnvParams]):
    """A :class:`TabularMDP` as a gymnax environment.

    Observations are rows of ``observations`` (``[S, D]``; the one-hot state,
    ``I_S``, by default; equal rows alias states, as in the short corridor),
    actions are ``Discrete(A)``, the reward of ``a`` in ``s`` is ``R(s, a)``
    (deterministic), and the episode terminates on reaching a terminal state.
    gymnax's ``step`` auto-resets, truncates at ``max_steps_in_episode`` and
    reports ``info["final_observation"]``. ``γ`` is the learner's choice, not
    the environment's.
    """

    def __init__(
        self,
        mdp: TabularMDP,
        observations: Array | np.ndarray | None = None,
        max_steps: int = 100,
        env_id: str = "TabularEnv",
    ):
        super().__init__()
        # numpy copies: constants in every program, on whatever device runs it;
        # float32 like every gymnax env's rewards.
        self.mdp = jax.tree.map(_float32_numpy, mdp)
        if observations is None:
            observations = np.eye(self.mdp.num_states, dtype=np.float32)
        self.observations = np.asarray(observations, np.float32)
        if self.observations.shape[0] != self.mdp.num_states:
            raise ValueError(
                f"observations must have one row per state ({self.mdp.num_states}), "
                f"got shape {self.observations.shape}"
            )
        self.max_steps = max_steps
        self.env_id = env_id

    @property
    def default_params(self) -> TabularEnvParams:
        return TabularEnvParams(max_steps_in_episode=self.max_steps)

    def reset_env(
        self, key: Array, params: TabularEnvParams
    ) -> tuple[Array, TabularEnvState]:
        index = jax.random.categorical(key, jnp.log(self.mdp.initial))
        state = TabularEnvState(
            time=jnp.asarray(0, jnp.int32), state=index.astype(jnp.int32)
        )
        return self.get_obs(state, params), state

    def step_env(self, key, state, action, params):
        action = jnp.asarray(action, jnp.int32)
        reward = jnp.asarray(self.mdp.rewards)[state.state, action]
        row = jnp.log(jnp.asarray(self.mdp.transitions)[state.state, action])
        new = TabularEnvState(
            time=state.time + 1,
            state=jax.random.categorical(key, row).astype(jnp.int32),
        )
        terminated = self.is_terminated(new, params)
        info = {"discount": 1.0 - terminated.astype(jnp.float32)}
        return self.get_obs(new, params), new, reward, terminated, info

    def get_obs(self, state: TabularEnvState, params=None, key=None) -> Array:
        return jnp.asarray(self.observations)[state.state]

    def is_terminated(self, state: TabularEnvState, params=None) -> Array:
        return jnp.asarray(self.mdp.terminal)[state.state]

    @property
    def name(self) -> str:
        return self.env_id

    @property
    def num_actions(self) -> int:
        return self.mdp.num_actions

    def action_space(self, params=None) -> spaces.Discrete:
        return spaces.Discrete(self.mdp.num_actions)

    def observation_space(self, params=None) -> spaces.Box:
        low, high = float(self.observations.min()), float(self.observations.max())
        return spaces.Box(low, high, self.observations.shape[1:], jnp.float32)


def short_corridor_env() -> TabularEnv:
    """``ShortCorridor-v0``: :func:`short_corridor` with one constant observation
    ``[1]`` in every state (the states look alike, as the example intends), so a
    policy is state-blind and the best return is ``−(6 + 4√2) ≈ −11.66`` at
    ``π(right) = 2 − √2``; truncated after 100 steps."""
    arrays = _short_corridor_arrays()
    return TabularEnv(
        TabularMDP(**arrays),
        observations=np.ones((4, 1), np.float32),
        max_steps=100,
        env_id="ShortCorridor-v0",
    )
