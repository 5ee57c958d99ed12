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
