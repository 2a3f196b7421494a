"""SB3 training throughput of the hyper policies against SB3's MultiInputPolicy of the same shape.

Runs PPO and SAC side by side in one process on HalfCheetah-v5 whose observation is made a Dict
with a random context (``--context-dim`` features), drawn per episode or every
``--context-every`` steps. The context here does not change the dynamics -- this measures speed
only; the contextual envs live in ``envs/``. Prints env-steps/s of each variant and its ratio to
the plain policy. The rows "heads generated" set ``HyperHead.contract = False``: every head
generated, never applied through its generator.

    python scripts/bench_policies.py [--algos ppo sac] [--ppo-steps 4096] [--sac-steps 1000]
                                     [--context-every N]
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO, SAC

from hyperrl import HyperActorCriticPolicy, HyperHead, HyperSACPolicy


class RandomContext(gym.Wrapper):
    """``Dict(observation, context)`` with a context drawn uniformly in [-1, 1] per episode, or
    every ``every`` steps (``every > 0``)."""

    def __init__(self, env: gym.Env, context_dim: int, every: int = 0) -> None:
        super().__init__(env)
        self.context_dim, self.every, self.steps = context_dim, every, 0
        self.observation_space = gym.spaces.Dict(
            {
                "observation": env.observation_space,
                "context": gym.spaces.Box(-1.0, 1.0, (context_dim,), np.float32),
            }
        )

    def _draw(self) -> None:
        self.context = self.np_random.uniform(-1, 1, self.context_dim).astype(np.float32)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._draw()
        return {"observation": obs, "context": self.context}, info

    def step(self, action):
        obs, *rest = self.env.step(action)
        self.steps += 1
        if self.every and self.steps % self.every == 0:
            self._draw()
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
    "hyper per_layer d=16 [64,64]|()": (
        HyperActorCriticPolicy,
        {"net_arch": [64, 64], "head_arch": [], "generator_kwargs": {"hidden": [16]}},
    ),
    "  the same, heads generated": (
        HyperActorCriticPolicy,
        {"net_arch": [64, 64], "head_arch": [], "generator_kwargs": {"hidden": [16]}},
        False,
    ),
    "film [64]|(64)": (HyperActorCriticPolicy, {"conditioning": "film"}),
}
SAC_VARIANTS = {
    "plain MultiInputPolicy [256,256]": ("MultiInputPolicy", {"net_arch": [256, 256]}),
    "hyper per_layer [256,256]|() (default)": (HyperSACPolicy, {}),
    "  the same, heads generated": (HyperSACPolicy, {}, False),
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


def steps_per_second(
    algo, policy, policy_kwargs, contract, env_id, context_dim, every, warmup, steps, seed
) -> float:
    env = RandomContext(gym.make(env_id), context_dim, every)
    extra = {"learning_starts": warmup} if algo is SAC else {}
    model = algo(policy, env, seed=seed, device="cpu", policy_kwargs=policy_kwargs, **extra)
    for module in model.policy.modules():
        if isinstance(module, HyperHead):
            module.contract = contract
    model.learn(warmup)
    start = time.perf_counter()
    model.learn(steps, reset_num_timesteps=False)
    return steps / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--algos", nargs="+", default=["ppo", "sac"], choices=["ppo", "sac"])
    p.add_argument("--env", default="HalfCheetah-v5")
    p.add_argument("--context-dim", type=int, default=4)
    p.add_argument(
        "--context-every",
        type=int,
        default=0,
        metavar="N",
        help="draw a new context every N steps (default 0: per episode). An SB3 replay buffer "
        "after many episodes holds a context per sample or nearly; per 1,000-step episode, the "
        "timed SAC steps see two",
    )
    p.add_argument("--ppo-steps", type=int, default=4096)
    p.add_argument("--sac-steps", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"{args.env}, context_dim={args.context_dim}, context every "
        f"{args.context_every or 'episode'}, threads={args.threads}, "
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
        for label, (policy, kwargs, *contract) in variants.items():
            sps = steps_per_second(
                algo,
                policy,
                dict(kwargs),
                contract[0] if contract else True,
                args.env,
                args.context_dim,
                args.context_every,
                warmup,
                steps,
                args.seed,
            )
            base = base or sps
            print(f"{label:>40} {sps:>9.1f} {sps / base:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
