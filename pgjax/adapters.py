"""Bring-your-own JAX environments: the adapter interface, its checks, and suites.

An :class:`EnvAdapter` describes an environment by two pure functions, its
spaces and its time limit:

* ``reset(key, params) -> (obs, state)``;
* ``step(key, state, action, params) -> EnvStep(obs, state, reward,
  terminated)``: one transition, *without* auto-reset.

Termination and truncation are kept apart by construction. ``terminated``
comes from the environment alone; truncation is pgjax's time limit: the step
that reaches ``max_episode_steps`` is truncated unless it terminated (declare
the suite's own time limit there). pgjax resets an episode itself, after the
step that ended it (:class:`AdapterEnvironment`), so the ``obs`` a step
returns is always the true final observation of its episode: a truncated
episode bootstraps from ``V(obs)``, never from the first observation of the
next episode, and a terminated one does not bootstrap (Pardo et al. 2018,
*Time Limits in Reinforcement Learning*, https://arxiv.org/abs/1712.00378).
The time limit is the one truncation pgjax's learners take: they gather the
final observations of at most ``⌈T / max_episode_steps⌉`` truncations per env
in a rollout of ``T`` steps (``pgjax.algos.critic.next_state_values``).

:func:`check` traces one reset and one step with :func:`jax.eval_shape` and
raises :class:`AdapterError` naming the field that disagrees with the declared
spaces, before anything compiles.

Suites are reached by ``suite/name`` ids (:data:`SUITES`): ``navix/...`` and
``brax/...`` have adapters (:func:`navix_adapter`, extra ``pgjax[navix]``;
:func:`brax_adapter`, extra ``pgjax[brax]``); :func:`suite_adapter` says which
extra a missing suite needs. :func:`import_env_module` imports the
``module`` of a ``module:id`` environment id, which registers ``id``.

This module must not import :mod:`pgjax.envs` (which imports it).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import environment, spaces

Array = jax.Array


class AdapterError(ValueError):
    """An environment id or adapter that pgjax cannot use; the message names it."""


@struct.dataclass
class EnvStep:
    """What an adapter's ``step`` returns: one transition, before any reset.

    Attributes:
      obs: the observation reached, of the observation space's shape (any
        numeric dtype; pgjax casts it to float32).
      state: the new state, with the same structure, shapes and dtypes as the
        state ``reset`` returns.
      reward: scalar, float or int.
      terminated: scalar bool: a terminal state was reached (no bootstrap).
        Time limits are not terminal: pgjax truncates at ``max_episode_steps``.
    """

    obs: Array
    state: Any
    reward: Array
    terminated: Array


@dataclasses.dataclass(frozen=True)
class EnvAdapter:
    """An environment as pure functions (one env; pgjax vmaps them).

    Attributes:
      reset: ``(key, params) -> (obs, state)``; ``key`` is a raw ``uint32[2]``
        key.
      step: ``(key, state, action, params) -> EnvStep``; ``action`` is an int32
        scalar (``Discrete``) or float32 ``action_space.shape`` (``Box``,
        clipped to its bounds).
      observation_space: a gymnax ``spaces.Box``; observations reach the
        networks as float32 of its shape (3-D ones as images).
      action_space: a gymnax ``spaces.Discrete`` or ``spaces.Box`` (at least
        one dimension).
      max_episode_steps: the time limit: the step that reaches it is truncated.
      default_params: a pytree of arrays handed to ``reset`` and ``step``
        (traced: use it in ``jnp`` operations, not in Python control flow).
    """

    reset: Callable[[Array, Any], tuple[Array, Any]]
    step: Callable[[Array, Any, Array, Any], EnvStep]
    observation_space: spaces.Box
    action_space: spaces.Discrete | spaces.Box
    max_episode_steps: int
    default_params: Any = None


# ------------------------------------------------------------------ wrapping


@struct.dataclass
class AdapterState(environment.EnvState):
    """``time``: int32 steps of the episode so far; ``truncated``: whether the
    step that made this state cut the episode; ``inner``: the adapter's state."""

    truncated: Array
    inner: Any


class AdapterEnvironment(environment.Environment[AdapterState, Any]):
    """An :class:`EnvAdapter` as a gymnax environment, so the rollout steps it
    like any other (``pgjax.envs.step_with_keys``'s auto-reset path).

    gymnax's own ``step`` resets after any step whose ``step_env`` reports
    ``terminated`` or whose ``is_truncated`` holds, and keeps the stepped
    observation as ``info["final_observation"]``.
    """

    def __init__(self, env_id: str, adapter: EnvAdapter):
        super().__init__()
        self.env_id = env_id
        self.adapter = adapter

    @property
    def default_params(self) -> Any:
        return self.adapter.default_params

    def reset_env(self, key: Array, params: Any) -> tuple[Array, AdapterState]:
        obs, inner = self.adapter.reset(key, params)
        state = AdapterState(
            time=jnp.zeros((), jnp.int32),
            truncated=jnp.zeros((), jnp.bool_),
            inner=inner,
        )
        return jnp.asarray(obs, jnp.float32), state

    def step_env(
        self, key: Array, state: AdapterState, action: Array, params: Any
    ) -> tuple[Array, AdapterState, Array, Array, dict[str, Any]]:
        out = self.adapter.step(key, state.inner, action, params)
        time = state.time + 1
        terminated = jnp.asarray(out.terminated).astype(jnp.bool_)
        # A terminal state is not cut short, even on the last allowed step.
        truncated = (time >= self.adapter.max_episode_steps) & ~terminated
        new = AdapterState(time=time, truncated=truncated, inner=out.state)
        reward = jnp.asarray(out.reward, jnp.float32)
        return jnp.asarray(out.obs, jnp.float32), new, reward, terminated, {}

    def is_truncated(self, state: AdapterState, params: Any) -> Array:
        return state.truncated

    @property
    def name(self) -> str:
        return self.env_id

    @property
    def num_actions(self) -> int:
        space = self.adapter.action_space
        return int(space.n) if isinstance(space, spaces.Discrete) else 0

    def action_space(self, params: Any = None) -> spaces.Discrete | spaces.Box:
        return self.adapter.action_space

    def observation_space(self, params: Any = None) -> spaces.Box:
        return self.adapter.observation_space


# ------------------------------------------------------------------ checking


def check(env_id: str, adapter: Any) -> None:
    """Checks an adapter's declarations, then traces one reset and one step.

    Nothing runs: :func:`jax.eval_shape` traces ``reset`` and ``step`` with
    abstract inputs (a ``uint32[2]`` key, the action the policy will send) and
    compares what they return with the declared spaces.

    Raises:
      AdapterError: naming ``env_id`` and the field, e.g. ``"MyEnv-v0: step
        returned reward of shape (2,), expected ()"``.
    """
    _check_declarations(env_id, adapter)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    params = adapter.default_params
    reset_out = _trace(env_id, "reset", adapter.reset, key, params)
    if not (isinstance(reset_out, tuple) and len(reset_out) == 2):
        raise AdapterError(
            f"{env_id}: reset returned {_what(reset_out)}, expected a pair (obs, state)"
        )
    obs, state = reset_out
    obs_shape = tuple(adapter.observation_space.shape)
    _check_leaf(env_id, "reset", "obs", obs, obs_shape, "biuf", "a number")
    out = _trace(env_id, "step", adapter.step, key, state, _action(adapter), params)
    if not isinstance(out, EnvStep):
        raise AdapterError(
            f"{env_id}: step returned {_what(out)}, expected pgjax.adapters.EnvStep"
        )
    _check_leaf(env_id, "step", "obs", out.obs, obs_shape, "biuf", "a number")
    _check_leaf(env_id, "step", "reward", out.reward, (), "iuf", "a number")
    _check_leaf(env_id, "step", "terminated", out.terminated, (), "bi", "bool")
    _check_same_state(env_id, state, out.state)


def _check_declarations(env_id: str, adapter: Any) -> None:
    """The static half of :func:`check`: types, spaces and the time limit."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise AdapterError(f"{env_id}: {what}")

    need(
        isinstance(adapter, EnvAdapter),
        f"the registered factory returned {type(adapter).__name__}, expected "
        "pgjax.adapters.EnvAdapter",
    )
    need(
        callable(adapter.reset) and callable(adapter.step),
        "reset and step must be functions",
    )
    need(
        isinstance(adapter.observation_space, spaces.Box),
        f"observation_space must be a gymnax spaces.Box, got "
        f"{adapter.observation_space!r}",
    )
    space = adapter.action_space
    need(
        isinstance(space, (spaces.Discrete, spaces.Box)),
        f"action_space must be a gymnax spaces.Discrete or spaces.Box, got {space!r}",
    )
    need(
        not isinstance(space, spaces.Box) or len(tuple(space.shape)) >= 1,
        "a Box action_space needs at least one dimension, e.g. shape (1,)",
    )
    need(
        not isinstance(space, spaces.Discrete) or int(space.n) >= 1,
        "a Discrete action_space needs at least one action",
    )
    steps = adapter.max_episode_steps
    need(
        isinstance(steps, int) and not isinstance(steps, bool) and steps > 0,
        f"max_episode_steps must be a positive integer, got {steps!r}",
    )


def _action(adapter: EnvAdapter) -> jax.ShapeDtypeStruct:
    """The abstract action the policy sends: int32 ``()`` or float32 box."""
    space = adapter.action_space
    if isinstance(space, spaces.Discrete):
        return jax.ShapeDtypeStruct((), jnp.int32)
    return jax.ShapeDtypeStruct(tuple(space.shape), jnp.float32)


def _trace(env_id: str, what: str, fn: Callable, *args: Any) -> Any:
    """``jax.eval_shape(fn, *args)``; an error inside names the env and function."""
    try:
        return jax.eval_shape(fn, *args)
    except Exception as error:  # the user's code: any error, reported as theirs
        lines = str(error).strip().splitlines()
        detail = f": {lines[0]}" if lines else ""
        raise AdapterError(
            f"{env_id}: {what} failed when traced: {type(error).__name__}{detail}"
        ) from error


def _describe(x: Any) -> str:
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return f"shape {tuple(x.shape)} and dtype {jnp.dtype(x.dtype).name}"
    return f"type {type(x).__name__}"


def _what(x: Any) -> str:
    """A traced return value in words: an array by shape, else its type."""
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return f"an array of {_describe(x)}"
    return type(x).__name__


def _check_leaf(
    env_id: str,
    where: str,
    name: str,
    x: Any,
    shape: tuple[int, ...],
    kinds: str,
    kind_name: str,
) -> None:
    """One returned array: its shape is ``shape``, its dtype kind in ``kinds``."""
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):
        raise AdapterError(
            f"{env_id}: {where} returned {name} of {_describe(x)}, expected an "
            f"array of shape {shape}"
        )
    if tuple(x.shape) != shape:
        raise AdapterError(
            f"{env_id}: {where} returned {name} of shape {tuple(x.shape)}, "
            f"expected {shape}"
        )
    if jnp.dtype(x.dtype).kind not in kinds:
        raise AdapterError(
            f"{env_id}: {where} returned {name} of dtype "
            f"{jnp.dtype(x.dtype).name}, expected {kind_name}"
        )


def _check_same_state(env_id: str, reset_state: Any, step_state: Any) -> None:
    """Auto-reset selects leaf by leaf between the two states: they must agree."""
    ref, ref_tree = jax.tree_util.tree_flatten_with_path(reset_state)
    got, got_tree = jax.tree_util.tree_flatten_with_path(step_state)
    if ref_tree != got_tree:
        missing = sorted(
            {jax.tree_util.keystr(p) for p, _ in ref}
            ^ {jax.tree_util.keystr(p) for p, _ in got}
        )
        where = f" (at state{missing[0]})" if missing else ""
        raise AdapterError(
            f"{env_id}: step returned a state whose structure differs from "
            f"reset's{where}"
        )
    for (path, a), (_, b) in zip(ref, got, strict=True):
        same = (
            hasattr(b, "shape")
            and tuple(a.shape) == tuple(b.shape)
            and jnp.dtype(a.dtype) == jnp.dtype(b.dtype)
        )
        if not same:
            raise AdapterError(
                f"{env_id}: step returned state{jax.tree_util.keystr(path)} of "
                f"{_describe(b)}, expected {_describe(a)} as reset returns it"
            )


# ------------------------------------------------------------------ modules


_FILE_MODULES: dict[Path, ModuleType] = {}


def import_env_module(ref: str) -> ModuleType:
    """Imports the module of a ``module:id`` environment id (once per file).

    Args:
      ref: a file path (``examples/my_env.py``; anything ending in ``.py`` or
        holding a ``/``) or a dotted module name (``mypackage.envs``).

    Raises:
      AdapterError: when the module cannot be found or its import fails.
    """
    if ref.endswith(".py") or "/" in ref or "\\" in ref:
        return _import_file(Path(ref))
    try:
        return importlib.import_module(ref)
    except ModuleNotFoundError as error:
        if error.name and ref.startswith(error.name):
            raise AdapterError(f"no module named {ref!r}") from None
        raise AdapterError(f"importing {ref} failed: {error}") from error
    except Exception as error:  # the user's module: any error, reported as theirs
        raise AdapterError(
            f"importing {ref} failed: {type(error).__name__}: {error}"
        ) from error


def _import_file(path: Path) -> ModuleType:
    resolved = path.resolve()
    if resolved in _FILE_MODULES:
        return _FILE_MODULES[resolved]
    if not resolved.is_file():
        raise AdapterError(f"no file {str(path)!r}")
    # A unique name per file: two files may share a stem.
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:8]
    name = f"_pgjax_env_{resolved.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise AdapterError(f"cannot import {str(path)!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    # Registered before running: dataclasses look their module up by name.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # the user's module: any error, reported as theirs
        del sys.modules[name]
        raise AdapterError(
            f"importing {path} failed: {type(error).__name__}: {error}"
        ) from error
    _FILE_MODULES[resolved] = module
    return module


# ------------------------------------------------------------------ suites


def navix_adapter(name: str) -> EnvAdapter:
    """A navix grid world (``navix/Navix-Empty-5x5-v0``), as ``navix.make`` builds it.

    Observations are the suite's own (symbolic ``[H, W, 3]`` by default) as
    float32; the 7 MiniGrid actions; navix's ``max_steps`` as the time limit,
    where navix's own ``step_type`` turns to TRUNCATION. ``step`` is navix's
    transition without its auto-reset (``Environment._step``: the public
    ``step`` resets one call late, on the call after the episode ended,
    ignoring that call's action, and under ``vmap`` computes a reset on every
    call); ``terminated`` is its ``step_type`` TERMINATION.
    """
    import navix

    if name not in navix.registry():
        close = difflib.get_close_matches(name, list(navix.registry()), n=3, cutoff=0.3)
        hint = f"; did you mean {', '.join('navix/' + c for c in close)}?"
        raise AdapterError(
            f"unknown navix environment 'navix/{name}'{hint if close else ''}"
        )
    env = navix.make(name)
    obs = env.observation_space

    def reset(key: Array, params: Any) -> tuple[Array, Any]:
        timestep = env.reset(key)
        return timestep.observation, timestep

    def step(key: Array, state: Any, action: Array, params: Any) -> EnvStep:
        timestep = env._step(state, action)
        return EnvStep(
            obs=timestep.observation,
            state=timestep,
            reward=timestep.reward,
            terminated=timestep.is_termination(),
        )

    return EnvAdapter(
        reset=reset,
        step=step,
        observation_space=spaces.Box(
            float(obs.minimum), float(obs.maximum), tuple(obs.shape), jnp.float32
        ),
        action_space=spaces.Discrete(int(env.action_space.maximum) + 1),
        max_episode_steps=int(env.max_steps),
    )


# brax's physics pipeline: its environments' own default, and the cheapest on
# a CPU of those that keep inverted_pendulum learnable (docs/environments.md
# has the measurements): "positional" and "mjx" step it 2-4× slower, and
# "spring", though 1.5-2× faster, softens its dynamics so much that A2C stays
# short of 1000 after 3 M steps where "generalized" reaches it in 0.2 M.
# brax_adapter's backend argument takes any of them (swimmer takes only this).
BRAX_BACKEND = "generalized"
# brax.envs.create's default episode_length: the time limit of its training.
BRAX_EPISODE_LENGTH = 1000


def _brax_envs() -> ModuleType:
    """``brax.envs``, imported with stdout silenced: mujoco.mjx prints "Failed
    to import warp" there when the optional warp package is absent, which
    would land in the CLI's output."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        from brax import envs
    return envs


def brax_adapter(name: str, backend: str = BRAX_BACKEND) -> EnvAdapter:
    """A brax environment (``brax/inverted_pendulum``), without brax's wrappers.

    ``brax.envs.get_environment(name, backend=backend)``, stepped as it is:
    brax's ``AutoResetWrapper`` returns the first observation of the next
    episode in place of the final one, and its ``EpisodeWrapper`` folds the
    time limit into ``done``. Here brax's ``State.done`` is termination only,
    the time limit is :data:`BRAX_EPISODE_LENGTH` steps, actions are
    ``Box(-1, 1, (action_size,))`` (each environment scales them to its
    actuators) and observations float32 ``(observation_size,)``.

    Args:
      name: a ``brax.envs`` name: ``inverted_pendulum``, ``hopper``, ``ant``, ...
      backend: the physics pipeline: ``generalized`` (:data:`BRAX_BACKEND`),
        ``positional``, ``spring`` or ``mjx``.

    Raises:
      AdapterError: for an unknown name (with the closest ones) or a backend
        the environment refuses.
    """
    import warnings

    brax_envs = _brax_envs()
    names = sorted(brax_envs._envs)  # brax's registry; no public listing
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.3)
        hint = f"; did you mean {', '.join('brax/' + c for c in close)}?"
        raise AdapterError(
            f"unknown brax environment 'brax/{name}'{hint if close else ''}"
        )
    with warnings.catch_warnings():
        # brax.io.mjcf warns on every model load that brax's pipelines are no
        # longer maintained (docs/environments.md says so once).
        warnings.filterwarnings("ignore", "Brax System", UserWarning)
        try:
            env = brax_envs.get_environment(name, backend=backend)
        except ValueError as error:  # a backend this environment refuses
            raise AdapterError(f"brax/{name}: {error}") from None

    # brax's states hold Python numbers in places (inverted_pendulum's reward
    # of 1.0, hopper's healthy reward in its metrics): reset's become arrays,
    # and a step's leaves keep reset's dtypes, so auto-reset selects like for
    # like.
    def reset(key: Array, params: Any) -> tuple[Array, Any]:
        state = env.reset(key)
        state = jax.tree.map(lambda x: jnp.asarray(x, jnp.result_type(x)), state)
        return state.obs, state

    def step(key: Array, state: Any, action: Array, params: Any) -> EnvStep:
        # A copy for brax: its steps update state.metrics in place.
        stepped = env.step(jax.tree.map(lambda x: x, state), action)
        stepped = jax.tree.map(lambda a, b: jnp.asarray(b, a.dtype), state, stepped)
        return EnvStep(
            obs=stepped.obs,
            state=stepped,
            reward=stepped.reward,
            terminated=stepped.done != 0,
        )

    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    obs = jax.eval_shape(reset, key, None)[0]
    return EnvAdapter(
        reset=reset,
        step=step,
        observation_space=spaces.Box(-jnp.inf, jnp.inf, tuple(obs.shape), jnp.float32),
        action_space=spaces.Box(-1.0, 1.0, (env.action_size,), jnp.float32),
        max_episode_steps=BRAX_EPISODE_LENGTH,
    )


@dataclasses.dataclass(frozen=True)
class Suite:
    """A JAX environment suite reached by ``name/...`` ids.

    Attributes:
      package: its import name.
      make: ``name -> EnvAdapter``; None while pgjax has no adapter for it.
    """

    package: str
    make: Callable[[str], EnvAdapter] | None = None


SUITES: dict[str, Suite] = {
    "navix": Suite("navix", navix_adapter),
    "brax": Suite("brax", brax_adapter),
    "jumanji": Suite("jumanji"),
    "craftax": Suite("craftax"),
    "xminigrid": Suite("xminigrid"),
}


def suite_adapter(env_id: str) -> EnvAdapter | None:
    """The adapter of a ``suite/name`` id; None when ``env_id`` names no suite.

    Raises:
      AdapterError: when the suite has no adapter or is not installed (the
        message names the extra that installs it), or has no such environment.
    """
    prefix, _, name = env_id.partition("/")
    suite = SUITES.get(prefix)
    if suite is None or not name:
        return None
    if suite.make is None:
        adapted = ", ".join(f"{s}/" for s, v in SUITES.items() if v.make is not None)
        raise AdapterError(
            f"{env_id!r}: pgjax has no {prefix} adapter (suites with one: "
            f"{adapted}); wrap the environment in a pgjax.adapters.EnvAdapter and "
            "register it (docs/environments.md)"
        )
    if importlib.util.find_spec(suite.package) is None:
        raise AdapterError(
            f"{env_id!r} needs {prefix}, which is not installed: "
            f"pip install 'pgjax[{prefix}]'"
        )
    return suite.make(name)


__all__ = [
    "BRAX_BACKEND",
    "BRAX_EPISODE_LENGTH",
    "SUITES",
    "AdapterEnvironment",
    "AdapterError",
    "AdapterState",
    "EnvAdapter",
    "EnvStep",
    "Suite",
    "brax_adapter",
    "check",
    "import_env_module",
    "navix_adapter",
    "suite_adapter",
]
