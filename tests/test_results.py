"""scripts/results.py: the results table from run folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_one_line_error, load_script, run_main

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


results = load_script("results")


def fake_run(run_dir: Path, eval_per_seed, sampled_per_seed, interrupted=False):
    """A finished run folder: summary.json and a two-seed metrics.csv."""
    run_dir.mkdir(parents=True)
    summary = {
        "eval_return_per_seed": eval_per_seed,
        "eval_return_sampled_per_seed": sampled_per_seed,
        "total_timesteps": 1000,
        "wall_seconds": 12.5,
        "interrupted": interrupted,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    lines = ["seed,update,step,episode_return"]
    for seed in range(len(eval_per_seed)):
        lines += [f"{seed},{u},{100 * u},{10.0 * u}" for u in range(1, 6)]
    (run_dir / "metrics.csv").write_text("\n".join(lines) + "\n")


def test_table_from_finished_runs(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs / "a2c-CartPole-v1", [500.0, 450.0], [490.0, 470.0])
    fake_run(runs / "npg-CartPole-v1", [500.0], [500.0], interrupted=True)
    out = tmp_path / "docs" / "results.md"
    argv = ["--algos", "a2c,npg", "--envs", "CartPole-v1", "--num-seeds", "2"]
    assert (
        results.main([*argv, "--runs", str(runs), "--out", str(out), "--no-train"]) == 0
    )
    text = out.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| a2c"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # Mean ± population std over seeds, the seeds at or above 475, the
    # sampled evaluation, steps, wall time and the zoo's A2C.
    assert cells[:6] == [
        "a2c",
        "CartPole-v1",
        "475.0 ± 25.0",
        "1/2",
        "480.0 ± 10.0",
        "1,000",
    ]
    assert cells[7] == "500.0 ± 0.0 (a2c, 500k)"
    # An interrupted run (or one with other seeds) is listed as missing.
    assert "* npg on CartPole-v1" in text
    figure = out.parent / "results" / "CartPole-v1.png"
    assert figure.read_bytes().startswith(PNG_MAGIC)
    assert "](results/CartPole-v1.png)" in text


def test_reference_without_a_zoo_row_is_the_best_of_the_task():
    assert results.reference("reinforce", "Acrobot-v1") == "-73.5 ± 18.2 (ppo, 1M)"
    assert results.reference("trpo", "Acrobot-v1") == "-83.1 ± 18.6 (trpo, 100k)"


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--algos", "sac"], "--algos"),
        (["--envs", ""], "--envs"),
        (["--num-seeds", "0"], "--num-seeds"),
        (["--out", "table.txt"], "--out"),
    ],
)
def test_bad_flags_are_one_line(argv, flag, capsys):
    code, _, err = run_main(results.main, [*argv, "--no-train"], capsys)
    assert_one_line_error(code, err, flag)
