"""How the rows of the vmapped training state map to configurations and seeds.

A run trains ``num_seeds`` seeds of each configuration of a sweep's product
grid as rows of one program: row ``c·S + s`` is seed ``s`` of configuration
``c``, with the seed's own key and the configuration's hyperparameters.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pgjax.config import (
    SWEEPABLE,
    Hyperparams,
    TrainConfig,
)


@dataclasses.dataclass(frozen=True)
class Layout:
    """How the rows of the vmapped state map to configurations and seeds.

    Row ``r`` trains configuration ``r // num_seeds`` with seed
    ``config.seed + r % num_seeds``; configurations are the product of the
    swept lists, in :data:`~pgjax.config.SWEEPABLE` order (last name fastest).
    """

    names: tuple[str, ...]  # swept names, SWEEPABLE order
    values: tuple[tuple[float, ...], ...]  # each name's list, as given
    points: tuple[tuple[float, ...], ...]  # one tuple of values per configuration
    num_seeds: int
    first_seed: int

    @property
    def num_configs(self) -> int:
        return len(self.points)

    @property
    def num_rows(self) -> int:
        return self.num_configs * self.num_seeds

    @property
    def swept(self) -> bool:
        return bool(self.names)

    def labels(self, row: int) -> dict[str, Any]:
        """The fixed metrics.csv columns of a row: config, seed, swept values."""
        config_index, seed_offset = divmod(row, self.num_seeds)
        labels: dict[str, Any] = {}
        if self.swept:
            labels["config"] = config_index
        labels["seed"] = self.first_seed + seed_offset
        for name, value in zip(self.names, self.points[config_index], strict=True):
            labels[name] = value
        return labels

    def label_columns(self) -> list[str]:
        return (["config"] if self.swept else []) + ["seed", *self.names]


def make_layout(
    config: TrainConfig, sweep: Mapping[str, Sequence[float]] | None = None
) -> Layout:
    """The sweep grid (one point when not sweeping).

    Raises:
      ValueError: a swept name that is not in SWEEPABLE, or an empty list.
    """
    sweep = sweep or {}
    unknown = [n for n in sweep if n not in SWEEPABLE]
    if unknown:
        raise ValueError(f"cannot sweep {unknown}: sweepable are {SWEEPABLE}")
    names = tuple(n for n in SWEEPABLE if n in sweep)
    for name in names:
        if not sweep[name]:
            raise ValueError(f"empty sweep list for {name}")
    values = tuple(tuple(float(v) for v in sweep[n]) for n in names)
    points = tuple(itertools.product(*values))
    return Layout(names, values, points, config.num_seeds, config.seed)


def grid_configs(config: TrainConfig, layout: Layout) -> list[TrainConfig]:
    """One TrainConfig per configuration of the grid (for validation/reports)."""
    return [
        dataclasses.replace(config, **dict(zip(layout.names, point, strict=True)))
        for point in layout.points
    ]


def row_hyper(config: TrainConfig, layout: Layout) -> Hyperparams:
    """Hyperparams with ``[R]`` leaves for swept names (scalars otherwise)."""
    hyper = Hyperparams.from_config(config)
    if not layout.swept:
        return hyper
    swept = {}
    for i, name in enumerate(layout.names):
        per_config = np.asarray([p[i] for p in layout.points], np.float32)
        swept[name] = jnp.asarray(np.repeat(per_config, layout.num_seeds))
    return hyper.replace(**swept)


def seed_keys(config: TrainConfig) -> jax.Array:
    """One PRNG key per seed: ``PRNGKey(seed + i)`` for ``i < num_seeds``."""
    seeds = jnp.arange(config.seed, config.seed + config.num_seeds)
    return jax.vmap(jax.random.PRNGKey)(seeds)


def row_keys(config: TrainConfig, layout: Layout) -> jax.Array:
    """``[R]`` keys: the seeds' keys repeated for each configuration."""
    return jnp.tile(seed_keys(config), (layout.num_configs, 1))
