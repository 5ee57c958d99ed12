"""Tests of the brax adapter (pgjax.adapters.brax_adapter): brax/... ids.

brax compiles slowly on a CPU: the tests step one or two environments, and the
CLI run trains a tiny network for a few updates.
"""

from __future__ import annotations

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

from pgjax import adapters, cli, envs

ROOT = Path(__file__).resolve().parent.parent
PENDULUM = "brax/inverted_pendulum"
STEPS = 20  # a gentle constant push topples the pole within this


@pytest.fixture(scope="module")
def brax_envs():
    pytest.importorskip("brax")
    return adapters._brax_envs()


@pytest.fixture(scope="module")
def pendulum(brax_envs):
    return envs.make_env(PENDULUM)


def scan_steps(spec, actions, num_envs: int, seed: int = 0):
    """``[T, N]`` StepResults and obs after each step, for fixed actions, and
    the ``[T, N, 2]`` reset keys each step was given."""
    state = envs.reset(spec, jax.random.PRNGKey(seed), num_envs)
    step_keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(actions))

    def one(state, xs):
        action, key = xs
        new, result = envs.step(spec, state, action, key)
        return new, (result, new.obs)

    _, out = jax.jit(lambda s: jax.lax.scan(one, s, (actions, step_keys)))(state)
    # envs.step splits each key into the envs' step keys and reset keys.
    reset_keys = jax.vmap(lambda k: jax.random.split(k, (2, num_envs))[1])(step_keys)
    return state, jax.device_get(out), reset_keys


def brax_env(name: str):
    """brax's own environment, unwrapped, on the adapter's backend."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return adapters._brax_envs().get_environment(
            name, backend=adapters.BRAX_BACKEND
        )


def brax_rollout(env, key, actions):
    """brax's env.step in a Python loop: (obs, reward, done) per step,
    ``[T, ...]``, and the reset obs."""
    state = jax.jit(env.reset)(key)
    first = state.obs
    step = jax.jit(env.step)
    obs, reward, done = [], [], []
    for action in actions:
        state = step(state, action)
        obs.append(state.obs)
        reward.append(state.reward)
        done.append(state.done)
    return jax.device_get((jnp.stack(obs), jnp.stack(reward), jnp.stack(done), first))


def test_pendulum_spec(pendulum):
    assert pendulum.obs_shape == (4,)
    assert not pendulum.discrete and pendulum.action_shape == (1,)
    assert pendulum.action_low == (-1.0,) and pendulum.action_high == (1.0,)
    assert pendulum.max_episode_steps == 1000


def test_pendulum_steps_match_brax_itself(pendulum):
    """Pushing the cart gently one way topples the pole: pgjax's observations,
    rewards and termination equal brax's own env.step, step by step; the
    terminal step's observation (pole past 0.2 rad) reaches pgjax as its
    final_obs, and the next observation is a fresh reset's."""
    actions = jnp.full((STEPS, 1, 1), 0.1, jnp.float32)
    state, (result, obs), reset_keys = scan_steps(pendulum, actions, 1)
    env = brax_env("inverted_pendulum")
    key = jax.random.split(jax.random.PRNGKey(0), 1)[0]
    b_obs, b_reward, b_done, b_first = brax_rollout(env, key, actions[:, 0])
    np.testing.assert_allclose(state.obs[0], b_first, rtol=1e-6)

    end = int(np.argmax(b_done))  # brax's first terminal step
    assert b_done[end] == 1.0 and not b_done[:end].any() and 3 < end < STEPS - 1
    assert abs(b_obs[end, 1]) > 0.2 >= abs(b_obs[end - 1, 1])
    upto = slice(0, end + 1)
    np.testing.assert_allclose(result.final_obs[upto, 0], b_obs[upto], atol=1e-5)
    np.testing.assert_array_equal(result.reward[upto, 0], b_reward[upto])
    np.testing.assert_array_equal(result.terminated[upto, 0], b_done[upto] == 1)
    assert not result.truncated.any()
    assert result.completed_return[end, 0] == end + 1
    assert result.completed_length[end, 0] == end + 1

    # After the end: the observation is brax's reset with that step's key.
    reset_obs = jax.device_get(jax.jit(env.reset)(reset_keys[end, 0]).obs)
    np.testing.assert_allclose(obs[end, 0], reset_obs, rtol=1e-6)
    assert np.abs(obs[end, 0]).max() <= 0.01 < np.abs(result.final_obs[end, 0]).max()


def test_unknown_name_suggests_close_ids(brax_envs):
    with pytest.raises(
        adapters.AdapterError, match="did you mean brax/inverted_pendulum"
    ):
        envs.make_env("brax/inverted_pendulm")


def test_refused_backend_is_an_adapter_error(brax_envs):
    with pytest.raises(
        adapters.AdapterError, match=r"^brax/swimmer: Unsupported backend: spring"
    ):
        adapters.brax_adapter("swimmer", backend="spring")


def test_cli_missing_brax_names_its_extra(tmp_path, capsys, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "brax" else find_spec(name, *a),
    )
    run_dir = tmp_path / "run"
    code, out, err = run_main(
        lambda a: cli.train_main(a, start_time=time.time()),
        ["--env", "brax/hopper", "--run-dir", str(run_dir)],
        capsys,
    )
    assert_one_line_error(code, err, "--env")
    assert err.strip().endswith(
        "--env: 'brax/hopper' needs brax, which is not installed: "
        "pip install 'pgjax[brax]'"
    )
    assert out == "" and not run_dir.exists()


def test_cli_trains_a_few_updates(tmp_path, brax_envs):
    """A2C for 4 updates of 8 envs × 16 steps: every pendulum step earns 1,
    so each seed's eval_return is the mean length of 2 episodes: a multiple
    of 1/2 in [1, 1000]; the run's config keeps the id."""
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "train.py"),
            *("--env", PENDULUM, "--algo", "a2c", "--hidden", "16"),
            *("--num-envs", "8", "--num-steps", "16", "--total-timesteps", "512"),
            *("--eval-episodes", "2", "--run-dir", str(run_dir), "--no-progress"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "warp" not in proc.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    for value in summary["eval_return_per_seed"]:
        assert 1 <= value <= 1000 and 2 * value == int(2 * value), summary
    config = json.loads((run_dir / "config.json").read_text())
    assert config["env"] == PENDULUM and config["normalize_obs"] is True
