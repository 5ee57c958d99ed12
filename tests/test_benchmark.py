"""scripts/benchmark.py: its measurements on a tiny workload, the report's
fields, its file names and its plots."""

from __future__ import annotations

import datetime
import json
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from pgjax import cpu

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import benchmark
import reference_a2c

PNG = b"\x89PNG\r\n\x1a\n"


def test_paired_times_alternate_programs():
    calls = []

    def program(name):
        def run():
            calls.append(name)
            return 0

        return run

    times = benchmark.paired_times([(program("a"), ()), (program("b"), ())], 3)
    assert [len(t) for t in times] == [3, 3]
    # One warm-up each, then a, b, a, b, a, b.
    assert calls == ["a", "b"] + ["a", "b"] * 3


def test_phase_costs_are_differences_within_a_round():
    # The machine slows down in round 1 and the second prefix's round 2 is an
    # outlier: per-round differences give the phase its steady 0.1 s, while
    # the difference of the two medians (5.1 − 2) would give it 3.1 s.
    times = [[1.0, 5.0, 2.0], [1.1, 5.1, 6.0]]
    costs = benchmark.phase_costs(["first", "second"], times, updates=1)
    assert costs["first"] == 2.0
    assert abs(costs["second"] - 0.1) < 1e-9
    # Per update, and never negative.
    costs = benchmark.phase_costs(["a", "b"], [[4.0, 4.0], [3.0, 3.0]], updates=2)
    assert costs == {"a": 2.0, "b": 0.0}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One in-process run of every section but solve on a tiny workload, its
    envs on one device (``--devices 1``) of the two the tests have:
    ``(out folder, report)``."""
    out = tmp_path_factory.mktemp("bench")
    argv = ["--algos", "a2c", "--num-envs", "16", "--num-steps", "4"]
    argv += ["--updates", "2", "--repeats", "3", "--skip", "solve"]
    argv += ["--scaling-envs", "16,32", "--scaling-seeds", "", "--devices", "1"]
    assert benchmark.main([*argv, "--out", str(out)]) == 0
    (path,) = out.glob("*.json")
    return out, json.loads(path.read_text())


def test_benchmark_reports_paired_ratio(tiny_run):
    _, report = tiny_run
    assert report["ceiling"]["steps_per_second"] > 0
    a2c = report["algorithms"]["a2c"]
    assert len(a2c["ratios_to_reference"]) == 3
    assert min(a2c["ratios_to_reference"]) <= a2c["ratio_to_reference"]
    assert a2c["ratio_to_reference"] <= max(a2c["ratios_to_reference"])
    assert a2c["reference_steps_per_second"] > 0
    assert 0 < a2c["rollout_fraction"] < 1
    assert a2c["compile_seconds"] > 0
    assert a2c["compile_vs_reference"] > 0
    assert a2c["fused_kernels"] > 10


def test_benchmark_writes_results_and_speed_plot_named_by_month_and_machine(
    tiny_run,
):
    out, report = tiny_run
    stem = f"{datetime.date.today():%Y-%m}-cpu-{cpu.usable_cores()}core"
    # The results, the speed plot and no solve plot (its section skipped).
    assert sorted(p.name for p in out.iterdir()) == [
        f"{stem}-speed.png",
        f"{stem}.json",
    ]
    assert (out / f"{stem}-speed.png").read_bytes()[:8] == PNG
    assert report["date"] == datetime.date.today().isoformat()
    assert report["cores"] == cpu.usable_cores()
    assert report["jax"] == jax.__version__
    assert report["command"].endswith("--devices 1 --out " + str(out))
    if (Path(__file__).resolve().parent.parent / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{4,40}", report["commit"])
    # --devices 1 in-process: every measurement on one device of the two.
    assert jax.device_count() == 2
    assert report["devices"] == 1
    scaling = report["scaling_envs"]
    rows = [report["algorithms"]["a2c"], *scaling["a2c"]]
    assert [r["env_shards"] for r in rows] == [1, 1, 1]
    # The reference timed at each num_envs, paired with the algorithm.
    assert [r["num_envs"] for r in scaling["reference_a2c"]] == [16, 32]
    assert [r["num_envs"] for r in scaling["ceiling"]] == [16, 32]
    for reference, a2c in zip(scaling["reference_a2c"], scaling["a2c"], strict=True):
        assert reference["steps_per_second"] == a2c["reference_steps_per_second"]
        assert len(a2c["ratios_to_reference"]) == 3


def test_default_output_is_the_repositorys_docs_bench():
    args = benchmark.build_parser().parse_args([])
    assert args.out == Path(__file__).resolve().parent.parent / "docs" / "bench"
    assert args.name is None


def test_machine_slug_and_report_stem():
    assert benchmark.machine_slug("cpu", "cpu", 2) == "cpu-2core"
    assert benchmark.machine_slug("cpu", "AMD EPYC", 16) == "cpu-16core"
    assert benchmark.machine_slug("gpu", "NVIDIA H100 80GB HBM3", 16) == "gpu-h100"
    assert benchmark.machine_slug("gpu", "NVIDIA A100-SXM4-40GB", 8) == "gpu-a100"
    assert benchmark.machine_slug("gpu", "Tesla V100-SXM2-16GB", 8) == "gpu-v100"
    assert benchmark.machine_slug("tpu", "TPU v4", 8) == "tpu-v4"
    rtx = benchmark.machine_slug("gpu", "NVIDIA GeForce RTX 4090", 8)
    assert rtx == "gpu-rtx-4090"
    day = datetime.date(2026, 3, 9)
    assert benchmark.report_stem(day, "cpu-2core") == "2026-03-cpu-2core"


def test_train_py_split_counts_devices_for_seeds_first(monkeypatch):
    def split(cores, num_envs, num_seeds):
        monkeypatch.setattr(benchmark.cpu, "usable_cores", lambda: cores)
        config = benchmark.config_for(
            "a2c", "CartPole-v1", num_envs, 16, num_seeds=num_seeds
        )
        found = benchmark.train_py_split(config)
        return found["train_py_devices"], found["train_py_env_shards"]

    # One seed of a large batch: both cores split its envs.
    assert split(2, 16384, 1) == (2, 2)
    # Two seeds: a core each, no seed's envs split.
    assert split(2, 16384, 2) == (2, 1)
    # Four cores, two seeds: two devices per seed split its envs.
    assert split(4, 16384, 2) == (4, 2)
    # Three seeds do not divide over two devices: the envs split instead.
    assert split(2, 16384, 3) == (2, 2)
    # One seed too small for a split to pay.
    assert split(2, 64, 1) == (1, 1)


def test_newest_alternatives_goes_by_name(tmp_path):
    assert benchmark.newest_alternatives(tmp_path) is None
    newer = tmp_path / "2026-12-cpu-2core-alternatives.json"
    older = tmp_path / "2026-11-cpu-2core-alternatives.json"
    newer.write_text("{}")
    older.write_text("{}")  # written last: the newer file time
    (tmp_path / "2026-12-cpu-2core.json").write_text("{}")
    assert benchmark.newest_alternatives(tmp_path) == newer


def _solve_result(seconds):
    runs = [
        {"seed": i, "seconds_to_threshold": s, "eval_return": 500.0}
        for i, s in enumerate(seconds)
    ]
    return {"threshold": 475.0, "compilation_cache": "shared", "runs": runs}


def test_solve_plot_puts_alternatives_beside_pgjax(tmp_path):
    report = {
        "env": "CartPole-v1",
        "device": "cpu:cpu",
        "devices": 2,
        "date": "2026-12-03",
        "commit": "abc1234",
        "solve": {
            "a2c": _solve_result([3.0, 4.0, 3.5]),
            "npg": _solve_result([6.0, None, 8.0]),
        },
    }
    alternatives = tmp_path / "alternatives.json"
    entries = {
        "rejax_ppo": {
            "script": "docs/bench/alternatives/rejax_ppo_cartpole.py",
            "runs": [{"seed": 0, "seconds_to_threshold": 7.9}],
        },
        "sb3_a2c": {
            "script": "docs/bench/alternatives/sb3_a2c_cartpole.py",
            "runs": [
                {"seed": 0, "seconds_to_threshold": 16.9},
                {"seed": 1, "seconds_to_threshold": 12.0},
            ],
        },
        # Another env's: not comparable, left out.
        "other": {"script": "acrobot.py", "runs": [{"seconds_to_threshold": 1}]},
    }
    alternatives.write_text(json.dumps({"alternatives": entries}))
    bars = benchmark.solve_bars(report, alternatives)
    assert [(b["label"], b["seconds"], b["seeds"]) for b in bars] == [
        ("pgjax A2C", [3.0, 4.0, 3.5], 3),
        ("pgjax NPG", [6.0, 8.0], 3),
        ("rejax PPO", [7.9], 1),
        ("Stable-Baselines3 A2C", [16.9, 12.0], 2),
    ]
    with_alternatives = tmp_path / "with.png"
    benchmark.plot_solve(report, with_alternatives, alternatives)
    alone = tmp_path / "alone.png"
    benchmark.plot_solve(report, alone, None)
    assert with_alternatives.read_bytes()[:8] == PNG
    # A row per bar: the alternatives' two make the figure taller.
    assert _png_height(with_alternatives) > _png_height(alone)


def _png_height(path: Path) -> int:
    # The IHDR chunk: width and height, big-endian, after the 16-byte header.
    return int.from_bytes(path.read_bytes()[20:24], "big")


def test_distinct_fused_kernels_counts_identical_bodies_once():
    import jax
    import jax.numpy as jnp

    def one(x):
        return jnp.tanh(x * 2.0 + 1.0)

    def two_alike(x, y):
        # Two fusions with the same body (different shapes would differ).
        return jax.lax.optimization_barrier(one(x)), one(y)

    def two_unlike(x, y):
        return jax.lax.optimization_barrier(one(x)), jnp.exp(y) - 3.0

    x = jnp.ones(64)
    count = {
        f.__name__: benchmark.distinct_fused_kernels(jax.jit(f).lower(x, x).compile())
        for f in (two_alike, two_unlike)
    }
    assert count["two_unlike"] == count["two_alike"] + 1


def test_solve_reads_the_first_crossing_and_can_give_each_run_an_empty_cache(
    monkeypatch, tmp_path
):
    seen = []

    def fake_run(command, capture_output, text, env):
        run_dir = Path(command[command.index("--run-dir") + 1])
        run_dir.mkdir(parents=True)
        seen.append(env.get("PGJAX_COMPILE_CACHE"))
        rows = ["wall_time,episode_return", "1.5,", "2.5,480", "3.5,500"]
        (run_dir / "metrics.csv").write_text("\n".join(rows) + "\n")
        summary = {"eval_return": 500.0, "compile_seconds": 1.0}
        summary["steps_per_second"] = 1e6
        (run_dir / "summary.json").write_text(json.dumps(summary))

        class Done:
            returncode = 0

        return Done()

    monkeypatch.setattr(benchmark.subprocess, "run", fake_run)
    monkeypatch.setenv("PGJAX_COMPILE_CACHE", str(tmp_path / "user-cache"))
    shared = benchmark.bench_solve("a2c", "CartPole-v1", [0, 1], [])
    assert shared["median_seconds_to_threshold"] == 2.5
    assert shared["compilation_cache"] == "shared"
    cold = benchmark.bench_solve("a2c", "CartPole-v1", [0, 1], [], cold=True)
    assert cold["compilation_cache"] == "empty per run"
    assert seen[:2] == [str(tmp_path / "user-cache")] * 2
    # A fresh folder per run, none of them the user's.
    assert len(set(seen[2:])) == 2
    assert str(tmp_path / "user-cache") not in seen[2:]


def test_reference_flattens_image_observations():
    # MinAtar's [10, 10, C] frames: the reference's MLPs take them flattened,
    # so benchmark.py can time any gymnax env against it.
    init, chunk = reference_a2c.make_reference_a2c(
        "Breakout-MinAtar", num_envs=4, num_steps=3
    )
    state, losses = jax.jit(lambda s: chunk(s, 2))(init(jax.random.key(0)))
    assert losses.shape == (2,)
    assert bool(jnp.all(jnp.isfinite(losses)))
    assert state.obs.shape == (4, 10, 10, 4)
