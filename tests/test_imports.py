"""What importing pgjax loads and changes: nothing beyond pgjax and its numerics.

The command line defers gymnax's unused plotting imports (pgjax._startup); a
user's ``import pgjax`` must not: stand-ins in ``sys.modules`` would change
what the user's own imports return. Each check runs in a fresh interpreter,
since this process has imported everything already.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_python(code: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr


def test_library_import_leaves_other_libraries_alone():
    run_python(
        """
        import sys
        import pgjax, pgjax.losses, pgjax.natural, pgjax.distributions
        # No entry of sys.modules is an object of pgjax's making.
        stand_ins = [name for name, module in sys.modules.items()
                     if type(module).__module__.startswith("pgjax")]
        assert not stand_ins, stand_ins
        assert "pgjax._startup" not in sys.modules
        loaded = [m for m in ("matplotlib", "matplotlib.pyplot", "seaborn", "pandas")
                  if m in sys.modules]
        assert not loaded, loaded
        # JAX lowers linear algebra as it would without pgjax
        # (pgjax.cpu_linalg.install is the shell's, and the user's, call).
        from jax.interpreters import mlir
        from jax.lax import linalg
        rule = mlir._platform_specific_lowerings["cpu"][linalg.cholesky_p].rule
        assert rule.__module__.startswith("jax"), rule.__module__
        """
    )


def test_deferred_modules_load_when_used():
    # gymnax imports matplotlib.pyplot and seaborn for its renderers; training
    # never renders, so after the command line's deferral neither loads until
    # an attribute is used, and then each works as the real module.
    run_python(
        """
        import sys
        from pgjax import _startup
        _startup.defer_plotting_imports()
        import gymnax
        assert "pandas" not in sys.modules  # seaborn's import did not run
        import matplotlib.pyplot as plt
        assert isinstance(plt, _startup.DeferredModule)
        figure = plt.figure()
        assert type(figure).__name__ == "Figure"
        import seaborn
        assert seaborn.color_palette("deep")
        from pgjax import plotting
        """
    )


def test_train_script_defers_plotting_imports():
    # The command line's entry point applies the deferral before anything
    # imports gymnax; the run itself is replaced here by a stand-in that
    # imports gymnax as the runner does and records what was loaded.
    run_python(
        """
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("script", "scripts/train.py")
        train = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(train)
        assert "matplotlib.pyplot" not in sys.modules  # importing it defers nothing
        from pgjax import _startup, cli
        seen = {}

        def fake_train_main(argv, start_time):
            import gymnax
            seen["pandas"] = "pandas" in sys.modules
            seen["pyplot"] = sys.modules["matplotlib.pyplot"]
            return 0

        cli.train_main = fake_train_main
        assert train.main([]) == 0
        assert not seen["pandas"]
        assert isinstance(seen["pyplot"], _startup.DeferredModule)
        """
    )
