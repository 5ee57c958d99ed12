"""pgjax: policy-gradient reinforcement learning run entirely on the accelerator."""

import importlib
import importlib.util
import sys
import types

__version__ = "0.1.0"


class _DeferredModule(types.ModuleType):
    """Stands in for a module until one of its attributes is first used.

    gymnax imports seaborn at module level for two renderers (Pong, MinAtar);
    seaborn pulls in pandas and scipy.stats, about 2 s of every command's start
    on a 2-core machine, although training never renders. Likewise
    ``matplotlib.pyplot`` (five gymnax modules import it; pgjax.plotting
    imports it when it plots): 0.3-0.6 s. The first attribute
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
    # Only the top-level package is looked up: finding a submodule's spec
    # would import its package (matplotlib: 0.23 s of ``import pgjax``).
    package = name.partition(".")[0]
    if name not in sys.modules and importlib.util.find_spec(package) is not None:
        sys.modules[name] = _DeferredModule(name)


_defer_import("seaborn")
_defer_import("matplotlib.pyplot")
