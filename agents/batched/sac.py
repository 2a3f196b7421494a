"""SAC whose replay buffer, sampling and updates stay on one device (the GPU path).

The FastSAC / FastTD3 recipe: many parallel worlds of a
:class:`~envs.batched.BatchedContextualEnv` fill a replay buffer of device tensors
(:mod:`agents.batched.replay`; with ``n_sampled_goal`` > 0 it relabels goals, HER), and every
vector step is followed by ``gradient_steps`` large-batch SAC updates. Read top to bottom:
:class:`DeviceSACConfig`, :class:`DeviceSAC` (collect, update, an iteration of the loop, restore).

The policy is an ordinary SB3 SAC policy (by default :class:`hyperrl.HyperSACPolicy`, with
``actor``, ``critic`` and ``critic_target``) held by an ``stable_baselines3.SAC`` whose own replay
buffer holds one row, so the checkpoint this writes is what ``SAC.load`` opens and
``scripts/evaluate.py`` evaluates on the CPU env. The update is SB3's ``SAC.train`` step for step
(same losses, same order of optimizer steps), so a batch gives the same parameters either way.
Observations are not normalised (SB3's SAC does not by default either).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from stable_baselines3 import SAC

from agents.batched.compiled import CompiledStep
from agents.batched.distributed import descend, start_in_step
from agents.batched.replay import DeviceReplay, HerReplay, ReplaySample
from agents.batched.trainer import BatchedTrainer, TrainerConfig
from envs.batched import BatchedContextualEnv, Obs
from hyperrl import HyperSACPolicy
from hyperrl.conditioning import HyperHead


@dataclass
class DeviceSACConfig(TrainerConfig):
    """SAC hyperparameters (SB3's names). Every vector step adds ``num_envs`` transitions and is
    followed by ``gradient_steps`` updates on batches of ``batch_size``.

    ``n_sampled_goal`` > 0 turns on hindsight relabelling
    (:class:`~agents.batched.replay.HerReplay`, the ``future`` strategy; ``--algo her`` sets 4):
    the env must be a goal env (``achieved_goal``, ``desired_goal``, ``compute_reward``).

    ``learning_starts`` counts env steps over all worlds (and ranks): before it, actions are
    uniform and nothing is updated. ``policy_delay`` updates the actor and the entropy
    coefficient every that many gradient steps (1: SB3's SAC); ``target_update_interval`` the
    target critics. ``log_interval`` is in vector steps: how often the loop reads its statistics
    back from the device, logs and calls the callback.
    """

    trainer_name: ClassVar[str] = "device-SAC"

    buffer_size: int = 1_000_000
    batch_size: int = 256
    learning_rate: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    learning_starts: int = 10_000
    gradient_steps: int = 1
    ent_coef: str | float = "auto"
    target_entropy: str | float = "auto"
    policy_delay: int = 1
    target_update_interval: int = 1
    log_interval: int = 100
    n_sampled_goal: int = 0
    #: compile the update's forward passes and losses (and so their backwards) with
    #: ``torch.compile`` (:class:`~agents.batched.compiled.CompiledStep`): the same update after
    #: a minute or so of compiling. Generated heads then generate once per replay sample (each
    #: carries its own context, so deduplicating would find about as many heads, and its
    #: data-dependent count would break the graph). Off by default (``docs/BENCHMARKS.md``)
    compile: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.ent_coef, str) and not self.ent_coef.startswith("auto"):
            raise ValueError(
                f"ent_coef is 'auto', 'auto_<init>' or a number, not {self.ent_coef!r}"
            )
        if isinstance(self.target_entropy, str) and self.target_entropy != "auto":
            raise ValueError(f"target_entropy is 'auto' or a number, not {self.target_entropy!r}")
        for key in ("buffer_size", "batch_size", "policy_delay", "target_update_interval"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.log_interval < 1:
            raise ValueError(f"log_interval must be >= 1, got {self.log_interval}")
        if self.n_sampled_goal < 0:
            raise ValueError(f"n_sampled_goal must be >= 0 (0: no HER), got {self.n_sampled_goal}")


class DeviceSAC(BatchedTrainer):
    """SAC on a batched on-device env.

    :param env: the batched env (its ``device`` is where everything runs).
    :param policy_class: an SB3 SAC policy class (or alias) for Dict observations.
    :param policy_kwargs: its keywords (``conditioning``, ``context_keys``, ``net_arch``...).
    :param config: the SAC hyperparameters.
    :param seed: seeds torch (policy init, action sampling), the env and the replay sampling.

    Under ``torch.distributed`` every rank steps its own worlds into its own replay buffer,
    starts from rank 0's parameters and averages every gradient, so the ranks stay in step.
    """

    sb3_class = SAC
    config_class = DeviceSACConfig

    def __init__(
        self,
        env: BatchedContextualEnv,
        policy_class: type | str = HyperSACPolicy,
        policy_kwargs: dict[str, Any] | None = None,
        config: DeviceSACConfig | None = None,
        seed: int = 0,
    ) -> None:
        cfg = config or DeviceSACConfig()
        super().__init__(env, cfg, seed)
        self.config: DeviceSACConfig = cfg
        device = env.device
        # its own replay buffer holds one row (ours is the DeviceReplay)
        self._make_model(
            policy_class,
            policy_kwargs,
            ignore_warnings=("This system does not have apparently enough memory",),
            learning_rate=cfg.learning_rate,
            buffer_size=1,
            learning_starts=cfg.learning_starts,
            batch_size=cfg.batch_size,
            tau=cfg.tau,
            gamma=cfg.gamma,
            gradient_steps=cfg.gradient_steps,
            ent_coef=cfg.ent_coef,
            target_update_interval=cfg.target_update_interval,
            target_entropy=cfg.target_entropy,
        )
        if self.model.use_sde:
            raise ValueError("DeviceSAC samples plain Gaussian actions; use_sde is not supported")
        self.actor, self.critic = self.model.actor, self.model.critic
        self.critic_target = self.model.critic_target
        self.critic_params = list(self.critic.parameters())
        self.target_params = list(self.critic_target.parameters())
        self.log_ent_coef: torch.Tensor | None = self.model.log_ent_coef
        self.target_entropy = float(self.model.target_entropy)
        extra = [self.log_ent_coef.data] if self.log_ent_coef is not None else []
        self.rank, self.world_size = start_in_step(self.policy, seed, extra)
        self.generator = torch.Generator(device=device).manual_seed(seed + 1000 * self.rank)
        action_dim = int(np.prod(env.action_space.shape))
        self.replay = self._replay(action_dim)
        self.action_low = torch.as_tensor(env.action_space.low, device=device)
        self.action_high = torch.as_tensor(env.action_space.high, device=device)
        self.n_updates = 0
        self._rollout: dict[str, float] = {}  # the last finished episodes' statistics
        self._reset_stats()
        #: the update's forward passes and losses, compiled with ``compile: true``
        self._actor_forward = CompiledStep(self.actor.action_log_prob, cfg.compile)
        self._critic_loss = CompiledStep(self._critic_loss_eager, cfg.compile)
        self._actor_loss = CompiledStep(self._actor_loss_eager, cfg.compile)
        if cfg.compile:
            for head in self.policy.modules():
                if isinstance(head, HyperHead):
                    head.dedup = False

    def _replay(self, action_dim: int) -> DeviceReplay:
        env, cfg = self.env, self.config
        if cfg.n_sampled_goal == 0:
            return DeviceReplay(cfg.buffer_size, env.observation_space, action_dim, env.device)
        if not hasattr(env, "compute_reward"):
            raise ValueError(
                f"HER (n_sampled_goal={cfg.n_sampled_goal}) needs an env with compute_reward; "
                f"{type(env).__name__} has none (use a Fetch task, or n_sampled_goal 0)"
            )
        return HerReplay(
            cfg.buffer_size,
            env.observation_space,
            action_dim,
            env.device,
            env.num_envs,
            env.compute_reward,
            cfg.n_sampled_goal,
        )

    # --- acting ----------------------------------------------------------------------------

    def scale_actions(self, squashed: torch.Tensor) -> torch.Tensor:
        """``(N, act_dim)`` actions in [-1, 1] -> the env's bounds (SB3's ``unscale_action``)."""
        return self.action_low + 0.5 * (squashed + 1.0) * (self.action_high - self.action_low)

    @torch.no_grad()
    def act(self, obs: Obs, deterministic: bool = False) -> torch.Tensor:
        """``(N, act_dim)`` env actions of the actor for ``obs`` (dict of ``(N, ...)``)."""
        self.policy.set_training_mode(False)
        return self.scale_actions(self.actor(obs, deterministic=deterministic))

    @torch.no_grad()
    def collect(self, vector_steps: int) -> None:
        """Step every world ``vector_steps`` times into the replay buffer: uniform actions while
        ``num_timesteps < learning_starts``, the actor's samples after."""
        env, N = self.env, self.env.num_envs
        if self._obs is None:
            self._obs = env.reset(seed=self.seed + 1000 * self.rank)
        self.policy.set_training_mode(False)
        shape = (N, *env.action_space.shape)
        for _ in range(vector_steps):
            if self.num_timesteps < self.config.learning_starts:
                u = torch.rand(shape, device=env.device, generator=self.generator)
                actions = 2.0 * u - 1.0
            else:
                actions = self.actor(self._obs)
            next_obs, reward, terminated, truncated, info = env.step(self.scale_actions(actions))
            # the observation before the auto-reset; equal to next_obs for worlds that go on
            done = terminated | truncated
            final = info["final_observation"]
            if isinstance(self.replay, HerReplay):  # it needs where episodes end
                self.replay.add(self._obs, final, actions, reward, terminated, done)
            else:
                self.replay.add(self._obs, final, actions, reward, terminated)
            self.episodes.add(reward, done, info)
            self._obs = next_obs
            self.num_timesteps += N * self.world_size  # every rank's steps

    # --- update ----------------------------------------------------------------------------

    def update(self, gradient_steps: int) -> None:
        """``gradient_steps`` SAC updates, each on a fresh batch from the replay buffer."""
        self.policy.set_training_mode(True)
        for _ in range(gradient_steps):
            self.train_step(self.replay.sample(self.config.batch_size, self.generator))

    def ent_coef(self) -> torch.Tensor:
        """The entropy coefficient (alpha), ``(1,)`` or ``()``, detached."""
        if self.log_ent_coef is None:
            return self.model.ent_coef_tensor
        return torch.exp(self.log_ent_coef.detach())

    def train_step(self, batch: ReplaySample) -> dict[str, torch.Tensor]:
        """One SAC update on ``batch`` in ``SAC.train``'s order: entropy coefficient, critics
        (clipped double-Q target with the entropy bonus), actor (against the updated critics),
        then the polyak update of the target critics. Returns the detached losses."""
        cfg = self.config
        update_actor = self.n_updates % cfg.policy_delay == 0
        ent_coef = self.ent_coef()
        out: dict[str, torch.Tensor] = {}
        if update_actor:
            actions_pi, log_prob = self._actor_forward(batch.observations)
            log_prob = log_prob.reshape(-1, 1)
            if self.log_ent_coef is not None:
                # alpha is pushed up while the entropy (-log_prob) is below target_entropy
                ent_loss = -(self.log_ent_coef * (log_prob + self.target_entropy).detach()).mean()
                descend(self.model.ent_coef_optimizer, ent_loss, [self.log_ent_coef])
                out["ent_coef_loss"] = ent_loss.detach()

        critic_loss = self._critic_loss(
            batch.observations,
            batch.actions,
            batch.next_observations,
            batch.rewards,
            batch.dones,
            ent_coef,
        )
        descend(self.critic.optimizer, critic_loss, self.critic_params)
        out["critic_loss"] = critic_loss.detach()

        if update_actor:
            actor_loss = self._actor_loss(batch.observations, actions_pi, log_prob, ent_coef)
            descend(self.actor.optimizer, actor_loss, self.actor.parameters())
            out["actor_loss"] = actor_loss.detach()

        if self.n_updates % cfg.target_update_interval == 0:
            self.polyak_update()
        self.n_updates += 1
        self._accumulate(out, ent_coef)
        return out

    def _critic_loss_eager(
        self,
        obs: Obs,
        actions: torch.Tensor,
        next_obs: Obs,
        rewards: torch.Tensor,
        dones: torch.Tensor,
        ent_coef: torch.Tensor,
    ) -> torch.Tensor:
        """The critics' loss on a batch of ``B`` transitions (``actions (B, act_dim)``,
        ``rewards``/``dones (B, 1)``): half the summed MSE of each critic against the clipped
        double-Q target with the entropy bonus, the target computed without gradients."""
        with torch.no_grad():
            next_actions, next_log_prob = self.actor.action_log_prob(next_obs)
            next_q = torch.cat(self.critic_target(next_obs, next_actions), dim=1)
            soft_v = next_q.min(dim=1, keepdim=True).values - ent_coef * next_log_prob.view(-1, 1)
            target_q = rewards + (1.0 - dones) * self.config.gamma * soft_v
        current_q = self.critic(obs, actions)
        return 0.5 * sum(F.mse_loss(q, target_q) for q in current_q)

    def _actor_loss_eager(
        self, obs: Obs, actions_pi: torch.Tensor, log_prob: torch.Tensor, ent_coef: torch.Tensor
    ) -> torch.Tensor:
        """The actor's loss for its sampled ``actions_pi (B, act_dim)`` and their ``log_prob
        (B, 1)``, against the (updated) critics' smaller Q."""
        q_pi = torch.cat(self.critic(obs, actions_pi), dim=1)
        return (ent_coef * log_prob - q_pi.min(dim=1, keepdim=True).values).mean()

    @torch.no_grad()
    def polyak_update(self) -> None:
        """``target <- target + tau (online - target)`` for every critic parameter."""
        torch._foreach_lerp_(self.target_params, self.critic_params, self.config.tau)

    # --- loop ------------------------------------------------------------------------------

    def ready(self) -> bool:
        """Whether updates run: once the buffers hold ``learning_starts`` transitions (over all
        ranks). On a fresh run that is ``num_timesteps >= learning_starts``; after a resume the
        empty buffer refills first, the actor acting."""
        cfg = self.config
        filled = self.replay.size * self.world_size
        return filled >= min(cfg.learning_starts, cfg.buffer_size * self.world_size)

    def _reset_stats(self) -> None:
        device = self.env.device
        self._loss_sums = {
            k: torch.zeros((), device=device)
            for k in ("actor_loss", "critic_loss", "ent_coef", "ent_coef_loss")
        }
        self._loss_counts = dict.fromkeys(self._loss_sums, 0)

    def _accumulate(self, losses: dict[str, torch.Tensor], ent_coef: torch.Tensor) -> None:
        for k, v in (*losses.items(), ("ent_coef", ent_coef)):
            self._loss_sums[k] += v.reshape(())
            self._loss_counts[k] += 1

    def iteration(self, target: int) -> dict[str, float]:
        """Up to ``log_interval`` vector steps, each followed by ``gradient_steps`` updates once
        :meth:`ready`, stopping at ``target``: ``rollout/ep_rew_mean`` and, for goal-reaching
        envs, ``rollout/success_rate`` (episodes finished since the last iteration, else the
        last values), and ``train/*`` (the loop's only host sync)."""
        cfg = self.config
        per_step = self.env.num_envs * self.world_size
        steps = min(cfg.log_interval, math.ceil((target - self.num_timesteps) / per_step))
        for _ in range(steps):
            self.collect(1)
            if self.ready():
                self.update(cfg.gradient_steps)
        self._rollout |= self.episodes.read()
        values = {
            **self._rollout,
            **{
                f"train/{k}": float(v) / self._loss_counts[k]
                for k, v in self._loss_sums.items()
                if self._loss_counts[k]
            },
            "train/n_updates": self.n_updates,
        }
        self._reset_stats()
        return values

    def sync_model(self) -> None:
        super().sync_model()
        self.model._n_updates = self.n_updates

    # --- checkpoints -----------------------------------------------------------------------

    def restore(self, run_dir: str | Path) -> None:
        """Load what :meth:`save` wrote into ``run_dir`` (``model.zip``; the replay buffer is not
        saved): parameters, optimizer states, the entropy coefficient and the step count. The
        replay buffer starts empty and refills (``learning_starts`` transitions) before updates
        resume."""
        from stable_baselines3.common.save_util import load_from_zip_file

        path = Path(run_dir) / "model.zip"
        data, params, variables = load_from_zip_file(path, device=self.env.device)
        self.model.set_parameters(params, exact_match=True, device=self.env.device)
        if self.log_ent_coef is not None and "log_ent_coef" in (variables or {}):
            with torch.no_grad():
                self.log_ent_coef.copy_(variables["log_ent_coef"])
        self.num_timesteps = self.model.num_timesteps = int(data["num_timesteps"])
        self.n_updates = self.model._n_updates = int(data.get("_n_updates", 0))
