"""Stable-Baselines3 A2C on CartPole-v1, measured the way scripts/benchmark.py
measures pgjax: training steps/s, and wall seconds from the process's start
(imports included) until the logged return first reaches 475.

SB3 logs ``rollout/ep_rew_mean``, the mean return of the last 100 finished
episodes; that is the "logged return" here. rl-zoo's CartPole settings for
A2C: 8 envs, 500k steps, otherwise SB3's defaults (5-step rollouts, RMSprop
at 7e-4, γ 0.99). Not a pgjax dependency; in a separate venv:

  python -m venv sb3 && sb3/bin/pip install torch==2.13.0 stable-baselines3 gymnasium
  sb3/bin/python docs/bench/alternatives/sb3_a2c_cartpole.py --seed 0

Prints one JSON line.
"""

import time

START = time.time()

import argparse  # noqa: E402
import json  # noqa: E402

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from stable_baselines3 import A2C  # noqa: E402
from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.evaluation import evaluate_policy  # noqa: E402
from stable_baselines3.common.monitor import Monitor  # noqa: E402


class FirstCrossing(BaseCallback):
    """Records when ep_rew_mean (last 100 episodes) first reaches the threshold."""

    def __init__(self, threshold: float):
        super().__init__()
        self.threshold = threshold
        self.seconds = None
        self.steps = None

    def _on_rollout_end(self) -> None:
        buffer = self.model.ep_info_buffer
        crossed = buffer and np.mean([i["r"] for i in buffer]) >= self.threshold
        if self.seconds is None and crossed:
            self.seconds = time.time() - START
            self.steps = self.num_timesteps

    def _on_step(self) -> bool:
        return True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timesteps", type=int, default=500_000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    env = make_vec_env("CartPole-v1", n_envs=8, seed=args.seed)
    model = A2C("MlpPolicy", env, ent_coef=0.0, seed=args.seed, device="cpu")
    callback = FirstCrossing(475.0)
    train_start = time.time()
    model.learn(args.timesteps, callback=callback)
    train_seconds = time.time() - train_start
    eval_env = Monitor(gym.make("CartPole-v1"))
    mean, _ = evaluate_policy(model, eval_env, n_eval_episodes=20, deterministic=True)
    print(
        json.dumps(
            {
                "seed": args.seed,
                "steps_per_second": args.timesteps / train_seconds,
                "seconds_to_475": callback.seconds,
                "steps_to_475": callback.steps,
                "eval_return": float(mean),
                "wall_seconds": time.time() - START,
            }
        )
    )


if __name__ == "__main__":
    main()
