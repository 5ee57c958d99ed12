"""scripts/benchmark.py end to end on a tiny workload: the report's fields."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import benchmark


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


def test_benchmark_reports_paired_ratio(tmp_path):
    out = tmp_path / "bench"
    argv = ["--algos", "a2c", "--num-envs", "16", "--num-steps", "4"]
    argv += ["--updates", "2", "--repeats", "3", "--skip", "scaling,solve"]
    assert benchmark.main([*argv, "--out", str(out)]) == 0
    report = json.loads((out / "benchmark.json").read_text())
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
