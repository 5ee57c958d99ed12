"""Sweeps in one compiled program: the grid × seeds equals separate runs.

The sweep is interrupted and resumed on the way (resume keeps the grid). Also
the sweep's run folder (columns, ranking, config.json) and TensorBoard logging
(read back from the event files).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import struct
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import TINY_CONFIG, run_main

from pgjax import cli, runner
from pgjax.checkpoints import Checkpointer
from pgjax.config import TrainConfig
from pgjax.train import make_train

# The same program as tests/test_resume.py's PLAIN (shared compilation).
PLAIN = TINY_CONFIG

pytestmark = pytest.mark.usefixtures("compilation_cache")
LRS = [3e-4, 1e-3, 3e-3]
INTS = {"config", "seed", "update", "step", "env_steps", "episodes"}


def read_rows(run_dir: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def restore(run_dir: Path, config: TrainConfig, sweep=None):
    trainer = make_train(config)
    abstract = runner.abstract_state(trainer, runner.make_layout(config, sweep))
    with Checkpointer(run_dir, read_only=True) as checkpointer:
        return checkpointer.restore(abstract)[0]


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory) -> Path:
    """The sweep, stopped by SIGINT after 3 chunks and resumed with the CLI."""
    run_dir = tmp_path_factory.mktemp("sweep") / "run"
    config = dataclasses.replace(PLAIN, tensorboard=runner.tensorboard_available())

    def on_chunk(info):
        if info["chunks"] == 3:
            os.kill(os.getpid(), signal.SIGINT)

    result = runner.run(
        config, run_dir, progress=False, sweep={"lr": LRS}, on_chunk=on_chunk
    )
    assert result.signum == signal.SIGINT
    argv = ["--resume", "--run-dir", str(run_dir), "--no-progress"]
    assert cli.train_main(argv, start_time=time.time()) == 0
    return run_dir


def test_sweep_equals_separate_runs(sweep_run, tmp_path):
    columns, rows = read_rows(sweep_run)
    assert columns[:3] == ["config", "seed", "lr"]
    sweep_state = restore(sweep_run, PLAIN, {"lr": LRS})
    for c, lr in enumerate(LRS):
        config = dataclasses.replace(PLAIN, lr=lr)
        run_dir = tmp_path / f"lr{c}"
        runner.run(config, run_dir, progress=False)
        _, separate = read_rows(run_dir)
        mine = [r for r in rows if r["config"] == str(c)]
        assert len(mine) == len(separate) == 2 * 16
        for a, b in zip(mine, separate, strict=True):
            assert float(a["lr"]) == pytest.approx(lr)
            for name, value in b.items():
                if name == "wall_time":
                    continue
                if name in INTS or value == "":
                    assert a[name] == value, name
                else:
                    np.testing.assert_allclose(
                        float(a[name]), float(value), rtol=1e-4, atol=1e-6, err_msg=name
                    )
        state = restore(run_dir, config)
        rows_of_c = slice(2 * c, 2 * c + 2)
        for x, y in zip(
            jax.tree.leaves(sweep_state), jax.tree.leaves(state), strict=True
        ):
            x, y = np.asarray(x)[rows_of_c], np.asarray(y)
            if np.issubdtype(x.dtype, np.floating):
                np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
            else:
                np.testing.assert_array_equal(x, y)
        assert np.allclose(np.asarray(state.hyper.lr), lr)


def test_sweep_run_folder(sweep_run):
    config = json.loads((sweep_run / "config.json").read_text())
    assert config["sweep"] == {"lr": LRS}
    summary = json.loads((sweep_run / "summary.json").read_text())
    assert summary["sweep"] == {"lr": LRS}
    assert summary["resumed_from"] == 3 * 2 * 128 and not summary["interrupted"]
    configs = summary["configs"]
    assert [e["rank"] for e in configs] == [1, 2, 3]
    assert sorted(e["config"] for e in configs) == [0, 1, 2]
    finals = [e["final_return"] for e in configs]
    assert finals == sorted(finals, reverse=True)
    for entry in configs:
        assert entry["lr"] == LRS[entry["config"]]
        assert len(entry["eval_return_per_seed"]) == 2
        assert entry["eval_return"] == pytest.approx(
            np.mean(entry["eval_return_per_seed"])
        )
        assert entry["final_return"] == pytest.approx(
            np.mean(entry["final_return_per_seed"])
        )
    assert summary["best"] == {"config": configs[0]["config"], "lr": configs[0]["lr"]}
    assert len(summary["eval_return_per_seed"]) == 6
    _, rows = read_rows(sweep_run)
    assert {(r["config"], r["seed"]) for r in rows} == {
        (str(c), str(s)) for c in range(3) for s in range(2)
    }
    assert (sweep_run / "learning_curve.png").exists()


def read_events(path: Path) -> list:
    """Events of a TensorBoard event file (TFRecord framing, no CRC check)."""
    from tensorboardX.proto import event_pb2

    data, events, at = path.read_bytes(), [], 0
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at : at + 8])
        event = event_pb2.Event()
        event.ParseFromString(data[at + 12 : at + 12 + length])
        events.append(event)
        at += 12 + length + 4
    return events


def test_tensorboard_logs_the_metrics(sweep_run):
    pytest.importorskip("tensorboardX")
    _, rows = read_rows(sweep_run)
    for c in range(3):
        for seed in range(2):
            folder = sweep_run / "tensorboard" / f"config_{c}" / f"seed_{seed}"
            # One event file per session (the run was resumed once).
            files = sorted(folder.glob("events.out.tfevents.*"))
            assert len(files) == 2
            logged = {
                (v.tag, e.step): v.simple_value
                for path in files
                for e in read_events(path)
                for v in e.summary.value
            }
            mine = [r for r in rows if r["config"] == str(c) and r["seed"] == str(seed)]
            for row in mine:
                key = ("policy_loss", int(row["step"]))
                # metrics.csv keeps 6 significant digits.
                assert logged[key] == pytest.approx(float(row["policy_loss"]), 1e-5)
                if row["episode_return"]:
                    key = ("episode_return", int(row["step"]))
                    assert logged[key] == pytest.approx(
                        float(row["episode_return"]), 1e-5
                    )


def call_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    return run_main(lambda a: cli.train_main(a, start_time=time.time()), argv, capsys)


def test_sweep_flags_parse_into_lists():
    args = cli.build_parser().parse_args(
        ["--lr", "3e-4,1e-3,3e-3", "--ent-coef", "0,0.01", "--gamma", "0.9"]
    )
    config = cli.resolve_config(args)
    assert cli.resolve_sweep(args) == {"lr": LRS, "ent_coef": [0.0, 0.01]}
    assert config.lr == 3e-4 and config.ent_coef == 0.0 and config.gamma == 0.9
    layout = runner.make_layout(config, cli.resolve_sweep(args))
    # Product grid in SWEEPABLE order (lr before ent_coef), last name fastest.
    assert layout.names == ("lr", "ent_coef")
    assert layout.points[:3] == ((3e-4, 0.0), (3e-4, 0.01), (1e-3, 0.0))
    assert layout.num_rows == 6 * config.num_seeds


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--lr", "1e-3,-1"], "--lr"),
        (["--gamma", "0.9,1.5"], "--gamma"),
        (["--ent-coef", "0,nan"], "--ent-coef"),
        (["--lr", "1e-3,abc"], "--lr"),
        (["--num-envs", "16,32"], "--num-envs"),  # not sweepable
    ],
)
def test_bad_sweep_values_are_refused(argv, flag, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, out, err = call_cli([*argv, "--run-dir", str(run_dir)], capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0], err
    assert not run_dir.exists() and out == ""


def test_tensorboard_missing_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(runner, "tensorboard_available", lambda: False)
    run_dir = tmp_path / "run"
    code, _, err = call_cli(["--tensorboard", "--run-dir", str(run_dir)], capsys)
    assert code == 2
    assert err.strip().splitlines() == [
        "train.py: error: --tensorboard: needs tensorboardX: "
        "pip install 'pgjax[tensorboard]'"
    ]
    assert not run_dir.exists()
