"""Estimator variance lab: the variance and bias of each policy-gradient estimator.

  python scripts/variance.py --env CartPole-v1 --batches 200 --episodes-per-batch 8 \\
      --out docs/bench/variance-cartpole.json
  python scripts/variance.py --run-dir runs/reinforce-CartPole-v1-... --checkpoint STEP
  python scripts/variance.py --env ShortCorridor-v0 --gamma 1 --out corridor.json

Takes a policy (fresh from ``--seed``, or row ``--seed-index`` of a run
folder's checkpoint, loaded as scripts/evaluate.py loads it), draws
``--batches`` independent batches of ``--episodes-per-batch`` complete
episodes, and compares the estimators of :mod:`pgjax.variance` against a
reference gradient (exact on a tabular environment such as
``ShortCorridor-v0``). Prints a markdown table; writes the JSON to ``--out``
and a bar chart of the variances (log scale, with the squared biases) next to
it (same name, ``.png``). Bad input ends with one line naming the flag and
exit code 2.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pgjax import _startup
from pgjax.cli import EXIT_BAD_INPUT, OneLineParser

DEFAULT_ENV = "CartPole-v1"


class BadInput(Exception):
    """One-line error naming a flag (exit code 2)."""


def _numbers(kind):
    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated numbers, got {text!r}"
            ) from None
        if not values:
            raise argparse.ArgumentTypeError(f"expected numbers, got {text!r}")
        return values

    return parse


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="variance.py",
        description="Compare the variance and bias of policy-gradient estimators.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--env", default=None, help=f"environment id (default {DEFAULT_ENV})")
    add("--run-dir", type=Path, default=None, help="take the policy of this run")
    add("--checkpoint", type=int, default=None, metavar="STEP", help="its step")
    add("--seed-index", type=int, default=0, metavar="I", help="row of the run")
    add("--hidden", type=_numbers(int), default=(64, 64), help="fresh policy widths")
    add("--activation", default="tanh", help="fresh policy activation")
    add("--seed", type=int, default=0, help="seed of the fresh policy and sampling")
    add("--batches", type=int, default=200, help="independent batches B")
    add("--episodes-per-batch", type=int, default=8, help="episodes per batch N")
    add("--gamma", type=float, default=None, help="γ (default: the run's, or 0.99)")
    add(
        "--discount-steps",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="weight step t by γ^t (the exact ∇J_γ); --no-discount-steps: the "
        "usual form",
    )
    add("--lambdas", type=_numbers(float), default=(0.0, 0.5, 0.9, 0.95, 1.0))
    add("--fit-episodes", type=int, default=512, help="episodes the critics fit on")
    add("--reference-episodes", type=int, default=4096, help="sampled reference")
    add(
        "--reference-estimator",
        default="rtg-V",
        help="unbiased estimator whose mean is the sampled reference",
    )
    add("--critic-steps", type=int, default=1000, help="Adam steps of the V fit")
    add("--compatible-iters", type=int, default=20, help="CG steps, compatible fit")
    add("--reward-shift", type=float, default=0.0, help="added to every reward")
    add("--out", type=Path, default=None, help="JSON to write (figure: .png)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _startup.defer_plotting_imports()
    try:
        return run(args, sys.argv[1:] if argv is None else argv)
    except BadInput as error:
        print(f"variance.py: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


def load_run_policy(run_dir: Path, step: int | None, row: int):
    """``(spec, policy, params, obs_norm, config, step)`` of row ``row`` of a
    run folder's checkpoint (the newest, or ``step``)."""
    import jax

    from pgjax import runner
    from pgjax.algos import base

    try:
        config, trainer, layout = runner.open_run(run_dir)
        if not 0 <= row < layout.num_rows:
            raise BadInput(
                f"--seed-index: must be in [0, {layout.num_rows}), got {row}"
            )
        state, step = runner.restore_run(run_dir, trainer, layout, step)
    except runner.RunFolderError as error:
        raise BadInput(str(error)) from None
    state = jax.tree.map(lambda x: x[row], state)
    if not hasattr(state.agent, "actor"):
        raise BadInput(f"--run-dir: {config.algo}'s state has no actor parameters")
    policy, _ = base.make_networks(config, trainer.spec, trainer.backend)
    obs_norm = state.env.obs_norm if config.normalize_obs else None
    return trainer.spec, policy, state.agent.actor, obs_norm, config, step


def _policy(args: argparse.Namespace) -> tuple[Any, ...]:
    """``(spec, policy, params, obs_norm, gamma, source)`` from the flags."""
    import jax

    from pgjax import envs
    from pgjax.networks import ACTIVATIONS, make_policy

    if args.run_dir is not None:
        spec, policy, params, obs_norm, config, step = load_run_policy(
            args.run_dir, args.checkpoint, args.seed_index
        )
        if args.env is not None and args.env != config.env:
            raise BadInput(f"--env: the run in {args.run_dir} trained on {config.env}")
        source = {
            "run_dir": str(args.run_dir),
            "checkpoint": step,
            "seed_index": args.seed_index,
            "algo": config.algo,
            "hidden": list(config.hidden),
        }
        return spec, policy, params, obs_norm, config.gamma, source
    if args.checkpoint is not None:
        raise BadInput("--checkpoint: needs --run-dir")
    env_id = args.env or DEFAULT_ENV
    try:
        spec = envs.make_env(env_id)
    except ValueError as error:
        raise BadInput(f"--env: {error}") from None
    if not args.hidden or any(w <= 0 for w in args.hidden):
        raise BadInput(f"--hidden: must be positive widths, got {args.hidden}")
    if args.activation not in ACTIVATIONS:
        choices = ", ".join(ACTIVATIONS)
        raise BadInput(
            f"--activation: must be one of {choices}, got {args.activation!r}"
        )
    policy = make_policy(spec, args.hidden, args.activation)
    params = policy.init(jax.random.PRNGKey(args.seed))
    source = {"fresh_seed": args.seed, "hidden": list(args.hidden)}
    return spec, policy, params, None, 0.99, source


def run(args: argparse.Namespace, argv: list[str]) -> int:
    if args.out is not None and args.out.suffix.lower() != ".json":
        raise BadInput(f"--out: expected a file name ending in .json, got {args.out}")
    import jax

    from pgjax import variance
    from pgjax.config import ConfigError

    spec, policy, params, obs_norm, gamma, source = _policy(args)
    config = variance.LabConfig(
        batches=args.batches,
        episodes_per_batch=args.episodes_per_batch,
        gamma=args.gamma if args.gamma is not None else gamma,
        discount_steps=args.discount_steps,
        lambdas=args.lambdas,
        fit_episodes=args.fit_episodes,
        reference_episodes=args.reference_episodes,
        reference_estimator=args.reference_estimator,
        critic_steps=args.critic_steps,
        compatible_iters=args.compatible_iters,
        reward_shift=args.reward_shift,
    )
    try:
        variance.validate_lab_config(config)
    except ConfigError as error:
        raise BadInput(str(error)) from None
    start = time.perf_counter()
    result = variance.compare_estimators(
        spec, policy, params, jax.random.PRNGKey(args.seed), config, obs_norm
    )
    seconds = time.perf_counter() - start
    summary = {
        "command": "python scripts/variance.py " + shlex.join(argv),
        "env": spec.env_id,
        "policy": source,
        "seconds": round(seconds, 2),
        **result.summary(),
    }
    print(markdown_table(summary))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1) + "\n")
        figure = args.out.with_suffix(".png")
        plot(summary, figure)
        print(f"wrote {args.out} and {figure}")
    return 0


def markdown_table(summary: dict[str, Any]) -> str:
    """The estimators' statistics as a markdown table, with a header line."""
    c = summary["constants"]
    cfg = summary["config"]
    gamma_t = "γ^t" if cfg["discount_steps"] else "no γ^t"
    lines = [
        f"{summary['env']}: B={cfg['batches']} batches × "
        f"N={cfg['episodes_per_batch']} episodes, γ={cfg['gamma']:g} ({gamma_t}), "
        f"P={summary['num_params']} parameters, {_reference(summary)} "
        f"(‖∇J‖={summary['reference_norm']:.4g}), mean return "
        f"{summary['mean_return']:.4g}, mean length {summary['mean_length']:.1f}; "
        f"J={c['mean_return_J']:.4g}, b*={c['b_star']:.4g}, "
        f"b*_R={c['b_star_return']:.4g}, V explains "
        f"{100 * c['value_explained_variance']:.0f} % of Var(Q̂); "
        f"{summary['seconds']:.1f} s",
        "",
        "| estimator | unbiased | variance (trace) | per parameter "
        "| ‖bias‖ ± se | noise floor | cosine ± se |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in summary["estimators"]:
        lines.append(
            f"| {r['estimator']} | {'yes' if r['unbiased'] else 'no'} "
            f"| {r['variance']:.4g} | {r['param_variance']:.3g} "
            f"| {r['bias']:.3g} ± {r['bias_se']:.2g} | {r['noise_floor']:.3g} "
            f"| {r['cosine']:.3f} ± {r['cosine_se']:.3f} |"
        )
    return "\n".join(lines)


def _reference(summary: dict[str, Any]) -> str:
    if summary["reference"] == "exact":
        return "exact reference"
    cfg = summary["config"]
    return (
        f"reference: mean {cfg['reference_estimator']} of "
        f"{cfg['reference_episodes']} episodes"
    )


def plot(summary: dict[str, Any], path: Path) -> None:
    """Bars: each estimator's variance (log scale); markers: its squared bias
    ``‖mean − ∇J‖²`` and the squared noise floor (what an unbiased
    estimator's squared bias is from noise alone). Bar + squared bias is the
    mean squared error of one batch's estimate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = summary["estimators"]
    names = [r["estimator"] for r in rows]
    x = np.arange(len(rows))
    variance = np.array([r["variance"] for r in rows])
    bias2 = np.array([r["bias"] ** 2 for r in rows])
    floor2 = np.array([r["noise_floor"] ** 2 for r in rows])
    colors = ["tab:blue" if r["unbiased"] else "tab:orange" for r in rows]
    fig, ax = plt.subplots(figsize=(max(7.0, 0.55 * len(rows) + 2), 5.0))
    ax.bar(x, variance, color=colors, label="variance of a batch estimate (trace)")
    ax.scatter(x, bias2, marker="D", color="black", zorder=3, label="‖bias‖²")
    ax.scatter(
        x, floor2, marker="_", s=200, color="grey", zorder=3, label="noise floor²"
    )
    ax.set_yscale("log")
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylabel("squared gradient norm units")
    cfg = summary["config"]
    ax.set_title(
        f"{summary['env']}: B={cfg['batches']}, N={cfg['episodes_per_batch']}, "
        f"γ={cfg['gamma']:g}, {_reference(summary)} "
        "(blue: unbiased, orange: biased)",
        fontsize=9,
    )
    ax.legend(fontsize=8, ncol=3, loc="lower center", bbox_to_anchor=(0.5, 1.07))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
