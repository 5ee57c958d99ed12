"""The same train.py run on 1, 2 and 4 devices, and resumed onto another count.

Each run is a train.py subprocess whose JAX has 4 CPU devices
(``--xla_force_host_platform_device_count``), of which ``--devices N`` uses
N: with 2 seeds, 2 devices split the seeds and 4 split seeds and envs. A seed's
run is defined by its config alone, so metrics.csv agrees to float tolerance
over the first updates (only the order of floating-point sums differs, which
can later flip a sampled action), and a run resumed on another device count
continues the same run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from run_metrics import assert_same_metrics, read_metrics

ROOT = Path(__file__).resolve().parent.parent

# A2C with a shuffled critic fit (2 epochs × 2 minibatches) and a KL estimate
# on a subset of the envs: everything that once depended on the device count.
FLAGS = [
    "--algo", "a2c",
    "--env", "CartPole-v1",
    "--num-envs", "16",
    "--num-steps", "8",
    "--num-seeds", "2",
    "--total-timesteps", "1024",
    "--updates-per-chunk", "2",
    "--hidden", "32",
    "--critic-epochs", "2",
    "--critic-minibatches", "2",
    "--kl-envs", "8",
    "--eval-episodes", "2",
    "--checkpoint-every", "4",
    "--no-anneal-lr",  # so that a run extended by a resume equals a straight one
    "--no-progress",
    "--compile-cache", "off",
]  # fmt: skip
# Updates compared (of 8 per seed): the first ones, before a flipped action
# from a differently rounded sum can send a seed down another path.
FIRST_UPDATES = 4


def train(run_dir: Path, devices: int, *extra: str) -> dict:
    environment = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
        JAX_PLATFORMS="cpu",
    )
    command = [sys.executable, "scripts/train.py", *FLAGS, "--run-dir", str(run_dir)]
    proc = subprocess.run(
        [*command, "--devices", str(devices), *extra],
        capture_output=True,
        text=True,
        env=environment,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("topology")
    summaries = {n: train(root / f"d{n}", n) for n in (1, 2, 4)}
    return root, summaries


def test_one_two_and_four_devices_give_the_same_run(runs):
    root, summaries = runs
    layouts = {n: (s["seed_shards"], s["env_shards"]) for n, s in summaries.items()}
    assert layouts == {1: (1, 1), 2: (2, 1), 4: (2, 2)}
    one = read_metrics(root / "d1")
    for n in (2, 4):
        assert_same_metrics(one, read_metrics(root / f"d{n}"), FIRST_UPDATES)


def test_resume_onto_another_device_count_continues_the_same_run(runs, tmp_path):
    root, _ = runs
    # Half the run on 4 devices, the rest on 1.
    train(tmp_path, 4, "--total-timesteps", "512")
    resumed = train(tmp_path, 1, "--resume", "--total-timesteps", "1024")
    assert resumed["resumed_from"] == 512
    assert (resumed["seed_shards"], resumed["env_shards"]) == (1, 1)
    straight = read_metrics(root / "d4")
    continued = read_metrics(tmp_path)
    # The resumed updates continue from the restored state: they match the
    # straight run on 4 devices to float tolerance (updates 5-6 right after
    # the resume point), as the first half does exactly.
    assert_same_metrics(straight, continued, updates=6)
