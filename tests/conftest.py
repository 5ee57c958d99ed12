"""What the tests share: one tiny run, a compilation cache, CLI-call helpers.

tests/test_resume.py, test_sweep.py and test_evaluate_plot.py train the same
tiny configuration, so its programs compile once for all of them (and for both
pytest-xdist workers) through JAX's persistent compilation cache in
:data:`CACHE_DIR`. Modules opt in with
``pytestmark = pytest.mark.usefixtures("compilation_cache")``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import jax
import pytest

from pgjax import cpu
from pgjax.config import TrainConfig

# The tests' own programs (plain jax.jit) compile at XLA's backend level 0:
# most run once or twice on tiny inputs, so LLVM's optimisation costs more
# than it saves (a third off the suite's time on 2 cores). The trainer's
# chunks still get their backend's options (pgjax.cpu), as in
# every user's run. A level the caller already chose is kept.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join(
        [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]
    ).strip()

# Two CPU devices, as train.py gives a 2-core machine: every test runs the
# split programs that users run (pgjax.parallel); tests of one device's
# programs say so. Before anything starts JAX's backends.
cpu.use_cpu_cores(2)

CACHE_DIR = Path(
    os.environ.get("PGJAX_TEST_COMPILATION_CACHE")
    or Path(tempfile.gettempdir()) / f"pgjax-test-compilation-cache-{os.getuid()}"
)

# 16 updates of 16 envs × 8 steps in 8 chunks of 2, two seeds, checkpoints every
# 4 updates: long enough to interrupt, resume and sweep, compiled in seconds.
TINY = dict(
    env="CartPole-v1",
    num_envs=16,
    num_steps=8,
    total_timesteps=2048,
    updates_per_chunk=2,
    num_seeds=2,
    hidden=(32,),
    kl_envs=16,
    eval_episodes=2,
    checkpoint_every=4,
)
TINY_CONFIG = TrainConfig(**TINY)  # lr annealing on, no observation normalisation


@pytest.fixture(scope="module")
def compilation_cache():
    """Points JAX's persistent compilation cache at CACHE_DIR for one module."""
    from jax.experimental.compilation_cache import compilation_cache as cc

    old = (
        jax.config.jax_compilation_cache_dir,
        jax.config.jax_persistent_cache_min_compile_time_secs,
    )
    jax.config.update("jax_compilation_cache_dir", str(CACHE_DIR))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    cc.reset_cache()
    yield
    jax.config.update("jax_compilation_cache_dir", old[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])
    cc.reset_cache()


def run_main(main: Callable[[list[str]], int], argv: list[str], capsys):
    """Runs a command's ``main(argv)`` in-process; returns (exit code, stdout,
    stderr), also when argparse exits with SystemExit."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err: str, flag: str) -> None:
    """Bad input: exit code 2, one stderr line naming ``flag``, no traceback."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert flag in lines[0], err


def load_script(name: str):
    """``scripts/<name>.py`` imported as a module (registered in
    ``sys.modules`` first, as dataclasses defined in it look their module up)."""
    path = Path(__file__).resolve().parent.parent / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"pgjax_script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
