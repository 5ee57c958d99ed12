"""Reading and comparing the metrics.csv of train.py runs (test helpers).

Two runs of one configuration on different device layouts compute the same
numbers up to the order of floating-point sums, which can eventually flip a
sampled action: their metrics agree to float tolerance over the first updates.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

#: What a seed computes (not wall_time).
COLUMNS = ("episode_return", "policy_loss", "value_loss", "entropy", "grad_norm", "kl")


def read_metrics(run_dir: Path) -> dict[tuple[int, int], dict[str, float]]:
    """``{(seed, update): {column: value}}`` of ``run_dir``'s metrics.csv."""
    with open(run_dir / "metrics.csv") as f:
        return {
            (int(row["seed"]), int(row["update"])): {
                c: float(row[c]) if row[c] else np.nan for c in COLUMNS
            }
            for row in csv.DictReader(f)
        }


def assert_same_metrics(a: dict, b: dict, updates: int) -> None:
    """The same rows, and equal values to float tolerance up to ``updates``."""
    assert a.keys() == b.keys()
    for seed, update in sorted(a):
        if update > updates:
            continue
        for column in COLUMNS:
            np.testing.assert_allclose(
                a[seed, update][column],
                b[seed, update][column],
                rtol=1e-4,
                atol=1e-5,
                err_msg=f"seed {seed} update {update} {column}",
            )
