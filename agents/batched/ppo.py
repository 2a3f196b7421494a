"""PPO whose rollouts, storage, GAE and minibatches stay on one device (the GPU path).

Read top to bottom: :class:`DevicePPOConfig`, :class:`DevicePPO` (collect a rollout from a
:class:`~envs.batched.BatchedContextualEnv`, compute advantages, update in minibatches laid out
by env); the loop, logging and model file are :class:`~agents.batched.trainer.BatchedTrainer`'s,
observation and return normalisation :mod:`agents.batched.normalization`'s.

The policy is an ordinary SB3 policy object (by default :class:`hyperrl.HyperActorCriticPolicy`)
held by an ``stable_baselines3.PPO``, so the checkpoint this writes is what ``PPO.load`` opens and
``scripts/evaluate.py`` evaluates on the CPU env; ``vecnormalize.pkl`` carries the observation
statistics in SB3's format.

Why minibatches are laid out by env: a minibatch is every step of a subset of the worlds, so it
holds about as many distinct contexts as worlds in it (one per episode), and a hypernetwork policy
generates one head per distinct context instead of one per sample. The trainer knows where each
world's context changed in the rollout, so it tells the heads which samples share one
(:func:`hyperrl.policies.contexts_grouped`) rather than have them deduplicate every minibatch.
During the rollout the policies reuse the heads generated at the first step until a world resets
(``reuse_heads``).

A recurrent policy (:class:`hyperrl.policies.RecurrentActorCriticPolicy`) carries a memory per
world (:attr:`DevicePPO.memory`): the rollout keeps each world's memory at its start, and since a
minibatch holds whole worlds, the update unrolls each world's steps from it, the memory zeroed
after every done, so it sees exactly the probabilities the rollout saw.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import torch
from stable_baselines3 import PPO

from agents.batched.compiled import CompiledStep
from agents.batched.distributed import descend, start_in_step
from agents.batched.normalization import RunningNorm
from agents.batched.storage import env_major, gae
from agents.batched.trainer import BatchedTrainer, TrainerConfig
from agents.run_folder import atomic_save
from envs.batched import BatchedContextualEnv, Obs
from hyperrl import HyperActorCriticPolicy, HyperHead
from hyperrl.functional import Grouping, Runs, runs_grouping, split_runs
from hyperrl.policies import contexts_grouped, norm_obs_keys
from hyperrl.policies.recurrent import Memory, RecurrentActorCriticPolicy


@dataclass
class DevicePPOConfig(TrainerConfig):
    """PPO hyperparameters (SB3's names). A rollout is ``n_steps`` x ``num_envs`` samples, split
    into ``n_minibatches`` minibatches of whole worlds."""

    trainer_name: ClassVar[str] = "device-PPO"

    n_steps: int = 32
    n_epochs: int = 5
    n_minibatches: int = 4
    learning_rate: float = 3e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    normalize_advantage: bool = True
    normalize_obs: bool = True
    normalize_reward: bool = True
    clip_obs: float = 10.0
    clip_reward: float = 10.0
    #: start the worlds at random multiples of ``n_steps`` into their horizon
    #: (:meth:`~envs.batched.BatchedContextualEnv.stagger_episodes`), so that an update sees
    #: every phase of an episode, not only the first steps of all, and resets come on a few
    #: steps per rollout instead of all at once; these first, shortened episodes are left out of
    #: ``rollout/ep_rew_mean``
    stagger_episodes: bool = True
    #: compile the minibatch's forward pass and loss (and so its backward) with
    #: ``torch.compile`` (:class:`~agents.batched.compiled.CompiledStep`): the same update after
    #: tens of seconds of compiling. Off by default: on the CPU the update takes 0.6-0.9x as
    #: long but a run only a few percent less (``docs/BENCHMARKS.md``). A recurrent policy's
    #: minibatch stays eager
    compile: bool = False


class DevicePPO(BatchedTrainer):
    """PPO on a batched on-device env.

    :param env: the batched env (its ``device`` is where everything runs).
    :param policy_class: an SB3 actor-critic policy class for Dict observations.
    :param policy_kwargs: its keywords (``conditioning``, ``context_keys``, ``net_arch``...).
    :param config: the PPO hyperparameters.
    :param seed: seeds torch (policy init, action sampling) and the env.
    """

    sb3_class = PPO
    config_class = DevicePPOConfig

    def __init__(
        self,
        env: BatchedContextualEnv,
        policy_class: type = HyperActorCriticPolicy,
        policy_kwargs: dict[str, Any] | None = None,
        config: DevicePPOConfig | None = None,
        seed: int = 0,
    ) -> None:
        cfg = config or DevicePPOConfig()
        if (env.num_envs % cfg.n_minibatches) != 0:
            raise ValueError(
                f"num_envs ({env.num_envs}) must be a multiple of n_minibatches "
                f"({cfg.n_minibatches}): minibatches hold whole worlds"
            )
        super().__init__(env, cfg, seed)
        self.config: DevicePPOConfig = cfg
        device = env.device
        self._make_model(
            policy_class,
            policy_kwargs,
            # it sees one world; the batch size is for all of them
            ignore_warnings=("You have specified a mini-batch size",),
            learning_rate=cfg.learning_rate,
            n_steps=cfg.n_steps,
            batch_size=cfg.n_steps * env.num_envs // cfg.n_minibatches,
            n_epochs=cfg.n_epochs,
            gamma=cfg.gamma,
            gae_lambda=cfg.gae_lambda,
            clip_range=cfg.clip_range,
            ent_coef=cfg.ent_coef,
            vf_coef=cfg.vf_coef,
            max_grad_norm=cfg.max_grad_norm,
        )
        self.rank, self.world_size = start_in_step(self.policy, seed)
        policy_context = tuple(getattr(self.policy, "context_keys", ("context",)))
        hyper = any(isinstance(m, HyperHead) for m in self.policy.modules())
        #: the observation keys a hyper policy generates its heads from (none: no hyper heads)
        self.context_keys: tuple[str, ...] = policy_context if hyper else ()
        # every key but what the policy conditions on: identical contexts must stay identical
        self.norm_keys = (
            norm_obs_keys(env.observation_space, policy_context) if cfg.normalize_obs else []
        )
        self.obs_norm = {
            k: RunningNorm(env.observation_space[k].shape, device) for k in self.norm_keys
        }
        self.ret_norm = RunningNorm((), device)
        self.returns = torch.zeros(env.num_envs, device=device)
        #: a recurrent policy's memory of the training worlds (none: a feed-forward policy)
        self.memory: Memory | None = None
        if isinstance(self.policy, RecurrentActorCriticPolicy):
            self.memory = self.policy.initial_memory(env.num_envs)
        self._acting_memory: Memory | None = None
        #: a loss added to every minibatch's (e.g. continual learning's output regulariser,
        #: :class:`hyperrl.continual.OutputRegulariser`), logged as ``train/regulariser``
        self.regulariser: Callable[[], torch.Tensor] | None = None
        #: a feed-forward policy's minibatch losses, compiled with ``compile: true``
        self._minibatch_step = CompiledStep(self._forward_losses, cfg.compile)

    # --- rollout ---------------------------------------------------------------------------

    def _normalize(self, obs: Obs, update: bool) -> Obs:
        out = dict(obs)
        for k, norm in self.obs_norm.items():
            if update:
                norm.update(obs[k])
            out[k] = norm.normalize(obs[k], self.config.clip_obs)
        return out

    def _scale_reward(self, reward: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
        if not self.config.normalize_reward:
            return reward
        self.returns = self.returns * self.config.gamma + reward
        self.ret_norm.update(self.returns)
        self.returns = self.returns * ~done
        scaled = reward / torch.sqrt(self.ret_norm.var.float() + 1e-8)
        return scaled.clamp(-self.config.clip_reward, self.config.clip_reward)

    @torch.no_grad()
    def collect(self) -> dict[str, Any]:
        """One rollout: ``n_steps`` steps of every world. Returns the storage, ``(T, N, ...)``
        tensors, with advantages and returns computed by GAE; finished episodes go to
        :attr:`episodes`."""
        cfg, env, T, N = self.config, self.env, self.config.n_steps, self.env.num_envs
        if self._obs is None:
            self._obs = env.reset(seed=self.seed + 1000 * self.rank)
            if self.memory is not None:  # every world starts an episode
                self.memory = self.policy.initial_memory(N)
            if cfg.stagger_episodes:
                env.stagger_episodes(granularity=cfg.n_steps)
                self.episodes.skip_current()  # cut short: they would bias ep_rew_mean low
        obs_buf = {k: torch.empty(T, *v.shape, device=env.device) for k, v in self._obs.items()}
        actions_buf = torch.empty(T, N, *env.action_space.shape, device=env.device)
        logp_buf, values_buf, rewards_buf, dones_buf = (
            torch.empty(T, N, device=env.device) for _ in range(4)
        )
        self.policy.set_training_mode(False)
        memory_at_start = self.memory
        for t in range(T):
            obs = self._normalize(self._obs, update=True)
            if self.memory is None:
                actions, values, logp = self.policy(obs)
            else:
                actions, values, logp, self.memory = self.policy.step(obs, self.memory)
            # the env clips to its bounds; the buffer keeps the sampled action, as SB3 does
            next_obs, reward, terminated, truncated, info = env.step(actions)
            done = terminated | truncated
            self.episodes.add(reward, done, info)
            reward = self._scale_reward(reward, done)
            if info["final_observation"] is not next_obs:  # some world finished this step
                # a truncated episode goes on in value: bootstrap from its last observation
                final_values = self._values(
                    self._normalize(info["final_observation"], update=False)
                )
                reward = reward + cfg.gamma * final_values * truncated
            for k in obs_buf:
                obs_buf[k][t] = obs[k]
            actions_buf[t], logp_buf[t], values_buf[t] = actions, logp, values.flatten()
            rewards_buf[t], dones_buf[t] = reward, done.float()
            self._obs = next_obs
            if self.memory is not None:
                self.memory = self.policy.forget(self.memory, done)
        last_values = self._values(self._normalize(self._obs, update=False))
        advantages = gae(rewards_buf, values_buf, dones_buf, last_values, cfg.gamma, cfg.gae_lambda)
        self.num_timesteps += T * N * self.world_size  # every rank's steps
        return {
            "obs": obs_buf,
            "actions": actions_buf,
            "logp": logp_buf,
            "values": values_buf,
            "advantages": advantages,
            "returns": advantages + values_buf,
            "dones": dones_buf,
            "memory": memory_at_start,
        }

    def _values(self, obs: Obs) -> torch.Tensor:
        """``(N,)`` values of normalised observations (after :attr:`memory`, if recurrent)."""
        if self.memory is None:
            return self.policy.predict_values(obs).flatten()
        return self.policy.step_values(obs, self.memory).flatten()

    @torch.no_grad()
    def act(self, obs: Obs, deterministic: bool = False) -> torch.Tensor:
        """``(N, act_dim)`` actions for raw observations (normalised here, not updating the
        statistics). A recurrent policy remembers the worlds it acts on from one call to the
        next, from :meth:`start_episodes` on."""
        obs = self._normalize(obs, update=False)
        if self.memory is None:
            return self.policy._predict(obs, deterministic)
        actions, self._acting_memory = self.policy.act(obs, self._acting_memory, deterministic)
        return actions

    def start_episodes(self) -> None:
        self._acting_memory = None

    # --- update ----------------------------------------------------------------------------

    def _context_runs(self, obs: dict[str, torch.Tensor]) -> Runs | None:
        """Where each world's context changes within the rollout (at resets), from the stored
        ``(T, N, ...)`` observations: a minibatch's hyper heads then know which of its samples
        share a context without deduplicating them (a sort and host syncs per head and
        minibatch on a GPU). ``None`` for a policy without hyper heads."""
        if not self.context_keys:
            return None
        T, N = self.config.n_steps, self.env.num_envs
        changed = torch.zeros(N, T, dtype=torch.bool, device=self.env.device)
        for k in self.context_keys:
            v = obs[k].transpose(0, 1).reshape(N, T, -1)
            changed[:, 1:] |= (v[:, 1:] != v[:, :-1]).any(dim=-1)
        return split_runs(changed)

    def update(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``n_epochs`` passes over the rollout in minibatches of whole worlds (env-major)."""
        cfg, N, device = self.config, self.env.num_envs, self.env.device
        policy, optimizer = self.policy, self.policy.optimizer
        policy.set_training_mode(True)
        for group in optimizer.param_groups:
            group["lr"] = cfg.learning_rate
        per_mb = N // cfg.n_minibatches
        stats: dict[str, list[torch.Tensor]] = {
            k: [] for k in ("policy", "value", "entropy", "clip")
        }
        if self.regulariser is not None:
            stats["regulariser"] = []
        context_runs = self._context_runs(batch["obs"])
        # a recurrent policy's memory starts over at the step after a done
        starts = torch.cat([torch.zeros_like(batch["dones"][:1]), batch["dones"][:-1]])
        for _ in range(cfg.n_epochs):
            # drawn on the CPU: a minibatch's number of distinct contexts is then known there
            perm_host = torch.randperm(N)
            perm = perm_host.pin_memory() if device.type == "cuda" else perm_host
            perm = perm.to(device, non_blocking=True)
            for i in range(cfg.n_minibatches):
                picked = slice(i * per_mb, (i + 1) * per_mb)
                worlds = perm[picked]
                groups = None
                if context_runs is not None:
                    groups = runs_grouping(context_runs, worlds, perm_host[picked])
                mb = {
                    k: env_major(batch[k], worlds)
                    for k in ("actions", "logp", "advantages", "returns")
                }
                obs = {k: env_major(v, worlds) for k, v in batch["obs"].items()}
                if batch["memory"] is not None:
                    memory = Memory(*(m[worlds] for m in batch["memory"]))
                    values, logp, entropy = policy.evaluate_sequences(
                        obs, mb["actions"], memory, env_major(starts, worlds)
                    )
                    losses = self._losses(values, logp, entropy, mb)
                else:
                    losses = self._minibatch_step(obs, mb, groups)
                loss = losses[0]
                if self.regulariser is not None:
                    penalty = self.regulariser()
                    loss = loss + penalty
                    stats["regulariser"].append(penalty.detach())
                descend(optimizer, loss, policy.parameters(), cfg.max_grad_norm)
                for k, v in zip(("policy", "value", "entropy", "clip"), losses[1:], strict=True):
                    stats[k].append(v.detach())
        return {k: torch.stack(v).mean() for k, v in stats.items()}

    def _forward_losses(
        self, obs: Obs, mb: dict[str, torch.Tensor], groups: Grouping | None
    ) -> tuple[torch.Tensor, ...]:
        """A feed-forward policy's minibatch: :meth:`_losses` of ``evaluate_actions`` on
        ``obs`` and ``mb`` (``(B, ...)`` tensors), the hyper heads told ``groups``. What
        ``compile: true`` compiles (:attr:`_minibatch_step`)."""
        with contexts_grouped(self.policy, groups):
            values, logp, entropy = self.policy.evaluate_actions(obs, mb["actions"])
        return self._losses(values, logp, entropy, mb)

    def _losses(
        self,
        values: torch.Tensor,
        logp: torch.Tensor,
        entropy: torch.Tensor | None,
        mb: dict[str, torch.Tensor],
    ) -> tuple[torch.Tensor, ...]:
        """PPO's clipped loss from the policy's ``values (B, 1)``, ``logp (B,)`` and ``entropy
        (B,)`` on a minibatch ``mb``: ``(loss, policy loss, value loss, entropy, clip
        fraction)``, scalars."""
        cfg = self.config
        adv = mb["advantages"]
        if cfg.normalize_advantage and adv.numel() > 1:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        ratio = torch.exp(logp - mb["logp"])
        clipped = torch.clamp(ratio, 1 - cfg.clip_range, 1 + cfg.clip_range)
        policy_loss = -torch.min(adv * ratio, adv * clipped).mean()
        value_loss = torch.nn.functional.mse_loss(mb["returns"], values.flatten())
        entropy_loss = -entropy.mean() if entropy is not None else -(-logp).mean()
        loss = policy_loss + cfg.ent_coef * entropy_loss + cfg.vf_coef * value_loss
        clip_fraction = ((ratio - 1).abs() > cfg.clip_range).float().mean()
        return loss, policy_loss, value_loss, -entropy_loss, clip_fraction

    # --- loop ------------------------------------------------------------------------------

    def iteration(self, target: int) -> dict[str, float]:
        """One rollout and its update: ``rollout/ep_rew_mean`` (and ``rollout/success_rate`` for
        goal-reaching envs) and ``train/*``. Its host syncs: these values once per rollout; per
        step, the env's ``done.any()`` and each hyper head's check of its reused contexts."""
        losses = self.update(self.collect())
        return {
            **self.episodes.read(),
            **{
                {"clip": "train/clip_fraction", "regulariser": "train/regulariser"}.get(
                    k, f"train/{k}_loss"
                ): float(v)
                for k, v in losses.items()
            },
        }

    # --- checkpoints -----------------------------------------------------------------------

    def _save_state(self, run_dir: Path, cpu_env: gym.Env | None) -> None:
        """``trainer_state.pt`` (optimizer and running statistics, for :meth:`restore`) and,
        with observation normalisation, ``vecnormalize.pkl`` built around ``cpu_env`` (the CPU
        twin evaluation runs on)."""
        state = {
            "optimizer": self.policy.optimizer.state_dict(),
            "norms": self.norm_state(),
            "run": self.run_state(),
        }
        if self.memory is not None:  # the worlds go on mid-episode after a resume
            state["memory"] = tuple(self.memory)
        atomic_save(run_dir / "trainer_state.pt", lambda tmp: torch.save(state, tmp))
        if self.obs_norm and cpu_env is not None:
            vec = self.vecnormalize(cpu_env)
            atomic_save(run_dir / "vecnormalize.pkl", lambda tmp: vec.save(str(tmp)))

    def restore(self, run_dir: str | Path) -> None:
        """Continue from what :meth:`save` wrote: parameters, step count, optimizer and running
        statistics (from ``vecnormalize.pkl`` when ``trainer_state.pt`` is missing) and, where
        it was captured (:meth:`~agents.batched.trainer.BatchedTrainer.run_state`), the env's
        state and the random state, so that the run goes on exactly as it would have."""
        run_dir = Path(run_dir)
        model = self.sb3_class.load(run_dir / "model.zip", device=self.env.device)
        self.policy.load_state_dict(model.policy.state_dict())
        self.num_timesteps = self.model.num_timesteps = model.num_timesteps
        state_path, vec_path = run_dir / "trainer_state.pt", run_dir / "vecnormalize.pkl"
        if state_path.is_file():
            state = torch.load(state_path, map_location=self.env.device, weights_only=True)
            self.policy.optimizer.load_state_dict(state["optimizer"])
            self.load_norm_state(state["norms"])
            self.load_run_state(state.get("run"))
            if self.memory is not None and "memory" in state:
                self.memory = Memory(*state["memory"])
        elif vec_path.is_file():
            from agents.safe_pickle import load_vecnormalize

            self.load_vecnormalize_statistics(load_vecnormalize(vec_path))

    def load_vecnormalize_statistics(self, vec: Any, returns: bool = True) -> None:
        """Take the observation statistics (and, with ``returns``, the return statistics) of an
        SB3 ``VecNormalize`` (what :meth:`vecnormalize` writes)."""
        to = dict(dtype=torch.float64, device=self.env.device)
        rms = {f"obs.{k}": vec.obs_rms[k] for k in self.obs_norm}
        if returns:
            rms["ret"] = vec.ret_rms
        self.load_norm_state(
            {
                k: (torch.as_tensor(r.mean, **to), torch.as_tensor(r.var, **to),
                    torch.as_tensor(r.count, **to))
                for k, r in rms.items()
            }
        )  # fmt: skip

    def vecnormalize(self, cpu_env: gym.Env):
        """An SB3 ``VecNormalize`` around ``cpu_env`` holding this trainer's statistics."""
        from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

        vec = VecNormalize(
            DummyVecEnv([lambda: cpu_env]),
            norm_obs_keys=self.norm_keys,
            training=False,
            norm_reward=self.config.normalize_reward,
            clip_obs=self.config.clip_obs,
            clip_reward=self.config.clip_reward,
            gamma=self.config.gamma,
        )
        for k, norm in self.obs_norm.items():
            vec.obs_rms[k].mean = norm.mean.cpu().numpy()
            vec.obs_rms[k].var = norm.var.cpu().numpy()
            vec.obs_rms[k].count = float(norm.count)
        vec.ret_rms.mean = float(self.ret_norm.mean)
        vec.ret_rms.var = float(self.ret_norm.var)
        vec.ret_rms.count = float(self.ret_norm.count)
        return vec

    def norm_state(self) -> dict[str, Any]:
        """The normalisation statistics (for resuming); ``"ret"`` also carries the running
        discounted returns."""
        norms = {"ret": self.ret_norm, **{f"obs.{k}": v for k, v in self.obs_norm.items()}}
        return {k: (n.mean, n.var, n.count) for k, n in norms.items()} | {"returns": self.returns}

    def load_norm_state(self, state: dict[str, Any]) -> None:
        norms = {"ret": self.ret_norm, **{f"obs.{k}": v for k, v in self.obs_norm.items()}}
        state = dict(state)
        if "returns" in state:
            self.returns = state.pop("returns").to(self.env.device)
        for k, (mean, var, count) in state.items():
            norms[k].mean, norms[k].var, norms[k].count = mean, var, count
