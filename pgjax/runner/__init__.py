"""The shell around the pure core: runs a training job and writes its folder.

The only place with wall clocks, files, progress bars, checkpoints and
signals. Modules, by job:

* :mod:`~pgjax.runner.loop`: :func:`run`, the host loop;
* :mod:`~pgjax.runner.folder`: config.json, metrics.csv, TensorBoard;
* :mod:`~pgjax.runner.layout`: rows of seeds and swept configurations;
* :mod:`~pgjax.runner.programs`: the compiled initial state, chunk and
  evaluation;
* :mod:`~pgjax.runner.control`: signals, waits, checkpoint timing, failures;
* :mod:`~pgjax.runner.report`: host counters, metrics rows, summary.json.

Run folder::

  config.json     the resolved configuration (updates_per_chunk resolved) and
                  the swept lists ("sweep", empty when not sweeping)
  metrics.csv     one row per seed (per configuration) per update (long format)
  summary.json    final and evaluation returns (mode and sampled policy),
                  speed, compile and wall time,
                  the layout over devices and processes
  learning_curve.png
  checkpoints/    the whole training state every --checkpoint-every updates,
                  at the end and on Ctrl-C/SIGTERM (pgjax.checkpoints)
  tensorboard/    with --tensorboard: one event folder per seed

Durability:

* **Checkpoints** are taken at chunk boundaries: the state a chunk returns is
  copied before it is donated to the next chunk call, then written in the
  background (orbax, atomic rename); the newest ``keep_checkpoints`` stay.
* **Resume** restores the newest checkpoint onto the run's devices (any
  number, any processes), truncates metrics.csv to the rows it had, and
  continues with the same program. Only settings in
  :data:`~pgjax.runner.folder.RESUME_MAY_CHANGE` may differ from config.json.
  Since learning-rate annealing is ``lr·(1 − experience/total_timesteps)``,
  extending a run's total raises the learning rate from the resume point on;
  a run extended with ``anneal_lr`` off equals a straight one.
* **Signals**: the first SIGINT/SIGTERM lets the chunk in flight finish, saves
  a checkpoint, writes summary.json with ``"interrupted": true`` and returns
  (the CLI exits 130/143); a second one exits at once.
* **Sweeps**: ``sweep={"lr": [...], "ent_coef": [...]}`` trains the product
  grid × ``num_seeds`` in one compiled program.
"""

from pgjax.checkpoints import CheckpointError
from pgjax.runner.control import NonFiniteError, first_non_finite
from pgjax.runner.folder import (
    RESUME_MAY_CHANGE,
    RunFolderError,
    TensorBoardMissingError,
    check_resumable,
    config_from_json,
    config_to_json,
    load_run_config,
    resolve_config,
    tensorboard_available,
    truncate_metrics,
    write_json_atomic,
)
from pgjax.runner.layout import Layout, make_layout
from pgjax.runner.loop import run
from pgjax.runner.programs import (
    HEAVY_EVALUATION_EPISODES,
    HEAVY_EVALUATION_LINES,
    abstract_state,
    chunk_shardings,
    compile_evaluation,
)
from pgjax.runner.report import RunResult
from pgjax.runner.saved import open_run, restore_run

__all__ = [
    "HEAVY_EVALUATION_EPISODES",
    "HEAVY_EVALUATION_LINES",
    "RESUME_MAY_CHANGE",
    "CheckpointError",
    "Layout",
    "NonFiniteError",
    "RunFolderError",
    "RunResult",
    "TensorBoardMissingError",
    "abstract_state",
    "check_resumable",
    "chunk_shardings",
    "compile_evaluation",
    "config_from_json",
    "config_to_json",
    "first_non_finite",
    "load_run_config",
    "make_layout",
    "open_run",
    "resolve_config",
    "restore_run",
    "run",
    "tensorboard_available",
    "truncate_metrics",
    "write_json_atomic",
]
