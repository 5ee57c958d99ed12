"""Command-line front end of scripts/train.py (shell layer: argv, stderr, exit codes).

Resolution order of every setting: TrainConfig default < preset for (algo, env)
< flag given by the user. Bad input never raises a traceback: one line that
names the flag, exit code 2, and no run folder is created.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import sys
import typing
from pathlib import Path
from typing import Any, NoReturn

from pgjax import presets
from pgjax.config import ConfigError, TrainConfig, flag_name, validate

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


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
        elif kind is bool:
            kwargs.update(action=argparse.BooleanOptionalAction)
        else:
            kwargs.update(type=_PARSERS[kind], metavar=kind.__name__.upper())
        parser.add_argument(flag_name(field.name), **kwargs)
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="run folder (default: a fresh runs/<algo>-<env>-<timestamp>)",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="hide the progress bar"
    )
    return parser


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """Defaults < preset for (algo, env) < flags the user gave."""
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if hasattr(args, f.name)
    }
    defaults = TrainConfig()
    algo = given.get("algo", defaults.algo)
    env = given.get("env", defaults.env)
    settings = {**presets.preset(algo, env), **given}
    return dataclasses.replace(defaults, **settings)


def default_run_dir(config: TrainConfig) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return Path("runs") / f"{config.algo}-{config.env}-{stamp}"


def fail(message: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"train.py: error: {message}", file=sys.stderr)
    return code


def train_main(argv: list[str] | None, start_time: float) -> int:
    args = build_parser().parse_args(argv)
    config = resolve_config(args)
    try:
        validate(config)
    except ConfigError as error:
        return fail(str(error))

    # Build (and so check) everything before touching the disk.
    from pgjax import train

    try:
        train.make_train(config)
    except ValueError as error:
        flag = "--env" if "environment" in str(error) else "--algo"
        if "critic" in str(error):
            flag = "--critic"
        return fail(f"{flag}: {error}")

    run_dir = args.run_dir or default_run_dir(config)
    if run_dir.exists() and any(run_dir.iterdir()):
        return fail(f"--run-dir: {run_dir} exists and is not empty")

    from pgjax import runner

    try:
        result = runner.run(
            config, run_dir, start_time=start_time, progress=not args.no_progress
        )
    except runner.NonFiniteError as error:
        return fail(str(error), EXIT_FAILED)
    summary = result.summary
    per_seed = ", ".join(f"{x:.1f}" for x in summary["eval_return_per_seed"])
    print(
        f"{config.algo} on {config.env}: eval_return {summary['eval_return']:.1f} "
        f"(per seed: {per_seed}); {summary['total_timesteps']:,} steps/seed, "
        f"{summary['steps_per_second']:,.0f} steps/s, compile "
        f"{summary['compile_seconds']:.1f}s, wall {summary['wall_seconds']:.1f}s\n"
        f"run folder: {run_dir}"
    )
    return 0
