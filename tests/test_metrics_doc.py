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


@pytest.mark.parametrize("algo", sorted(algos.REGISTRY))
def test_every_update_returns_exactly_its_declared_metrics(algo):
    """The runner writes only the declared columns (metric_names) and drops
    any other key: an update's keys must be those names, no more, no less."""
    import jax

    from pgjax.train import make_train

    config = TrainConfig(
        algo=algo, num_envs=8, num_steps=1 if algo == "ac-lambda" else 8, hidden=(8,)
    )
    trainer = make_train(config)
    state = jax.eval_shape(trainer.init, jax.random.PRNGKey(0))
    _, metrics = jax.eval_shape(trainer.update, state)
    assert sorted(metrics) == sorted(trainer.metric_names)
