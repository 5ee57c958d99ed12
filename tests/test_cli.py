"""Tests of the command line: smoke runs in a subprocess and bad-input errors."""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_main

from pgjax import cli, cpu, hardware, presets, runner
from pgjax.config import TrainConfig, validate

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "train.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_script(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        timeout=480,
    )


def read_metrics(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


# ------------------------------------------------------------------ smoke runs


@pytest.fixture(scope="module")
def a2c_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    run_dir = tmp_path_factory.mktemp("cli") / "a2c-run"
    proc = run_script(
        "--algo",
        "a2c",
        "--env",
        "CartPole-v1",
        "--num-envs",
        "64",
        "--num-steps",
        "8",
        "--total-timesteps",
        "5000",
        "--num-seeds",
        "2",
        "--lr",
        "0.001",
        "--run-dir",
        str(run_dir),
        "--no-progress",
    )
    return proc, run_dir


def test_a2c_smoke_run_succeeds(a2c_run):
    proc, run_dir = a2c_run
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert str(run_dir) in proc.stdout
    for name in ("config.json", "metrics.csv", "summary.json", "learning_curve.png"):
        assert (run_dir / name).is_file(), name


def test_a2c_smoke_config_resolution(a2c_run):
    _, run_dir = a2c_run
    config = json.loads((run_dir / "config.json").read_text())
    # Flags given by the user win over the preset...
    assert config["algo"] == "a2c" and config["env"] == "CartPole-v1"
    assert config["lr"] == 0.001
    assert config["num_envs"] == 64
    assert config["num_steps"] == 8
    assert config["total_timesteps"] == 5000
    assert config["num_seeds"] == 2
    # ...and the preset fills in what the user did not give.
    given = {"lr", "num_envs", "num_steps", "total_timesteps", "num_seeds"}
    preset = presets.preset("a2c", "CartPole-v1")
    for name, value in preset.items():
        if name not in given:
            expected = list(value) if isinstance(value, tuple) else value
            assert config[name] == expected, name
    # Every TrainConfig field is recorded, algorithm defaults made explicit:
    # the preset's 4 critic minibatches, a2c's 1 epoch.
    from pgjax.config import TrainConfig

    assert set(TrainConfig.__dataclass_fields__) <= set(config)
    assert (config["critic_epochs"], config["critic_minibatches"]) == (1, 4)
    assert config["config_version"] == 3


@pytest.mark.parametrize(
    "algo, fit", [("a2c", (1, 1)), ("npg", (2, 4)), ("trpo", (2, 4))]
)
def test_critic_fit_zero_means_the_algorithms_default(algo, fit):
    from pgjax.config import TrainConfig, critic_fit, resolve_algorithm_defaults

    config = TrainConfig(algo=algo, env="Acrobot-v1")  # no preset for these
    assert critic_fit(config) == fit
    resolved = resolve_algorithm_defaults(config)
    assert (resolved.critic_epochs, resolved.critic_minibatches) == fit
    assert critic_fit(TrainConfig(algo=algo, critic_minibatches=8)) == (fit[0], 8)


def test_old_a2c_config_json_keeps_the_joint_critic_step():
    # Before config version 2, a2c ignored the critic-fit fields and config.json
    # recorded npg's 2 × 4; resuming such a run must not switch its critic to
    # 8 minibatch steps. npg/trpo runs keep what they recorded.
    from pgjax import runner
    from pgjax.config import TrainConfig, critic_fit

    for algo, expected in (("a2c", (1, 1)), ("npg", (2, 4))):
        old = runner.config_to_json(TrainConfig(algo=algo, critic_epochs=2))
        old["critic_minibatches"] = 4
        del old["config_version"]
        assert critic_fit(runner.config_from_json(old)[0]) == expected
    new = runner.config_to_json(TrainConfig(algo="a2c", critic_minibatches=4))
    assert critic_fit(runner.config_from_json(new)[0]) == (1, 4)


def test_old_reinforce_config_json_keeps_dividing_by_steps():
    # Before config version 3 reinforce divided its estimate by the batch's
    # valid steps; a resumed run keeps the estimator it trained with.
    from pgjax import runner
    from pgjax.config import TrainConfig

    old = runner.config_to_json(TrainConfig(algo="reinforce"))
    del old["config_version"], old["pg_normalizer"]
    assert runner.config_from_json(old)[0].pg_normalizer == "steps"
    new = runner.config_to_json(TrainConfig(algo="reinforce"))
    assert runner.config_from_json(new)[0].pg_normalizer == "episodes"


def test_a2c_smoke_metrics_csv(a2c_run):
    _, run_dir = a2c_run
    columns, rows = read_metrics(run_dir / "metrics.csv")
    for column in (
        "seed",
        "update",
        "step",
        "wall_time",
        "episode_return",
        "episode_length",
        "policy_loss",
        "value_loss",
    ):
        assert column in columns, column
    updates = -(-5000 // (64 * 8))  # ceil: 10 updates of 512 steps
    assert len(rows) == 2 * updates  # one row per seed per update
    summary = json.loads((run_dir / "summary.json").read_text())
    for seed in ("0", "1"):
        mine = [r for r in rows if r["seed"] == seed]
        assert [int(r["update"]) for r in mine] == list(range(1, updates + 1))
        steps = [int(r["step"]) for r in mine]
        assert steps == [512 * (i + 1) for i in range(updates)]
        walls = [float(r["wall_time"]) for r in mine]
        assert walls == sorted(walls)
        # wall_time counts from process start, so compilation is included:
        # all of it but the final evaluation's, compiled after the last row.
        after_last_row = summary["wall_seconds"] - walls[-1]
        assert walls[0] >= summary["compile_seconds"] - after_last_row
        for r in mine:
            float(r["policy_loss"])  # a number in every row
            float(r["value_loss"])


def test_a2c_smoke_summary(a2c_run):
    _, run_dir = a2c_run
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in (
        "final_return",
        "eval_return",
        "eval_return_per_seed",
        "eval_return_sampled",
        "eval_return_sampled_per_seed",
        "steps_per_second",
        "compile_seconds",
        "wall_seconds",
        "total_timesteps",
    ):
        assert key in summary, key
    assert len(summary["eval_return_per_seed"]) == 2
    assert len(summary["eval_return_sampled_per_seed"]) == 2
    assert summary["eval_return"] == pytest.approx(
        sum(summary["eval_return_per_seed"]) / 2
    )
    assert summary["total_timesteps"] >= 5000
    assert summary["steps_per_second"] > 0
    assert 0 < summary["compile_seconds"] < summary["wall_seconds"]
    assert summary["eval_return"] >= 1.0  # CartPole pays 1 per step
    # An A2C batch of 64 × 8 runs faster on one device than split across the
    # cores, and train.py's --devices 0 knows it (pgjax.cpu.devices_that_pay):
    # its 2 seeds go one to each core instead.
    assert (summary["seed_shards"], summary["env_shards"]) == (2, 1)


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--algo", "a2c"], 1),  # the preset: 1024 envs × 4 steps
        (["--algo", "a2c", "--num-envs", "2048"], 1),  # 8192 rows
        (["--algo", "a2c", "--num-envs", "4096"], 2),  # 16384 rows
        (["--algo", "a2c", "--num-envs", "4096", "--num-steps", "16"], 2),
        (["--algo", "a2c", "--num-envs", "4097", "--num-steps", "16"], 1),
        (["--algo", "a2c", "--num-seeds", "2"], 2),  # each device its seed
        (["--algo", "a2c", "--lr", "1e-3,3e-3"], 2),  # each device its config
        (["--algo", "npg"], 2),  # the preset: 256 envs × 32 steps
        (["--algo", "npg", "--num-envs", "64"], 1),
        (["--algo", "trpo", "--num-envs", "128"], 2),
        (["--algo", "trpo", "--num-envs", "8"], 1),
        (["--algo", "reinforce"], 1),  # the preset: 64 envs
        (["--algo", "reinforce", "--num-envs", "512"], 1),
        (["--algo", "reinforce", "--num-envs", "1024"], 2),
        (["--algo", "a2c", "--num-envs", "4096", "--devices", "1"], 1),
        (["--algo", "a2c", "--devices", "2"], 2),
    ],
)
def test_devices_0_uses_the_cpu_devices_that_pay(flags, expected, monkeypatch):
    monkeypatch.setattr(cpu, "usable_cores", lambda: 2)
    args = cli.build_parser().parse_args(flags)
    count = hardware.cpu_device_count(*cli._run_shape(args), cli._devices(args))
    assert count == expected


def test_a_resumed_run_keeps_the_device_choice_of_its_saved_shape(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(cpu, "usable_cores", lambda: 2)
    saved = runner.config_to_json(TrainConfig(algo="a2c", num_envs=8192, num_steps=16))
    (tmp_path / "config.json").write_text(json.dumps(saved))
    args = cli.build_parser().parse_args(["--resume", "--run-dir", str(tmp_path)])

    def count():
        return hardware.cpu_device_count(*cli._run_shape(args), cli._devices(args))

    assert count() == 2  # split: 8192 × 16 rows
    saved.update(num_envs=64)
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert count() == 1


def test_devices_1_runs_on_one_device_and_resume_keeps_it(tmp_path):
    run_dir = tmp_path / "run"
    tiny = ["--num-envs", "8", "--num-steps", "4", "--eval-episodes", "2"]
    tiny += ["--no-progress", "--run-dir", str(run_dir)]
    proc = run_script(*tiny, "--total-timesteps", "64", "--devices", "1")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["devices"] == 1 and summary["env_shards"] == 1
    # Resumed without the flag, the run keeps its saved --devices.
    proc = run_script(*tiny, "--total-timesteps", "128", "--resume")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["devices"] == 1 and summary["total_timesteps"] >= 128


def test_a2c_smoke_learning_curve_png(a2c_run):
    _, run_dir = a2c_run
    data = (run_dir / "learning_curve.png").read_bytes()
    assert len(data) > len(PNG_MAGIC)
    assert data.startswith(PNG_MAGIC)


def test_reinforce_smoke_run_on_probe(tmp_path):
    # A probe env keeps this quick and shows the CLI reaches the probes; the
    # greedy policy must have learnt a0 = 1 (return 1) from 62 updates.
    run_dir = tmp_path / "reinforce-run"
    proc = run_script(
        "--algo",
        "reinforce",
        "--env",
        "ProbeTwoStep-v0",
        "--num-envs",
        "16",
        "--total-timesteps",
        "2000",
        "--lr",
        "0.02",
        "--eval-episodes",
        "4",
        "--returns",
        "total",
        "--baseline",
        "mean",
        "--run-dir",
        str(run_dir),
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    config = json.loads((run_dir / "config.json").read_text())
    assert config["algo"] == "reinforce" and config["env"] == "ProbeTwoStep-v0"
    assert config["returns"] == "total" and config["baseline"] == "mean"
    assert config["num_envs"] == 16  # the flag beats the reinforce preset
    columns, rows = read_metrics(run_dir / "metrics.csv")
    assert "policy_loss" in columns
    assert len(rows) == -(-2000 // 32)  # one whole 2-step episode per env each
    for i, r in enumerate(rows):
        assert r["seed"] == "0" and int(r["update"]) == i + 1
        assert int(r["step"]) == 32 * (i + 1)
        assert int(r["episodes"]) == 16
        assert float(r["episode_length"]) == 2.0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["eval_return_per_seed"] == [1.0]
    assert (run_dir / "learning_curve.png").read_bytes().startswith(PNG_MAGIC)


# ------------------------------------------------------------------ bad input


# Valid settings put before the bad flag (the last value of a flag wins): if a
# bad value were accepted, the run would end in seconds and the test fail on
# its exit code instead of training a full preset run.
TINY = [
    "--num-envs",
    "4",
    "--total-timesteps",
    "32",
    "--eval-episodes",
    "2",
    "--no-progress",
]


def call_main(argv: list[str], capsys) -> tuple[int, str, str]:
    """Runs the CLI in-process; returns (exit code, stdout, stderr)."""
    return run_main(
        lambda a: cli.train_main([*TINY, *a], start_time=time.time()), argv, capsys
    )


# 12 rows divide into 4 minibatches, but 6 envs do not (minibatches are env groups).
NPG_6_ENVS = ["--algo", "npg", "--num-envs", "6", "--num-steps", "2"]
BAD_INPUTS = [
    (["--algo", "nope"], "--algo"),
    (["--env", "CartPole-v2"], "--env"),
    (["--num-envs", "0"], "--num-envs"),
    (["--num-envs", "-3"], "--num-envs"),
    (["--num-envs", "2.5"], "--num-envs"),
    (["--total-timesteps", "0"], "--total-timesteps"),
    (["--gamma", "0"], "--gamma"),
    (["--gamma", "1.5"], "--gamma"),
    (["--gae-lambda", "-0.1"], "--gae-lambda"),
    (["--gae-lambda", "1.1"], "--gae-lambda"),
    (["--lr", "0"], "--lr"),
    (["--lr", "-1"], "--lr"),
    (["--lr", "abc"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--critic", "q", "--env", "Pendulum-v1"], "--critic"),
    (["--critic", "w"], "--critic"),
    (["--baseline", "median", "--algo", "reinforce"], "--baseline"),
    (["--hidden", "64,0"], "--hidden"),
    (["--init-log-std", "3"], "--init-log-std"),
    (["--init-log-std", "nan"], "--init-log-std"),
    (["--num-seeds", "0"], "--num-seeds"),
    (["--no-such-flag", "1"], "--no-such-flag"),
    (["--critic", "q", "--value-norm"], "--value-norm"),
    (["--algo", "reinforce", "--value-norm"], "--value-norm"),
    (["--algo", "npg", "--critic-minibatches", "3"], "--critic-minibatches"),
    (["--algo", "a2c", "--critic-minibatches", "3"], "--critic-minibatches"),
    (["--algo", "a2c", "--critic-epochs", "-1"], "--critic-epochs"),
    (["--algo", "a2c", "--num-envs", "6"], "--critic-minibatches"),  # preset's 4
    (["--algo", "trpo", "--critic-minibatches", "-1"], "--critic-minibatches"),
    (["--algo", "trpo", "--num-envs", "6"], "--critic-minibatches"),  # default 4
    (
        [*NPG_6_ENVS, "--critic-minibatches", "4"],
        "--critic-minibatches",
    ),
    (["--algo", "trpo", "--kl-guard", "2"], "--kl-guard"),
    (["--algo", "npg", "--kl-guard", "-1"], "--kl-guard"),
    (["--algo", "a2c", "--anneal-kl"], "--anneal-kl"),
    (["--compile-cache", "/dev/null/cache"], "--compile-cache"),
    (["--devices", "-1"], "--devices"),
    (["--devices", "two"], "--devices"),
    (["--cluster-timeout", "0"], "--cluster-timeout"),
    (["--coordinator", "node0"], "--coordinator"),  # no port
    (["--coordinator", "h:1", "--num-processes", "2"], "--process-id"),
    (
        ["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"],
        "--process-id",
    ),
    (["--num-processes", "two"], "--num-processes"),
]


@pytest.mark.parametrize(
    "argv, flag", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS]
)
def test_bad_input_one_line_exit_2_no_run_dir(argv, flag, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, out, err = call_main([*argv, "--run-dir", str(run_dir)], capsys)
    assert_one_line_error(code, err, flag)
    assert not run_dir.exists()
    assert out == ""


def test_unknown_env_suggests_close_ids(tmp_path, capsys):
    code, _, err = call_main(
        ["--env", "CartPole-v2", "--run-dir", str(tmp_path / "run")], capsys
    )
    assert_one_line_error(code, err, "--env")
    assert "CartPole-v2" in err and "CartPole-v1" in err


def test_bad_input_creates_no_default_run_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = call_main(["--gamma", "1.5"], capsys)
    assert_one_line_error(code, err, "--gamma")
    assert list(tmp_path.iterdir()) == []


def test_non_empty_run_dir_is_refused(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "keep.txt").write_text("mine")
    code, _, err = call_main(
        ["--env", "ProbeOneStep-v0", "--num-envs", "4", "--run-dir", str(run_dir)],
        capsys,
    )
    assert_one_line_error(code, err, "--run-dir")
    assert [p.name for p in run_dir.iterdir()] == ["keep.txt"]
    assert (run_dir / "keep.txt").read_text() == "mine"


def test_run_dir_that_is_a_file_is_refused(tmp_path, capsys):
    path = tmp_path / "afile"
    path.write_text("mine")
    code, _, err = call_main(
        ["--env", "ProbeOneStep-v0", "--run-dir", str(path)], capsys
    )
    assert_one_line_error(code, err, "--run-dir")
    assert path.read_text() == "mine"


def test_run_dir_under_a_file_is_refused(tmp_path, capsys):
    path = tmp_path / "afile"
    path.write_text("mine")
    code, _, err = call_main(
        ["--env", "ProbeOneStep-v0", "--run-dir", str(path / "run")], capsys
    )
    assert_one_line_error(code, err, "--run-dir")


def test_absurd_num_envs_is_refused(tmp_path, capsys):
    code, _, err = call_main(
        ["--num-envs", "1e20", "--run-dir", str(tmp_path / "run")], capsys
    )
    assert_one_line_error(code, err, "--num-envs")


def test_help_exits_0(capsys):
    code, out, _ = call_main(["--help"], capsys)
    assert code == 0
    for flag in ("--algo", "--env", "--num-envs", "--total-timesteps", "--run-dir"):
        assert flag in out


@pytest.mark.parametrize(
    "argv, flag, hint",
    [
        (["--env", "CartPole-v2"], "--env", "CartPole-v1"),
        (["--lr", "abc"], "--lr", "abc"),
    ],
)
def test_bad_input_in_subprocess(argv, flag, hint, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_script(*TINY, *argv, "--run-dir", str(run_dir), cwd=tmp_path)
    assert_one_line_error(proc.returncode, proc.stderr, flag)
    assert hint in proc.stderr
    assert proc.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_a_stalled_chunk_gets_one_warning_and_still_returns(monkeypatch, capsys):
    import concurrent.futures
    import time

    from pgjax.runner import control

    monkeypatch.setattr(control, "STALL_FIRST_SECONDS", 0.05)
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        slow = lambda: (time.sleep(0.3), "done")[1]  # noqa: E731
        result = control.wait_chunk(pool, slow, slowest=0.0, label="chunk 1")
        fast = control.wait_chunk(pool, lambda: "quick", slowest=1.0, label="chunk 2")
    finally:
        pool.shutdown()
    err = capsys.readouterr().err
    assert result == "done" and fast == "quick"
    assert err.count("warning: chunk 1 has run for") == 1
    assert "--resume" in err and "chunk 2" not in err


@pytest.mark.parametrize(
    ("algo", "env"), sorted(key for key in presets.PRESETS if key[1] != "*")
)
def test_every_preset_is_a_valid_config(algo, env):
    # A misspelt field fails dataclasses.replace; a bad value fails validate.
    settings = presets.preset(algo, env)
    validate(dataclasses.replace(TrainConfig(algo=algo, env=env), **settings))
    # The plain command resolves to the preset.
    args = cli.build_parser().parse_args(["--algo", algo, "--env", env])
    resolved = cli.resolve_config(args)
    assert {name: getattr(resolved, name) for name in settings} == settings
