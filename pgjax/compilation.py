"""Compiling the trainer's programs: persistent cache and cheap one-shot builds.

A run compiles three programs: the training chunk (run hundreds of times), the
initial state and the final evaluation (each run once). On a 2-core CPU XLA
spends seconds on each. A compile keeps both cores busy only part of the
time (its HLO passes run on one thread), so the runner compiles the initial
state's program while the chunk compiles (:func:`lower_chunk` in the main
thread, then :func:`compile_lowered_chunk` in a worker): A2C on CartPole
finished its first chunk 1.2 s sooner from an empty cache (median of 6
rounds; docs/performance.md, "Eleventh session"). And:

* :func:`compile_once` builds the run-once programs at XLA backend optimisation
  level 0, which halves their compile time (init 3.2 → 1.7 s, evaluation
  2.7 → 1.6 s for A2C on CartPole); they run once, so their slower code costs
  milliseconds. The chunk is optimised (-O0 makes it ~3× slower; -O1, see below).
  Results agree with the optimised build to float32 rounding, not bit for bit.
  A heavy run-once program (the final evaluation of a sweep: rows × episodes
  of full episodes) is built at -O1 instead: for 32 rows × 128 CartPole
  episodes -O0 ran 3.4–4.2 s, -O1 0.45 s for 0.2–0.4 s more compile.
* :func:`compile_chunk` builds the training chunk with the XLA options that
  measured fastest for its algorithm (:func:`chunk_options`). On a CPU, XLA
  hands fused subgraphs of matrix products, elementwise ops and reductions to
  the YNNPACK library by default; for the small MLPs of the actor-critic
  methods, and above all under ``vmap`` over seeds, those fused subgraphs run
  slower than XLA's own loops around single products (with 32 seeds × 64 envs
  one fused KL pass took 21 ms of a 61 ms update). Keeping YNNPACK for single
  products only made the chunk 1.07× faster for A2C at 4096 envs, 1.26× for a
  sweep of 32 × 64 envs, 1.17× for 8 seeds × 4096, 1.04× for NPG and 1.32×
  for TRPO; REINFORCE measured 0.91×, so it keeps XLA's default
  (docs/performance.md, "Fifth session"). Every chunk is also built at
  backend optimisation level 1 (LLVM's lighter pipeline): 21 % shorter
  compiles for A2C (3.32 → 2.61 s), 16 % for NPG (5.37 → 4.52 s), 4–8 % for
  TRPO and REINFORCE, at the same speed (median speed ratios 0.98–1.02 over
  9–11 alternating repeats; docs/performance.md, "Seventh session").
* :func:`enable_persistent_cache` points JAX's persistent compilation cache at a
  folder, so that a second run of the same programs (another seed, a resume, a
  rerun) loads the executables instead of compiling them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

#: Default folder of the persistent compilation cache (CLI ``--compile-cache``).
DEFAULT_CACHE_DIR = Path(
    os.environ.get("PGJAX_COMPILE_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pgjax/xla"
)

#: XLA options for programs that run once (see the module docstring).
RUN_ONCE_OPTIONS = {"xla_backend_optimization_level": 0}
#: ... and for run-once programs with much work.
HEAVY_RUN_ONCE_OPTIONS = {"xla_backend_optimization_level": 1}

_YNNPACK_SINGLE_PRODUCTS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
}
_LIGHT_LLVM = {"xla_backend_optimization_level": 1}

#: XLA options of each algorithm's chunk on a CPU (see the module docstring);
#: no other backend gets options.
CPU_CHUNK_OPTIONS: dict[str, dict[str, Any]] = {
    "a2c": {**_YNNPACK_SINGLE_PRODUCTS, **_LIGHT_LLVM},
    "npg": {**_YNNPACK_SINGLE_PRODUCTS, **_LIGHT_LLVM},
    "trpo": {**_YNNPACK_SINGLE_PRODUCTS, **_LIGHT_LLVM},
    "reinforce": dict(_LIGHT_LLVM),
}

# Below this, loading an entry costs about what compiling does.
_MIN_COMPILE_SECONDS_TO_CACHE = 0.3


def enable_persistent_cache(directory: str | os.PathLike) -> None:
    """Caches compiled executables in ``directory`` (created if missing).

    Entries are keyed by the program, its input types, compile options, the
    jax/jaxlib version and the device, so a stale entry is never used. An entry
    that cannot be read (e.g. half-written when the process was killed) gives a
    warning and a normal compile.
    """
    path = Path(directory).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update(
        "jax_persistent_cache_min_compile_time_secs", _MIN_COMPILE_SECONDS_TO_CACHE
    )
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def compile_once(fn: Callable, *args: Any, heavy: bool = False) -> jax.stages.Compiled:
    """``jit(fn)`` compiled for ``args`` (arrays or ShapeDtypeStructs) at -O0,
    or at -O1 when ``heavy``.

    For programs that run once per process; see the module docstring.
    """
    return compile_traced_once(jax.jit(fn).trace(*args), heavy=heavy)


def compile_traced_once(
    traced: jax.stages.Traced, heavy: bool = False
) -> jax.stages.Compiled:
    """:func:`compile_once` of a program already traced (``jit(fn).trace``),
    for a caller that also reads the trace (e.g. its ``out_info``)."""
    options = HEAVY_RUN_ONCE_OPTIONS if heavy else RUN_ONCE_OPTIONS
    return traced.lower().compile(compiler_options=options)


def chunk_options(algo: str, backend: str | None = None) -> dict[str, Any]:
    """XLA compile options of ``algo``'s training chunk on ``backend``
    (default: JAX's default backend); ``{}`` means XLA's defaults."""
    backend = backend or jax.default_backend()
    if backend == "cpu":
        return dict(CPU_CHUNK_OPTIONS.get(algo, {}))
    return {}


def lower_chunk(
    fn: Callable,
    *args: Any,
    donate_argnums: int | tuple[int, ...] = (),
    sharding: jax.sharding.Sharding | None = None,
) -> jax.stages.Lowered:
    """``jit(fn)`` traced and lowered for ``args``, the first half of
    :func:`compile_chunk` (Python work, holding the GIL; the compile that
    follows releases it, see :func:`compile_lowered_chunk`)."""
    shardings = {}
    if sharding is not None:
        shardings = {"in_shardings": sharding, "out_shardings": sharding}
    return jax.jit(fn, donate_argnums=donate_argnums, **shardings).lower(*args)


def compile_lowered_chunk(
    lowered: jax.stages.Lowered, algo: str
) -> jax.stages.Compiled:
    """The second half of :func:`compile_chunk`: ``lowered`` compiled with
    :func:`chunk_options` of ``algo``, dropping any option the jaxlib lacks."""
    options = chunk_options(algo)
    while True:
        try:
            return lowered.compile(compiler_options=options or None)
        except jax.errors.JaxRuntimeError as error:
            unknown = [name for name in options if name in str(error)]
            if not unknown:
                raise
            options = {k: v for k, v in options.items() if k not in unknown}


def compile_chunk(
    fn: Callable,
    algo: str,
    *args: Any,
    donate_argnums: int | tuple[int, ...] = (),
    sharding: jax.sharding.Sharding | None = None,
) -> jax.stages.Compiled:
    """``jit(fn)`` compiled for ``args`` with :func:`chunk_options` of ``algo``.

    ``sharding``: of every input and output leaf (e.g.
    :func:`pgjax.parallel.replicated`); None leaves it to JAX (one device).
    An option the jaxlib does not know (some are experimental in XLA) is
    dropped instead of failing the compile; the others are kept.
    """
    lowered = lower_chunk(fn, *args, donate_argnums=donate_argnums, sharding=sharding)
    return compile_lowered_chunk(lowered, algo)


__all__ = [
    "CPU_CHUNK_OPTIONS",
    "DEFAULT_CACHE_DIR",
    "HEAVY_RUN_ONCE_OPTIONS",
    "RUN_ONCE_OPTIONS",
    "chunk_options",
    "compile_chunk",
    "compile_lowered_chunk",
    "compile_once",
    "compile_traced_once",
    "enable_persistent_cache",
    "lower_chunk",
]
