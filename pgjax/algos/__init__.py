"""Algorithm registry: ``--algo NAME`` → a factory ``(config, spec) → Algorithm``.

Adding an algorithm is one module and one entry here; the trainer never branches
on the name.
"""

from __future__ import annotations

from collections.abc import Callable

from pgjax.algos.a2c import make_a2c
from pgjax.algos.base import Algorithm
from pgjax.algos.natural_pg import make_npg, make_trpo
from pgjax.algos.reinforce import make_reinforce
from pgjax.config import TrainConfig
from pgjax.envs import EnvSpec

REGISTRY: dict[str, Callable[[TrainConfig, EnvSpec], Algorithm]] = {
    "a2c": make_a2c,
    "reinforce": make_reinforce,
    "npg": make_npg,
    "trpo": make_trpo,
}


def make_algorithm(config: TrainConfig, spec: EnvSpec) -> Algorithm:
    """The algorithm named by ``config.algo``, built for ``spec``."""
    try:
        factory = REGISTRY[config.algo]
    except KeyError:
        names = ", ".join(sorted(REGISTRY))
        raise ValueError(
            f"unknown algorithm {config.algo!r}; choose from {names}"
        ) from None
    return factory(config, spec)


__all__ = ["REGISTRY", "Algorithm", "make_algorithm"]
