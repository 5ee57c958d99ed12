"""Evaluate a trained policy from a run folder's checkpoint.

  python scripts/evaluate.py --run-dir runs/a2c-CartPole-v1-... --episodes 100
  python scripts/evaluate.py --run-dir D --checkpoint 500000 --sample --gif ep.gif

Rebuilds the trainer from the run's config.json, restores the newest (or the
named) checkpoint with orbax, and runs fresh episodes for every seed (and every
configuration of a sweep), or only row ``--seed-index``: the mode action by
default, sampled actions with ``--sample``. Prints mean ± std and writes
eval.json in the run folder. ``--gif`` renders one episode of one row with
gymnax's visualiser (CartPole, Acrobot, Pendulum, MountainCar, MinAtar, ...).
Bad input ends with one line naming the flag and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pgjax import _startup
from pgjax.cli import EXIT_BAD_INPUT, OneLineParser

# gymnax draws these through gymnasium's renderer, which needs pygame.
CLASSIC_CONTROL = (
    "Acrobot-v1",
    "CartPole-v1",
    "Pendulum-v1",
    "MountainCar-v0",
    "MountainCarContinuous-v0",
)
# Environments gymnax's Visualizer can draw (gymnax/visualize/visualizer.py).
GIF_ENVS = (
    *CLASSIC_CONTROL,
    "Catch-bsuite",
    "Asterix-MinAtar",
    "Breakout-MinAtar",
    "Freeway-MinAtar",
    "Seaquest-MinAtar",
    "SpaceInvaders-MinAtar",
    "Pong-misc",
    "PointRobot-misc",
    "MetaMaze-misc",
    "FourRooms-misc",
)


class BadInput(Exception):
    """One-line error naming a flag (exit code 2)."""


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="evaluate.py",
        description="Evaluate the policy saved in a run folder's checkpoint.",
    )
    parser.add_argument("--run-dir", type=Path, required=True, help="the run folder")
    parser.add_argument(
        "--checkpoint",
        type=int,
        default=None,
        metavar="STEP",
        help="checkpoint to load, by its step (default: the newest)",
    )
    parser.add_argument(
        "--episodes", type=int, default=100, help="episodes per evaluated row (100)"
    )
    parser.add_argument(
        "--sample",
        action="store_true",
        help="sample actions from the policy instead of taking the mode",
    )
    parser.add_argument(
        "--seed-index",
        type=int,
        default=None,
        metavar="I",
        help="evaluate only row I of the state (seed I; in a sweep, row "
        "config·num_seeds + seed offset); default: every row",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed of the episodes (0)"
    )
    parser.add_argument(
        "--gif",
        type=Path,
        default=None,
        metavar="OUT.gif",
        help="render one episode of --seed-index (default row 0) to this GIF",
    )
    parser.add_argument(
        "--gif-max-steps",
        type=int,
        default=500,
        help="stop the rendered episode after this many steps (500)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Before pgjax.runner imports gymnax (pgjax._startup): its plotting
    # imports load only if --gif draws.
    _startup.defer_plotting_imports()
    try:
        return evaluate(args)
    except BadInput as error:
        print(f"evaluate.py: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


def evaluate(args: argparse.Namespace) -> int:
    if args.episodes <= 0:
        raise BadInput(f"--episodes: must be a positive integer, got {args.episodes}")
    if args.gif is not None and args.gif.suffix.lower() != ".gif":
        raise BadInput(f"--gif: expected a file name ending in .gif, got {args.gif}")

    import jax
    import numpy as np

    from pgjax import parallel, runner

    try:
        config, trainer, layout = runner.open_run(args.run_dir)
    except runner.RunFolderError as error:
        raise BadInput(str(error)) from None
    rows = list(range(layout.num_rows))
    if args.seed_index is not None:
        if not 0 <= args.seed_index < layout.num_rows:
            raise BadInput(
                f"--seed-index: must be in [0, {layout.num_rows}), got "
                f"{args.seed_index}"
            )
        rows = [args.seed_index]
    if args.gif is not None:
        if config.env not in GIF_ENVS:
            raise BadInput(f"--gif: gymnax has no visualiser for {config.env}")
        if config.env in CLASSIC_CONTROL and importlib.util.find_spec("pygame") is None:
            raise BadInput(
                f"--gif: drawing {config.env} needs pygame: pip install 'pgjax[render]'"
            )

    try:
        state, step = runner.restore_run(args.run_dir, trainer, layout, args.checkpoint)
    except runner.RunFolderError as error:
        raise BadInput(str(error)) from None

    deterministic = not args.sample
    picked = jax.tree.map(lambda x: x[np.asarray(rows)], state)
    base_key = jax.random.PRNGKey(args.seed)
    keys = jax.vmap(lambda r: jax.random.fold_in(base_key, r))(np.asarray(rows))
    returns = jax.jit(
        jax.vmap(
            lambda s, k: trainer.evaluate(s, k, args.episodes, deterministic),
            axis_name=parallel.SEEDS,
        )
    )(picked, keys)
    returns = np.asarray(jax.device_get(returns), np.float64)  # [rows, episodes]

    results = []
    for row, row_returns in zip(rows, returns, strict=True):
        labels = layout.labels(row)
        results.append(
            {
                "row": row,
                **labels,
                "mean": float(row_returns.mean()),
                "std": float(row_returns.std()),
                "returns": [float(x) for x in row_returns],
            }
        )
        print(
            f"{_describe(labels)}: {row_returns.mean():.2f} ± {row_returns.std():.2f}"
        )
    mode = "sampled actions" if args.sample else "mode action"
    print(
        f"{config.algo} on {config.env}, checkpoint {step} ({mode}, "
        f"{args.episodes} episodes per row): {returns.mean():.2f} ± "
        f"{returns.std():.2f}"
    )
    report: dict[str, Any] = {
        "checkpoint": step,
        "episodes": args.episodes,
        "deterministic": deterministic,
        "seed": args.seed,
        "mean": float(returns.mean()),
        "std": float(returns.std()),
        "rows": results,
    }
    eval_path = Path(args.run_dir) / "eval.json"
    runner.write_json_atomic(eval_path, report)
    if args.gif is not None:
        row = rows[0]
        gif_return, gif_steps = render_gif(
            trainer,
            jax.tree.map(lambda x: x[row], state),
            args.gif,
            jax.random.fold_in(base_key, 2**20 + row),
            deterministic,
            args.gif_max_steps,
        )
        report["gif"] = {
            "path": str(args.gif),
            "row": row,
            "return": gif_return,
            "steps": gif_steps,
        }
        runner.write_json_atomic(eval_path, report)
        print(
            f"gif: {args.gif} (row {row}: {gif_steps} steps, return {gif_return:.2f})"
        )
    print(f"eval.json: {eval_path}")
    return 0


def _describe(labels: dict[str, Any]) -> str:
    text = f"seed {labels['seed']}"
    if "config" in labels:
        values = ", ".join(
            f"{k}={v:g}" for k, v in labels.items() if k not in ("config", "seed")
        )
        text = f"config {labels['config']} ({values}) {text}"
    return text


def render_gif(trainer, state, path: Path, key, deterministic: bool, max_steps: int):
    """Runs one episode of one seed's policy and draws it with gymnax's Visualizer.

    Returns the episode's return and length.
    """
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    import jax
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    from gymnax.visualize import Visualizer

    from pgjax import envs

    spec, config, algorithm = trainer.spec, trainer.config, trainer.algorithm
    agent = state.agent

    @jax.jit
    def step(env_state, step_key):
        act_key, env_key = jax.random.split(step_key)
        obs = env_state.obs
        if config.normalize_obs:
            obs = envs.normalize_obs(env_state.obs_norm, obs)
        action = algorithm.act(agent, obs, act_key, deterministic)
        return envs.step(spec, env_state, action, env_key)

    reset_key, key = jax.random.split(key)
    env_state = envs.reset(spec, reset_key, 1).replace(obs_norm=state.env.obs_norm)
    frames, cumulative, total = [], [], 0.0
    for _ in range(max_steps):
        frames.append(jax.tree.map(lambda x: x[0], env_state.env_state))
        key, step_key = jax.random.split(key)
        env_state, result = step(env_state, step_key)
        total += float(result.reward[0])
        cumulative.append(total)
        if bool(result.terminated[0] | result.truncated[0]):
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.gif")
    if spec.env.name in CLASSIC_CONTROL:
        # gymnax's own frame renderer without the Visualizer's matplotlib figure
        # (which costs ~0.2 s per frame to grab on a CPU): same pixels, no title.
        from gymnax.visualize import vis_gym
        from PIL import Image

        images = [
            Image.fromarray(vis_gym.render_gym_frame(spec.env.name, s, spec.params))
            for s in frames
        ]
        images[0].save(
            tmp, save_all=True, append_images=images[1:], duration=50, loop=0
        )
    else:
        Visualizer(spec.env, spec.params, frames, np.asarray(cumulative)).animate(
            str(tmp)
        )
    tmp.replace(path)
    return (total if math.isfinite(total) else None), len(frames)


if __name__ == "__main__":
    sys.exit(main())
