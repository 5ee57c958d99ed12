"""scripts/evaluate.py and scripts/plot.py on a saved run folder."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    CACHE_DIR,
    TINY_CONFIG,
    assert_one_line_error,
    load_script,
    run_main,
)

from pgjax import plotting, runner

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# The same program as tests/test_resume.py's PLAIN (shared compilation).
PLAIN = TINY_CONFIG

pytestmark = pytest.mark.usefixtures("compilation_cache")


evaluate = load_script("evaluate")
plot = load_script("plot")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("evaluate") / "run"
    runner.run(PLAIN, run_dir, progress=False)
    return run_dir


def call(module, argv: list[str], capsys) -> tuple[int, str, str]:
    return run_main(module.main, argv, capsys)


def test_evaluate_subprocess_writes_eval_json_and_gif(trained, tmp_path):
    gif = tmp_path / "episode.gif"
    env = {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": str(CACHE_DIR),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    # (2 episodes for both rows: the runner's evaluation program, compiled.)
    argv = ["--run-dir", str(trained), "--episodes", "2"]
    draws = importlib.util.find_spec("pygame") is not None  # the [render] extra
    if draws:
        argv += ["--gif", str(gif), "--gif-max-steps", "25"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "evaluate.py"), *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    report = json.loads((trained / "eval.json").read_text())
    assert report["checkpoint"] == 2048 and report["episodes"] == 2
    assert report["deterministic"] is True
    assert [row["row"] for row in report["rows"]] == [0, 1]
    for row in report["rows"]:
        assert row["seed"] == row["row"] and len(row["returns"]) == 2
        assert row["mean"] == pytest.approx(np.mean(row["returns"]))
        assert all(r >= 1 for r in row["returns"])  # CartPole pays 1 per step
        assert f"seed {row['seed']}: {row['mean']:.2f} ± {row['std']:.2f}" in (
            proc.stdout
        )
    returns = [r for row in report["rows"] for r in row["returns"]]
    assert report["mean"] == pytest.approx(np.mean(returns))
    if draws:
        assert gif.read_bytes()[:6] == b"GIF89a"
        assert report["gif"]["row"] == 0 and 1 <= report["gif"]["steps"] <= 25


def test_evaluate_in_process_one_row_sampled(trained, capsys):
    argv = ["--run-dir", str(trained), "--episodes", "2", "--sample"]
    argv += ["--checkpoint", "1536", "--seed-index", "1"]
    code, out, err = call(evaluate, argv, capsys)
    assert code == 0, err
    report = json.loads((trained / "eval.json").read_text())
    assert report["checkpoint"] == 1536 and report["deterministic"] is False
    assert [r["seed"] for r in report["rows"]] == [1]
    assert "sampled actions" in out


def test_evaluate_bad_input(trained, tmp_path, capsys):
    code, _, err = call(evaluate, ["--run-dir", str(tmp_path / "nope")], capsys)
    assert_one_line_error(code, err, "--run-dir")
    assert "does not exist" in err

    code, _, err = call(evaluate, ["--run-dir", str(tmp_path)], capsys)
    assert_one_line_error(code, err, "--run-dir")
    assert "no config.json" in err

    no_checkpoints = tmp_path / "fresh"
    no_checkpoints.mkdir()
    shutil.copy(trained / "config.json", no_checkpoints / "config.json")
    code, _, err = call(evaluate, ["--run-dir", str(no_checkpoints)], capsys)
    assert_one_line_error(code, err, "--run-dir")
    assert "has no checkpoint" in err

    argv = ["--run-dir", str(trained)]
    code, _, err = call(evaluate, [*argv, "--checkpoint", "7"], capsys)
    assert_one_line_error(code, err, "--checkpoint")
    assert "available: 1024, 1536, 2048" in err
    code, _, err = call(evaluate, [*argv, "--seed-index", "2"], capsys)
    assert_one_line_error(code, err, "--seed-index")
    code, _, err = call(evaluate, [*argv, "--episodes", "0"], capsys)
    assert_one_line_error(code, err, "--episodes")
    code, _, err = call(evaluate, [*argv, "--gif", str(tmp_path / "x.png")], capsys)
    assert_one_line_error(code, err, "--gif")
    code, _, err = call(evaluate, [*argv, "--checkpoint", "abc"], capsys)
    assert_one_line_error(code, err, "--checkpoint")


def test_plot_writes_png(trained, tmp_path, capsys):
    out = tmp_path / "plots" / "curve.png"
    code, stdout, err = call(
        plot, ["--run-dirs", str(trained), str(trained), "--out", str(out)], capsys
    )
    assert code == 0, err
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert str(out) in stdout
    kl = tmp_path / "kl.png"
    code, _, err = call(
        plot, ["--run-dirs", str(trained), "--out", str(kl), "--metric", "kl"], capsys
    )
    assert code == 0, err
    assert kl.read_bytes().startswith(PNG_MAGIC)


def test_plot_groups_a_sweep_by_its_swept_columns(tmp_path, monkeypatch, capsys):
    """A sweep's run folder (metrics.csv written by hand) gets a line per lr."""
    run_dir = tmp_path / "sweep"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"sweep": {"lr": [0.1, 0.2]}}))
    lines = ["config,seed,lr,update,step,wall_time,episode_return"]
    for c, lr in enumerate((0.1, 0.2)):
        for seed in (0, 1):
            for update in (1, 2, 3):
                ret = 10 * c + seed + update
                lines.append(f"{c},{seed},{lr},{update},{100 * update},0.1,{ret}")
    (run_dir / "metrics.csv").write_text("\n".join(lines) + "\n")
    calls = []
    original = plotting.plot_runs

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(plotting, "plot_runs", spy)
    out = tmp_path / "sweep.png"
    code, _, err = call(plot, ["--run-dirs", str(run_dir), "--out", str(out)], capsys)
    assert code == 0, err
    assert calls[0]["group_by"] == ["lr"]
    assert out.read_bytes().startswith(PNG_MAGIC)
    groups = plotting.curves(plotting.read_metrics(run_dir / "metrics.csv"), ["lr"])
    assert sorted(groups) == [("0.1",), ("0.2",)]


def test_plot_bad_input(trained, tmp_path, capsys):
    out = str(tmp_path / "x.png")
    code, _, err = call(plot, ["--run-dirs", str(tmp_path), "--out", out], capsys)
    assert_one_line_error(code, err, "--run-dirs")
    argv = ["--run-dirs", str(trained), "--out", out, "--metric", "nope"]
    code, _, err = call(plot, argv, capsys)
    assert_one_line_error(code, err, "--metric")
    code, _, err = call(plot, ["--run-dirs", str(trained), "--out", "x.txt"], capsys)
    assert_one_line_error(code, err, "--out")
    code, _, err = call(plot, ["--out", out], capsys)
    assert_one_line_error(code, err, "--run-dirs")
