"""Command-line front end of scripts/train.py (shell layer: argv, stderr, exit codes).

Resolution order of every setting: TrainConfig default < preset for (algo, env)
< flag given by the user. Bad input never raises a traceback: one line that
names the flag, exit code 2, and no run folder is created.

* ``--resume --run-dir D`` continues D from its newest checkpoint. Settings come
  from D/config.json; flags may change only ``--total-timesteps`` (and
  ``--checkpoint-every``, ``--keep-checkpoints``, ``--tensorboard``,
  ``--eval-episodes``, ``--devices``); any other differing flag is refused,
  naming it.
* ``--coordinator HOST:PORT --num-processes N --process-id I`` joins a run of
  several processes (pgjax.distributed) before JAX starts; each process runs
  the same command with its own id and the same ``--run-dir``.
* Numeric hyperparameters in :data:`pgjax.config.SWEEPABLE` accept comma lists
  (``--lr 3e-4,1e-3 --ent-coef 0,0.01``): the product grid × ``--num-seeds``
  trains as one vmapped program (see :func:`pgjax.runner.run`).
* Exit codes: 0 done, 1 training failed (non-finite loss, checkpoint I/O), 2 bad
  input, 130/143 stopped by SIGINT/SIGTERM (after saving a checkpoint).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import re
import sys
import typing
from pathlib import Path
from typing import Any, NoReturn

from pgjax import presets
from pgjax.config import SWEEPABLE, ConfigError, TrainConfig, flag_name, validate

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_SIGINT = 130


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage block)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _parse_widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated widths like 64,64, got {text!r}"
        ) from None
    return widths


def _parse_int(text: str) -> int:
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    return int(value)


def _parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _parse_float_list(text: str) -> float | tuple[float, ...]:
    """A number, or a comma-separated list of numbers (a sweep)."""
    parts = [part for part in text.split(",") if part.strip()]
    try:
        values = tuple(float(part) for part in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number or comma-separated numbers, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    return values[0] if len(values) == 1 else values


_PARSERS = {int: _parse_int, float: _parse_float, str: str, bool: _parse_bool}


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="train.py",
        description=(
            "Train a policy-gradient agent on a gymnax environment, entirely on the "
            "accelerator. Unset flags take the tuned preset for (algo, env), then "
            "the defaults shown."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_config_flags(parser)
    _add_run_flags(parser)
    _add_cluster_flags(parser)
    return parser


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`TrainConfig` field, its help from the field."""
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        kind = hints[field.name]
        kwargs: dict[str, Any] = {
            "dest": field.name,
            "help": field.metadata["help"],
            "default": argparse.SUPPRESS,
        }
        if kind == tuple[int, ...]:
            kwargs.update(type=_parse_widths, metavar="W,W")
        elif field.name in SWEEPABLE:
            kwargs.update(type=_parse_float_list, metavar="X[,X...]")
            kwargs["help"] += " (a comma list sweeps it)"
        elif kind is bool:
            kwargs.update(action=argparse.BooleanOptionalAction)
        else:
            kwargs.update(type=_PARSERS[kind], metavar=kind.__name__.upper())
        parser.add_argument(flag_name(field.name), **kwargs)


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    """The run folder, resuming, the progress bar and the compile cache."""
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="run folder (default: a fresh runs/<algo>-<env>-<timestamp>)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help=(
            "continue the run in --run-dir from its newest checkpoint, to "
            "--total-timesteps (default: the run's own); other flags must match "
            "its config.json"
        ),
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="hide the progress bar"
    )
    parser.add_argument(
        "--compile-cache",
        metavar="DIR",
        default=None,
        help=(
            "folder of JAX's persistent compilation cache: a rerun of the same "
            "programs (another seed, a resume) skips most of the compile time; "
            "'off' disables it (default: $PGJAX_COMPILE_CACHE, else "
            "~/.cache/pgjax/xla)"
        ),
    )


def _add_cluster_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of a run over several hosts (``jax.distributed``)."""
    cluster = parser.add_argument_group(
        "several hosts (jax.distributed; every process runs the same command "
        "with its own --process-id and a shared --run-dir)"
    )
    cluster.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        default=None,
        help="address of process 0, which coordinates the processes; 'auto' "
        "detects the cluster (SLURM, Open MPI, TPU pods) and its counts",
    )
    cluster.add_argument("--num-processes", type=_parse_int, default=None, metavar="N")
    cluster.add_argument(
        "--process-id", type=_parse_int, default=None, metavar="I", help="0 .. N-1"
    )
    cluster.add_argument(
        "--cluster-timeout",
        type=_parse_float,
        default=60.0,
        metavar="SECONDS",
        help="how long processes wait for each other at start-up, and how long "
        "a silent process may stay silent before every process stops",
    )


def _given(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, list]]:
    """The TrainConfig fields the user gave, and the swept lists among them."""
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if hasattr(args, f.name)
    }
    sweep = {
        n: list(v) for n, v in given.items() if isinstance(v, tuple) and n in SWEEPABLE
    }
    for name, values in sweep.items():
        given[name] = values[0]  # the config holds one value; the sweep the list
    return given, sweep


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """Defaults < preset for (algo, env) < flags the user gave.

    A swept flag contributes its first value (:func:`resolve_sweep` has them all).
    """
    given, _ = _given(args)
    defaults = TrainConfig()
    algo = given.get("algo", defaults.algo)
    env = given.get("env", defaults.env)
    settings = {**presets.preset(algo, env), **given}
    return dataclasses.replace(defaults, **settings)


def resolve_sweep(args: argparse.Namespace) -> dict[str, list[float]]:
    """``{name: values}`` of the flags given as comma lists."""
    return _given(args)[1]


def validate_sweep(config: TrainConfig, sweep: dict[str, list[float]]) -> None:
    """Validates every value of every swept list.

    Raises:
      ConfigError: naming the flag of the first invalid value.
    """
    for name, values in sweep.items():
        for value in values:
            validate(dataclasses.replace(config, **{name: value}))


def default_run_dir(config: TrainConfig) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    # One folder name for any id: path.py:MyEnv-v0 → MyEnv-v0, suite/name →
    # suite-name.
    env = re.sub(r"[^\w.-]+", "-", config.env.rpartition(":")[2])
    return Path("runs") / f"{config.algo}-{env}-{stamp}"


def fail(message: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"train.py: error: {message}", file=sys.stderr)
    return code


def train_main(argv: list[str] | None, start_time: float) -> int:
    try:
        return _train_main(argv, start_time)
    except KeyboardInterrupt:  # before the runner's own handler is installed
        print("train.py: interrupted", file=sys.stderr)
        return EXIT_SIGINT


def _saved_config(args: argparse.Namespace) -> dict | None:
    """The config.json of the run ``--resume`` continues, read without starting
    JAX; None without ``--resume`` or if it cannot be read (the resume itself
    reports what is wrong with the folder)."""
    if not args.resume or args.run_dir is None:
        return None
    try:
        saved = json.loads((Path(args.run_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


def _devices(args: argparse.Namespace) -> int:
    """``--devices`` as given, else a resumed run's saved value, else 0."""
    if hasattr(args, "devices"):
        return args.devices
    try:
        return int((_saved_config(args) or {}).get("devices", 0))
    except (ValueError, TypeError):
        return 0


def _run_shape(args: argparse.Namespace) -> tuple[str, int, int, int]:
    """``(algo, num_envs, num_steps, rows)`` of the run to start or resume,
    without starting JAX (bad values are reported later, by the config's
    checks); ``rows`` is seeds × swept configurations."""
    saved = _saved_config(args)
    if saved is not None:
        try:
            return (
                str(saved["algo"]),
                int(saved["num_envs"]),
                int(saved["num_steps"]),
                _rows(int(saved["num_seeds"]), saved.get("sweep") or {}),
            )
        except (KeyError, ValueError, TypeError):
            pass  # the resume reports what is wrong with the folder
    config = resolve_config(args)
    rows = _rows(config.num_seeds, resolve_sweep(args))
    return config.algo, config.num_envs, config.num_steps, rows


def _rows(num_seeds: int, sweep: dict[str, list]) -> int:
    """Rows of the run's program: seeds × configurations of the swept grid
    (as :class:`pgjax.runner.Layout` lays them out)."""
    return num_seeds * math.prod(len(values) for values in sweep.values())


class _Refused(Exception):
    """A run that must not start (or ends) with one line for the user and an
    exit code: raised by the steps of :func:`_train_main`, printed by
    :func:`train_main`."""

    def __init__(self, message: str, code: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.code = code


def _train_main(argv: list[str] | None, start_time: float) -> int:
    """Parse, join the cluster, resolve and check the settings and the run
    folder (all before touching the disk), then train and print the result."""
    args = build_parser().parse_args(argv)
    try:
        _join_cluster(args)
        config, sweep = _settings(args)
        run_dir = _checked_run_dir(args, config)
        result = _run(args, config, sweep, run_dir, start_time)
    except _Refused as refusal:
        return fail(str(refusal), refusal.code)
    if result.signum is not None:
        return 128 + result.signum
    _print_result(config, sweep, result.summary, run_dir)
    return 0


def _join_cluster(args: argparse.Namespace) -> None:
    """Joins the other processes of a multi-process run, then picks the CPU
    devices to split the run over: both must precede JAX's backends, which
    importing pgjax.runner (through gymnax) starts."""
    from pgjax import distributed

    if args.cluster_timeout <= 0:
        raise _Refused(f"--cluster-timeout: must be > 0, got {args.cluster_timeout}")
    try:
        several = distributed.initialize(
            args.coordinator,
            args.num_processes,
            args.process_id,
            timeout_s=args.cluster_timeout,
            heartbeat_timeout_s=args.cluster_timeout,
        )
    except distributed.ClusterError as error:
        raise _Refused(f"{error.flag}: {error}") from None
    if several and args.run_dir is None:
        raise _Refused(
            "--run-dir: a run of several processes needs one, the same "
            "folder on every process (a shared file system)"
        )
    # On a CPU, as many JAX devices as the batch keeps busy, up to one per
    # core.
    from pgjax import hardware

    hardware.prepare_devices(*_run_shape(args), _devices(args))


def _settings(args: argparse.Namespace) -> tuple[TrainConfig, dict[str, list]]:
    """The run's config and sweep: defaults < preset < flags for a new run; the
    saved ones with the given flags for ``--resume``, which must not change
    the computation. Validated, and the trainer built once to check them."""
    if args.resume:
        config, sweep = _resumed_settings(args)
    else:
        config, sweep = resolve_config(args), resolve_sweep(args)
    try:
        validate(config)
        validate_sweep(config, sweep)
    except ConfigError as error:
        raise _Refused(str(error)) from None
    from pgjax import runner, train

    try:
        train.make_train(config)
    except ConfigError as error:
        raise _Refused(str(error)) from None
    if config.tensorboard and not runner.tensorboard_available():
        raise _Refused(
            "--tensorboard: needs tensorboardX: pip install 'pgjax[tensorboard]'"
        )
    return config, sweep


def _resumed_settings(args: argparse.Namespace) -> tuple[TrainConfig, dict]:
    """The saved config and sweep of ``--run-dir``, with the flags given now."""
    if args.run_dir is None:
        raise _Refused("--resume: needs --run-dir, the run folder to continue")
    from pgjax import runner

    try:
        saved, saved_sweep = runner.load_run_config(args.run_dir)
        given, given_sweep = _given(args)
        config = dataclasses.replace(saved, **given)
        sweep = {**saved_sweep, **given_sweep}
        for name in saved_sweep:
            if name in given and name not in given_sweep:
                sweep[name] = [given[name]]  # one value for a swept name
        runner.check_resumable(saved, saved_sweep, config, sweep)
    except runner.RunFolderError as error:
        raise _Refused(str(error)) from None
    return config, sweep


def _checked_run_dir(args: argparse.Namespace, config: TrainConfig) -> Path:
    """``--run-dir`` (or a fresh default): empty unless resuming, and not
    under a file. Every process checks before any creates it."""
    from pgjax import distributed

    run_dir = args.run_dir or default_run_dir(config)
    if not args.resume and (
        run_dir.is_file() or (run_dir.is_dir() and any(run_dir.iterdir()))
    ):
        raise _Refused(
            f"--run-dir: {run_dir} exists and is not empty "
            f"(add --resume to continue the run in it)"
        )
    blocking_file = next((p for p in run_dir.parents if p.is_file()), None)
    if blocking_file is not None:
        raise _Refused(f"--run-dir: {blocking_file} is a file, not a folder")
    distributed.barrier("pgjax-checked")
    return run_dir


def _run(args, config: TrainConfig, sweep: dict, run_dir: Path, start_time: float):
    """Trains (pgjax.runner.run) with the compile cache ``--compile-cache``
    names; a failure the runner reports becomes a :class:`_Refused`."""
    from pgjax import runner

    if args.compile_cache != "off":
        from pgjax import compilation

        cache_dir = args.compile_cache or compilation.DEFAULT_CACHE_DIR
        try:
            compilation.enable_persistent_cache(cache_dir)
        except OSError as error:
            raise _Refused(
                f"--compile-cache: cannot use {cache_dir}: {error}"
            ) from None
    try:
        return runner.run(
            config,
            run_dir,
            start_time=start_time,
            progress=not args.no_progress,
            resume=args.resume,
            sweep=sweep,
        )
    except runner.RunFolderError as error:
        raise _Refused(str(error)) from None
    except (runner.NonFiniteError, runner.CheckpointError) as error:
        raise _Refused(str(error), EXIT_FAILED) from None


def _print_result(config: TrainConfig, sweep: dict, summary: dict, run_dir: Path):
    """The run's one-line result, a line per swept configuration, the folder."""
    per_seed = ", ".join(f"{x:.1f}" for x in summary["eval_return_per_seed"])
    print(
        f"{config.algo} on {config.env}: eval_return {summary['eval_return']:.1f} "
        f"(per seed: {per_seed}), sampled policy "
        f"{summary['eval_return_sampled']:.1f}; "
        f"{summary['total_timesteps']:,} steps/seed, "
        f"{summary['steps_per_second']:,.0f} steps/s, compile "
        f"{summary['compile_seconds']:.1f}s, wall {summary['wall_seconds']:.1f}s"
    )
    for entry in summary.get("configs", []):
        values = ", ".join(f"{n}={entry[n]:g}" for n in SWEEPABLE if n in sweep)
        final = entry["final_return"]
        print(
            f"  #{entry['rank']} config {entry['config']} ({values}): final_return "
            f"{'–' if final is None else f'{final:.1f}'}, eval_return "
            f"{entry['eval_return']:.1f}"
        )
    print(f"run folder: {run_dir}")
