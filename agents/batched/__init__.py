"""The batched trainers: PPO and SAC whose rollouts, storage and updates stay on the batched
env's device (a GPU with MuJoCo Warp, or the CPU with MuJoCo threads).

- :mod:`~agents.batched.trainer`: :class:`BatchedTrainer`, the base (SB3 container, ``learn``
  loop, logging, model file), and :class:`TrainerConfig`;
- :mod:`~agents.batched.ppo`, :mod:`~agents.batched.sac`: the algorithms (rollout and update);
- :mod:`~agents.batched.storage` (GAE, minibatch layout), :mod:`~agents.batched.replay` (replay
  buffers, HER), :mod:`~agents.batched.normalization` (running statistics),
  :mod:`~agents.batched.distributed` (``torchrun`` data parallelism),
  :mod:`~agents.batched.compiled` (``torch.compile``'d training steps);
- :mod:`~agents.batched.evaluation`: evaluation during training;
- :mod:`~agents.batched.train`: the run folder around them (``train_agent.py`` on a batched env).
"""

from agents.batched.ppo import DevicePPO, DevicePPOConfig
from agents.batched.sac import DeviceSAC, DeviceSACConfig
from agents.batched.trainer import BatchedTrainer, TrainerConfig

__all__ = [
    "BatchedTrainer",
    "DevicePPO",
    "DevicePPOConfig",
    "DeviceSAC",
    "DeviceSACConfig",
    "TrainerConfig",
]
