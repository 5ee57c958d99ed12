"""Start-up savings for the command-line scripts, which `import pgjax` never applies.

gymnax imports seaborn at module level for two renderers (Pong, MinAtar), and
seaborn pulls in pandas and scipy.stats: about 2 s of a command's start on a
2-core machine, although training never renders. Five gymnax modules import
``matplotlib.pyplot`` too (0.3-0.6 s), which pgjax needs only to draw the
learning curve at the end of a run. :func:`defer_plotting_imports` puts
stand-ins for both into ``sys.modules``, so that gymnax's imports are free and
the real modules load on first use.

Only a script's entry point calls it: stand-ins in ``sys.modules`` change what
every later ``import`` in the process returns, which a library must not do to
its user's program.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

#: The modules :func:`defer_plotting_imports` replaces by stand-ins.
DEFERRED = ("seaborn", "matplotlib.pyplot")


class DeferredModule(types.ModuleType):
    """Stands in for a module until one of its attributes is first used.

    The first attribute lookup imports the real module, puts it in
    ``sys.modules`` and copies its namespace here, so code that already holds
    this object keeps working. (``importlib.util.LazyLoader`` does not help:
    the ``import`` statement itself reads ``__spec__``, which triggers the
    load.)
    """

    def __getattr__(self, attribute: str):
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        real = importlib.import_module(self.__name__)
        self.__dict__.update(real.__dict__)
        return getattr(real, attribute)


def _defer_import(name: str) -> None:
    # Only the top-level package's spec is looked up: finding a submodule's
    # spec imports its package, which for matplotlib costs what deferring saves.
    package = name.partition(".")[0]
    if name not in sys.modules and importlib.util.find_spec(package) is not None:
        sys.modules[name] = DeferredModule(name)


def defer_plotting_imports() -> None:
    """Replaces seaborn and ``matplotlib.pyplot`` by stand-ins until first use.

    Call it first thing in a script, before anything imports gymnax; a module
    already imported, or not installed, is left as it is.
    """
    for name in DEFERRED:
        _defer_import(name)
