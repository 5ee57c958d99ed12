"""Probe environments: tiny gymnax envs whose right answer is known in advance.

Each probe isolates one thing an agent must get right, so a failing probe points
at the broken part (Andy Jones 2021, *Debugging RL, Without the Agonizing Pain*,
https://andyljones.com/posts/rl-debugging.html):

=========================  ===================================================
``ProbeOneStep-v0``        the policy gradient and the value regression at all
``ProbeTwoStep-v0``        discounting and credit assignment across steps
``ProbeConstantReward-v0`` bootstrapping on truncation (time limit ≠ terminal)
``ProbeTruncatedState-v0`` bootstrapping from the final obs, not the reset one
``ProbeContinuous-v0``     Gaussian policies and action clipping
``ProbeEqualReturn-v0``    a policy-gradient estimate that is unbiased when
                           episode lengths depend on the actions (∇J = 0)
``ShortCorridor-v0``       a stochastic optimum (Sutton & Barto, Example 13.1)
=========================  ===================================================

Importing this module registers them with gymnax (once), so
``pgjax.envs.make_env("ProbeOneStep-v0")`` and ``--env ProbeOneStep-v0`` work.
The base class's ``step`` does auto-reset, truncation at
``params.max_steps_in_episode`` and ``info["final_observation"]``.

This module must not import :mod:`pgjax.envs` (which imports it).
"""

from __future__ import annotations

from typing import Any

import gymnax
import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import environment, spaces

from pgjax import tabular

Array = jax.Array


@struct.dataclass
class ProbeState(environment.EnvState):
    """``time``: steps taken in the episode; ``first_action``: the action at t=0."""

    time: Array
    first_action: Array


@struct.dataclass
class ProbeParams(environment.EnvParams):
    max_steps_in_episode: int = 10


def _state(time, first_action=0) -> ProbeState:
    return ProbeState(
        time=jnp.asarray(time, jnp.int32),
        first_action=jnp.asarray(first_action, jnp.int32),
    )


class _Probe(environment.Environment[ProbeState, ProbeParams]):
    """Shared plumbing: constant start state, discrete actions, no randomness."""

    env_id = ""
    obs_dim = 1
    max_steps = 10

    @property
    def default_params(self) -> ProbeParams:
        return ProbeParams(max_steps_in_episode=self.max_steps)

    def reset_env(self, key: Array, params: ProbeParams) -> tuple[Array, ProbeState]:
        del key
        state = _state(0)
        return self.get_obs(state, params), state

    def get_obs(self, state: ProbeState, params=None, key=None) -> Array:
        return jnp.ones((self.obs_dim,), jnp.float32)

    def is_terminated(self, state: ProbeState, params: ProbeParams) -> Array:
        return jnp.asarray(False)

    def _transition(
        self, state: ProbeState, params: ProbeParams, reward: Array
    ) -> tuple[Array, ProbeState, Array, Array, dict[str, Any]]:
        terminated = self.is_terminated(state, params)
        return (
            self.get_obs(state, params),
            state,
            jnp.asarray(reward, jnp.float32),
            terminated,
            {"discount": 1.0 - terminated.astype(jnp.float32)},
        )

    @property
    def name(self) -> str:
        return self.env_id

    @property
    def num_actions(self) -> int:
        return 2

    def action_space(self, params: ProbeParams | None = None) -> spaces.Discrete:
        return spaces.Discrete(2)

    def observation_space(self, params: ProbeParams) -> spaces.Box:
        return spaces.Box(0.0, 1.0, (self.obs_dim,), jnp.float32)


class ProbeOneStep(_Probe):
    """One step, two actions, constant observation ``[1]``.

    Action 1 earns reward +1, action 0 earns 0; the episode terminates after the
    step. Right answer: ``π(1|s0) → 1`` and, under that policy, ``V(s0) → 1``
    (``Q(s0, 1) = 1``, ``Q(s0, 0) = 0``). If the policy does not move, the policy
    gradient is broken; if ``V`` does not reach the average reward, the value
    regression is.
    """

    env_id = "ProbeOneStep-v0"

    def step_env(self, key, state, action, params):
        del key
        reward = (jnp.asarray(action) == 1).astype(jnp.float32)
        return self._transition(_state(state.time + 1, action), params, reward)

    def is_terminated(self, state: ProbeState, params: ProbeParams) -> Array:
        return state.time >= 1


class ProbeTwoStep(_Probe):
    """Two steps; the reward depends only on the FIRST action.

    The reward is 0 after step 0 and, after step 1 (where the episode
    terminates), +1 iff the action at step 0 was 1; the second action does not
    matter. Observations (one-hot, 3 wide) tell the steps apart and keep the
    problem Markov: ``s0 = [1, 0, 0]`` at step 0, then ``[0, 1, 0]`` after
    ``a0 = 0`` or ``[0, 0, 1]`` after ``a0 = 1`` (the terminal observation is
    all zeros). Right answer: ``π(a0 = 1|s0) → 1``, ``V(s0) → γ·1``,
    ``V([0, 0, 1]) = 1``, ``V([0, 1, 0]) = 0``. Tests discounting and that
    credit for the reward reaches an action one step earlier, either through
    Monte-Carlo returns (reward-to-go, GAE with λ > 0) or through the critic's
    bootstrap from ``V(s1)`` (TD(0)). An agent that weights each action by its
    immediate reward alone never learns ``a0``.
    """

    env_id = "ProbeTwoStep-v0"
    obs_dim = 3

    def get_obs(self, state: ProbeState, params=None, key=None) -> Array:
        index = jnp.where(
            state.time == 0, 0, jnp.where(state.time == 1, 1 + state.first_action, 3)
        )
        return jax.nn.one_hot(index, 3, dtype=jnp.float32)

    def step_env(self, key, state, action, params):
        del key
        first = jnp.where(
            state.time == 0, jnp.asarray(action, jnp.int32), state.first_action
        )
        new = _state(state.time + 1, first)
        reward = ((new.time >= 2) & (first == 1)).astype(jnp.float32)
        return self._transition(new, params, reward)

    def is_terminated(self, state: ProbeState, params: ProbeParams) -> Array:
        return state.time >= 2


class ProbeConstantReward(_Probe):
    """Reward +1 every step; never terminates; truncated after 20 steps.

    The observation is constant (``[1]``), so nothing tells the agent how many
    steps are left. The time limit is not part of the MDP: a correct critic
    bootstraps at the truncated step from ``V(final observation)`` and learns
    ``V(s) = 1/(1 − γ)`` (10 for γ = 0.9). A critic that treats truncation as
    termination learns the average over the episode of the discounted steps
    left, ``(1 − γ^(20−t))/(1 − γ)``, instead: about 6 for γ = 0.9.
    The two actions do nothing.
    """

    env_id = "ProbeConstantReward-v0"
    max_steps = 20

    def step_env(self, key, state, action, params):
        del key, action
        return self._transition(_state(state.time + 1), params, 1.0)


class ProbeTruncatedState(_Probe):
    """Two states that alternate, A → B → A → ...; truncated after 3 steps.

    Observation: one-hot of the state, ``A = [1, 0]``, ``B = [0, 1]``. The step
    from A pays +1, the step from B pays 0; actions do nothing; the episode
    never terminates and the time limit cuts it after 3 steps (A, B, A), so
    the final observation (B) differs from the reset one (A). Right answer
    (γ = 0.9): ``V(A) = 1/(1 − γ²) ≈ 5.26``, ``V(B) = γ/(1 − γ²) ≈ 4.74``.
    A critic that bootstraps the truncated step from the reset observation
    instead of the final one learns ``V(A) = 1/(1 − γ(1 + γ)/2) ≈ 6.9``; one
    that treats truncation as termination learns ``V(A) ≈ 1.7``. (With
    :class:`ProbeConstantReward` the two observations are the same, so only
    this probe catches the first mistake.)
    """

    env_id = "ProbeTruncatedState-v0"
    obs_dim = 2
    max_steps = 3

    def get_obs(self, state: ProbeState, params=None, key=None) -> Array:
        return jax.nn.one_hot(state.time % 2, 2, dtype=jnp.float32)

    def step_env(self, key, state, action, params):
        del key, action
        reward = (state.time % 2 == 0).astype(jnp.float32)
        return self._transition(_state(state.time + 1), params, reward)


@struct.dataclass
class ProbeContinuousParams(ProbeParams):
    target: float = 0.5


class ProbeContinuous(_Probe):
    """One step with a 1-D continuous action in ``Box(−1, 1)``.

    Observation ``[1]``; reward ``−(a − 0.5)²`` for the action ``a`` it is
    given; terminates after the step. Right answer: the Gaussian policy's mean
    → 0.5 and its standard deviation shrinks; ``V(s0) → −σ²`` (≈ 0 once σ is
    small). The env deliberately does not clip: actions sampled outside the box
    must be clipped by the caller (:func:`pgjax.envs.step` does), so a reward
    below ``−(−1 − 0.5)² = −2.25`` means an unclipped action reached the env.
    """

    env_id = "ProbeContinuous-v0"

    @property
    def default_params(self) -> ProbeContinuousParams:
        return ProbeContinuousParams(max_steps_in_episode=self.max_steps)

    def step_env(self, key, state, action, params):
        del key
        a = jnp.reshape(jnp.asarray(action, jnp.float32), (-1,))[0]
        reward = -jnp.square(a - params.target)
        return self._transition(_state(state.time + 1), params, reward)

    def is_terminated(self, state: ProbeState, params: ProbeParams) -> Array:
        return state.time >= 1

    @property
    def num_actions(self) -> int:
        return 1

    def action_space(self, params: ProbeParams | None = None) -> spaces.Box:
        return spaces.Box(-1.0, 1.0, (1,), jnp.float32)


class ProbeEqualReturn(_Probe):
    """Every policy's return is 2, but the episode's length depends on the action.

    At step 0, action 0 pays 2 and terminates the episode; action 1 pays 1 and
    leads to a second step, which pays 1 whatever the action and terminates.
    Observations (one-hot, 2 wide): ``[1, 0]`` at step 0, ``[0, 1]`` after.
    Right answer (γ = 1): ``J(θ) = 2`` for every policy, so the true gradient is
    exactly 0 and an unbiased estimator's mean is 0. An estimator that divides
    the batch's sum by its number of steps (a random count, 1 or 2 per episode)
    instead of its number of episodes is a ratio estimator: with one episode per
    batch its mean is ``−∇π(0|s0)``, not 0, as a short episode's terms get twice
    the weight of a long one's. With γ < 1, ``J_γ = 2π(0|s0) + (1 + γ)π(1|s0)``
    and ``∇J_γ = (1 − γ)∇π(0|s0)``.
    """

    env_id = "ProbeEqualReturn-v0"
    obs_dim = 2

    def get_obs(self, state: ProbeState, params=None, key=None) -> Array:
        return jax.nn.one_hot(jnp.minimum(state.time, 1), 2, dtype=jnp.float32)

    def step_env(self, key, state, action, params):
        del key
        first = jnp.where(
            state.time == 0, jnp.asarray(action, jnp.int32), state.first_action
        )
        reward = jnp.where((state.time == 0) & (first == 0), 2.0, 1.0)
        return self._transition(_state(state.time + 1, first), params, reward)

    def is_terminated(self, state: ProbeState, params: ProbeParams) -> Array:
        return ((state.time >= 1) & (state.first_action == 0)) | (state.time >= 2)


PROBES: dict[str, type[_Probe]] = {
    cls.env_id: cls
    for cls in (
        ProbeOneStep,
        ProbeTwoStep,
        ProbeConstantReward,
        ProbeTruncatedState,
        ProbeContinuous,
        ProbeEqualReturn,
    )
}


# Small MDPs with exact answers (pgjax.tabular), by id: each factory builds a
# tabular.TabularEnv.
TABULAR_ENVS = {"ShortCorridor-v0": tabular.short_corridor_env}


def register_probes() -> None:
    """Registers every probe and tabular env with gymnax; a second call does
    nothing."""
    for env_id, factory in {**PROBES, **TABULAR_ENVS}.items():
        if env_id not in gymnax.registered_envs:
            gymnax.register(env_id, factory)


register_probes()

__all__ = [
    "PROBES",
    "TABULAR_ENVS",
    "ProbeConstantReward",
    "ProbeContinuous",
    "ProbeEqualReturn",
    "ProbeOneStep",
    "ProbeTruncatedState",
    "ProbeTwoStep",
    "register_probes",
]
