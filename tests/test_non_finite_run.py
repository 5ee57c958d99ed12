"""A run whose training turns non-finite, end to end through the CLI.

The environment below pays a reward of 1 per step until its 60th step, then
NaN: the first update whose batch holds that step has non-finite advantages.
The run must stop there with one line naming the update (exit 1, no
traceback), keep metrics.csv up to the last good chunk, and leave its last
checkpoint loadable by scripts/evaluate.py.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

NAN_FROM_STEP = 60
NUM_STEPS = 8  # per update
UPDATES_PER_CHUNK = 2

ENV_SOURCE = f"""
import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import spaces

from pgjax import adapters, envs


@struct.dataclass
class Params:
    unused: int = 0


@struct.dataclass
class State:
    t: jax.Array


def reset(key, params):
    state = State(t=jnp.asarray(0, jnp.int32))
    return state.t.astype(jnp.float32)[None], state


def step(key, state, action, params):
    new = State(t=state.t + 1)
    reward = jnp.where(state.t >= {NAN_FROM_STEP}, jnp.nan, 1.0)
    return adapters.EnvStep(
        obs=new.t.astype(jnp.float32)[None] / 100.0,
        state=new,
        reward=reward.astype(jnp.float32),
        terminated=jnp.asarray(False),
    )


envs.register(
    "NanLater-v0",
    lambda: adapters.EnvAdapter(
        reset=reset,
        step=step,
        observation_space=spaces.Box(0.0, 10.0, (1,), jnp.float32),
        action_space=spaces.Discrete(2),
        max_episode_steps=1000,
        default_params=Params(),
    ),
)
"""


def _script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / name), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


def test_non_finite_training_stops_at_the_update_and_keeps_the_checkpoint(
    tmp_path,
):
    env_file = tmp_path / "nan_env.py"
    env_file.write_text(ENV_SOURCE)
    run_dir = tmp_path / "run"
    proc = _script(
        "train.py",
        *("--env", f"{env_file}:NanLater-v0", "--algo", "a2c"),
        *("--num-envs", "4", "--num-steps", str(NUM_STEPS)),
        *("--total-timesteps", "4000", "--checkpoint-every", str(UPDATES_PER_CHUNK)),
        *("--updates-per-chunk", str(UPDATES_PER_CHUNK)),
        *("--run-dir", str(run_dir), "--no-progress"),
    )
    # Steps 0-59 are finite: the NaN first enters update 8 (steps 56-63).
    bad_update = NAN_FROM_STEP // NUM_STEPS + 1
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "non-finite" in line]
    assert len(lines) == 1, proc.stderr
    assert f"at update {bad_update}:" in lines[0]

    # metrics.csv holds every update of the good chunks, and nothing after.
    with open(run_dir / "metrics.csv", newline="") as f:
        updates = [int(row["update"]) for row in csv.DictReader(f)]
    last_good = (bad_update - 1) // UPDATES_PER_CHUNK * UPDATES_PER_CHUNK
    assert updates == list(range(1, last_good + 1))
    assert not (run_dir / "summary.json").exists()

    # The newest checkpoint is the last good chunk's, and it loads and runs
    # (its episodes' returns are NaN: this environment pays NaN from step 60).
    proc = _script("evaluate.py", *("--run-dir", str(run_dir), "--episodes", "2"))
    assert proc.returncode == 0, proc.stderr
    assert f"checkpoint {last_good * NUM_STEPS * 4} " in proc.stdout, proc.stdout
