"""docs/metrics.md documents every column metrics.csv can have."""

from __future__ import annotations

import importlib
import re
import types
from pathlib import Path

import pytest

from pgjax import algos
from pgjax.config import TrainConfig
from pgjax.runner.layout import make_layout
from pgjax.runner.loop import _Run
from pgjax.train import BASE_METRICS

DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"

#: The module of every ``--algo`` factory (npg and trpo share natural_pg).
ALGORITHM_MODULES = sorted({f.__module__ for f in algos.REGISTRY.values()})


def documented_columns() -> set[str]:
    """The backticked names in the first cell of docs/metrics.md's table rows."""
    names = set()
    for line in DOC.read_text().splitlines():
        if line.startswith("|"):
            names.update(re.findall(r"`([^`]+)`", line.split("|")[1]))
    return names


def runner_columns() -> list[str]:
    """The columns the runner writes for every algorithm: metrics.csv's header
    of a swept run less the algorithm's own columns and the swept setting
    (whose column is named by the sweep): ``config``, ``seed``, ``update``,
    ``step``, ``wall_time`` and the rollout's :data:`BASE_METRICS`."""
    layout = make_layout(TrainConfig(num_seeds=2), {"lr": [1e-3, 3e-3]})
    run = types.SimpleNamespace(
        layout=layout, trainer=types.SimpleNamespace(metric_names=BASE_METRICS)
    )
    return [c for c in _Run.columns.fget(run) if c not in layout.names]


@pytest.mark.parametrize("source", ["runner", *ALGORITHM_MODULES])
def test_every_metrics_csv_column_is_documented(source):
    if source == "runner":
        columns = runner_columns()
    else:
        columns = importlib.import_module(source).METRICS
    assert columns
    missing = [name for name in columns if name not in documented_columns()]
    assert not missing, (
        f"{source} writes metrics.csv columns that docs/metrics.md has no table "
        f"row for: {missing}"
    )
