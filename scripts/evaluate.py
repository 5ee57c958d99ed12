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
    """Evaluates the run folder's policy as ``args`` ask: prints each row's
    and the overall mean ± std, writes eval.json (and ``--gif``'s episode).
    Returns 0; raises BadInput on bad input, found before any episode runs."""
    _check_flags(args)
    from pgjax import runner

    config, trainer, layout = _open_run(args.run_dir)
    rows = _selected_rows(args.seed_index, layout.num_rows)
    if args.gif is not None:
        _check_gif_env(config.env)
    state, step = _restore(args.run_dir, trainer, layout, args.checkpoint)
    returns = _episode_returns(trainer, state, rows, args)
    results = _row_results(rows, returns, layout)
    print(_overall_line(config, step, args, returns))
    report = _eval_report(args, step, returns, results)
    eval_path = Path(args.run_dir) / "eval.json"
    runner.write_json_atomic(eval_path, report)
    if args.gif is not None:
        gif = _render_row_gif(args, trainer, state, rows[0])
        report["gif"] = gif
        runner.write_json_atomic(eval_path, report)
        # A non-finite return is stored as None (JSON has no NaN).
        shown = "non-finite" if gif["return"] is None else f"{gif['return']:.2f}"
        print(
            f"gif: {args.gif} (row {gif['row']}: {gif['steps']} steps, return {shown})"
        )
    print(f"eval.json: {eval_path}")
    return 0


def _check_flags(args: argparse.Namespace) -> None:
    """Raises BadInput for a non-positive ``--episodes`` or a ``--gif`` whose
    name does not end in .gif: the checks that need no run folder."""
    if args.episodes <= 0:
        raise BadInput(f"--episodes: must be a positive integer, got {args.episodes}")
    if args.gif is not None and args.gif.suffix.lower() != ".gif":
        raise BadInput(f"--gif: expected a file name ending in .gif, got {args.gif}")


def _open_run(run_dir: Path):
    """``(config, trainer, layout)`` rebuilt from the run folder's config.json
    (pgjax.runner.open_run); BadInput when the folder holds no run."""
    from pgjax import runner

    try:
        return runner.open_run(run_dir)
    except runner.RunFolderError as error:
        raise BadInput(str(error)) from None


def _selected_rows(seed_index: int | None, num_rows: int) -> list[int]:
    """The state's rows to evaluate: every one, or only ``--seed-index``
    (BadInput when out of range)."""
    if seed_index is None:
        return list(range(num_rows))
    if not 0 <= seed_index < num_rows:
        raise BadInput(f"--seed-index: must be in [0, {num_rows}), got {seed_index}")
    return [seed_index]


def _check_gif_env(env: str) -> None:
    """Raises BadInput when ``--gif`` cannot draw ``env``: gymnax has no
    visualiser for it, or it needs pygame and pygame is missing."""
    if env not in GIF_ENVS:
        raise BadInput(f"--gif: gymnax has no visualiser for {env}")
    if env in CLASSIC_CONTROL and importlib.util.find_spec("pygame") is None:
        raise BadInput(
            f"--gif: drawing {env} needs pygame: pip install 'pgjax[render]'"
        )


def _restore(run_dir: Path, trainer, layout, checkpoint: int | None):
    """``(state, step)`` of the checkpoint at step ``checkpoint`` (the newest
    when None); BadInput when there is none such."""
    from pgjax import runner

    try:
        return runner.restore_run(run_dir, trainer, layout, checkpoint)
    except runner.RunFolderError as error:
        raise BadInput(str(error)) from None


def _episode_returns(trainer, state, rows: list[int], args: argparse.Namespace):
    """Returns of ``--episodes`` fresh episodes of each row in ``rows``, the
    mode action or (``--sample``) sampled ones: a float64 array ``[rows,
    episodes]``. Row r's episodes draw from ``--seed``'s key folded with r."""
    import jax
    import numpy as np

    from pgjax import parallel

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
    return np.asarray(jax.device_get(returns), np.float64)


def _row_results(rows: list[int], returns, layout) -> list[dict[str, Any]]:
    """eval.json's entry of each row (its index and labels, its returns' mean,
    std and list), printing each row's mean ± std."""
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
    return results


def _overall_line(config, step: int, args: argparse.Namespace, returns) -> str:
    """The line of the mean ± std over every evaluated row's returns, naming
    the algorithm, env, checkpoint and how the episodes ran."""
    mode = "sampled actions" if args.sample else "mode action"
    return (
        f"{config.algo} on {config.env}, checkpoint {step} ({mode}, "
        f"{args.episodes} episodes per row): {returns.mean():.2f} ± "
        f"{returns.std():.2f}"
    )


def _eval_report(
    args: argparse.Namespace, step: int, returns, results: list[dict[str, Any]]
) -> dict[str, Any]:
    """eval.json's content: the checkpoint's step, how the episodes ran, the
    mean and std over every row's returns, and the rows' ``results``."""
    return {
        "checkpoint": step,
        "episodes": args.episodes,
        "deterministic": not args.sample,
        "seed": args.seed,
        "mean": float(returns.mean()),
        "std": float(returns.std()),
        "rows": results,
    }


def _render_row_gif(
    args: argparse.Namespace, trainer, state, row: int
) -> dict[str, Any]:
    """Draws one episode of ``row``'s policy to ``--gif`` (:func:`render_gif`,
    its key ``--seed``'s folded with 2**20 + row, apart from the evaluated
    episodes'); returns eval.json's ``gif`` entry: path, row, return, steps."""
    import jax

    gif_return, gif_steps = render_gif(
        trainer,
        jax.tree.map(lambda x: x[row], state),
        args.gif,
        jax.random.fold_in(jax.random.PRNGKey(args.seed), 2**20 + row),
        not args.sample,
        args.gif_max_steps,
    )
    return {"path": str(args.gif), "row": row, "return": gif_return, "steps": gif_steps}


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
