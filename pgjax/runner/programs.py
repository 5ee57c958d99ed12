"""The run's compiled programs: initial state, training chunk, evaluation.

The training state is placed as the trainer's
:meth:`~pgjax.train.Trainer.state_shardings` say (seeds over the mesh's
seeds axis, envs over its envs axis); the chunk takes and returns it so,
which keeps it where it is between chunks. Programs that run once are built
with the backend's run-once options.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from pgjax import distributed, parallel
from pgjax.backend import Backend
from pgjax.compilation import compile_lowered, compile_with, lower
from pgjax.runner.layout import Layout, row_hyper, row_keys
from pgjax.train import Trainer, TrainState


def strong(tree: Any) -> Any:
    """The same arrays without weak types.

    The compiled chunk is specialised to exact input types; a restored state
    has no weak types, so the fresh one must not have them either for both to
    run the very same program.
    """
    return jax.tree.map(lambda x: x.astype(x.dtype), tree)


def trace_init(trainer: Trainer, layout: Layout) -> jax.stages.Traced:
    """The traced ``(keys, hyper) -> [R] state`` program (no weak types; see
    :func:`strong`) for the rows' keys and hyperparameters; its ``out_info``
    is the abstract state. (:func:`compile_init` traces it again with the
    state's shardings, which depend on that abstract state; the pieces
    ``init_batch`` jits inside are traced once for both.)"""
    config = trainer.config
    return jax.jit(lambda k, h: strong(trainer.init_batch(k, h))).trace(
        row_keys(config, layout), row_hyper(config, layout)
    )


def abstract_of(traced_init: jax.stages.Traced) -> Any:
    """Shapes and dtypes of the state :func:`trace_init`'s program returns."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), traced_init.out_info
    )


def abstract_state(trainer: Trainer, layout: Layout) -> Any:
    """Shapes and dtypes of the ``[R]`` state (for compiling and restoring)."""
    return abstract_of(trace_init(trainer, layout))


#: Episodes in all (rows × per row × the mode and the sampled policy) from which
#: the final evaluation is compiled with the backend's heavy run-once options:
#: 4 seeds at the default 128.
HEAVY_EVALUATION_EPISODES = 1024

#: Lines of StableHLO (about one operation each) from which the final
#: evaluation counts as heavy at any number of episodes. Its size follows the
#: env step's: 1.8-2.9 k lines on classic control, 3.2-10.7 k on MinAtar,
#: 17-35 k on brax's physics, whose episodes also run the longest. There
#: -O0 runs the program 4-9× slower for little or no compile time saved (1
#: seed × 128 mode episodes of brax/ant: compile 19 s and run 158 s at -O0,
#: 30 s and 36 s fully optimised).
HEAVY_EVALUATION_LINES = 12_000


def chunk_shardings(backend: Backend, shardings: Any) -> dict[str, Any]:
    """``jax.jit``'s shardings of the training chunk: the state enters and
    leaves as :meth:`~pgjax.train.Trainer.state_shardings` places it (so it
    stays where it is between chunks), the metrics leave whole on every
    device (every process reads them). Empty without a mesh."""
    if shardings is None:
        return {}
    whole = NamedSharding(backend.mesh, PartitionSpec())
    return {"in_shardings": (shardings,), "out_shardings": (shardings, whole)}


def layout_summary(backend: Backend) -> dict[str, int]:
    """How the run was laid over the devices, for summary.json."""
    return {
        "devices": backend.devices,
        "seed_shards": backend.seed_shards,
        "env_shards": backend.env_shards,
        "processes": jax.process_count(),
    }


def compile_evaluation(
    trainer: Trainer, abstract: Any, shardings: Any, episodes: int
) -> Callable[[TrainState], dict[str, np.ndarray]]:
    """Compiles the final evaluation for states shaped like ``abstract`` ``[R]``
    (placed as ``shardings``: each device evaluates its seeds, and splits
    their episodes like training's envs).

    The returned function gives each row's mean return over ``episodes`` fresh
    episodes twice: ``"mode"`` acting with the distribution's mode (argmax or
    the Gaussian mean) and ``"sampled"`` sampling from the policy as in
    training. A policy that only works stochastically shows as a gap between
    the two. Keys derive from each row's own key.
    """
    backend = trainer.backend

    def returns(state: TrainState) -> dict[str, jax.Array]:
        def evaluate(deterministic: bool, salt: int) -> jax.Array:
            keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(state.key, salt)
            fn = functools.partial(
                trainer.evaluate, num_episodes=episodes, deterministic=deterministic
            )
            return parallel.vmap_seeds(fn, backend)(state, keys)

        return {"mode": evaluate(True, 2**20), "sampled": evaluate(False, 2**20 + 1)}

    jit_shardings = {}
    if shardings is not None:
        jit_shardings = {
            "in_shardings": (shardings,),
            "out_shardings": NamedSharding(backend.mesh, PartitionSpec()),
        }
    lowered = lower(returns, abstract, **jit_shardings)
    rows = jax.tree.leaves(abstract)[0].shape[0]
    heavy = (
        2 * rows * episodes >= HEAVY_EVALUATION_EPISODES
        or len(lowered.as_text().splitlines()) >= HEAVY_EVALUATION_LINES
    )
    options = backend.heavy_run_once_options if heavy else backend.run_once_options
    compiled = compile_lowered(lowered, options)

    def run(state: TrainState) -> dict[str, np.ndarray]:
        values = distributed.to_host_everywhere(compiled(state))
        return {name: v.mean(axis=1) for name, v in values.items()}

    return run


def compile_init(
    trainer: Trainer, keys: jax.Array, hyper: Any, shardings: Any
) -> Callable:
    """The compiled ``(keys, hyper) -> [R] state`` (no weak types, see
    :func:`strong`) for arguments like ``keys`` and ``hyper``, built with the
    backend's run-once options and placing the state as ``shardings``."""
    return compile_with(
        lambda k, h: strong(trainer.init_batch(k, h)),
        keys,
        hyper,
        options=trainer.backend.run_once_options,
        out_shardings=shardings,
    )


def call_chunk(chunk_fn, state):
    new_state, metrics = chunk_fn(state)
    return new_state, distributed.to_host_everywhere(metrics)
