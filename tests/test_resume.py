"""Resume equality: a stopped and resumed run is bit-identical to a straight one.

Runs are tiny (CartPole, 16 envs × 8 steps, 2 updates per chunk, 2 seeds) and
in-process; the interruption is a real SIGINT/SIGTERM sent to this process from
the ``on_chunk`` callback, so the signal path of the runner is exercised. Every
metrics.csv value except ``wall_time`` and the whole final state (parameters,
optimiser and environment states, keys, counters) must be equal bit for bit.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import CACHE_DIR, TINY_CONFIG, run_main

from pgjax import cli, runner
from pgjax.checkpoints import Checkpointer
from pgjax.config import TrainConfig
from pgjax.runner import loop, programs
from pgjax.train import make_train

pytestmark = pytest.mark.usefixtures("compilation_cache")

PLAIN = TINY_CONFIG  # lr annealing on, no observation normalisation
# Observation normalisation and PopArt statistics on (both running state that
# a resume must restore); annealing off so that a run split at any total
# equals the straight run (annealing depends on total_timesteps).
NORM = dataclasses.replace(PLAIN, normalize_obs=True, value_norm=True, anneal_lr=False)


def train(
    config: TrainConfig,
    run_dir: Path,
    interrupt_after: int | None = None,
    sig: int = signal.SIGINT,
    resume: bool = False,
) -> runner.RunResult:
    """Runs in-process; sends ``sig`` to itself after chunk ``interrupt_after``."""

    def on_chunk(info):
        if info["chunks"] == interrupt_after:
            os.kill(os.getpid(), sig)

    return runner.run(config, run_dir, progress=False, on_chunk=on_chunk, resume=resume)


def metrics(run_dir: Path) -> list[dict[str, str]]:
    """metrics.csv rows without wall_time."""
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        del row["wall_time"]
    return rows


def final_state(run_dir: Path, config: TrainConfig):
    """The newest checkpoint's state and step."""
    trainer = make_train(config)
    abstract = runner.abstract_state(trainer, runner.make_layout(config))
    with Checkpointer(run_dir, read_only=True) as checkpointer:
        state, host, step = checkpointer.restore(abstract)
    return state, host, step


def assert_same_run(a: Path, b: Path, config: TrainConfig) -> None:
    rows_a, rows_b = metrics(a), metrics(b)
    assert len(rows_a) == len(rows_b)
    for i, (ra, rb) in enumerate(zip(rows_a, rows_b, strict=True)):
        assert ra == rb, f"metrics.csv row {i + 1} differs"
    state_a, host_a, step_a = final_state(a, config)
    state_b, host_b, step_b = final_state(b, config)
    assert step_a == step_b
    assert host_a["csv_rows"] == host_b["csv_rows"] == len(rows_a)
    paths, leaves_a = zip(*jax.tree_util.tree_leaves_with_path(state_a), strict=True)
    leaves_b = jax.tree.leaves(state_b)
    for path, x, y in zip(paths, leaves_a, leaves_b, strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True), (
            jax.tree_util.keystr(path)
        )


class Straight:
    """Uninterrupted runs of PLAIN and NORM, each made on first use.

    (Lazily, so that a pytest-xdist worker only trains what its tests need.)
    """

    def __init__(self, root: Path):
        self.root = root
        self.runs: dict[str, Path] = {}

    def __getitem__(self, name: str) -> Path:
        if name not in self.runs:
            run_dir = self.root / name
            result = train(PLAIN if name == "plain" else NORM, run_dir)
            assert not result.summary["interrupted"]
            self.runs[name] = run_dir
        return self.runs[name]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Straight:
    return Straight(tmp_path_factory.mktemp("straight"))


def test_straight_run_folder(straight):
    run_dir = straight["plain"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["updates_per_chunk"] == 2 and config["sweep"] == {}
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["interrupted"] is False and summary["checkpoint"] == 2048
    assert summary["sessions"] == 1 and "resumed_from" not in summary
    with Checkpointer(run_dir, read_only=True) as checkpointer:
        # A checkpoint every 4 updates (2 chunks), the newest 3 kept.
        assert checkpointer.steps() == [1024, 1536, 2048]
    # The final checkpoint's host record counts the evaluation's compile too.
    _, host, _ = final_state(run_dir, PLAIN)
    assert host["compile_seconds"] == summary["compile_seconds_all_sessions"]
    assert host["compile_seconds"] == summary["compile_seconds"]
    assert len(metrics(run_dir)) == 2 * 16


@pytest.mark.parametrize(
    "name, chunks, sig",
    [
        ("plain", 1, signal.SIGINT),
        ("plain", 5, signal.SIGTERM),
        ("norm", 3, signal.SIGINT),
    ],
)
def test_interrupted_run_resumes_bit_identical(straight, tmp_path, name, chunks, sig):
    config = PLAIN if name == "plain" else NORM
    run_dir = tmp_path / "run"
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    result = train(config, run_dir, interrupt_after=chunks, sig=sig)

    # Stopped after the chunk in flight, with a checkpoint and a valid folder.
    assert result.signum == sig
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["interrupted"] is True
    assert summary["signal"] == signal.Signals(sig).name
    assert summary["eval_return"] is None
    step = chunks * 2 * 128
    assert summary["checkpoint"] == step == summary["total_timesteps"]
    assert len(metrics(run_dir)) == 2 * 2 * chunks
    # The handlers are restored afterwards.
    assert (
        signal.getsignal(signal.SIGINT),
        signal.getsignal(signal.SIGTERM),
    ) == handlers

    if sig == signal.SIGTERM:
        # As if killed later, between checkpoints and in the middle of a save:
        # rows past the checkpoint, a torn last line and a half-written
        # checkpoint folder. Resume must ignore all three.
        with open(run_dir / "metrics.csv", "a") as f:
            f.write("0,99,99999,1.0,128,,,0,0.1,0.2,0.3,0.4,0.5,0.6,0.7\n0,1")
        partial = run_dir / "checkpoints" / "99999.orbax-checkpoint-tmp"
        (partial / "state").mkdir(parents=True)
        (partial / "state" / "junk").write_text("half")

    resumed = train(config, run_dir, resume=True)
    assert resumed.signum is None
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["interrupted"] is False
    assert summary["resumed_from"] == step and summary["sessions"] == 2
    assert summary["eval_return"] is not None
    assert not (run_dir / "checkpoints" / "99999.orbax-checkpoint-tmp").exists()
    assert_same_run(straight[name], run_dir, config)
    # wall_time keeps counting across sessions.
    with open(run_dir / "metrics.csv", newline="") as f:
        walls = [float(r["wall_time"]) for r in csv.DictReader(f)]
    assert walls == sorted(walls)


def test_split_run_equals_straight(straight, tmp_path):
    """Trained to 640 steps (5 updates: its last chunk idles a slot), then to 2048."""
    run_dir = tmp_path / "run"
    first = train(dataclasses.replace(NORM, total_timesteps=640), run_dir)
    assert first.summary["total_timesteps"] == 640
    assert json.loads((run_dir / "config.json").read_text())["total_timesteps"] == 640
    train(NORM, run_dir, resume=True)
    assert json.loads((run_dir / "config.json").read_text())["total_timesteps"] == 2048
    assert_same_run(straight["norm"], run_dir, NORM)


def call_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    return run_main(
        lambda a: cli.train_main([*a, "--no-progress"], start_time=time.time()),
        argv,
        capsys,
    )


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--lr", "0.1"], "--lr"),
        (["--num-envs", "32"], "--num-envs"),
        (["--normalize-obs"], "--normalize-obs"),
        (["--lr", "3e-4,1e-3"], "--lr"),  # a sweep is a different run too
        (["--updates-per-chunk", "4"], "--updates-per-chunk"),
    ],
)
def test_resume_with_other_config_is_refused(straight, argv, flag, capsys):
    run_dir = straight["plain"]
    before = {p: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    code, out, err = call_cli(["--resume", "--run-dir", str(run_dir), *argv], capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"train.py: error: {flag}: differs"), err
    assert out == ""
    assert {p: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


def test_resume_bad_run_dirs(tmp_path, capsys):
    code, _, err = call_cli(["--resume"], capsys)
    assert code == 2 and "--resume: needs --run-dir" in err
    code, _, err = call_cli(["--resume", "--run-dir", str(tmp_path / "nope")], capsys)
    assert code == 2 and err.count("\n") == 1 and "does not exist" in err
    code, _, err = call_cli(["--resume", "--run-dir", str(tmp_path)], capsys)
    assert code == 2 and "no config.json" in err


def test_resume_to_fewer_steps_is_refused(straight, capsys):
    run_dir = straight["plain"]
    argv = ["--resume", "--run-dir", str(run_dir), "--total-timesteps", "1000"]
    code, _, err = call_cli(argv, capsys)
    assert code == 2, err
    assert err.strip().splitlines() == [
        "train.py: error: --total-timesteps: the run already has 2048 steps per "
        "seed at its newest checkpoint; give at least that"
    ]


def test_existing_run_dir_hints_at_resume(straight, capsys):
    code, _, err = call_cli(["--run-dir", str(straight["plain"])], capsys)
    assert code == 2 and "--resume" in err and err.count("\n") == 1


# --------------------------------------------------------- signals, end to end

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "train.py"
# Long enough to be interrupted (seconds of training on a CPU), short enough
# for a resume to finish quickly. The CLI fills in the a2c CartPole preset.
LONG = [
    "--env",
    "CartPole-v1",
    "--num-envs",
    "16",
    "--num-steps",
    "8",
    "--updates-per-chunk",
    "2",
    "--num-seeds",
    "2",
    "--hidden",
    "32",
    "--kl-envs",
    "16",
    "--eval-episodes",
    "2",
    "--total-timesteps",
    "32768",
    "--checkpoint-every",
    "-1",  # only at the end and on a signal: the interrupt must save
    "--no-progress",
]


def start(*args: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": str(CACHE_DIR),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )


def data_rows(path: Path) -> int:
    if not path.exists():
        return 0
    return max(0, path.read_text().count("\n") - 1)


def wait_for_rows(proc: subprocess.Popen, path: Path, more_than: int) -> None:
    deadline = time.time() + 240
    while data_rows(path) <= more_than:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no metrics.csv rows in time"
        time.sleep(0.05)


def run_config(run_dir: Path) -> TrainConfig:
    return runner.load_run_config(run_dir)[0]


def check_updates_contiguous(run_dir: Path) -> dict[str, list[int]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    per_seed: dict[str, list[int]] = {}
    for row in rows:
        per_seed.setdefault(row["seed"], []).append(int(row["update"]))
    for updates in per_seed.values():
        assert updates == list(range(1, len(updates) + 1))
    return per_seed


def test_sigint_saves_a_checkpoint_then_resume_finishes(tmp_path, capsys):
    run_dir = tmp_path / "run"
    proc = start(*LONG, "--run-dir", str(run_dir))
    wait_for_rows(proc, run_dir / "metrics.csv", 0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "--resume --run-dir" in err

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["signal"] == "SIGINT"
    step = summary["checkpoint"]
    assert 0 < step < 32768
    state, host, restored_step = final_state(run_dir, run_config(run_dir))
    assert restored_step == step
    assert np.all(np.asarray(state.experience) == step)
    assert host["csv_rows"] == data_rows(run_dir / "metrics.csv")
    assert (run_dir / "learning_curve.png").exists()

    # (The resume runs in-process: the same CLI, without a second start-up.)
    code, _, err = call_cli(["--resume", "--run-dir", str(run_dir)], capsys)
    assert code == 0, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["interrupted"] is False and summary["resumed_from"] == step
    assert summary["total_timesteps"] == 32768
    per_seed = check_updates_contiguous(run_dir)
    assert sorted(per_seed) == ["0", "1"]
    assert all(len(u) == 32768 // 128 for u in per_seed.values())


@pytest.mark.slow
def test_second_sigint_exits_at_once_and_the_folder_stays_valid(tmp_path, capsys):
    run_dir = tmp_path / "run"
    # A checkpoint at every chunk: the second signal may land mid-save.
    proc = start(*LONG, "--checkpoint-every", "2", "--run-dir", str(run_dir))
    wait_for_rows(proc, run_dir / "metrics.csv", 20)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    sent = time.time()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert time.time() - sent < 5
    assert "again: exiting now" in err and "Traceback" not in err

    config = run_config(run_dir)
    with Checkpointer(run_dir, read_only=True) as checkpointer:
        steps = checkpointer.steps()
    assert steps  # checkpoints were being taken; every one listed restores
    for step in steps:
        trainer = make_train(config)
        abstract = runner.abstract_state(trainer, runner.make_layout(config))
        with Checkpointer(run_dir, read_only=True) as checkpointer:
            checkpointer.restore(abstract, step=step)

    argv = ["--resume", "--run-dir", str(run_dir), "--checkpoint-every", "-1"]
    code, _, err = call_cli(argv, capsys)
    assert code == 0, err
    per_seed = check_updates_contiguous(run_dir)
    assert all(len(u) == 32768 // 128 for u in per_seed.values())


def test_resume_may_change_the_device_count():
    # Where the work runs is not what the run computes: a run may continue
    # on another number of devices (tests/test_topology.py runs one).
    saved = PLAIN
    runner.check_resumable(saved, {}, dataclasses.replace(saved, devices=1), {})
    with pytest.raises(runner.RunFolderError, match="--num-envs"):
        runner.check_resumable(saved, {}, dataclasses.replace(saved, num_envs=32), {})


def test_the_chunk_compiles_while_the_initial_state_compiles(tmp_path, monkeypatch):
    # A fresh run hands the chunk's compile to a worker before it compiles
    # the initial state's program in this thread, so the two overlap (the
    # initial state's compile waits here until the chunk's has started; run
    # one after the other, the wait would time out).
    chunk_started = threading.Event()
    overlapped = []
    compile_chunk, compile_init = loop.compile_lowered, programs.compile_init

    def spy_chunk(lowered, options):
        chunk_started.set()
        return compile_chunk(lowered, options)

    def spy_init(*args):
        overlapped.append(chunk_started.wait(timeout=60))
        return compile_init(*args)

    monkeypatch.setattr(loop, "compile_lowered", spy_chunk)
    monkeypatch.setattr(programs, "compile_init", spy_init)
    result = train(dataclasses.replace(PLAIN, total_timesteps=1024), tmp_path / "r")
    assert overlapped == [True]
    assert result.summary["total_timesteps"] >= 1024
