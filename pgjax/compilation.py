"""Compiling the trainer's programs: persistent cache, options, lowering apart.

A run compiles three programs: the training chunk (run hundreds of times),
the initial state and the final evaluation (each run once). Which XLA options
each gets is the backend's choice (:class:`pgjax.backend.Backend`); this module
only applies them:

* :func:`lower` traces and lowers a program (Python work, holding the GIL) and
  :func:`compile_lowered` compiles it (XLA, releasing the GIL), so that the
  runner can compile the chunk in a worker thread while it builds the initial
  state in the main one: a compile keeps all cores busy only part of the time.
* An option the jaxlib does not know (some are experimental in XLA) is dropped
  instead of failing the compile.
* :func:`enable_persistent_cache` points JAX's persistent compilation cache at
  a folder, so that a second run of the same programs (another seed, a
  resume, a rerun) loads the executables instead of compiling them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax

#: Default folder of the persistent compilation cache (CLI ``--compile-cache``).
DEFAULT_CACHE_DIR = Path(
    os.environ.get("PGJAX_COMPILE_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pgjax/xla"
)

# Below this, loading an entry costs about what compiling does.
_MIN_COMPILE_SECONDS_TO_CACHE = 0.3


def enable_persistent_cache(directory: str | os.PathLike) -> None:
    """Caches compiled executables in ``directory`` (created if missing).

    Entries are keyed by the program, its input types and shardings, compile
    options, the jax/jaxlib version and the devices, so a stale entry is never
    used. An entry that cannot be read (e.g. half-written when the process was
    killed) gives a warning and a normal compile.
    """
    path = Path(directory).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update(
        "jax_persistent_cache_min_compile_time_secs", _MIN_COMPILE_SECONDS_TO_CACHE
    )
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def lower(
    fn: Callable,
    *args: Any,
    donate_argnums: int | tuple[int, ...] = (),
    in_shardings: Any = None,
    out_shardings: Any = None,
) -> jax.stages.Lowered:
    """``jit(fn)`` traced and lowered for ``args`` (arrays or
    ShapeDtypeStructs), with the given shardings (None: JAX's choice)."""
    shardings = {}
    if in_shardings is not None:
        shardings["in_shardings"] = in_shardings
    if out_shardings is not None:
        shardings["out_shardings"] = out_shardings
    return jax.jit(fn, donate_argnums=donate_argnums, **shardings).lower(*args)


def compile_lowered(
    lowered: jax.stages.Lowered, options: Mapping[str, Any] | None = None
) -> jax.stages.Compiled:
    """``lowered`` compiled with XLA ``options`` (None or empty: XLA's
    defaults), dropping any option the jaxlib does not know."""
    options = dict(options or {})
    while True:
        try:
            return lowered.compile(compiler_options=options or None)
        except jax.errors.JaxRuntimeError as error:
            unknown = [name for name in options if name in str(error)]
            if not unknown:
                raise
            options = {k: v for k, v in options.items() if k not in unknown}


def compile_with(
    fn: Callable, *args: Any, options: Mapping[str, Any] | None = None, **jit_kwargs
) -> jax.stages.Compiled:
    """:func:`lower` then :func:`compile_lowered` in one call."""
    return compile_lowered(lower(fn, *args, **jit_kwargs), options)


__all__ = [
    "DEFAULT_CACHE_DIR",
    "compile_lowered",
    "compile_with",
    "enable_persistent_cache",
    "lower",
]
