"""The results table: every (algorithm, environment) pair's plain command on 5
seeds, beside the published reference.

  python scripts/results.py                      # train what is missing, write
  python scripts/results.py --no-train           # only rebuild the table
  python scripts/results.py --algos a2c --envs Acrobot-v1 --num-seeds 5

For each pair it runs ``python scripts/train.py --algo A --env E --num-seeds S
--run-dir RUNS/A-E`` (the pair's preset, nothing else), unless that folder
already holds a finished run with as many seeds of the same settings (an
interrupted one is resumed). A finished run whose settings differ from what
the plain command resolves to now (a preset changed since) is stale: it is
moved aside to ``RUNS/A-E.stale-<time>``, never deleted, and the pair is
trained again (with ``--no-train`` it is listed as stale instead). Then it
writes ``--out``
(docs/results.md): one row per pair with the mean ± std over seeds of the
final mode-action evaluation (``eval_return_per_seed``), the sampled-policy
evaluation, timesteps, wall time, the machine, and the published result of the
same algorithm where there is one; and one learning-curve figure per
environment beside it. Bad flags end with one line naming the flag, exit 2.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pgjax.cli import EXIT_BAD_INPUT, OneLineParser

ROOT = Path(__file__).resolve().parent.parent

ALGOS = ("reinforce", "a2c", "npg", "trpo")
ENVS = (
    "CartPole-v1",
    "Acrobot-v1",
    "MountainCar-v0",
    "MountainCarContinuous-v0",
    "Pendulum-v1",
)

#: MinAtar's games in gymnax, whose [10, 10, C] frames take the CNN torso.
#: Not in the default grid: 10 M steps a seed take hours on a laptop's CPU
#: (``--envs Breakout-MinAtar --algos npg`` trains one).
MINATAR = (
    "Breakout-MinAtar",
    "Asterix-MinAtar",
    "Freeway-MinAtar",
    "SpaceInvaders-MinAtar",
)

#: brax's locomotion tasks (``pip install -e ".[brax]"``), also outside the
#: default grid: ``--envs brax/hopper --algos a2c,npg,trpo`` trains them.
BRAX = ("brax/hopper", "brax/ant", "brax/halfcheetah")

#: gymnax's PPO checkpoints (the "Ckpt (Return)" column of gymnax's README,
#: https://github.com/RobertTLange/gymnax, Lange 2022), trained by
#: gymnax-blines for 10 M steps: 64 envs × 128 steps, 4 epochs of 8
#: minibatches, γ 0.999, an MLP of 2 × 256 on the flattened frames.
GYMNAX_PPO: dict[str, float] = {
    "Asterix-MinAtar": 15.0,
    "Breakout-MinAtar": 28.0,
    "Freeway-MinAtar": 58.0,
    "SpaceInvaders-MinAtar": 131.0,
}

#: rl-baselines3-zoo's benchmark (https://github.com/DLR-RM/rl-baselines3-zoo/
#: blob/master/benchmark.md): mean ± std of the deterministic policy's episode
#: return over ~150k evaluation steps of ONE trained agent, and its training
#: steps. Tuned Stable-Baselines3 agents; the zoo has no REINFORCE or NPG.
ZOO: dict[tuple[str, str], tuple[float, float, str]] = {
    ("a2c", "CartPole-v1"): (500.0, 0.0, "500k"),
    ("a2c", "Acrobot-v1"): (-83.4, 17.2, "500k"),
    ("a2c", "MountainCar-v0"): (-111.3, 24.1, "1M"),
    ("a2c", "MountainCarContinuous-v0"): (91.2, 0.3, "100k"),
    ("a2c", "Pendulum-v1"): (-163.0, 103.2, "1M"),
    ("trpo", "CartPole-v1"): (500.0, 0.0, "100k"),
    ("trpo", "Acrobot-v1"): (-83.1, 18.6, "100k"),
    ("trpo", "MountainCar-v0"): (-107.3, 13.2, "100k"),
    ("trpo", "MountainCarContinuous-v0"): (92.5, 0.4, "50k"),
    ("trpo", "Pendulum-v1"): (-174.6, 127.6, "100k"),
    ("ppo", "CartPole-v1"): (500.0, 0.0, "100k"),
    ("ppo", "Acrobot-v1"): (-73.5, 18.2, "1M"),
    ("ppo", "MountainCar-v0"): (-110.4, 19.5, "1M"),
    ("ppo", "MountainCarContinuous-v0"): (88.3, 2.6, "20k"),
    ("ppo", "Pendulum-v1"): (-172.2, 104.2, "100k"),
    # brax's hopper is MuJoCo's hopper.xml with Gym's reward and termination
    # (forward velocity + 1 a step alive − 0.001·|a|², ended when it falls),
    # simulated by brax's generalized pipeline: the zoo's Hopper-v3 rows
    # are the nearest published figures, not the same simulator.
    ("a2c", "brax/hopper"): (733.5, 376.6, "1M"),
    ("trpo", "brax/hopper"): (3618.4, 356.8, "1M"),
    ("ppo", "brax/hopper"): (2410.4, 10.0, "1M"),
    # brax's ant takes Gym Ant's reward and termination on brax's own
    # ant.xml: the zoo's Ant-v3 rows are the nearest.
    ("trpo", "brax/ant"): (4982.3, 663.8, "1M"),
    ("ppo", "brax/ant"): (1327.2, 451.6, "1M"),
    # brax's halfcheetah takes Gym HalfCheetah's reward (forward velocity −
    # 0.1·|a|², no termination) on brax's own half_cheetah.xml.
    ("a2c", "brax/halfcheetah"): (3041.2, 157.3, "1M"),
    ("trpo", "brax/halfcheetah"): (1785.5, 68.7, "1M"),
    ("ppo", "brax/halfcheetah"): (5819.1, 663.5, "1M"),
}


#: The return at which each task counts as solved (Gymnasium's
#: ``reward_threshold``; Pendulum has none, −200 is the usual bar).
SOLVED_AT = {
    "CartPole-v1": 475.0,
    "Acrobot-v1": -100.0,
    "MountainCar-v0": -110.0,
    "MountainCarContinuous-v0": 90.0,
    "Pendulum-v1": -200.0,
    # MinAtar has no threshold: the published PPO return is the bar.
    **GYMNAX_PPO,
}


@dataclass(frozen=True)
class Row:
    """One pair's finished run."""

    algo: str
    env: str
    eval_per_seed: list[float]
    sampled_per_seed: list[float]
    timesteps: int
    wall_seconds: float
    run_dir: Path


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="results.py",
        description="Train every (algorithm, environment) pair's plain command "
        "on several seeds and write the results table.",
    )
    parser.add_argument("--algos", default=",".join(ALGOS), help="comma list")
    parser.add_argument("--envs", default=",".join(ENVS), help="comma list")
    parser.add_argument("--num-seeds", type=int, default=5, help="seeds per pair (5)")
    parser.add_argument(
        "--runs", type=Path, default=ROOT / "runs" / "results", help="run folders"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "docs" / "results.md", help="table to write"
    )
    parser.add_argument(
        "--no-train", action="store_true", help="only tabulate finished runs"
    )
    return parser


def finished_seeds(run_dir: Path) -> int:
    """The seeds of the uninterrupted run in ``run_dir`` (0: none there)."""
    path = run_dir / "summary.json"
    if not path.is_file():
        return 0
    summary = json.loads(path.read_text())
    if summary.get("interrupted"):
        return 0
    return len(summary.get("eval_return_per_seed") or [])


#: config.json fields that say how a run executes on a machine (resolved at
#: run time), not what it learns: they may differ without making a run stale.
EXECUTION_FIELDS = frozenset(
    {
        "config_version",
        "updates_per_chunk",
        "block_rows",
        "devices",
        "checkpoint_every",
        "keep_checkpoints",
        "tensorboard",
        "sweep",
    }
)


def learning_settings(config) -> dict:
    """``config`` as train.py writes it to config.json (the algorithm's
    defaults resolved), less :data:`EXECUTION_FIELDS`."""
    from pgjax.config import resolve_algorithm_defaults
    from pgjax.runner import folder

    data = folder.config_to_json(resolve_algorithm_defaults(config))
    return {k: v for k, v in data.items() if k not in EXECUTION_FIELDS}


def plain_settings(algo: str, env: str, num_seeds: int) -> dict:
    """What ``train.py --algo A --env E --num-seeds S`` resolves to now."""
    from pgjax import cli

    args = cli.build_parser().parse_args(
        ["--algo", algo, "--env", env, "--num-seeds", str(num_seeds)]
    )
    return learning_settings(cli.resolve_config(args))


def changed_settings(run_dir: Path, algo: str, env: str, num_seeds: int) -> list[str]:
    """``name saved → now`` for each learning setting where the run in
    ``run_dir`` differs from the pair's plain command today (empty: current).

    The saved config is read as a resume reads it (fields a newer pgjax
    added take their defaults), so an upgrade alone makes no run stale.
    """
    from pgjax.runner import folder

    path = run_dir / "config.json"
    try:
        saved_config, _ = folder.config_from_json(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return [f"no readable {path.name}"]
    saved = learning_settings(saved_config)
    return [
        f"{name} {saved[name]!r} → {value!r}"
        for name, value in plain_settings(algo, env, num_seeds).items()
        if saved[name] != value
    ]


def current_run(
    run_dir: Path, algo: str, env: str, num_seeds: int | None
) -> tuple[bool, str]:
    """``(ok, stale)``: whether ``run_dir`` holds a finished run of the pair's
    current settings with ``num_seeds`` seeds (None: any number), and if it
    holds a finished run of other settings, which ones changed (else ``""``)."""
    seeds = finished_seeds(run_dir)
    if seeds == 0:
        return False, ""
    changed = "; ".join(changed_settings(run_dir, algo, env, num_seeds or seeds))
    return not changed, changed


def run_folder(runs: Path, algo: str, env: str) -> Path:
    """The pair's run folder, ``RUNS/A-E`` (a suite's ``/`` becomes ``-``)."""
    return runs / f"{algo}-{file_stem(env)}"


def file_stem(env: str) -> str:
    """``env`` as one file name: ``brax/hopper`` → ``brax-hopper``."""
    return env.replace("/", "-")


def set_aside(run_dir: Path) -> Path:
    """Renames a stale run folder beside itself; returns its new path."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    target = run_dir.with_name(f"{run_dir.name}.stale-{stamp}")
    run_dir.rename(target)
    return target


def train(algo: str, env: str, num_seeds: int, run_dir: Path) -> bool:
    """Runs the pair's plain command; False when it failed."""
    command = [
        sys.executable,
        str(ROOT / "scripts" / "train.py"),
        "--algo", algo,
        "--env", env,
        "--num-seeds", str(num_seeds),
        "--run-dir", str(run_dir),
        "--no-progress",
    ]  # fmt: skip
    if (run_dir / "checkpoints").is_dir():
        # An interrupted run continues where it stopped; a folder holding a
        # different run is refused by train.py and left as it is.
        command.append("--resume")
    print(" ".join(command[1:]), flush=True)
    return subprocess.run(command, check=False).returncode == 0


def read_row(algo: str, env: str, run_dir: Path) -> Row:
    summary = json.loads((run_dir / "summary.json").read_text())
    return Row(
        algo=algo,
        env=env,
        eval_per_seed=summary["eval_return_per_seed"],
        sampled_per_seed=summary.get("eval_return_sampled_per_seed") or [],
        timesteps=summary["total_timesteps"],
        wall_seconds=summary["wall_seconds"],
        run_dir=run_dir,
    )


def mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    std = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.1f} ± {std:.1f}"


def solved(row: Row) -> str:
    """``k/n``: seeds whose mode evaluation reaches the task's bar."""
    if row.env not in SOLVED_AT:
        return "–"
    bar = SOLVED_AT[row.env]
    return f"{sum(x >= bar for x in row.eval_per_seed)}/{len(row.eval_per_seed)}"


def reference(algo: str, env: str) -> str:
    if env in GYMNAX_PPO:
        return f"{GYMNAX_PPO[env]:.0f} (ppo, 10M; gymnax)"
    if (algo, env) in ZOO:
        mean, std, steps = ZOO[(algo, env)]
        return f"{mean:.1f} ± {std:.1f} ({algo}, {steps}{simulator(env)})"
    best = max(
        ((a, v) for (a, e), v in ZOO.items() if e == env),
        key=lambda item: item[1][0],
        default=None,
    )
    if best is None:
        return "–"
    mean, std, steps = best[1]
    return f"{mean:.1f} ± {std:.1f} ({best[0]}, {steps}{simulator(env)})"


#: The published task behind an environment's *published* figure where that
#: task runs on another simulator.
PUBLISHED_ON = {
    "brax/hopper": "MuJoCo Hopper-v3",
    "brax/ant": "MuJoCo Ant-v3",
    "brax/halfcheetah": "MuJoCo HalfCheetah-v3",
}


def simulator(env: str) -> str:
    """``"; <task>"`` where the published figure is another simulator's."""
    return f"; {PUBLISHED_ON[env]}" if env in PUBLISHED_ON else ""


def machine() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
    return f"{platform.machine()}, {cores or os.cpu_count()} cores"


def write_table(rows: list[Row], missing: list[str], out: Path) -> None:
    figures = out.parent / "results"
    figures.mkdir(parents=True, exist_ok=True)
    lines = [
        "| algorithm | environment | eval (mode) | solved | eval (sampled) "
        "| steps/seed | wall s | published (algorithm, steps) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.algo} | {row.env} | {mean_std(row.eval_per_seed)} "
            f"| {solved(row)} | {mean_std(row.sampled_per_seed)} | {row.timesteps:,} "
            f"| {row.wall_seconds:.0f} | {reference(row.algo, row.env)} |"
        )
    images = []
    for env in dict.fromkeys(row.env for row in rows):
        image = figures / f"{file_stem(env)}.png"
        plot_env(env, [r for r in rows if r.env == env], image)
        images.append(f"![{env}](results/{image.name})")
    seeds = {len(row.eval_per_seed) for row in rows}
    text = TEMPLATE.format(
        table="\n".join(lines),
        seeds="/".join(str(s) for s in sorted(seeds)) or "–",
        machine=machine(),
        missing="\n".join(f"* {m}" for m in missing) or "* none",
        figures="\n\n".join(images),
    )
    out.write_text(text)


def plot_env(env: str, rows: list[Row], image: Path) -> None:
    from pgjax import plotting

    plotting.plot_runs(
        [row.run_dir for row in rows],
        image,
        title=f"{env}: mean and min–max over seeds",
    )


TEMPLATE = """# Results

Each row is the plain command `python scripts/train.py --algo A --env E
--num-seeds {seeds}` (the pair's preset in `pgjax/presets.py`, nothing else),
trained on this machine ({machine}). *eval (mode)* is the mean ± std over seeds
of each seed's mean return over 128 fresh episodes acting with the policy's
mode; *solved* counts the seeds whose mode evaluation reaches the task's bar
(CartPole 475, Acrobot −100, MountainCar −110, MountainCarContinuous 90,
Pendulum −200; on MinAtar, the published PPO return); *eval (sampled)*
samples actions as in training. *wall s* is the whole command, compile
included, all seeds together, on a machine that other jobs and other pairs'
runs shared: speeds are compared in performance.md, not here.

A run repeats bit for bit on one build (jaxlib version and CPU), but
another build rounds differently, and some runs are chaotic: a rounding
change can move a row's mean by a few points (Acrobot, MountainCar) or
send a Pendulum seed that solved to a policy that never swings up (−650).
The classic-control rows come from one build (jax 0.10.2 on this
machine), on which the Pendulum presets' settings solve 15 seeds (TRPO's:
4 of 5 per program, see below).

*published* is rl-baselines3-zoo's benchmark
(https://github.com/DLR-RM/rl-baselines3-zoo/blob/master/benchmark.md): one
tuned Stable-Baselines3 agent per row, its deterministic policy evaluated over
about 150k steps, with the steps it trained for. The zoo has no REINFORCE or
NPG (nor A2C on Ant); those rows show the best of its A2C, PPO and TRPO on
the task. On the
MinAtar games it is gymnax's PPO checkpoint (the "Ckpt (Return)" column of
https://github.com/RobertTLange/gymnax; Lange 2022): 10 M steps of PPO with an
MLP on the flattened frames, trained by gymnax-blines. brax's hopper, ant
and halfcheetah have no published figures of their own: their rows show the
zoo's MuJoCo Hopper-v3, Ant-v3 and HalfCheetah-v3 agents (Gym's rewards and
terminations, on MuJoCo's simulator rather than brax's `generalized`
pipeline; hopper's model is the same hopper.xml, ant's and halfcheetah's
are brax's own), and no bar of *solved*.

Regenerate with `python scripts/results.py`: it trains the pairs of the
classic-control grid (or those of `--algos`/`--envs`, e.g. `--algos npg
--envs Breakout-MinAtar`) whose run
folder under `runs/results/` is missing or stale (its settings differ from
what the plain command resolves to now; the old folder is kept beside it as
`A-E.stale-<time>`), then rewrites this page and the figures in
`docs/results/`.

{table}

Pairs without a finished run of their current settings:

{missing}

## What it took

* **Normalised observations** (`normalize_obs` in the presets) for
  MountainCar, its continuous version and Acrobot, as rl-baselines3-zoo does
  (`normalize: true`). MountainCar pays −1 per step until the goal, which
  random actions do not reach in 200 steps. A critic that bootstraps gives
  the advantages a direction before any success: its errors vary over the
  (unit-scaled) position and velocity. Small batches (64 envs × 16 steps)
  give the policy enough updates to follow that direction to the goal.
* **γ = 0.999 for the natural steps on MountainCarContinuous.** Its goal
  pays +100 a few hundred steps after the start; at γ = 0.99 that is
  discounted below the action cost of getting there, and most seeds settle
  on standing still. (A2C's smaller batches and Adam steps reach the goal
  at 0.99.)
* **REINFORCE has no such direction on MountainCar.** It does not bootstrap,
  so every episode that misses the goal returns the same −200 and its
  gradient is zero in expectation until an episode succeeds by chance; on the
  continuous task the action cost alone teaches it to stand still. The field
  adds exploration (state-dependent noise as in rl-baselines3-zoo's gSDE
  settings, bonuses, or shaped rewards, which change the task); pgjax's
  presets do not change the reward.
* **Whole-episode returns less the leave-one-out mean for REINFORCE on
  Acrobot.** A batch in which no episode reaches the goal within the
  500-step limit (every episode −500, common in the first updates) has a
  gradient of 0 in expectation. With whole returns less the mean of the
  other episodes' returns, every weight of such a batch is exactly 0 (the
  mean is summed about a value of the batch, so equal returns give a mean
  equal to them to the last bit), and so is the step: the policy keeps its
  uniform play until an episode reaches the goal by chance. With
  reward-to-go less a learned V, the weights are the critic's residuals,
  noise that `--normalize-advantages` scales to unit size and Adam to a
  full step: the policy drifts from the play that finds the goal (entropy
  from 1.099 to 1.02 in 20 updates on the seed that failed) and can end at
  −500. On seeds 100-115, reward-to-go less V leaves 4 of 16 seeds there,
  at γ 0.99 as at γ 0.95, and an entropy bonus (0.003, 0.01 or 0.03) does
  not free them; whole returns less the mean bring all 16 to −76 to −86,
  each past −200 within 10 updates, in 155 s against 279 s (no critic to
  fit). `tests/test_reinforce_estimator.py` checks the zero step.
* **A shorter horizon for REINFORCE on Pendulum** (γ 0.95; rl-baselines3-zoo's
  PPO takes 0.9 there). Its reward is local, and the reward-to-go over
  200 steps at γ 0.99 is noisy enough that some seeds still climb slowly
  from −1,000 after 30 M steps: 5 of 10 evaluate at −700 to −1,050 in one
  program of 5 seeds × lr 0.001 or 0.003, where the same program's seeds
  at γ 0.95 and 0.9 all evaluate between −145 and −185 (means −153 and
  −167). At γ 0.99 an entropy bonus does not help (with 0.001, 4 of 10
  seeds fall short of −200; with 0.01, 2 of 5).
* **brax's hopper: rl-baselines3-zoo's TRPO settings for MuJoCo, with
  PopArt.** TRPO and NPG take 2,048 steps a batch (32 envs × 64), 20
  critic epochs of 16 minibatches, 25 CG iterations and a KL of 0.01, as
  the zoo's TRPO does on Hopper-v4. The zoo also normalises rewards; here
  PopArt (`--value-norm`) scales the critic's targets, which grow to a few
  hundred: on seeds 10-11, TRPO evaluates at 2,527 with it and 1,908
  without (λ 0.98 or KL 0.03 without it: 2,010-2,104). At that KL the line
  search keeps the full natural step in 2,444 of the 2,445 updates of the
  five seeds (one backtrack, on seed 2), so TRPO and NPG train the other
  four seeds to the same policies and the same evaluations. Their training
  return levels off at 1,600-2,000 after 0.3 M steps, each seed's hopper
  falling after 300-650 steps; the mode evaluates above the sampled play
  (2,215 against 1,637 for TRPO). A2C takes many small batches (16 envs ×
  8 steps, 7,800 Adam steps in 1 M steps) at lr 0.0003, with PopArt: with
  32 × 32 and no PopArt, both lr 0.0003 and 0.001 left its policy's std
  near 1 (entropy 4.1 of 4.3 at the start) and evaluated near 635; with
  16 × 8, lr 0.001 evaluated at 394 and 357 on seeds 10-11, lr 0.0003 at
  2,043 and 916.
* **brax's ant: hopper's settings from a narrow Gaussian, 1 M steps.** The
  zoo's TRPO settings for MuJoCo are tuned on Ant; here they train for the
  zoo's 1 M steps. All three presets start their Gaussian at std e^-2 =
  0.14 (`--init-log-std -2`, the zoo's A2C setting on PyBullet's Ant): from
  std 1, the control cost of the noise outweighs the alive bonus and short
  episodes pay best. A2C from std 1 learned to fall within 15-25 steps (5
  seeds evaluated at 41.6); on 2 seeds after 0.3 M steps it evaluates at
  70 from −0.5, 271 from −1 and 1,220 from −2. TRPO from std 1 returned
  30-50 until 0.5 M steps and its 5 seeds evaluated at 1,210 after 1 M
  (sampled 394); from e^-2, at 1,622 (sampled 1,024), its training return
  passing 1,000 near 1 M and still rising. The line search kept every full
  natural step (no backtrack in 2,445 updates, from either std), so TRPO
  and NPG train the same policies. An ant that stays up for 1000 steps
  earns about 1,000 from the alive bonus; A2C's 3,291 is mostly forward
  progress.
* **brax's halfcheetah: hopper's settings from a narrow Gaussian.** All
  three presets start at std e^-2 (`--init-log-std -2`), as ant's
  do. From std 1, A2C's training return stayed between −400 and −110 for
  0.35 M steps (entropy 8.5 to 8.1), and TRPO's 5 seeds evaluated at 2,030
  after 1 M steps (sampled 1,482), where 2 seeds from e^-2 evaluate at
  3,638 after 0.3 M; after 1 M, 5 seeds from e^-2 evaluate at 6,150 for
  TRPO, 6,550 for NPG and 4,085 for A2C. NPG's steps are TRPO's without
  the line search, which backtracked in 22 of TRPO's 2,400 logged updates;
  the two follow the same curve until 0.5 M steps and part after it, within
  their spread over seeds. The zoo's TRPO reaches 1,785, its A2C 3,041 and
  its PPO 5,819 on MuJoCo's HalfCheetah-v3 in 1 M steps.
* **A policy that works only when sampled** shows as a gap between the mode
  and sampled columns: a deterministic policy can loop where sampling
  escapes. The natural-gradient presets on Acrobot take 64 × 16 batches with
  a KL of 0.02 per update, whose policies sharpen enough for the mode to act
  well.
* **NPG's steps annealed on Pendulum, at γ 0.95** (`--anneal-kl`: the KL
  allowed per step falls linearly to 0), with TRPO's critic settings (GAE
  λ 0.9, 5 critic epochs, rewards × 0.1). At γ 0.99, annealing brings 17
  of 20 seeds (0-4 and 10-24, one program per five) to −200, against 9 of
  20 unannealed with PopArt. The failures left are chaotic, not tied to a
  seed: they move between seeds from one program to another (one program
  of 40 runs, seeds 0-9 × max-kl 0.01 or 0.005 × cg-damping 0.1 or 0.3,
  evaluates every run between −131 and −213). The shorter horizon that
  cures REINFORCE there halves them: 14 of 15 seeds (0-4 and 10-19) reach
  −200 at γ 0.95 (mean −166), 11 of 15 at γ 0.99 (mean −212). On seeds
  10-19, 10 of 10 reach −200 at max-kl 0.01 (mean −159.2) and 9 of 10 at
  0.005 (mean −161.5), so the preset keeps 0.01. A Gaussian that starts
  at std e^-0.5 = 0.61 (`--init-log-std -0.5`) takes the last failures:
  seeds 0-4, 10-14 and 15-19 all reach −200 (means −157.6, −161.5 and
  −163.8); from e^-1, seed 1 of 0-4 ends at −220.
* **γ 0.95 for A2C and TRPO on Pendulum too.** A2C at γ 0.99 leaves a seed
  in about five at −650 to −690 (seeds 0-4, 10-14 and 15-19 in three
  programs: 12 of 15 reach −200): its policy settles without swinging up
  while its entropy falls to 0. At γ 0.95, seeds 0-14 in one program all
  reach −200 (mean −156.5). TRPO takes NPG's γ and starting std; its
  Pendulum runs are as chaotic as NPG's, a run's rounding moving with the
  program that holds it. Seeds 0-4 evaluate at −194.1 alone (4 of 5 reach
  −200, the table's row) and −170.8 beside γ 0.99 in one program (5 of 5);
  seeds 10-14 at −189.1 (4 of 5). At γ 0.99 from std 1, seeds 0-4
  evaluate at −236.1 alone (1 of 5) and −167.3 beside γ 0.95; at γ 0.95
  from std 1, −187.7 (3 of 5).
* **A critic fitted hard for TRPO on both MountainCars.** TRPO's line search
  keeps a step only if the surrogate improves, so noisy advantages from a
  lagging critic cost it whole updates. Its presets fit the critic for 10
  epochs of 8 minibatches per batch (rl-baselines3-zoo's TRPO takes 20
  critic updates per batch there): with 2 epochs of 4, 2 of 5 seeds reached
  MountainCar's goal and 3 of 5 the continuous one's. NPG's MountainCar
  preset takes the same critic: on seeds 10-19, 9 of 10 reach −110 with it
  (mean −101.8), 6 of 10 with 2 epochs of 4 (mean −126.3; two seeds
  without a single success).
* **MinAtar: NPG with MinAtar's reference CNN.** Natural steps of KL 0.02 on
  64 envs × 32 steps, 4,900 of them in 10 M steps: on Breakout 64 × 32
  reached 19.1 after 3 M steps where 128 × 32 reached 15.4 and 32 × 32 8.5
  (one seed each). On Freeway, 64 envs drove the policy to "always up" for
  good (entropy 1e-22 by 0.6 M steps, return 17), so its preset takes 128.
  Even at 128, 3 of 5 seeds turned deterministic (entropy below 2e-6 within
  0.4 M steps) and stopped learning; with the PPO agents' entropy bonus
  (`--ent-coef 0.01`) every seed's training return passed 58 by 1.6 M steps
  and stayed between 58.8 and 63.8 to the end (evaluated: 58.6-63.2).
  Asterix takes the same bonus: one seed without it evaluated at 40.8, its
  entropy down to 0.06 over the last 200 updates; with it, 5 seeds evaluate
  at 43.1-62.8 and keep an entropy of 0.13-0.37. So does SpaceInvaders
  (one seed without it: 145, entropy 0.011 at the end; 5 seeds with it:
  0.013-0.062). gymnax's SpaceInvaders draws no random numbers, so a
  mode-action evaluation plays one game 128 times: seed 3's greedy play
  scores 57 where its sampled play scores 124.6 and its last training
  episodes about 150; the other four score 139-166.
  On Breakout both seeds of the first preset reached about 15 and then
  collapsed to return 0 after steps whose real KL was 150× and 2000× the
  0.02 allowed (the quadratic model fails as the policy sharpens); its
  preset adds `--kl-guard 2`, which shrinks such steps. Guarded, it held a
  training return of 10-17, but its nearly deterministic policy kept
  switching between behaviours (17 and 6-9 a game) with every step of KL
  0.02, and the final one evaluated at 7.7; the preset also anneals the
  step to 0 over training (`--anneal-kl`), so that the policy settles and
  its evaluation matches its training return. Without an entropy bonus, 3
  of 5 seeds settle within the first 1 M steps on a nearly deterministic
  play (entropy below 0.05) that scores 6.5-7 a game and never leave it
  (12.4 ± 7.0 at 10 M steps); with the PPO agents' 0.01, 2 of 5 (training
  returns 14.0, 5.5, 21.5, 11.3 and 11.4 after 3.7 M steps; stopped
  there). In one program of 3 seeds × bonus 0.01, 0.03 or 0.1 × max-kl
  0.02 or 0.005 (1 M steps, unannealed), 7 of the 18 runs settled on
  6.5-7 a game, in every setting but the bonus of 0.1 at max-kl 0.02; the
  bonus of 0.1 keeps the entropy near 0.55 and evaluates best (12.8 at
  either max-kl, against 10.0 for 0.01 at 0.02). The preset takes 0.1:
  no seed's policy sharpens (entropy 0.67-0.76 over the last 200 updates),
  no seed settles (after 1.8 M steps their training returns are
  11.1-17.6, where 0.01 gave 5.6-21.7), and the 5 seeds evaluate at 86.6,
  24.5, 17.4, 24.2 and 23.5.
  The mean passes the PPO agent's 28 on the strength of seed 0, which
  learned to clear the wall and play on (its training return passed 80
  near 2.9 M steps); the other four hold 17-25. Other settings of the PPO
  agents do not free the settled seeds: γ 0.999 scored below 0.99 after
  2 M steps on 3 seeds (9.8 against 17.3 with the bonus of 0.01, 8.1
  against 13.0 without), PPO's 64 × 128 batches with the bonus of 0.01
  evaluated at 23.5, 11.5 and 7.0 after 3 M steps, and PPO's network (an
  MLP of 256 × 256 on the flattened frames, with the bonus of 0.01) held
  training returns of 9, 9 and 8 after 1.3 M steps, entropy 0.04-0.07.
  A2C, one Adam step per batch, stayed near 5.5 on Breakout in every setting
  tried (2-10 M steps), so the MinAtar presets are NPG's. TRPO with the
  same settings and an entropy bonus of 0.01 evaluated at 17.6 after 3 M
  steps in one run and settled on a return of 7 by 0.6 M steps in another.

{figures}
"""


def bring_up_to_date(algo: str, env: str, num_seeds: int, run_dir: Path) -> None:
    """Trains the pair unless ``run_dir`` holds a finished run of its current
    settings. A run of other settings, finished or not, is moved aside first
    (never deleted), so an interrupted one is resumed only if it is current."""
    if (run_dir / "config.json").is_file():
        changed = "; ".join(changed_settings(run_dir, algo, env, num_seeds))
        if changed:
            print(f"{run_dir} is stale ({changed}): moved to {set_aside(run_dir)}")
        elif finished_seeds(run_dir):
            return
    if not train(algo, env, num_seeds, run_dir):
        print(f"{algo} on {env}: train.py failed; the table lists it as missing")


def tabulate(
    requested: list[tuple[str, str]], num_seeds: int, runs: Path
) -> tuple[list[Row], list[str]]:
    """The rows of the pairs of the grid (:data:`ALGOS` × :data:`ENVS`,
    :data:`MINATAR` and :data:`BRAX`) and of ``requested`` that have a
    finished run of their current settings, so training one pair rewrites
    the page without dropping the others (requested pairs need
    ``num_seeds`` seeds, others keep theirs); and the requested or
    classic-grid pairs without one."""
    rows, missing = [], []
    requested_envs = [env for _, env in requested]
    for env in dict.fromkeys([*ENVS, *MINATAR, *BRAX, *requested_envs]):
        for algo in dict.fromkeys([*ALGOS, *(algo for algo, _ in requested)]):
            run_dir = run_folder(runs, algo, env)
            seeds = num_seeds if (algo, env) in requested else None
            ok, stale = current_run(run_dir, algo, env, seeds)
            if ok:
                rows.append(read_row(algo, env, run_dir))
            elif stale:
                missing.append(f"{algo} on {env}: stale ({stale})")
            elif (algo, env) in requested or (env in ENVS and algo in ALGOS):
                missing.append(f"{algo} on {env}")
    return rows, missing


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    algos = [a for a in args.algos.split(",") if a]
    envs = [e for e in args.envs.split(",") if e]
    from pgjax.algos import REGISTRY

    unknown = [a for a in algos if a not in REGISTRY]
    if unknown or not algos:
        return fail(f"--algos: unknown algorithm {unknown or algos!r}")
    if not envs:
        return fail("--envs: give at least one environment id")
    if args.num_seeds < 1:
        return fail(f"--num-seeds: must be a positive integer, got {args.num_seeds}")
    if args.out.suffix != ".md":
        return fail(f"--out: expected a .md file, got {args.out}")
    requested = [(algo, env) for env in envs for algo in algos]
    if not args.no_train:
        for algo, env in requested:
            bring_up_to_date(
                algo, env, args.num_seeds, run_folder(args.runs, algo, env)
            )
    rows, missing = tabulate(requested, args.num_seeds, args.runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_table(rows, missing, args.out)
    print(f"results: {args.out} ({len(rows)} rows)")
    return 0


def fail(message: str) -> int:
    print(f"results.py: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
