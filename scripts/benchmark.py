"""Measure pgjax's speed in one process: ceiling, algorithms, reference, scaling.

  python scripts/benchmark.py --env CartPole-v1 --algos a2c,reinforce --out bench/

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
  scaling      steps/s against num_envs (64 ... 65536) and against --num-seeds
  solve        wall seconds (compile included) to the solved threshold, median
               over seeds, by running scripts/train.py as a user would (with
               the user's compilation cache, or with --solve-cold an empty
               one per run: what a first run costs)

Writes benchmark.json and benchmark.png (steps/s against num_envs, a line per
algorithm and the ceiling) to --out. Runs unchanged on a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pgjax import cpu  # imports jax, starts no backend


def _devices_flag(argv: list[str]) -> int:
    """``--devices`` from ``argv`` (0 if absent or bad: main() reports it)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--devices", default="0")
    value = parser.parse_known_args(argv)[0].devices
    return int(value) if value.isdigit() else 0


if __name__ == "__main__":
    # On a CPU, one JAX device per core (or --devices): before gymnax
    # (imported below) starts JAX's backends.
    cpu.use_cpu_cores(_devices_flag(sys.argv[1:]) or None)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from pgjax import envs, hardware, parallel, presets, runner  # noqa: E402
from pgjax.algos import base, natural_pg  # noqa: E402
from pgjax.compilation import compile_lowered, lower  # noqa: E402
from pgjax.config import TrainConfig  # noqa: E402
from pgjax.train import make_train, split_env_batch  # noqa: E402

SOLVED = {"CartPole-v1": 475.0, "Acrobot-v1": -100.0, "Pendulum-v1": -250.0}


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
) -> dict:
    """Training steps/s of ``updates`` updates, compile time, memory, phase split.

    With ``reference``, the chunk and the reference chunk run in alternation
    (:func:`paired_times`) and ``ratio_to_reference`` is the median over the
    repeats of the two speeds' ratio.
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
    backend = hardware.backend_for(config, config.num_seeds, jax.devices())
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
    # Steps per chunk vary for episodic algorithms: count them from the metrics.
    _, metrics = executable(state)
    steps = int(np.sum(jax.device_get(metrics["env_steps"])))
    paired = {}
    if reference is None:
        seconds = median_time(executable, state, repeats=repeats)
    else:
        times, reference_times = paired_times(
            [(executable, (state,)), (reference.executable, (reference.state,))],
            repeats,
        )
        seconds = statistics.median(times)
        ratios = [
            (steps / t) / (reference.steps / r)
            for t, r in zip(times, reference_times, strict=True)
        ]
        paired = {
            "compile_vs_reference": compile_s / reference.compile_seconds,
            "ratio_to_reference": statistics.median(ratios),
            "ratios_to_reference": ratios,
            "reference_steps_per_second": reference.steps
            / statistics.median(reference_times),
        }

    # Phase split: the rollout alone, and the learning step alone on a fixed batch.
    single = jax.tree.map(lambda x: x[0], state)
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
    # In alternation, like the phases below: the split compares the two.
    rollout_times, learn_times = paired_times(
        [(collect_exec, (single,)), (learn_exec, (single, batch))], repeats
    )
    rollout_s, learn_s = map(statistics.median, (rollout_times, learn_times))
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
        "train_py_env_shards": train_py_env_shards(config),
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


def train_py_env_shards(config) -> int:
    """The devices train.py would split ``config``'s envs across (with its
    ``--devices 0``, see :func:`pgjax.cpu.devices_that_pay`), given as
    many devices as this process has."""
    return cpu.devices_that_pay(
        config.algo, config.num_envs, config.num_steps, len(jax.devices())
    )


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


def plot(report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    scaling = report.get("scaling_envs", {})
    for name, rows in scaling.items():
        xs = [r["num_envs"] for r in rows]
        ys = [r["steps_per_second"] for r in rows]
        style = "k--" if name == "ceiling" else "-o"
        ax.plot(xs, ys, style, label=name, markersize=3)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("num_envs")
    ax.set_ylabel("training env steps / s")
    ax.set_title(f"{report['env']} on {report['device']}")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main(argv=None) -> int:
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
    parser.add_argument("--out", type=Path, default=Path("bench"))
    args = parser.parse_args(argv)
    if args.devices < 0:
        parser.error("--devices: must be >= 0 (0 = one per core)")
    # Run as a script, the device count was set before JAX started (above).
    skip = set(filter(None, args.skip.split(",")))
    algos = [a for a in args.algos.split(",") if a]
    args.out.mkdir(parents=True, exist_ok=True)
    device = jax.devices()[0]
    report: dict = {
        "env": args.env,
        "device": f"{device.platform}:{device.device_kind}",
        "cpu_count": os.cpu_count(),
        "devices": len(jax.devices()),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "num_envs": args.num_envs,
        "num_steps": args.num_steps,
        "updates_per_chunk": args.updates,
        "repeats": args.repeats,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "chunk_compiler_options": {
            algo: dict(cpu.CHUNK_OPTIONS.get(algo, {}))
            if device.platform == "cpu"
            else {}
            for algo in algos
        },
    }

    def log(message):
        print(message, flush=True)

    def save():
        (args.out / "benchmark.json").write_text(json.dumps(report, indent=2))

    if "ceiling" not in skip:
        report["ceiling"] = bench_ceiling(
            args.env, args.num_envs, args.num_steps * args.updates, args.repeats
        )
        log(f"ceiling: {report['ceiling']['steps_per_second']:,.0f} steps/s")
    reference = None
    if "reference" not in skip:
        reference = make_reference(
            args.env, args.num_envs, args.num_steps, args.updates
        )
        report["reference_a2c"] = bench_reference(reference, args.repeats)
        log(
            f"reference a2c: {report['reference_a2c']['steps_per_second']:,.0f} steps/s"
        )
    save()
    if "algorithms" not in skip:
        report["algorithms"] = {}
        for algo in algos:
            # Same workload as the reference (num_envs x num_steps), timed in
            # alternation with it: the ratio reported.
            config = config_for(algo, args.env, args.num_envs, args.num_steps)
            result = bench_algorithm(config, args.updates, args.repeats, reference)
            # And the preset's own shape, which is what users run.
            preset_config = config_for(algo, args.env, args.num_envs, None)
            if preset_config.num_steps != config.num_steps and algo != "reinforce":
                result["preset"] = bench_algorithm(
                    preset_config, args.updates, args.repeats
                )
            report["algorithms"][algo] = result
            log(
                f"{algo}: {result['steps_per_second']:,.0f} steps/s, compile "
                f"{result['compile_seconds']:.2f}s"
                + (
                    f" ({result['compile_vs_reference']:.2f}x the reference's)"
                    if "compile_vs_reference" in result
                    else ""
                )
                + f", {result['fused_kernels']} kernels, rollout "
                f"{result['rollout_fraction']:.0%} of an update"
                + (
                    f", {result['ratio_to_reference']:.2f}x reference"
                    if "ratio_to_reference" in result
                    else ""
                )
                + (
                    f" (on {result['env_shards']} devices; train.py runs it on "
                    f"{result['train_py_env_shards']}: see --devices)"
                    if result["env_shards"] != result["train_py_env_shards"]
                    else ""
                )
            )
            if "learn_phase_seconds_per_update" in result:
                split = result["learn_phase_seconds_per_update"]
                log(
                    f"  {algo} learning step (ms): rollout "
                    f"{1000 * result['rollout_seconds_per_update']:.1f}, "
                    + ", ".join(f"{k} {1000 * v:.1f}" for k, v in split.items())
                )
            save()
    if "scaling" not in skip and args.scaling_envs:
        sizes = [int(x) for x in args.scaling_envs.split(",") if x]
        report["scaling_envs"] = {"ceiling": []}
        for n in sizes:
            ceiling = bench_ceiling(args.env, n, args.num_steps * args.updates, 3)
            report["scaling_envs"]["ceiling"].append({"num_envs": n, **ceiling})
            log(f"ceiling @ {n}: {ceiling['steps_per_second']:,.0f}")
        for algo in algos:
            rows = []
            for n in sizes:
                config = config_for(algo, args.env, n, args.num_steps)
                rows.append(bench_algorithm(config, args.updates, 3))
                log(f"{algo} @ {n}: {rows[-1]['steps_per_second']:,.0f}")
            report["scaling_envs"][algo] = rows
            save()
        report["scaling_seeds"] = {}
        for algo in algos:
            rows = []
            for s in [int(x) for x in args.scaling_seeds.split(",") if x]:
                config = config_for(
                    algo, args.env, args.num_envs, args.num_steps, num_seeds=s
                )
                rows.append(bench_algorithm(config, args.updates, 3))
                log(f"{algo} x {s} seeds: {rows[-1]['steps_per_second']:,.0f}")
            report["scaling_seeds"][algo] = rows
            save()
        plot(report, args.out / "benchmark.png")
    if "solve" not in skip and args.env in SOLVED:
        seeds = [int(x) for x in args.solve_seeds.split(",") if x]
        report["solve"] = {}
        for algo in algos:
            extra = ["--devices", str(args.devices)] if args.devices else []
            result = bench_solve(algo, args.env, seeds, extra, cold=args.solve_cold)
            report["solve"][algo] = result
            log(
                f"{algo} time to {result['threshold']}: median "
                f"{result['median_seconds_to_threshold']} s; eval solved "
                f"{result['solved_eval_seeds']}/{len(seeds)} seeds"
            )
            save()
    save()
    log(f"wrote {args.out / 'benchmark.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
