"""scripts/results.py: the results table from run folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_one_line_error, load_script, run_main

from pgjax import cli
from pgjax.runner import folder

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


results = load_script("results")


def written_config(algo: str, env: str, num_seeds: int) -> dict:
    """The config.json train.py writes for the pair's plain command."""
    args = ["--algo", algo, "--env", env, "--num-seeds", str(num_seeds)]
    config = cli.resolve_config(cli.build_parser().parse_args(args))
    return folder.config_to_json(folder.resolve_config(config))


def test_a_fresh_run_of_the_plain_command_is_current(tmp_path):
    # What train.py writes and what results.py expects agree, for presets
    # with and without resolved defaults (critic fit, chunk size).
    for algo, env in [("a2c", "CartPole-v1"), ("trpo", "MountainCar-v0")]:
        run_dir = tmp_path / f"{algo}-{env}"
        fake_run(run_dir, [1.0, 2.0], [1.0, 2.0])
        assert results.changed_settings(run_dir, algo, env, 2) == []
        assert results.changed_settings(run_dir, algo, env, 3) == ["num_seeds 2 → 3"]


def fake_run(
    run_dir: Path, eval_per_seed, sampled_per_seed, interrupted=False, env=None
):
    """A finished run folder of the pair's plain command (named ``algo-env``,
    or give ``env``): config.json, summary.json and a metrics.csv."""
    run_dir.mkdir(parents=True)
    algo, _, named_env = run_dir.name.partition("-")
    env = env or named_env
    config = written_config(algo, env, len(eval_per_seed))
    (run_dir / "config.json").write_text(json.dumps(config))
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


def table(runs: Path, out: Path, algos: str, envs: str, num_seeds: int) -> str:
    """The page ``results.py --no-train`` writes for ``algos`` × ``envs``."""
    argv = ["--algos", algos, "--envs", envs, "--num-seeds", str(num_seeds)]
    assert (
        results.main([*argv, "--runs", str(runs), "--out", str(out), "--no-train"]) == 0
    )
    return out.read_text()


def test_table_from_finished_runs(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs / "a2c-CartPole-v1", [500.0, 450.0], [490.0, 470.0])
    fake_run(runs / "npg-CartPole-v1", [500.0], [500.0], interrupted=True)
    out = tmp_path / "docs" / "results.md"
    text = table(runs, out, "a2c,npg", "CartPole-v1", 2)
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


def test_a_run_of_older_settings_is_stale_and_set_aside(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    run_dir = runs / "a2c-CartPole-v1"
    fake_run(run_dir, [500.0, 450.0], [490.0, 470.0])
    config = json.loads((run_dir / "config.json").read_text())
    # What a run written before a preset change looks like; settings of how a
    # run executes (resolved per machine) do not make it stale.
    config.update(lr=0.1234, updates_per_chunk=77, devices=2)
    (run_dir / "config.json").write_text(json.dumps(config))
    assert results.changed_settings(run_dir, "a2c", "CartPole-v1", 2) == [
        "lr 0.1234 → 0.001"
    ]
    out = tmp_path / "results.md"
    argv = ["--algos", "a2c", "--envs", "CartPole-v1", "--num-seeds", "2"]
    argv += ["--runs", str(runs), "--out", str(out)]
    assert results.main([*argv, "--no-train"]) == 0
    assert "* a2c on CartPole-v1: stale (lr 0.1234 → 0.001)" in out.read_text()
    assert run_dir.is_dir()  # --no-train touches no folder

    trained = []

    def train(algo, env, num_seeds, target):
        trained.append(target)
        fake_run(target, [499.0, 498.0], [497.0, 496.0])
        return True

    monkeypatch.setattr(results, "train", train)
    assert results.main(argv) == 0
    assert trained == [run_dir]
    (stale,) = runs.glob("a2c-CartPole-v1.stale-*")
    assert json.loads((stale / "config.json").read_text())["lr"] == 0.1234
    assert "| a2c | CartPole-v1 | 498.5 ± 0.5 |" in out.read_text()


def test_the_table_keeps_every_current_run_when_one_pair_is_asked_for(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs / "a2c-CartPole-v1", [500.0, 500.0], [500.0, 500.0])
    # A pair not asked for keeps its own number of seeds.
    fake_run(runs / "npg-Breakout-MinAtar", [30.0, 20.0, 25.0], [29.0, 21.0, 25.0])
    text = table(runs, tmp_path / "results.md", "a2c", "CartPole-v1", 2)
    assert "| a2c | CartPole-v1 | 500.0 ± 0.0 | 2/2 |" in text
    # MinAtar rows: the bar of "solved" is gymnax's PPO return (28 here).
    assert "| npg | Breakout-MinAtar | 25.0 ± 4.1 | 1/3 |" in text
    assert "--num-seeds 2/3`" in text
    assert "28 (ppo, 10M; gymnax) |" in text
    # Pairs of the default grid without a run are listed; MinAtar's are not.
    assert "* trpo on Pendulum-v1" in text
    assert "* a2c on Breakout-MinAtar" not in text


def test_a_suite_environment_has_one_folder_and_one_figure_name(tmp_path):
    # brax/hopper names no subfolder: its run folder and figure are flat.
    assert results.run_folder(tmp_path, "trpo", "brax/hopper") == (
        tmp_path / "trpo-brax-hopper"
    )
    assert results.file_stem("brax/hopper") == "brax-hopper"
    assert results.file_stem("CartPole-v1") == "CartPole-v1"


def test_the_hopper_reference_names_the_simulator_it_comes_from():
    # The zoo trained on MuJoCo's Hopper-v3, not on brax's pipeline.
    assert results.reference("trpo", "brax/hopper") == (
        "3618.4 ± 356.8 (trpo, 1M; MuJoCo Hopper-v3)"
    )
    assert results.reference("npg", "brax/hopper") == (
        "3618.4 ± 356.8 (trpo, 1M; MuJoCo Hopper-v3)"
    )
    assert results.reference("a2c", "brax/hopper") == (
        "733.5 ± 376.6 (a2c, 1M; MuJoCo Hopper-v3)"
    )


def test_a_brax_row_without_its_own_zoo_agent_shows_the_best_one():
    # The zoo has no A2C agent for Ant-v3 and no NPG at all: those rows show
    # the zoo's best agent on the same MuJoCo task.
    assert results.reference("a2c", "brax/ant") == (
        "4982.3 ± 663.8 (trpo, 1M; MuJoCo Ant-v3)"
    )
    assert results.reference("npg", "brax/halfcheetah") == (
        "5819.1 ± 663.5 (ppo, 1M; MuJoCo HalfCheetah-v3)"
    )
    assert results.reference("trpo", "brax/halfcheetah") == (
        "1785.5 ± 68.7 (trpo, 1M; MuJoCo HalfCheetah-v3)"
    )


def test_a_brax_row_is_tabulated_from_its_flat_folder(tmp_path):
    pytest.importorskip("brax")
    runs = tmp_path / "runs"
    fake_run(runs / "trpo-brax-hopper", [2000.0, 1000.0], [1900.0, 900.0],
             env="brax/hopper")  # fmt: skip
    out = tmp_path / "docs" / "results.md"
    text = table(runs, out, "trpo", "brax/hopper", 2)
    assert "| trpo | brax/hopper | 1500.0 ± 500.0 | – | 1400.0 ± 500.0 |" in text
    assert "(trpo, 1M; MuJoCo Hopper-v3) |" in text
    assert (
        (out.parent / "results" / "brax-hopper.png").read_bytes().startswith(PNG_MAGIC)
    )
    assert "](results/brax-hopper.png)" in text


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


def test_a_field_added_by_a_newer_pgjax_does_not_make_a_run_stale(tmp_path):
    run_dir = tmp_path / "npg-CartPole-v1"
    fake_run(run_dir, [500.0], [500.0])
    config = json.loads((run_dir / "config.json").read_text())
    del config["natural_lr"]  # a run written before the field existed
    (run_dir / "config.json").write_text(json.dumps(config))
    assert results.changed_settings(run_dir, "npg", "CartPole-v1", 1) == []


def test_an_interrupted_run_of_older_settings_is_set_aside_not_resumed(
    tmp_path, monkeypatch
):
    run_dir = tmp_path / "runs" / "a2c-CartPole-v1"
    fake_run(run_dir, [500.0], [500.0])
    (run_dir / "summary.json").unlink()  # stopped before the end
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, "lr": 0.5}))
    trained = []
    monkeypatch.setattr(
        results, "train", lambda *args: trained.append(args[-1].exists()) or True
    )
    results.bring_up_to_date("a2c", "CartPole-v1", 1, run_dir)
    # Trained from scratch in a fresh folder; the old one kept beside it.
    assert trained == [False]
    (stale,) = run_dir.parent.glob("a2c-CartPole-v1.stale-*")
    assert json.loads((stale / "config.json").read_text())["lr"] == 0.5
