"""Measure pgjax's speed in one process: ceiling, algorithms, reference, scaling.

  python scripts/benchmark.py --algos a2c,npg,trpo,reinforce

regenerates docs/performance.md's raw data and figures on this machine.

Everything is measured back to back in one process, so figures can be read as
ratios against the reference (a minimal hand-written JAX A2C, see
scripts/reference_a2c.py) and the random-action ceiling, which cancels most of
the noise of a shared machine. Each algorithm's chunk runs in alternation with
the reference's, and its ``ratio_to_reference`` is the median of the per-repeat
ratios, so a change in the machine's load mid-run moves both alike. Each
timing is the median of ``--repeats`` runs of a compiled chunk of ``--updates``
updates; compile time is measured separately (ahead-of-time
``lower().compile()``, tracing included), beside the count of distinct fused
kernels in the compiled chunk and the ratio to the reference's compile: both
stable on a machine whose compile speed drifts.

Sections (each can be skipped):
  ceiling      env steps/s with random actions at --num-envs
  algorithms   training steps/s, compile s and kernels, memory, rollout vs
               learning split, and NPG/TRPO's time per phase (programs that
               stop after each phase, run in alternation; a phase is the
               median over rounds of the difference within a round)
  scaling      steps/s against num_envs (64 ... 65536), each algorithm in
               alternation with the reference at the same num_envs, and
               against --num-seeds
  solve        wall seconds (compile included) to the solved threshold, median
               over seeds, by running scripts/train.py as a user would (with
               the user's compilation cache, or with --solve-cold an empty
               one per run: what a first run costs)

Writes to --out (default: the repository's docs/bench/), under a name of the
month and machine (``2026-12-cpu-2core``, ``2026-11-gpu-h100``; --name to
choose another):
  NAME.json        every figure, with the date, commit, jax version and device
  NAME-speed.png   training steps/s against num_envs (log-log): a line per
                   algorithm, the reference and the random-action ceiling
  NAME-solve.png   seconds to the solved threshold per algorithm (median and
                   range over seeds), beside rejax PPO and Stable-Baselines3
                   A2C from the newest docs/bench/*-alternatives.json
Runs unchanged on a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pgjax import cpu, cpu_linalg  # import jax, start no backend


def _devices_flag(argv: list[str]) -> int:
    """``--devices`` from ``argv`` (0 if absent or bad: main() reports it)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--devices", default="0")
    value = parser.parse_known_args(argv)[0].devices
    return int(value) if value.isdigit() else 0


if __name__ == "__main__":
    # On a CPU, one JAX device per core (or --devices): before gymnax
    # (imported below) starts JAX's backends.
    cpu_linalg.install()  # before anything compiles (see pgjax.hardware)
    cpu.use_cpu_cores(_devices_flag(sys.argv[1:]) or None)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from pgjax import envs, hardware, parallel, presets, runner  # noqa: E402
from pgjax.algos import base, natural_pg  # noqa: E402
from pgjax.backend import mesh_shape  # noqa: E402
from pgjax.compilation import compile_lowered, lower  # noqa: E402
from pgjax.config import TrainConfig  # noqa: E402
from pgjax.train import make_train, split_env_batch  # noqa: E402

SOLVED = {"CartPole-v1": 475.0, "Acrobot-v1": -100.0, "Pendulum-v1": -250.0}

REPO = Path(__file__).resolve().parent.parent
#: Where the report's raw results and figures live (docs/performance.md).
DEFAULT_OUT = REPO / "docs" / "bench"


def paired_times(programs, repeats: int) -> list[list[float]]:
    """Wall seconds of each ``(fn, args)`` in ``programs``, run in turn
    ``repeats`` times (after one warm-up each): ``times[i][r]``.

    Interleaving puts each repeat of every program in the same few seconds of
    a shared machine, so their ratios stay steady while its load drifts.
    """
    for fn, args in programs:
        jax.block_until_ready(fn(*args))
    times = [[] for _ in programs]
    for _ in range(repeats):
        for i, (fn, args) in enumerate(programs):
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[i].append(time.perf_counter() - start)
    return times


def median_time(fn, *args, repeats: int) -> float:
    """Median wall seconds of ``fn(*args)`` (outputs blocked on), after a warm-up."""
    (times,) = paired_times([(fn, args)], repeats)
    return statistics.median(times)


def compiled(fn, *args, backend=None, **jit_kwargs):
    """``(executable, compile_seconds)`` of ``jax.jit(fn)`` for these arguments,
    with the chunk's XLA options of ``backend`` (none without one: the ceiling
    and the reference get XLA's defaults) and ``jax.jit``'s ``jit_kwargs``
    (shardings, donation)."""
    start = time.perf_counter()
    options = None if backend is None else backend.chunk_options
    executable = compile_lowered(lower(fn, *args, **jit_kwargs), options)
    return executable, time.perf_counter() - start


def memory_bytes(executable) -> int | None:
    """Arguments + outputs + temporaries of a compiled program (XLA's analysis)."""
    try:
        analysis = executable.memory_analysis()
        return int(
            analysis.argument_size_in_bytes
            + analysis.output_size_in_bytes
            + analysis.temp_size_in_bytes
            - analysis.alias_size_in_bytes
        )
    except Exception:  # not every backend reports it
        return None


_FUSED_COMPUTATION = re.compile(r"^%(fused|wrapped)\S* ")
_NAME = re.compile(r"%[\w.\-]+")
_METADATA = re.compile(r", metadata=\{.*?\}")


def distinct_fused_kernels(executable) -> int | None:
    """Distinct fused computations in a compiled program's optimised HLO.

    Each is a kernel XLA compiles (MLIR, then LLVM on a CPU: ~10 ms each on
    the 2-core machines here); XLA compiles identical ones once, so bodies
    are compared with names and metadata stripped. Unlike compile seconds,
    the count does not depend on the machine's load: the figure to watch when
    changing the programs.
    """
    try:
        text = executable.as_text()
    except Exception:  # not every backend gives its HLO
        return None
    bodies = set()
    for computation in re.split(r"\n(?=\S)", text):
        head, _, body = computation.partition("\n")
        if _FUSED_COMPUTATION.match(head):
            bodies.add(_NAME.sub("%", _METADATA.sub("", body)))
    return len(bodies)


def config_for(algo: str, env: str, num_envs: int, num_steps: int | None, **kw):
    settings = {**presets.preset(algo, env), "algo": algo, "env": env, **kw}
    settings["num_envs"] = num_envs
    if num_steps is not None:
        settings["num_steps"] = num_steps
    settings["total_timesteps"] = 2**31 - 1  # never done while benchmarking
    return dataclasses.replace(TrainConfig(), **settings)


def bench_ceiling(env_id: str, num_envs: int, num_steps: int, repeats: int) -> dict:
    """Env steps/s with uniformly random actions (no network at all)."""
    spec = envs.make_env(env_id)

    def run(key):
        state = envs.reset(spec, key, num_envs)
        space = spec.env.action_space(spec.params)

        def step(state, key):
            act_key, env_key = jax.random.split(key)
            actions = jax.vmap(space.sample)(jax.random.split(act_key, num_envs))
            state, result = envs.step(spec, state, actions, env_key)
            return state, result.reward.sum()

        return jax.lax.scan(step, state, jax.random.split(key, num_steps))[1].sum()

    key = jax.random.PRNGKey(0)
    executable, compile_s = compiled(run, key)
    seconds = median_time(executable, key, repeats=repeats)
    return {
        "steps_per_second": num_envs * num_steps / seconds,
        "compile_seconds": compile_s,
    }


@dataclasses.dataclass
class Reference:
    """The compiled reference A2C chunk, kept to time beside each algorithm."""

    executable: object
    state: object
    steps: int  # env steps per chunk
    compile_seconds: float


def make_reference(env_id: str, num_envs: int, num_steps: int, updates: int):
    from reference_a2c import make_reference_a2c

    init, chunk = make_reference_a2c(env_id, num_envs, num_steps)
    state = jax.jit(init)(jax.random.PRNGKey(0))
    executable, compile_s = compiled(lambda s: chunk(s, updates), state)
    return Reference(executable, state, num_envs * num_steps * updates, compile_s)


def bench_reference(reference: Reference, repeats: int) -> dict:
    seconds = median_time(reference.executable, reference.state, repeats=repeats)
    return {
        "steps_per_second": reference.steps / seconds,
        "compile_seconds": reference.compile_seconds,
        "memory_bytes": memory_bytes(reference.executable),
    }


def bench_algorithm(
    config: TrainConfig,
    updates: int,
    repeats: int,
    reference: Reference | None = None,
    devices: list | None = None,
) -> dict:
    """Training steps/s of ``updates`` updates, compile time, memory, phase split.

    With ``reference``, the chunk and the reference chunk run in alternation
    (:func:`paired_times`) and ``ratio_to_reference`` is the median over the
    repeats of the two speeds' ratio. ``devices``: those to split the seeds
    and envs across (default: all of this process's).
    """
    if config.algo == "reinforce":
        # One update is a whole episode per env (up to 500 steps on CartPole),
        # so a chunk runs long: fewer repeats. The same number of updates as
        # the others, though: from the untrained policy the first updates'
        # episodes are short (~20 steps), and per-update costs that scale with
        # the 500-row buffer dominate them (2 updates measured 0.61× the
        # reference and 10 measured 1.24×, in separate runs).
        repeats = max(1, min(repeats, 3))
    config = dataclasses.replace(config, updates_per_chunk=updates)
    trainer, backend, state, executable, compile_s = _chunk_program(config, devices)
    # Steps per chunk vary for episodic algorithms: count them from the metrics.
    _, metrics = executable(state)
    steps = int(np.sum(jax.device_get(metrics["env_steps"])))
    if reference is None:
        seconds, paired = median_time(executable, state, repeats=repeats), {}
    else:
        seconds, paired = _paired_with_reference(
            executable, state, steps, compile_s, reference, repeats
        )
    single = jax.tree.map(lambda x: x[0], state)
    rollout_s, learn_s, batch = _rollout_and_learn_seconds(
        trainer, single, backend, updates, repeats
    )
    phases = {}
    if config.algo in ("npg", "trpo"):
        phases = natural_phase_seconds(trainer, single, batch, updates, repeats)
    return {
        "num_envs": config.num_envs,
        "num_steps": config.num_steps,
        "num_seeds": config.num_seeds,
        # The devices this measurement split the envs across, and those
        # train.py would (its --devices 0 splits only where that pays).
        "env_shards": backend.env_shards,
        **train_py_split(config),
        "steps_per_second": steps / seconds,
        "compile_seconds": compile_s,
        "fused_kernels": distinct_fused_kernels(executable),
        "memory_bytes": memory_bytes(executable),
        "seconds_per_update": seconds / updates,
        "rollout_seconds_per_update": rollout_s / updates,
        "learn_seconds_per_update": learn_s / updates,
        "rollout_fraction": rollout_s / (rollout_s + learn_s),
        **({"learn_phase_seconds_per_update": phases} if phases else {}),
        **paired,
    }


def _chunk_program(config: TrainConfig, devices: list | None):
    """``(trainer, backend, state, executable, compile_seconds)``: the chunk
    of ``config.updates_per_chunk`` updates train.py runs, compiled, and the
    seeds' initial state."""
    if devices is None:
        devices = hardware.run_devices()
    backend = hardware.backend_for(config, config.num_seeds, devices)
    trainer = make_train(config, backend)
    keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(config.num_seeds))
    abstract = jax.eval_shape(trainer.init_batch, keys)
    shardings = trainer.state_shardings(abstract)
    state = jax.jit(trainer.init_batch, out_shardings=shardings)(keys)
    # The program train.py runs: unbatched for one seed, so that the idle-slot
    # lax.cond stays a branch instead of vmap's select of both sides, and
    # REINFORCE's block loop stops at the seed's own last valid row.
    executable, compile_s = compiled(
        trainer.train_chunk_batch,
        state,
        backend=backend,
        **runner.chunk_shardings(backend, shardings),
    )
    return trainer, backend, state, executable, compile_s


def _paired_with_reference(
    executable, state, steps: int, compile_s: float, reference: Reference, repeats: int
):
    """``(median seconds, reference fields)`` of the chunk ``executable`` (on
    ``state``, ``steps`` env steps, compiled in ``compile_s``) run in
    alternation with the reference's."""
    times, reference_times = paired_times(
        [(executable, (state,)), (reference.executable, (reference.state,))],
        repeats,
    )
    ratios = [
        (steps / t) / (reference.steps / r)
        for t, r in zip(times, reference_times, strict=True)
    ]
    return statistics.median(times), {
        "compile_vs_reference": compile_s / reference.compile_seconds,
        "ratio_to_reference": statistics.median(ratios),
        "ratios_to_reference": ratios,
        "reference_steps_per_second": reference.steps
        / statistics.median(reference_times),
    }


def _rollout_and_learn_seconds(trainer, single, backend, updates: int, repeats: int):
    """``(rollout seconds, learning seconds, batch)`` of ``updates`` updates of
    one seed's state ``single``: the rollout alone, and the learning step
    alone on one fixed ``batch``, timed in alternation."""
    algo, hyper = trainer.algorithm, single.hyper

    # Split across the devices as in the chunk (Trainer.update).
    def collect(state):
        def body(carry, key):
            env_state, batch, _ = algo.collect(
                state.agent, split_env_batch(carry, backend), key, hyper
            )
            return split_env_batch(env_state, backend), jnp.sum(batch.reward)

        return jax.lax.scan(body, state.env, jax.random.split(state.key, updates))

    def collect_once(agent, env, key):
        _, batch, _ = algo.collect(agent, split_env_batch(env, backend), key, hyper)
        return parallel.split_envs(batch, backend, axis=1)

    # Made split, as in the chunk: the learning programs below (and
    # natural_phase_seconds) take it with that sharding as is.
    batch = jax.jit(collect_once)(single.agent, single.env, single.key)

    def learn(state, batch):
        def body(agent, key):
            agent, metrics = algo.update(agent, batch, key, hyper, 0.0)
            return agent, metrics["policy_loss"]

        return jax.lax.scan(body, state.agent, jax.random.split(state.key, updates))

    collect_exec, _ = compiled(collect, single, backend=backend)
    learn_exec, _ = compiled(learn, single, batch, backend=backend)
    rollout_times, learn_times = paired_times(
        [(collect_exec, (single,)), (learn_exec, (single, batch))], repeats
    )
    rollout_s, learn_s = map(statistics.median, (rollout_times, learn_times))
    return rollout_s, learn_s, batch


def train_py_split(config) -> dict:
    """How ``python scripts/train.py`` with its default ``--devices 0`` would
    run ``config``: ``train_py_devices``, the devices it would use, and
    ``train_py_env_shards``, those each seed's envs are split across.

    On a CPU train.py exposes the devices that pay
    (:func:`pgjax.hardware.cpu_device_count`), split over the seeds first
    (:func:`pgjax.backend.mesh_shape`): with several seeds the devices may
    train seeds side by side and split no seed's envs. Elsewhere it uses all
    the devices.
    """
    if jax.devices()[0].platform == "cpu":
        devices = hardware.cpu_device_count(
            config.algo, config.num_envs, config.num_steps, config.num_seeds, 0
        )
    else:
        devices = len(hardware.run_devices())
    _, env_shards = mesh_shape(devices, config.num_seeds, config.num_envs)
    return {"train_py_devices": devices, "train_py_env_shards": env_shards}


def natural_phase_seconds(trainer, single, batch, updates: int, repeats: int):
    """NPG/TRPO learning-step time per phase (policy gradient, CG solve, line
    search, critic fit), from programs that stop after each phase in turn
    (:func:`natural_phase_prefixes`)."""
    hyper = single.hyper
    prefixes = natural_phase_prefixes(trainer)
    programs = []
    for prefix in prefixes.values():

        def learn(state, batch, prefix=prefix):
            def body(agent, key):
                agent, checksum = prefix(agent, batch, key, hyper, 0.0)
                # Make the next iteration depend on this one (numerically a
                # no-op), or XLA hoists a prefix that leaves the agent
                # unchanged out of the loop and times it once.
                agent = agent.replace(
                    actor=jax.tree.map(lambda x: x + 1e-30 * checksum, agent.actor)
                )
                return agent, checksum

            keys = jax.random.split(state.key, updates)
            return jax.lax.scan(body, state.agent, keys)

        executable, _ = compiled(learn, single, batch, backend=trainer.backend)
        programs.append((executable, (single, batch)))
    times = paired_times(programs, repeats)
    return phase_costs(list(prefixes), times, updates)


def natural_phase_prefixes(trainer) -> dict:
    """Programs that run NPG/TRPO's update up to and including each phase.

    ``{phase: prefix}`` for ``policy_gradient``, ``cg_solve``, ``line_search``
    (TRPO only) and ``critic_fit``, composed from the algorithm's phases
    (:func:`pgjax.algos.natural_pg.make_natural_phases`). ``prefix(agent,
    batch, key, hyper, progress) → (agent, checksum)``: the agent unchanged
    and a checksum that depends on the phase's output, so that XLA cannot
    drop the phase; the last is the full update, its checksum the policy
    loss. The cost of phase k is the time of prefix k minus that of prefix
    k−1.
    """
    config = trainer.config
    line_search = config.algo == "trpo"
    phases = natural_pg.make_natural_phases(
        config, trainer.spec, trainer.backend, line_search
    )

    def policy_gradient(agent, batch, key, hyper, progress):
        targets = phases.targets(agent, batch, hyper)
        gradient = phases.policy_gradient(agent.actor, batch, targets, hyper)
        return agent, base.global_norm((gradient.grads, targets.returns))

    def cg_solve(agent, batch, key, hyper, progress):
        targets = phases.targets(agent, batch, hyper)
        gradient = phases.policy_gradient(agent.actor, batch, targets, hyper)
        step = phases.natural_step(agent.actor, batch, gradient, hyper)
        return agent, base.global_norm(step.step)

    def search(agent, batch, key, hyper, progress):
        targets = phases.targets(agent, batch, hyper)
        gradient = phases.policy_gradient(agent.actor, batch, targets, hyper)
        step = phases.natural_step(agent.actor, batch, gradient, hyper)
        policy = phases.line_search(agent.actor, batch, targets, gradient, step, hyper)
        return agent, base.global_norm(policy.actor)

    def critic_fit(agent, batch, key, hyper, progress):
        agent, metrics = trainer.algorithm.update(agent, batch, key, hyper, progress)
        return agent, metrics["policy_loss"]

    prefixes = {"policy_gradient": policy_gradient, "cg_solve": cg_solve}
    if line_search:
        prefixes["line_search"] = search
    prefixes["critic_fit"] = critic_fit
    return prefixes


def phase_costs(phases: list[str], times: list[list[float]], updates: int) -> dict:
    """Seconds per update of each phase, from ``times[k][r]``: round ``r``'s
    time of the program that runs phases ``0..k`` (:func:`paired_times`).

    Phase k costs the median over the rounds of ``times[k][r] − times[k−1][r]``
    (at least 0): differences within a round, so that a drift in the machine's
    speed between two programs' timings does not land in a phase.
    """
    seconds, previous = {}, [0.0] * len(times[0])
    for phase, totals in zip(phases, times, strict=True):
        differences = [(t - p) / updates for t, p in zip(totals, previous, strict=True)]
        seconds[phase] = max(statistics.median(differences), 0.0)
        previous = totals
    return seconds


def bench_solve(
    algo: str, env: str, seeds: list[int], extra: list[str], cold: bool = False
) -> dict:
    """Runs scripts/train.py per seed; seconds to the threshold from metrics.csv.

    ``wall_time`` in metrics.csv counts from the process's start, so imports
    and compilation are included. ``cold``: each run gets an empty persistent
    compilation cache (``PGJAX_COMPILE_CACHE``), as a first run would;
    otherwise runs share the user's cache, as reruns do.
    """
    threshold = SOLVED[env]
    script = Path(__file__).resolve().parent / "train.py"
    results = []
    for seed in seeds:
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp) / "run"
            command = [sys.executable, str(script), "--algo", algo, "--env", env]
            command += ["--seed", str(seed), "--run-dir", str(run_dir)]
            command += ["--no-progress", *extra]
            environment = dict(os.environ)
            if cold:
                environment["PGJAX_COMPILE_CACHE"] = str(Path(tmp) / "xla-cache")
            start = time.time()
            proc = subprocess.run(
                command, capture_output=True, text=True, env=environment
            )
            wall = time.time() - start
            if proc.returncode != 0:
                results.append({"seed": seed, "error": proc.stderr.strip()[-500:]})
                continue
            summary = json.loads((run_dir / "summary.json").read_text())
            first = None
            import csv

            with open(run_dir / "metrics.csv") as f:
                for row in csv.DictReader(f):
                    value = row["episode_return"]
                    if value and float(value) >= threshold:
                        first = float(row["wall_time"])
                        break
            results.append(
                {
                    "seed": seed,
                    "seconds_to_threshold": first,
                    "eval_return": summary["eval_return"],
                    "wall_seconds": wall,
                    "compile_seconds": summary["compile_seconds"],
                    "steps_per_second": summary["steps_per_second"],
                }
            )
    times = [r.get("seconds_to_threshold") for r in results]
    reached = [t for t in times if t is not None]
    return {
        "threshold": threshold,
        "compilation_cache": "empty per run" if cold else "shared",
        "runs": results,
        "median_seconds_to_threshold": statistics.median(reached)
        if len(reached) == len(seeds)
        else None,
        "solved_eval_seeds": sum(
            r.get("eval_return", -np.inf) >= threshold for r in results
        ),
    }


#: Words of a device kind that name no model (``NVIDIA H100 80GB HBM3``).
_VENDOR_WORDS = {"nvidia", "amd", "intel", "tesla", "geforce", "radeon", "instinct"}


def machine_slug(platform: str, device_kind: str, cores: int) -> str:
    """The machine in a file name: ``cpu-<cores>core`` on a CPU, else the
    platform and the device's model (``gpu-h100``, ``gpu-a100``, ``tpu-v4``,
    ``gpu-rtx-4090``): the words of ``device_kind`` after the vendor's, up
    to the first with a digit, which leaves out memory sizes and variants."""
    if platform == "cpu":
        return f"cpu-{cores}core"
    words = [
        w
        for w in re.split(r"[^a-z0-9]+", device_kind.lower())
        if w and w not in _VENDOR_WORDS and w != platform
    ]
    model = []
    for word in words:
        model.append(word)
        if any(c.isdigit() for c in word):
            break
    return "-".join([platform, *model[:3]])


def report_stem(day: datetime.date, machine: str) -> str:
    """``<YYYY-MM>-<machine>``: the results' file name without its suffix."""
    return f"{day:%Y-%m}-{machine}"


def git_commit() -> str | None:
    """The short commit of the checkout the benchmark runs from (None
    outside a git checkout or without git)."""
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


def newest_alternatives(folder: Path = DEFAULT_OUT) -> Path | None:
    """The newest ``*-alternatives.json`` in ``folder`` (names begin with the
    month, so the last by name; file times change with every checkout)."""
    found = sorted(folder.glob("*-alternatives.json"))
    return found[-1] if found else None


def _shown_path(path: Path) -> str:
    """``path`` relative to the repository when inside it (as the docs cite it)."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _subtitle(report: dict) -> str:
    """The machine, date and commit, under a plot's title."""
    commit, devices = report.get("commit"), report.get("devices", 1)
    if report["device"].startswith("cpu:") and "cores" in report:
        machine = f"{report['cores']}-core CPU"
    else:
        machine = report["device"].partition(":")[2] or report["device"]
    parts = [machine, f"{devices} JAX device{'s' if devices != 1 else ''}"]
    parts += [report.get("date", ""), f"commit {commit}" if commit else ""]
    return " · ".join(p for p in parts if p)


def plot_speed(report: dict, out: Path) -> None:
    """Training steps/s against num_envs from the scaling section (log-log):
    a line per algorithm, the reference and the random-action ceiling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import (
        FixedLocator,
        FuncFormatter,
        NullFormatter,
        NullLocator,
    )

    fig, ax = plt.subplots(figsize=(8, 5.2), dpi=120)
    scaling = report["scaling_envs"]
    sizes = set()
    for name, rows in scaling.items():
        if not rows:
            continue
        xs = [r["num_envs"] for r in rows]
        ys = [r["steps_per_second"] for r in rows]
        sizes.update(xs)
        if name == "ceiling":
            style = dict(color="black", linestyle="--", marker="v")
            label = "random actions (ceiling)"
        elif name == "reference_a2c":
            style = dict(color="0.45", linestyle=":", marker="s")
            label = "hand-written reference A2C"
        else:
            style = dict(linestyle="-", marker="o")
            label = f"pgjax {name.upper()}"
        ax.plot(xs, ys, label=label, markersize=5, linewidth=1.8, **style)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    # One tick per measured num_envs, written out (4096, not 2^12).
    ax.xaxis.set_major_locator(FixedLocator(sorted(sizes)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
    ax.yaxis.set_major_formatter(FuncFormatter(_steps_label))
    # Within two decades few major ticks show, so the minor ones get labels
    # too (in the same style); over more they would crowd.
    low, high = ax.get_ylim()
    narrow = high / low < 100
    ax.yaxis.set_minor_formatter(
        FuncFormatter(_steps_label) if narrow else NullFormatter()
    )
    ax.set_xlabel(f"num_envs (× {report['num_steps']} steps per rollout)")
    ax.set_ylabel("training env steps / s")
    ax.set_title(f"Training speed, {report['env']}\n{_subtitle(report)}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=9, loc="best")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def _steps_label(value: float, _position=None) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


#: How the alternatives' keys in ``*-alternatives.json`` read in a plot.
ALTERNATIVE_LABELS = {"rejax_ppo": "rejax PPO", "sb3_a2c": "Stable-Baselines3 A2C"}


def solve_bars(report: dict, alternatives: Path | None) -> list[dict]:
    """The solve plot's bars: ``{label, seconds, seeds, source}`` per pgjax
    algorithm in ``report["solve"]``, then per alternative in the
    ``alternatives`` JSON measured on the same env; ``seconds`` holds the
    seeds that reached the threshold."""
    bars = []
    for algo, result in report["solve"].items():
        bars.append(
            {
                "label": f"pgjax {algo.upper()}",
                "seconds": [
                    r["seconds_to_threshold"]
                    for r in result["runs"]
                    if r.get("seconds_to_threshold") is not None
                ],
                "seeds": len(result["runs"]),
                "source": "pgjax",
            }
        )
    if alternatives is None:
        return bars
    data = json.loads(alternatives.read_text())
    # An alternatives file names its env, or its scripts do
    # (rejax_ppo_cartpole.py): only the report's env compares.
    env_word = report["env"].split("-")[0].lower()
    for key, entry in data.get("alternatives", {}).items():
        if "env" in data:
            comparable = data["env"] == report["env"]
        else:
            comparable = env_word in entry.get("script", "").lower()
        if not comparable:
            continue
        bars.append(
            {
                "label": ALTERNATIVE_LABELS.get(key, key),
                "seconds": [
                    r["seconds_to_threshold"]
                    for r in entry["runs"]
                    if r.get("seconds_to_threshold") is not None
                ],
                "seeds": len(entry["runs"]),
                "source": "alternative",
            }
        )
    return bars


def plot_solve(report: dict, out: Path, alternatives: Path | None) -> None:
    """Seconds to the solved threshold: per pgjax algorithm of the solve
    section and per alternative in the ``alternatives`` JSON (measured by the
    scripts in docs/bench/alternatives), a bar at the median over the seeds
    that reached it, a line over their range and a dot per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = solve_bars(report, alternatives)
    threshold = next(iter(report["solve"].values()))["threshold"]
    fig, ax = plt.subplots(figsize=(8, 1.6 + 0.55 * len(bars)), dpi=120)
    colors = {"pgjax": "tab:blue", "alternative": "tab:gray"}
    longest = max((max(b["seconds"]) for b in bars if b["seconds"]), default=1.0)
    for y, bar in enumerate(bars):
        seconds = bar["seconds"]
        if not seconds:
            ax.text(
                0,
                y,
                "  threshold not reached"
                + (f" on any of {bar['seeds']} seeds" if bar["seeds"] > 1 else ""),
                va="center",
                fontsize=9,
            )
            continue
        median = statistics.median(seconds)
        color = colors[bar["source"]]
        ax.barh(y, median, height=0.6, color=color, alpha=0.55)
        ax.hlines(y, min(seconds), max(seconds), color="black", linewidth=1.5)
        ax.plot(seconds, [y] * len(seconds), "k.", markersize=6)
        note = f"{median:.1f} s"
        if len(seconds) < bar["seeds"]:
            note += f" ({len(seconds)}/{bar['seeds']} seeds reached it)"
        ax.text(max(seconds) + 0.01 * longest, y, "  " + note, va="center", fontsize=9)
    ax.set_yticks(
        range(len(bars)),
        [f"{b['label']} ({b['seeds']} seed{'s' * (b['seeds'] != 1)})" for b in bars],
    )
    ax.invert_yaxis()
    ax.set_xlim(0, longest * 1.3)
    cache = {r["compilation_cache"] for r in report["solve"].values()}
    ax.set_xlabel(
        f"seconds to a training return of {threshold:g}\n"
        "(from the process's start: imports and compiling included)"
    )
    ax.set_title(
        f"Time to solve {report['env']} (pgjax: compilation cache "
        f"{', '.join(sorted(cache))})\n{_subtitle(report)}",
        fontsize=10,
    )
    ax.grid(alpha=0.3, axis="x")
    if any(b["source"] == "alternative" for b in bars):
        note = (
            f"Grey: from {_shown_path(alternatives)}, measured by the scripts "
            "in docs/bench/alternatives/, not by this run."
        )
    else:
        note = "No alternatives measured on this env in docs/bench/."
    fig.text(0.01, 0.01, note, fontsize=8, color="0.3")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(out)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--algos", default="a2c,reinforce")
    parser.add_argument("--num-envs", type=int, default=4096)
    parser.add_argument("--num-steps", type=int, default=16)
    parser.add_argument("--updates", type=int, default=10, help="updates per chunk")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--scaling-envs",
        default="64,256,1024,4096,16384,65536",
        help="num_envs values of the scaling sweep (empty to skip)",
    )
    parser.add_argument("--scaling-seeds", default="1,2,4,8")
    parser.add_argument("--solve-seeds", default="0,1,2,3,4")
    parser.add_argument(
        "--solve-cold",
        action="store_true",
        help="solve section: an empty compilation cache for every run",
    )
    parser.add_argument(
        "--skip",
        default="",
        help="comma list of sections to skip: ceiling, "
        "reference, algorithms, scaling, solve",
    )
    parser.add_argument(
        "--devices",
        type=int,
        default=0,
        help="CPU devices to split the envs across in this process's "
        "measurements (0 = one per core; 1 = no split); passed on to the solve "
        "section's train.py runs, where 0 lets train.py choose",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="folder of the results and plots (default: docs/bench/)",
    )
    parser.add_argument(
        "--name",
        default=None,
        help="file name of the results without .json (default: "
        "<YYYY-MM>-<machine>, e.g. 2026-12-cpu-2core); the plots are "
        "NAME-speed.png and NAME-solve.png",
    )
    return parser


def main(argv=None) -> int:
    """Measures the sections not skipped, in order, rewriting NAME.json after
    each section and each algorithm (a killed run keeps what it measured),
    and draws the plots. Returns 0; a bad ``--devices`` exits with code 2."""
    args, devices = parse_args(argv)
    skip = set(comma_list(args.skip))
    algos = comma_list(args.algos)
    args.out.mkdir(parents=True, exist_ok=True)
    device = jax.devices()[0]
    cores = cpu.usable_cores()
    today = datetime.date.today()
    stem = args.name or report_stem(
        today, machine_slug(device.platform, device.device_kind, cores)
    )
    json_path = args.out / f"{stem}.json"
    command = sys.argv[1:] if argv is None else list(argv)
    report = report_header(args, command, algos, devices, device, cores, today)

    def save() -> None:
        json_path.write_text(json.dumps(report, indent=2))

    if "ceiling" not in skip:
        report["ceiling"] = measure_ceiling(args)
    reference = None
    if "reference" not in skip:
        reference, report["reference_a2c"] = measure_reference(args)
    save()
    if "algorithms" not in skip:
        measure_algorithms(args, algos, reference, devices, report, save)
    speed_path = args.out / f"{stem}-speed.png"
    if "scaling" not in skip and args.scaling_envs:
        with_reference = "reference" not in skip
        measure_scaling_envs(args, algos, with_reference, devices, report, save)
        measure_scaling_seeds(args, algos, devices, report, save)
        plot_speed(report, speed_path)
        log(f"wrote {speed_path}")
    else:
        log(f"speed plot: skipped with the scaling section ({speed_path})")
    if "solve" not in skip and args.env in SOLVED:
        measure_solve(args, algos, report, save)
    draw_solve_plot(report, args.out / f"{stem}-solve.png")
    save()
    log(f"wrote {json_path}")
    return 0


def parse_args(argv) -> tuple[argparse.Namespace, list]:
    """The command line's arguments and the devices its measurements split the
    envs across; a ``--devices`` below 0 or above this process's devices
    ends with one line and exit code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.devices < 0:
        parser.error("--devices: must be >= 0 (0 = one per core)")
    # Run as a script, the device count was set before JAX started (above);
    # called in-process, the first --devices of the devices JAX has.
    local = jax.local_device_count()
    if args.devices > local:
        parser.error(f"--devices {args.devices}: this process has {local}")
    return args, hardware.run_devices(args.devices)


def comma_list(text: str) -> list[str]:
    """The non-empty items of a comma-separated flag (``"a2c,,npg"`` → two)."""
    return [item for item in text.split(",") if item]


def comma_ints(text: str) -> list[int]:
    """The integers of a comma-separated flag (a ValueError on any other)."""
    return [int(item) for item in comma_list(text)]


def log(message: str) -> None:
    """Prints a line of progress at once (a benchmark runs for long)."""
    print(message, flush=True)


def report_header(
    args: argparse.Namespace,
    command: list[str],
    algos: list[str],
    devices: list,
    device,
    cores: int,
    today: datetime.date,
) -> dict:
    """The report's first keys: what was measured, where and how (the env,
    date, commit, machine, versions, workload and command line), and each
    algorithm's XLA options for its chunk (none off a CPU)."""
    return {
        "env": args.env,
        "date": today.isoformat(),
        "commit": git_commit(),
        "device": f"{device.platform}:{device.device_kind}",
        "cpu_count": os.cpu_count(),
        "cores": cores,
        "devices": len(devices),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "num_envs": args.num_envs,
        "num_steps": args.num_steps,
        "updates_per_chunk": args.updates,
        "repeats": args.repeats,
        "command": " ".join(["benchmark.py", *command]),
        "chunk_compiler_options": {
            algo: dict(cpu.CHUNK_OPTIONS.get(algo, {}))
            if device.platform == "cpu"
            else {}
            for algo in algos
        },
    }


def measure_ceiling(args: argparse.Namespace) -> dict:
    """The ceiling section: env steps/s with random actions at --num-envs, over
    as many steps as an algorithm's chunk (:func:`bench_ceiling`)."""
    ceiling = bench_ceiling(
        args.env, args.num_envs, args.num_steps * args.updates, args.repeats
    )
    log(f"ceiling: {ceiling['steps_per_second']:,.0f} steps/s")
    return ceiling


def measure_reference(args: argparse.Namespace) -> tuple[Reference, dict]:
    """The reference section: the reference A2C compiled at --num-envs ×
    --num-steps, kept for the algorithms section to time in alternation,
    and its figures (:func:`bench_reference`)."""
    reference = make_reference(args.env, args.num_envs, args.num_steps, args.updates)
    result = bench_reference(reference, args.repeats)
    log(f"reference a2c: {result['steps_per_second']:,.0f} steps/s")
    return reference, result


def measure_algorithms(
    args: argparse.Namespace,
    algos: list[str],
    reference: Reference | None,
    devices: list,
    report: dict,
    save: Callable[[], None],
) -> None:
    """The algorithms section: fills ``report["algorithms"]`` with each
    algorithm's :func:`bench_algorithm_and_preset`, saving after each."""
    report["algorithms"] = {}
    for algo in algos:
        result = bench_algorithm_and_preset(args, algo, reference, devices)
        report["algorithms"][algo] = result
        log(algorithm_line(algo, result))
        if "learn_phase_seconds_per_update" in result:
            log(phase_line(algo, result))
        save()


def bench_algorithm_and_preset(
    args: argparse.Namespace, algo: str, reference: Reference | None, devices: list
) -> dict:
    """:func:`bench_algorithm` of ``algo`` on the reference's workload
    (--num-envs × --num-steps), timed in alternation with ``reference``:
    the ratio reported. Under ``"preset"``, the same at the preset's own
    num_steps, which is what users run, where that differs (REINFORCE
    excepted)."""
    config = config_for(algo, args.env, args.num_envs, args.num_steps)
    result = bench_algorithm(config, args.updates, args.repeats, reference, devices)
    preset_config = config_for(algo, args.env, args.num_envs, None)
    if preset_config.num_steps != config.num_steps and algo != "reinforce":
        result["preset"] = bench_algorithm(
            preset_config, args.updates, args.repeats, devices=devices
        )
    return result


def algorithm_line(algo: str, result: dict) -> str:
    """The algorithms section's line of ``algo``: steps/s, compile seconds (and
    their ratio to the reference's), kernels, the rollout's share of an
    update, the speed's ratio to the reference, and the devices where
    train.py would split the envs across another number."""
    line = (
        f"{algo}: {result['steps_per_second']:,.0f} steps/s, compile "
        f"{result['compile_seconds']:.2f}s"
    )
    if "compile_vs_reference" in result:
        line += f" ({result['compile_vs_reference']:.2f}x the reference's)"
    line += (
        f", {result['fused_kernels']} kernels, rollout "
        f"{result['rollout_fraction']:.0%} of an update"
    )
    if "ratio_to_reference" in result:
        line += f", {result['ratio_to_reference']:.2f}x reference"
    if result["env_shards"] != result["train_py_env_shards"]:
        line += (
            f" (on {result['env_shards']} devices; train.py runs it on "
            f"{result['train_py_env_shards']}: see --devices)"
        )
    return line


def phase_line(algo: str, result: dict) -> str:
    """NPG/TRPO's milliseconds per update of the rollout and of each phase of
    the learning step, from a result with ``learn_phase_seconds_per_update``."""
    split = result["learn_phase_seconds_per_update"]
    return (
        f"  {algo} learning step (ms): rollout "
        f"{1000 * result['rollout_seconds_per_update']:.1f}, "
        + ", ".join(f"{k} {1000 * v:.1f}" for k, v in split.items())
    )


def measure_scaling_envs(
    args: argparse.Namespace,
    algos: list[str],
    with_reference: bool,
    devices: list,
    report: dict,
    save: Callable[[], None],
) -> None:
    """The scaling section against num_envs: fills ``report["scaling_envs"]``
    with a list of rows per line of the speed plot (the ceiling, the
    reference unless ``with_reference`` is false, each algorithm), a row per
    --scaling-envs size, saving after each size."""
    sizes = comma_ints(args.scaling_envs)
    scaling = {"ceiling": []}
    if with_reference:
        scaling["reference_a2c"] = []
    scaling.update({algo: [] for algo in algos})
    report["scaling_envs"] = scaling
    for num_envs in sizes:
        measure_scaling_size(args, num_envs, algos, with_reference, devices, scaling)
        save()


def measure_scaling_size(
    args: argparse.Namespace,
    num_envs: int,
    algos: list[str],
    with_reference: bool,
    devices: list,
    scaling: dict,
) -> None:
    """Appends to ``scaling``'s lists their rows at ``num_envs``. The reference
    (one per size, each algorithm timed in alternation with it as in the
    algorithms section) lives only while this runs, since at 65536 envs it
    holds GBs."""
    ceiling = bench_ceiling(args.env, num_envs, args.num_steps * args.updates, 3)
    scaling["ceiling"].append({"num_envs": num_envs, **ceiling})
    log(f"ceiling @ {num_envs}: {ceiling['steps_per_second']:,.0f}")
    sized = (
        make_reference(args.env, num_envs, args.num_steps, args.updates)
        if with_reference
        else None
    )
    for algo in algos:
        config = config_for(algo, args.env, num_envs, args.num_steps)
        row = bench_algorithm(config, args.updates, 3, sized, devices)
        scaling[algo].append(row)
        ratio = (
            f" ({row['ratio_to_reference']:.2f}x reference)"
            if "ratio_to_reference" in row
            else ""
        )
        log(f"{algo} @ {num_envs}: {row['steps_per_second']:,.0f}{ratio}")
    if sized is not None:
        paired = [scaling[a][-1]["reference_steps_per_second"] for a in algos]
        scaling["reference_a2c"].append(sized_reference_row(sized, num_envs, paired))
        log(
            f"reference a2c @ {num_envs}: "
            f"{scaling['reference_a2c'][-1]['steps_per_second']:,.0f}"
        )


def sized_reference_row(
    reference: Reference, num_envs: int, paired: list[float]
) -> dict:
    """The reference's scaling row at ``num_envs``: its speed is the median of
    its speeds ``paired`` with each algorithm, or (no algorithm to pair with)
    of one timing alone."""
    if not paired:
        paired = [bench_reference(reference, 3)["steps_per_second"]]
    return {
        "num_envs": num_envs,
        "steps_per_second": statistics.median(paired),
        "steps_per_second_in_pairs": paired,
        "compile_seconds": reference.compile_seconds,
        "memory_bytes": memory_bytes(reference.executable),
    }


def measure_scaling_seeds(
    args: argparse.Namespace,
    algos: list[str],
    devices: list,
    report: dict,
    save: Callable[[], None],
) -> None:
    """The scaling section against the seeds: fills ``report["scaling_seeds"]``
    with each algorithm's rows at --num-envs, one per --scaling-seeds count,
    saving after each algorithm."""
    report["scaling_seeds"] = {}
    for algo in algos:
        rows = []
        for s in comma_ints(args.scaling_seeds):
            config = config_for(
                algo, args.env, args.num_envs, args.num_steps, num_seeds=s
            )
            rows.append(bench_algorithm(config, args.updates, 3, devices=devices))
            log(f"{algo} x {s} seeds: {rows[-1]['steps_per_second']:,.0f}")
        report["scaling_seeds"][algo] = rows
        save()


def measure_solve(
    args: argparse.Namespace,
    algos: list[str],
    report: dict,
    save: Callable[[], None],
) -> None:
    """The solve section: fills ``report["solve"]`` with each algorithm's
    :func:`bench_solve` over --solve-seeds (train.py runs get ``--devices``
    when it is given), saving after each algorithm."""
    seeds = comma_ints(args.solve_seeds)
    extra = ["--devices", str(args.devices)] if args.devices else []
    report["solve"] = {}
    for algo in algos:
        result = bench_solve(algo, args.env, seeds, extra, cold=args.solve_cold)
        report["solve"][algo] = result
        log(
            f"{algo} time to {result['threshold']}: median "
            f"{result['median_seconds_to_threshold']} s; eval solved "
            f"{result['solved_eval_seeds']}/{len(seeds)} seeds"
        )
        save()


def draw_solve_plot(report: dict, path: Path) -> None:
    """Draws the solve plot to ``path`` (:func:`plot_solve`, beside the newest
    alternatives) when the report has solve results; says so when not."""
    if not report.get("solve"):
        log(f"solve plot: skipped with the solve section ({path})")
        return
    alternatives = newest_alternatives()
    plot_solve(report, path, alternatives)
    shown = f" (alternatives: {_shown_path(alternatives)})" if alternatives else ""
    log(f"wrote {path}{shown}")


if __name__ == "__main__":
    sys.exit(main())
