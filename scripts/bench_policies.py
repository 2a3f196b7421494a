"""SB3 training throughput of the hyper policies against SB3's MultiInputPolicy of the same shape.

Runs PPO and SAC side by side in one process on HalfCheetah-v5 whose observation is made a Dict
with a per-episode random context (``--context-dim`` features). The context here does not change
the dynamics -- this measures speed only; the contextual envs live in ``envs/``. Prints env-steps/s
of each variant and its ratio to the plain policy.

    python scripts/bench_policies.py [--algos ppo sac] [--ppo-steps 4096] [--sac-steps 1000]
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO, SAC

from hyperrl import HyperActorCriticPolicy, HyperSACPolicy


class RandomContext(gym.Wrapper):
    """``Dict(observation, context)`` with a context drawn uniformly in [-1, 1] per episode."""

    def __init__(self, env: gym.Env, context_dim: int) -> None:
        super().__init__(env)
        self.context_dim = context_dim
        self.observation_space = gym.spaces.Dict(
            {
                "observation": env.observation_space,
                "context": gym.spaces.Box(-1.0, 1.0, (context_dim,), np.float32),
            }
        )

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.context = self.np_random.uniform(-1, 1, self.context_dim).astype(np.float32)
        return {"observation": obs, "context": self.context}, info

    def step(self, action):
        obs, *rest = self.env.step(action)
        return {"observation": obs, "context": self.context}, *rest


PPO_VARIANTS = {
    "plain MultiInputPolicy [64,64]": ("MultiInputPolicy", {"net_arch": [64, 64]}),
    "hyper per_layer [64]|(64)": (HyperActorCriticPolicy, {}),
    "hyper per_layer d=16 [64]|(64)": (
        HyperActorCriticPolicy,
        {"generator_kwargs": {"hidden": [16]}},
    ),
    "hyper lowrank [64]|(64)": (HyperActorCriticPolicy, {"generator": "lowrank"}),
    "hyper chunked [64]|(64)": (HyperActorCriticPolicy, {"generator": "chunked"}),
    "hyper per_layer [64,64]|()": (HyperActorCriticPolicy, {"net_arch": [64, 64], "head_arch": []}),
    "film [64]|(64)": (HyperActorCriticPolicy, {"conditioning": "film"}),
}
SAC_VARIANTS = {
    "plain MultiInputPolicy [256,256]": ("MultiInputPolicy", {"net_arch": [256, 256]}),
    "hyper per_layer [256,256]|() (default)": (HyperSACPolicy, {}),
    "hyper per_layer d=16 [256,256]|()": (
        HyperSACPolicy,
        {"generator_kwargs": {"hidden": [16]}},
    ),
    "hyper lowrank [256,256]|()": (HyperSACPolicy, {"generator": "lowrank"}),
    "hyper per_layer [256]|(256)": (HyperSACPolicy, {"net_arch": [256], "head_arch": [256]}),
    "hyper lowrank [256]|(256)": (
        HyperSACPolicy,
        {"net_arch": [256], "head_arch": [256], "generator": "lowrank"},
    ),
    "film [256,256]|()": (HyperSACPolicy, {"conditioning": "film"}),
}


def steps_per_second(algo, policy, policy_kwargs, env_id, context_dim, warmup, steps, seed):
    env = RandomContext(gym.make(env_id), context_dim)
    extra = {"learning_starts": warmup} if algo is SAC else {}
    model = algo(policy, env, seed=seed, device="cpu", policy_kwargs=policy_kwargs, **extra)
    model.learn(warmup)
    start = time.perf_counter()
    model.learn(steps, reset_num_timesteps=False)
    return steps / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--algos", nargs="+", default=["ppo", "sac"], choices=["ppo", "sac"])
    p.add_argument("--env", default="HalfCheetah-v5")
    p.add_argument("--context-dim", type=int, default=4)
    p.add_argument("--ppo-steps", type=int, default=4096)
    p.add_argument("--sac-steps", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"{args.env}, context_dim={args.context_dim}, threads={args.threads}, "
        f"torch {torch.__version__}"
    )
    for name in args.algos:
        algo, variants, steps = {
            "ppo": (PPO, PPO_VARIANTS, args.ppo_steps),
            "sac": (SAC, SAC_VARIANTS, args.sac_steps),
        }[name]
        warmup = 2048 if algo is PPO else 256
        print(f"\n{name.upper()} ({steps} steps timed after {warmup} warm-up steps)")
        print(f"{'policy':>40} {'steps/s':>9} {'x plain':>8}")
        base = None
        for label, (policy, kwargs) in variants.items():
            sps = steps_per_second(
                algo, policy, dict(kwargs), args.env, args.context_dim, warmup, steps, args.seed
            )
            base = base or sps
            print(f"{label:>40} {sps:>9.1f} {sps / base:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
