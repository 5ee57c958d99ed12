"""Algorithm registry: ``--algo NAME`` → a factory ``(config, spec, backend) →
Algorithm``.

Adding an algorithm is one module and one entry here; the trainer never branches
on the name.
"""

from __future__ import annotations

from collections.abc import Callable

from pgjax.algos.a2c import make_a2c
from pgjax.algos.ac_lambda import make_ac_lambda
from pgjax.algos.base import Algorithm
from pgjax.algos.nac import make_nac
from pgjax.algos.natural_pg import make_npg, make_trpo
from pgjax.algos.reinforce import make_reinforce
from pgjax.backend import IDENTITY, Backend
from pgjax.config import ConfigError, TrainConfig
from pgjax.envs import EnvSpec

REGISTRY: dict[str, Callable[[TrainConfig, EnvSpec, Backend], Algorithm]] = {
    "a2c": make_a2c,
    "ac-lambda": make_ac_lambda,
    "reinforce": make_reinforce,
    "npg": make_npg,
    "trpo": make_trpo,
    "nac": make_nac,
}


def make_algorithm(
    config: TrainConfig, spec: EnvSpec, backend: Backend = IDENTITY
) -> Algorithm:
    """The algorithm named by ``config.algo``, built for ``spec`` on ``backend``."""
    try:
        factory = REGISTRY[config.algo]
    except KeyError:
        names = ", ".join(sorted(REGISTRY))
        raise ConfigError(
            "--algo", f"unknown algorithm {config.algo!r}; choose from {names}"
        ) from None
    return factory(config, spec, backend)


__all__ = ["REGISTRY", "Algorithm", "make_algorithm"]
