"""What importing pgjax loads: the plotting stack only when something plots.

Each check runs in a fresh interpreter, since this process has imported
everything already.
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


def test_library_import_loads_no_plotting_stack():
    # Finding a submodule's spec would import its package: matplotlib took
    # 0.23 s of every `import pgjax` that way.
    run_python(
        """
        import sys
        import pgjax, pgjax.losses, pgjax.natural
        loaded = [m for m in ("matplotlib", "seaborn", "pandas") if m in sys.modules
                  and type(sys.modules[m]).__name__ != "_DeferredModule"]
        assert not loaded, loaded
        """
    )


def test_deferred_modules_load_when_used():
    # gymnax imports matplotlib.pyplot and seaborn for its renderers; training
    # never renders, so neither loads until an attribute is used.
    run_python(
        """
        import sys
        import pgjax, gymnax
        assert "pandas" not in sys.modules  # seaborn's import did not run
        import matplotlib.pyplot as plt
        assert type(plt).__name__ == "_DeferredModule"
        figure = plt.figure()
        assert type(figure).__name__ == "Figure"
        import seaborn
        assert seaborn.color_palette("deep")
        from pgjax import plotting
        """
    )
