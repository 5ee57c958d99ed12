"""Train a policy with pgjax.

  python scripts/train.py --algo a2c --env CartPole-v1 --num-envs 4096

Settings come from pgjax.config.TrainConfig defaults, then the tuned preset for
(algo, env) in pgjax.presets, then the flags given here. Every bad flag ends with
one line that names it and exit code 2.
"""

from __future__ import annotations

import time

START_TIME = time.time()  # wall_time in metrics.csv counts from here

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pgjax import _startup, cli  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    # Before the runner imports gymnax: its unused plotting imports would cost
    # seconds of every start (pgjax._startup).
    _startup.defer_plotting_imports()
    return cli.train_main(argv, start_time=START_TIME)


if __name__ == "__main__":
    sys.exit(main())
