"""rejax PPO on CartPole-v1 with rejax's own CartPole config, measured the way
scripts/benchmark.py measures pgjax: training steps/s (compile excluded),
compile seconds, and wall seconds from the process's start (imports included)
until the logged return first reaches 475.

rejax logs the mean return of 128 evaluation episodes every ``eval_freq``
steps, inside its one compiled training call; that is the "logged return"
here, and its time is placed by linear interpolation over the training call
(as pgjax's metrics.csv places the updates of a chunk). Not a pgjax
dependency; in a separate venv:

  python -m venv rejax && rejax/bin/pip install rejax
  rejax/bin/python docs/bench/alternatives/rejax_ppo_cartpole.py --seed 0

Prints one JSON line.
"""

import time

START = time.time()

import argparse  # noqa: E402
import json  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from rejax import PPO  # noqa: E402

# rejax's configs/gymnax/cartpole.yaml, PPO section.
CONFIG = {
    "env": "CartPole-v1",
    "agent_kwargs": {"activation": "tanh"},
    "num_envs": 5,
    "num_steps": 100,
    "num_epochs": 5,
    "num_minibatches": 5,
    "learning_rate": 0.00075,
    "max_grad_norm": 0.5,
    "total_timesteps": 100_000,
    "eval_freq": 1000,
    "gamma": 0.99,
    "gae_lambda": 0.95,
    "clip_eps": 0.2,
    "ent_coef": 0.01,
    "vf_coef": 0.5,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    algo = PPO.create(**CONFIG)
    key = jax.random.PRNGKey(args.seed)
    compile_start = time.time()
    train = jax.jit(algo.train).lower(key).compile()
    compile_end = time.time()
    _, (_, returns) = jax.block_until_ready(train(key))
    train_end = time.time()
    curve = np.asarray(returns).mean(axis=-1)  # [evaluations]; index 0 = initial
    steps = np.arange(len(curve)) * CONFIG["eval_freq"]
    crossed = np.flatnonzero(curve >= 475.0)
    train_seconds = train_end - compile_end
    first = None
    if crossed.size:
        fraction = steps[crossed[0]] / steps[-1]
        first = compile_end - START + fraction * train_seconds
    print(
        json.dumps(
            {
                "seed": args.seed,
                "steps_per_second": steps[-1] / train_seconds,
                "compile_seconds": compile_end - compile_start,
                "seconds_to_475": first,
                "steps_to_475": int(steps[crossed[0]]) if crossed.size else None,
                "final_eval_return": float(curve[-1]),
                "wall_seconds": time.time() - START,
            }
        )
    )


if __name__ == "__main__":
    main()
