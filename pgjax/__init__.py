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


def _synchronous_cpu_dispatch() -> None:
    """Turns off JAX's asynchronous dispatch on the CPU backend.

    With it on, a compiled chunk occasionally never completed: the host waits
    for the result buffer at 0% CPU while every XLA thread idles (seen here in
    2 of ~25 multi-seed runs, in the first chunk; jax-ml/jax#25861 reports the
    same hang and this workaround). The runner blocks on every chunk's metrics
    anyway, so asynchronous dispatch buys nothing. Takes effect only before the
    CPU backend starts; ``JAX_CPU_ENABLE_ASYNC_DISPATCH`` set by the user wins.
    """
    if "JAX_CPU_ENABLE_ASYNC_DISPATCH" in os.environ:
        return
    import jax

    jax.config.update("jax_cpu_enable_async_dispatch", False)


_synchronous_cpu_dispatch()
