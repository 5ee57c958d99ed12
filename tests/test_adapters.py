"""Tests of user environments (pgjax.adapters, pgjax.envs.register) and suites."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_one_line_error, run_main
from gymnax.environments import spaces

from pgjax import adapters, cli, envs, rollout
from pgjax.algos import critic
from pgjax.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "my_env.py"
REACH = f"{EXAMPLE}:MyReach-v0"
LIMIT = 20  # examples/my_env.py's MAX_STEPS
START = 3  # its default start_distance


def _load_example():
    """examples/my_env.py as a module of its own (it registers MyReach-v0 in
    the registry the tests start from)."""
    spec = importlib.util.spec_from_file_location("pgjax_example_my_env", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


MY_ENV = _load_example()


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch):
    """Each test registers into, and imports files for, its own registry."""
    monkeypatch.setattr(envs, "_REGISTRY", {})
    monkeypatch.setattr(adapters, "_FILE_MODULES", {})


def reach_adapter() -> adapters.EnvAdapter:
    return MY_ENV.make_reach()


def register_variant(env_id: str, **changes) -> str:
    """Registers the example's adapter with ``changes``; returns ``env_id``."""
    adapter = dataclasses.replace(reach_adapter(), **changes)
    envs.register(env_id, lambda: adapter)
    return env_id


def scan_steps(spec, actions, num_envs: int, seed: int = 0):
    """``[T, N]`` StepResults and obs after each step, for fixed actions."""
    state = envs.reset(spec, jax.random.PRNGKey(seed), num_envs)

    def one(state, xs):
        action, key = xs
        new, result = envs.step(spec, state, action, key)
        return new, (result, new.obs)

    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(actions))
    _, out = jax.jit(lambda s: jax.lax.scan(one, s, (actions, keys)))(state)
    return state, jax.device_get(out)


# ------------------------------------------------------------------ the example


def test_example_spec():
    spec = envs.make_env(REACH)
    assert spec.env_id == REACH
    assert spec.obs_shape == (1,)
    assert spec.discrete and spec.num_actions == 2 and spec.action_shape == ()
    assert spec.max_episode_steps == LIMIT


def test_example_steps_match_a_python_loop():
    """Always left: +3 terminates after 3 steps (return -3); -3 walks away and is
    truncated at step 20 with final observation -23; resets restart at ±3."""
    spec = envs.make_env(REACH)
    num_envs, steps = 4, 45
    state, (result, obs) = scan_steps(
        spec, jnp.zeros((steps, num_envs), jnp.int32), num_envs
    )
    for env in range(num_envs):
        position, t, ret = float(state.obs[env, 0]), 0, 0.0
        for step in range(steps):
            position, t, ret = position - 1, t + 1, ret - 1
            terminated = position == 0
            truncated = t == LIMIT and not terminated
            assert result.reward[step, env] == -1.0
            assert result.terminated[step, env] == terminated, (env, step)
            assert result.truncated[step, env] == truncated, (env, step)
            assert result.final_obs[step, env, 0] == position
            done = terminated or truncated
            assert result.completed_return[step, env] == (ret if done else 0.0)
            assert result.completed_length[step, env] == (t if done else 0)
            if done:
                position, t, ret = float(obs[step, env, 0]), 0, 0.0
                assert abs(position) == START
            else:
                assert obs[step, env, 0] == position
    assert result.truncated.any() and result.terminated.any()


def test_truncated_final_observation_reaches_the_critic():
    """V(obs) = obs: a truncated step's bootstrap value is V(-23) of its true
    final observation, not V(±3) of the reset observation in the next row."""
    spec = envs.make_env(REACH)
    num_envs, steps = 8, 2 * LIMIT + 4
    state = envs.reset(spec, jax.random.PRNGKey(3), num_envs)

    def always_left(obs, key):
        return jnp.zeros(obs.shape[0], jnp.int32), jnp.zeros(obs.shape[0])

    _, batch = jax.jit(
        lambda s, k: rollout.collect_steps(spec, always_left, s, k, steps)
    )(state, jax.random.PRNGKey(4))
    truncated = np.asarray(batch.truncated)
    assert truncated.sum() > 0
    next_obs = np.asarray(batch.next_obs[..., 0])
    np.testing.assert_array_equal(next_obs[truncated], -START - LIMIT)
    rows, cols = np.nonzero(truncated[:-1])
    np.testing.assert_array_equal(np.abs(batch.obs[rows + 1, cols, 0]), START)

    def value_fn(obs):
        return obs[..., 0]

    values = value_fn(batch.obs)
    next_values = critic.next_state_values(
        value_fn, batch, values, spec.max_episode_steps
    )
    expected = np.where(truncated, next_obs, np.roll(np.asarray(values), -1, axis=0))
    expected[-1] = next_obs[-1]
    np.testing.assert_array_equal(np.asarray(next_values), expected)


def test_termination_on_the_last_allowed_step_is_not_truncation():
    env_id = register_variant(
        "Reach20-v0",
        default_params=dataclasses.replace(
            reach_adapter().default_params, **{"start_distance": LIMIT}
        ),
    )
    spec = envs.make_env(env_id)
    state = envs.reset(spec, jax.random.PRNGKey(0), 2)
    # Towards the origin: right from the left side, left from the right side.
    actions = jnp.broadcast_to((state.obs[:, 0] < 0).astype(jnp.int32), (LIMIT, 2))
    _, (result, _) = scan_steps(spec, actions, 2)
    assert result.terminated[-1].all() and not result.truncated.any()
    assert not result.terminated[:-1].any()
    np.testing.assert_array_equal(result.completed_return[-1], -LIMIT)


def test_cli_trains_the_example_to_its_optimum(tmp_path):
    """Walking straight to the origin returns -3: the mode policy finds it."""
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "train.py"),
            *("--env", "examples/my_env.py:MyReach-v0", "--algo", "a2c"),
            *("--num-envs", "64", "--num-steps", "8", "--total-timesteps", "20000"),
            *("--run-dir", str(run_dir), "--no-progress"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["eval_return"] == -float(START)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["env"] == "examples/my_env.py:MyReach-v0"


def test_default_run_dir_names_the_env_only():
    for env, name in [
        ("examples/my_env.py:MyReach-v0", "a2c-MyReach-v0-"),
        ("mypackage.envs:MyReach-v0", "a2c-MyReach-v0-"),
        ("navix/Navix-Empty-5x5-v0", "a2c-navix-Navix-Empty-5x5-v0-"),
    ]:
        path = cli.default_run_dir(TrainConfig(algo="a2c", env=env))
        assert path.parent == Path("runs") and path.name.startswith(name), path


# ------------------------------------------------------------------ checks


def _reset_obs_2(key, params):
    obs, state = reach_adapter().reset(key, params)
    return jnp.concatenate([obs, obs]), state


def _step_with(**fields):
    def step(key, state, action, params):
        out = reach_adapter().step(key, state, action, params)
        return out.replace(**{k: f(out) for k, f in fields.items()})

    return step


def _reset_python_if(key, params):
    if params.start_distance > 2:  # Python control flow on a traced value
        pass
    return reach_adapter().reset(key, params)


BAD_ADAPTERS = [
    (
        dict(step=_step_with(reward=lambda o: jnp.full((2,), -1.0))),
        "Bad-v0: step returned reward of shape (2,), expected ()",
    ),
    (
        dict(reset=_reset_obs_2),
        "Bad-v0: reset returned obs of shape (2,), expected (1,)",
    ),
    (
        dict(step=_step_with(obs=lambda o: o.obs[None])),
        "Bad-v0: step returned obs of shape (1, 1), expected (1,)",
    ),
    (
        dict(step=_step_with(terminated=lambda o: o.terminated.astype(jnp.float32))),
        "Bad-v0: step returned terminated of dtype float32, expected bool",
    ),
    (
        dict(step=_step_with(terminated=lambda o: o.terminated[None])),
        "Bad-v0: step returned terminated of shape (1,), expected ()",
    ),
    (
        dict(
            step=_step_with(
                state=lambda o: o.state.replace(
                    position=o.state.position.astype(jnp.float32)
                )
            )
        ),
        "Bad-v0: step returned state.position of shape () and dtype float32, "
        "expected shape () and dtype int32 as reset returns it",
    ),
    (
        dict(step=_step_with(state=lambda o: {"position": o.state.position})),
        "Bad-v0: step returned a state whose structure differs from reset's",
    ),
    (
        dict(step=lambda k, s, a, p: (s.position, s)),
        "Bad-v0: step returned tuple, expected pgjax.adapters.EnvStep",
    ),
    (
        dict(reset=lambda k, p: jnp.zeros((1,))),
        "Bad-v0: reset returned an array of shape (1,) and dtype float32, "
        "expected a pair (obs, state)",
    ),
    (
        dict(reset=_reset_python_if),
        "Bad-v0: reset failed when traced: TracerBoolConversionError: ",
    ),
    (
        dict(observation_space=spaces.Discrete(3)),
        "Bad-v0: observation_space must be a gymnax spaces.Box, got Discrete(3",
    ),
    (
        dict(action_space=spaces.Box(-1.0, 1.0, ())),
        "Bad-v0: a Box action_space needs at least one dimension, e.g. shape (1,)",
    ),
    (
        dict(max_episode_steps=0),
        "Bad-v0: max_episode_steps must be a positive integer, got 0",
    ),
]


@pytest.mark.parametrize(
    "changes, message", BAD_ADAPTERS, ids=[m for _, m in BAD_ADAPTERS]
)
def test_malformed_adapter_fails_naming_the_field(changes, message):
    register_variant("Bad-v0", **changes)
    with pytest.raises(adapters.AdapterError) as error:
        envs.make_env("Bad-v0")
    assert str(error.value).startswith(message), str(error.value)


def test_factory_must_return_an_adapter():
    envs.register("Bad-v0", lambda: {"reset": None})
    with pytest.raises(
        ValueError,
        match=r"^Bad-v0: the registered factory "
        r"returned dict, expected pgjax.adapters.EnvAdapter$",
    ):
        envs.make_env("Bad-v0")


@pytest.mark.parametrize(
    "env_id, error, message",
    [
        ("CartPole-v1", ValueError, "'CartPole-v1' is a gymnax environment"),
        ("a:b", ValueError, "without ':'"),
        ("", ValueError, "non-empty"),
        ("navix/Mine-v0", ValueError, "ids starting with a suite's name are taken"),
    ],
)
def test_register_refuses_taken_or_malformed_ids(env_id, error, message):
    with pytest.raises(error, match=message):
        envs.register(env_id, reach_adapter)


def test_register_refuses_a_non_callable_factory():
    with pytest.raises(TypeError, match="must be callable"):
        envs.register("Mine-v0", 3)


def test_register_again_replaces_and_lists_the_id():
    envs.register("Mine-v0", lambda: 1)
    envs.register("Mine-v0", reach_adapter)
    assert envs.make_env("Mine-v0").max_episode_steps == LIMIT
    assert envs.env_ids()[-1] == "Mine-v0" and "CartPole-v1" in envs.env_ids()


# ------------------------------------------------------------------ modules


def test_dotted_module_is_imported_and_registers(tmp_path, monkeypatch):
    (tmp_path / "pgjax_test_user_envs.py").write_text(
        "from pgjax import envs\n"
        f"import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('ex', {str(EXAMPLE)!r})\n"
        "ex = importlib.util.module_from_spec(spec)\n"
        "sys.modules['ex'] = ex\n"
        "spec.loader.exec_module(ex)\n"
        "envs.register('Dotted-v0', ex.make_reach)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "pgjax_test_user_envs", raising=False)
    monkeypatch.delitem(sys.modules, "ex", raising=False)
    spec = envs.make_env("pgjax_test_user_envs:Dotted-v0")
    assert spec.env_id == "pgjax_test_user_envs:Dotted-v0"
    assert spec.max_episode_steps == LIMIT
    monkeypatch.delitem(sys.modules, "pgjax_test_user_envs")


def test_file_is_imported_once():
    envs.make_env(REACH)
    module = adapters._FILE_MODULES[EXAMPLE.resolve()]
    envs.make_env(REACH)
    assert adapters._FILE_MODULES[EXAMPLE.resolve()] is module


@pytest.mark.parametrize(
    "source, env, message",
    [
        (None, "missing_dir/none.py:X-v0", "no file 'missing_dir/none.py'"),
        (None, "pgjax_no_such_module:X-v0", "no module named 'pgjax_no_such_module'"),
        (
            "raise RuntimeError('boom')\n",
            "{path}:X-v0",
            "importing {path} failed: RuntimeError: boom",
        ),
        (
            f"exec(open({str(EXAMPLE)!r}).read())\n",
            "{path}:MyReach-v1",
            "{path} registered no environment 'MyReach-v1'; did you mean MyReach-v0?",
        ),
    ],
)
def test_bad_module_ids(source, env, message, tmp_path):
    path = tmp_path / "user_env.py"
    if source is not None:
        path.write_text(source)
    with pytest.raises(adapters.AdapterError) as error:
        envs.make_env(env.format(path=path))
    assert str(error.value) == message.format(path=path)


# ------------------------------------------------------------------ CLI


def call_main(argv: list[str], capsys, tmp_path) -> tuple[int, str, str]:
    run_dir = tmp_path / "run"
    tiny = ["--num-envs", "8", "--num-steps", "4", "--run-dir", str(run_dir)]
    code, out, err = run_main(
        lambda a: cli.train_main([*tiny, *a], start_time=time.time()), argv, capsys
    )
    assert not run_dir.exists()
    return code, out, err


def test_cli_malformed_adapter_is_one_line_naming_env(tmp_path, capsys):
    path = tmp_path / "bad_env.py"
    path.write_text(
        f"exec(open({str(EXAMPLE)!r}).read())\n"
        "import dataclasses\n"
        "def bad_step(key, state, action, params):\n"
        "    return step(key, state, action, params).replace(\n"
        "        reward=jnp.zeros((2,)))\n"
        "envs.register('BadReach-v0', lambda: dataclasses.replace(\n"
        "    make_reach(), step=bad_step))\n"
    )
    code, out, err = call_main(["--env", f"{path}:BadReach-v0"], capsys, tmp_path)
    assert_one_line_error(code, err, "--env")
    assert err.strip().endswith(
        "--env: BadReach-v0: step returned reward of shape (2,), expected ()"
    )
    assert out == ""


@pytest.mark.parametrize(
    "env, message",
    [
        ("jumanji/Snake-v1", "'jumanji/Snake-v1': pgjax has no jumanji adapter"),
        ("xminigrid/MiniGrid-Empty-5x5", "pgjax has no xminigrid adapter"),
        ("missing.py:X-v0", "no file 'missing.py'"),
    ],
)
def test_cli_unusable_env_ids_are_one_line(env, message, tmp_path, capsys):
    code, _, err = call_main(["--env", env], capsys, tmp_path)
    assert_one_line_error(code, err, "--env")
    assert message in err


def test_cli_missing_suite_names_its_extra(tmp_path, capsys, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "navix" else find_spec(name, *a),
    )
    code, _, err = call_main(["--env", "navix/Navix-Empty-5x5-v0"], capsys, tmp_path)
    assert_one_line_error(code, err, "--env")
    assert err.strip().endswith(
        "--env: 'navix/Navix-Empty-5x5-v0' needs navix, which is not installed: "
        "pip install 'pgjax[navix]'"
    )


# ------------------------------------------------------------------ navix


def test_navix_steps_match_navix_itself():
    """Reaching the goal of Navix-Empty-5x5 (forward, forward, right, forward,
    forward), then turning left until the time limit: pgjax's rewards,
    termination, truncation and final observations equal navix's own
    auto-resetting step, which marks the end one call before it resets."""
    navix = pytest.importorskip("navix")
    spec = envs.make_env("navix/Navix-Empty-5x5-v0")
    assert spec.obs_shape == (5, 5, 3) and spec.num_actions == 7
    assert spec.max_episode_steps == 100
    first = [2, 2, 1, 2, 2]
    actions = jnp.asarray(first + [0] * 100, jnp.int32)
    state, (result, obs) = scan_steps(spec, actions[:, None], 1)

    env = navix.make("Navix-Empty-5x5-v0")
    keys = jax.random.split(jax.random.PRNGKey(0), 1)
    timestep = env.reset(keys[0])
    np.testing.assert_array_equal(state.obs[0], timestep.observation)
    # navix's public step: the step after an ending one resets (action unused).

    def navix_step(timestep, action):
        timestep = env.step(timestep, action)
        return timestep, (timestep.step_type, timestep.reward, timestep.observation)

    navix_actions = jnp.asarray(first + [0] + [0] * 100, jnp.int32)
    _, (step_type, reward, observation) = jax.device_get(
        jax.jit(lambda t: jax.lax.scan(navix_step, t, navix_actions))(timestep)
    )
    # Terminal after 5 steps, truncated after 100 more.
    assert np.nonzero(step_type)[0].tolist() == [4, 105]
    assert step_type[4] == 2 and step_type[105] == 1  # TERMINATION, TRUNCATION
    kept = np.r_[0:5, 6:106]  # without the call that only resets
    np.testing.assert_array_equal(result.reward[:, 0], reward[kept])
    np.testing.assert_array_equal(result.terminated[:, 0], step_type[kept] == 2)
    np.testing.assert_array_equal(result.truncated[:, 0], step_type[kept] == 1)
    np.testing.assert_array_equal(result.final_obs[:, 0], observation[kept])
    # After each end, pgjax's next observation is the start again.
    np.testing.assert_array_equal(obs[4, 0], state.obs[0])
    np.testing.assert_array_equal(obs[104, 0], state.obs[0])
    assert result.completed_return[4, 0] == 1.0
    assert result.completed_length[104, 0] == 100


def test_navix_unknown_name_suggests_close_ids():
    pytest.importorskip("navix")
    with pytest.raises(adapters.AdapterError, match="did you mean navix/Navix-Empty"):
        envs.make_env("navix/Navix-Empty-5x5")
