"""Learning curves of one or more run folders.

  python scripts/plot.py --run-dirs runs/a runs/b --out curve.png
  python scripts/plot.py --run-dirs runs/sweep --out kl.png --metric kl

One line per run and per configuration of a sweep (grouped by the swept
columns recorded in each run's config.json), the mean over seeds with their
min–max spread, against environment steps per seed. Bad input ends with one
line naming the flag and exit code 2.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pgjax.cli import EXIT_BAD_INPUT, OneLineParser


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="plot.py",
        description="Plot learning curves (mean and spread over seeds) of run folders.",
    )
    parser.add_argument(
        "--run-dirs", type=Path, nargs="+", required=True, help="run folders"
    )
    parser.add_argument("--out", type=Path, required=True, help="image to write")
    parser.add_argument(
        "--metric",
        default="episode_return",
        help="metrics.csv column to plot (episode_return)",
    )
    parser.add_argument("--title", default=None, help="plot title")
    return parser


def swept_names(run_dir: Path) -> list[str]:
    """The swept hyperparameters recorded in a run's config.json (if any)."""
    path = run_dir / "config.json"
    if not path.is_file():
        return []
    try:
        return list(json.loads(path.read_text()).get("sweep") or {})
    except (ValueError, AttributeError):
        return []


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    group_by: list[str] = []
    for run_dir in args.run_dirs:
        metrics = run_dir / "metrics.csv"
        if not metrics.is_file():
            return _fail(f"--run-dirs: {run_dir} has no metrics.csv")
        with open(metrics, newline="") as f:
            columns = next(csv.reader(f), [])
        if args.metric not in columns:
            choices = ", ".join(c for c in columns if c not in ("seed", "config"))
            return _fail(
                f"--metric: {run_dir}/metrics.csv has no column {args.metric!r} "
                f"(columns: {choices})"
            )
        group_by += [n for n in swept_names(run_dir) if n not in group_by]
    if args.out.suffix.lower() not in (".png", ".pdf", ".svg", ".jpg", ".jpeg"):
        return _fail(f"--out: expected a .png, .pdf, .svg or .jpg file, got {args.out}")

    from pgjax import plotting

    args.out.parent.mkdir(parents=True, exist_ok=True)
    plotting.plot_runs(
        args.run_dirs, args.out, metric=args.metric, group_by=group_by, title=args.title
    )
    print(f"plot: {args.out}")
    return 0


def _fail(message: str) -> int:
    print(f"plot.py: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
