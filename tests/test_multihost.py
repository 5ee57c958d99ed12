"""train.py as several processes over localhost (jax.distributed, gloo).

JAX's CPU collectives make a multi-host run testable on one machine: each
process is a "host" with its own CPU device(s), joined through
``--coordinator``. The same tiny run is trained as 1 process × 1 device,
1 process × 2 devices and 2 processes × 1 device each (its envs split across
the processes), and gives the same metrics and final parameters; a run whose
process 1 is killed ends process 0 too, within the cluster timeout, and leaves
its last checkpoint loadable; a 2-process run resumes on 1 process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from multiprocess import free_port, process_env, run_processes
from run_metrics import assert_same_metrics, read_metrics

from pgjax import runner
from pgjax.checkpoints import Checkpointer
from pgjax.train import make_train

ROOT = Path(__file__).resolve().parent.parent

# One seed, so that 2 processes split its envs: every update all-reduces
# across the processes (the harder case; seeds would need no collectives).
FLAGS = [
    "scripts/train.py",
    "--algo", "a2c",
    "--env", "CartPole-v1",
    "--num-envs", "16",
    "--num-steps", "8",
    "--num-seeds", "1",
    "--total-timesteps", "1024",
    "--updates-per-chunk", "2",
    "--hidden", "32",
    "--critic-epochs", "2",
    "--critic-minibatches", "2",
    "--kl-envs", "8",
    "--eval-episodes", "4",
    "--checkpoint-every", "4",
    "--no-anneal-lr",
    "--no-progress",
    "--compile-cache", "off",
    "--cluster-timeout", "20",
]  # fmt: skip
FIRST_UPDATES = 4


def cluster_argvs(run_dir: Path, processes: int, *extra: str) -> list[list[str]]:
    cluster = ["--coordinator", f"127.0.0.1:{free_port()}"]
    cluster += ["--num-processes", str(processes)]
    command = [sys.executable, *FLAGS, "--run-dir", str(run_dir), *extra, *cluster]
    return [[*command, "--process-id", str(i)] for i in range(processes)]


def train_cluster(run_dir: Path, processes: int, *extra: str) -> None:
    results = run_processes(
        cluster_argvs(run_dir, processes, *extra),
        devices_per_process=1,
        timeout_s=240,
        cwd=ROOT,
    )
    for result in results:
        assert result.returncode == 0, result.describe()


def train_single(run_dir: Path, devices: int, *extra: str) -> None:
    (result,) = run_processes(
        [[sys.executable, *FLAGS, "--run-dir", str(run_dir), *extra]],
        devices_per_process=devices,
        timeout_s=240,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.describe()


def final_actor(run_dir: Path) -> list[np.ndarray]:
    """The actor's parameters at the run's newest checkpoint."""
    config, sweep = runner.load_run_config(run_dir)
    trainer = make_train(config)
    abstract = runner.abstract_state(trainer, runner.make_layout(config, sweep))
    with Checkpointer(run_dir, read_only=True) as checkpointer:
        state, _, _ = checkpointer.restore(abstract)
    return [np.asarray(x) for x in jax.tree.leaves(state.agent.actor)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("multihost")
    train_cluster(root / "p2", 2)
    train_single(root / "d1", 1)
    train_single(root / "d2", 2)
    return root


def test_two_processes_train_the_run_of_one(runs):
    summaries = {
        name: json.loads((runs / name / "summary.json").read_text())
        for name in ("p2", "d1", "d2")
    }
    assert summaries["p2"]["processes"] == 2
    assert (summaries["p2"]["devices"], summaries["p2"]["env_shards"]) == (2, 2)
    assert (summaries["d2"]["processes"], summaries["d2"]["env_shards"]) == (1, 2)
    one = read_metrics(runs / "d1")
    for name in ("p2", "d2"):
        assert_same_metrics(one, read_metrics(runs / name), FIRST_UPDATES)
    # Process 0 alone wrote the folder, complete.
    for name in ("config.json", "summary.json", "learning_curve.png"):
        assert (runs / "p2" / name).is_file()


def test_two_processes_end_with_the_parameters_of_one(runs):
    # Training runs 8 updates: later than FIRST_UPDATES a differently rounded
    # sum may flip a sampled action, but on this tiny run none does.
    for a, b in zip(final_actor(runs / "d1"), final_actor(runs / "p2"), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_a_two_process_run_resumes_on_one_process(runs, tmp_path):
    train_cluster(tmp_path, 2, "--total-timesteps", "512")
    train_single(tmp_path, 1, "--resume", "--total-timesteps", "1024")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["resumed_from"] == 512 and summary["processes"] == 1
    assert_same_metrics(read_metrics(runs / "p2"), read_metrics(tmp_path), updates=6)


def start_cluster(argvs: list[list[str]]) -> list[subprocess.Popen]:
    """The processes of ``argvs`` started side by side, each in its own
    session (so that a test can kill one, or all)."""
    return [
        subprocess.Popen(
            argv,
            cwd=ROOT,
            env=process_env(1),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for argv in argvs
    ]


def wait_until(ready, procs: list[subprocess.Popen], seconds: float = 180) -> None:
    """Waits for ``ready()`` while process 0 runs (fails if it ends first)."""
    deadline = time.time() + seconds
    while not ready():
        assert procs[0].poll() is None, procs[0].stderr.read()[-3000:]
        assert time.time() < deadline, f"not ready within {seconds} s"
        time.sleep(0.2)


def stop_all(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_killed_process_ends_the_other_and_keeps_the_last_checkpoint(tmp_path):
    timeout = 5
    argvs = cluster_argvs(
        tmp_path,
        2,
        "--total-timesteps", "10000000",
        "--checkpoint-every", "2",
        "--cluster-timeout", str(timeout),
    )  # fmt: skip
    procs = start_cluster(argvs)
    checkpoints = tmp_path / "checkpoints"
    try:
        # Once training has written a checkpoint, kill process 1.
        wait_until(
            lambda: (
                checkpoints.is_dir()
                and any(p.name.isdigit() for p in checkpoints.iterdir())
            ),
            procs,
        )
        os.kill(procs[1].pid, signal.SIGKILL)
        killed = time.time()
        code = procs[0].wait(timeout=timeout + 60)
        ended_after = time.time() - killed
    finally:
        stop_all(procs)
    assert code != 0
    assert ended_after < timeout + 30
    # The last complete checkpoint of the run is still there and loadable.
    assert final_actor(tmp_path)


def test_ctrl_c_on_one_process_stops_every_process_with_a_checkpoint(tmp_path):
    argvs = cluster_argvs(tmp_path, 2, "--total-timesteps", "10000000")
    procs = start_cluster(argvs)
    try:
        wait_until(lambda: (tmp_path / "metrics.csv").is_file(), procs)
        time.sleep(1.0)  # well into training
        os.kill(procs[1].pid, signal.SIGINT)
        codes = [proc.wait(timeout=120) for proc in procs]
    finally:
        stop_all(procs)
    assert codes == [130, 130], [p.stderr.read()[-2000:] for p in procs]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["interrupted"] and summary["signal"] == "SIGINT"
    assert summary["checkpoint"] is not None
    assert final_actor(tmp_path)


def test_an_unreachable_coordinator_is_one_line_naming_the_flag():
    # Process 1 alone: nobody listens at process 0's address.
    cluster = ["--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", "2"]
    cluster += ["--process-id", "1", "--cluster-timeout", "2"]
    (result,) = run_processes(
        [[sys.executable, *FLAGS, "--run-dir", "unused", *cluster]],
        devices_per_process=1,
        timeout_s=60,
        cwd=ROOT,
    )
    assert result.returncode == 2, result.describe()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--coordinator" in lines[0], result.stderr
    assert result.elapsed_s < 30


def test_mismatched_process_counts_end_every_process_in_bounded_time(tmp_path):
    # Process 0 expects 2 processes, the other claims to be process 2 of 3:
    # JAX refuses the connection and both end, non-zero, within the timeout.
    common = [sys.executable, *FLAGS, "--run-dir", str(tmp_path)]
    common += ["--coordinator", f"127.0.0.1:{free_port()}", "--cluster-timeout", "5"]
    results = run_processes(
        [
            [*common, "--num-processes", "2", "--process-id", "0"],
            [*common, "--num-processes", "3", "--process-id", "2"],
        ],
        devices_per_process=1,
        timeout_s=90,
        cwd=ROOT,
    )
    for result in results:
        assert not result.timed_out and result.returncode != 0, result.describe()
        assert result.elapsed_s < 60
    assert not (tmp_path / "config.json").exists()
