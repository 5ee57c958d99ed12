"""pgjax: policy-gradient reinforcement learning run entirely on the accelerator."""

import importlib
import importlib.util
import os
import sys
import types

__version__ = "0.1.0"


class _DeferredModule(types.ModuleType):
    """Stands in for a module until one of its attributes is first used.

    gymnax imports seaborn at module level for two renderers (Pong, MinAtar);
    seaborn pulls in pandas and scipy.stats, about 2 s of every command's start
    on a 2-core machine, although training never renders. The first attribute
    lookup imports the real module, puts it in ``sys.modules`` and copies its
    namespace here, so code holding this object keeps working.
    (``importlib.util.LazyLoader`` does not help: the ``import`` statement itself
    reads ``__spec__``, which triggers the load.)
    """

    def __getattr__(self, attribute: str):
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        real = importlib.import_module(self.__name__)
        self.__dict__.update(real.__dict__)
        return getattr(real, attribute)


def _defer_import(name: str) -> None:
    if name not in sys.modules and importlib.util.find_spec(name) is not None:
        sys.modules[name] = _DeferredModule(name)


_defer_import("seaborn")


def _single_threaded_eigen() -> None:
    """Adds ``--xla_cpu_multi_thread_eigen=false`` to ``XLA_FLAGS``.

    XLA's multi-threaded Eigen pool on the CPU can wedge: a compiled program of
    nested loops under ``vmap`` then never finishes, at 0% CPU (seen here once
    in ~15 multi-seed runs; the same hang and workaround are reported in
    https://github.com/PyAutoLabs/PyAutoFit/issues/1528). With our
    cache-sized blocks of 2048 rows the pool buys nothing measurable
    (docs/performance.md). Takes effect only if no JAX computation has run yet
    in the process; a user's own setting of the flag wins. Accelerators are
    unaffected.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_multi_thread_eigen" not in flags:
        os.environ["XLA_FLAGS"] = (
            flags + " --xla_cpu_multi_thread_eigen=false"
        ).strip()


_single_threaded_eigen()
