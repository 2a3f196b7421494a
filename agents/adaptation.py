"""Training and evaluating a run's adaptation module (:mod:`hyperrl.adaptation`): the context
inferred from recent experience instead of read from the observation.

Phase 2 of Rapid Motor Adaptation, on the run's batched twin (:func:`envs.batched_twin`), for
runs of either path (an SB3 algorithm or a batched trainer): the trained policy is frozen and
acts on the module's *estimate* of the context, while the module regresses on the true one that
the env still reports. Because the deployed policy acts on the estimate from the first step, the
module learns on the states its own errors lead to (DAgger's on-policy relabelling), not only on
those the true-context policy visits.

``train_adaptation`` writes ``RUN/adaptation.pt``; ``evaluate_sources`` compares the returns
with the true, inferred and nominal contexts per split, with the estimate's error per feature.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.logger import configure

import envs
from agents.config import load_preset, parse_overrides
from agents.run_config import TrainArgs, load_run, read_run_config, spaces_of, statistics_dir
from agents.run_folder import atomic_save, save_on_stop
from agents.safe_pickle import load_vecnormalize
from envs.batched import BatchedContextualEnv, Obs
from hyperrl.adaptation import AdaptationModule, TransitionHistory, transition
from hyperrl.policies.recurrent import Memory, RecurrentActorCriticPolicy

#: the file a run's adaptation module lives in
ADAPTATION_FILE = "adaptation.pt"
#: the observation key the estimate replaces
CONTEXT_KEY = "context"
#: what ``evaluate.py --context-source`` and :func:`evaluate_sources` take
CONTEXT_SOURCES = ("true", "inferred", "nominal")


@dataclass
class AdaptationConfig:
    """Phase 2's hyperparameters (a preset's ``adaptation`` section, ``--hyperparams``)."""

    n_timesteps: int = 1_000_000
    n_envs: int = 256
    #: vector steps per rollout before an update
    n_steps: int = 64
    n_epochs: int = 4
    batch_size: int = 4096
    learning_rate: float = 1e-3
    #: transitions the module reads
    history: int = 16
    hidden: tuple[int, ...] = (256, 128)
    #: the policy acts deterministically, as it does when evaluated and deployed
    deterministic: bool = True
    #: where contexts are drawn from while the module learns
    split: str = "train"

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> AdaptationConfig:
        """:raises ValueError: naming unknown keys and the valid ones."""
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - valid)
        if unknown:
            raise ValueError(f"unknown adaptation keys {unknown}; valid keys are {sorted(valid)}")
        values = dict(values)
        if "hidden" in values:
            values["hidden"] = tuple(int(h) for h in values["hidden"])
        config = cls(**values)
        for key in ("n_timesteps", "n_envs", "n_steps", "n_epochs", "batch_size", "history"):
            if int(getattr(config, key)) < 1:
                raise ValueError(f"adaptation key {key} must be >= 1, got {getattr(config, key)}")
        return config


class RunPolicy:
    """A run's policy acting on batched observations: the observation normalisation of its
    model file (``vecnormalize.pkl`` beside it, else the run's) applied in torch, SB3's action
    scaling for squashed policies.

    :param model: the run's SB3 model.
    :param stats_dir: the folder of its ``vecnormalize.pkl`` (none there: no normalisation).
    :param device: where the policy runs.
    """

    def __init__(self, model: Any, stats_dir: Path, device: torch.device) -> None:
        self.policy = model.policy.to(device)
        self.policy.set_training_mode(False)
        self.device = device
        self.norm: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.clip = float("inf")
        path = stats_dir / "vecnormalize.pkl"
        if path.is_file():
            vec = load_vecnormalize(path)
            if vec.norm_obs:
                self.clip = float(vec.clip_obs)
                for key in vec.norm_obs_keys:
                    rms = vec.obs_rms[key]
                    mean = torch.as_tensor(rms.mean, dtype=torch.float32, device=device)
                    std = torch.sqrt(torch.as_tensor(rms.var, dtype=torch.float32) + vec.epsilon)
                    self.norm[key] = (mean, std.to(device))
        space = model.action_space
        bounds = (space.low, space.high) if isinstance(space, gym.spaces.Box) else (0.0, 0.0)
        self.low, self.high = (torch.as_tensor(b, dtype=torch.float32, device=device)
                               for b in bounds)  # fmt: skip
        self.memory: Memory | None = None

    def start_episodes(self) -> None:
        """Before a new set of episodes: a recurrent policy forgets the worlds it acted on."""
        self.memory = None

    @torch.no_grad()
    def act(self, obs: Obs, deterministic: bool = True) -> torch.Tensor:
        """``(N, act_dim)`` env actions for raw observations (dict of ``(N, ...)``); a recurrent
        policy remembers the worlds from one call to the next, from :meth:`start_episodes` on."""
        obs = dict(obs)
        for key, (mean, std) in self.norm.items():
            obs[key] = ((obs[key].float() - mean) / std).clamp(-self.clip, self.clip)
        if isinstance(self.policy, RecurrentActorCriticPolicy):
            actions, self.memory = self.policy.act(obs, self.memory, deterministic)
            return actions
        actions = self.policy._predict(obs, deterministic=deterministic)
        if getattr(self.policy, "squash_output", False):
            actions = self.low + (actions + 1.0) * (self.high - self.low) / 2
        return actions


def plain_observation(obs: Obs) -> torch.Tensor:
    """``(N, obs_dim)``: every observation key but the context, flattened, in sorted order."""
    return torch.cat([obs[k].float().flatten(1) for k in sorted(obs) if k != CONTEXT_KEY], dim=-1)


def _load(run: str | Path, device: torch.device) -> tuple[Any, Any, Path, RunPolicy]:
    """``(model, run config, run folder, RunPolicy)`` of a run folder or a model file in one."""
    model, run_config, run_dir, model_path = load_run(run)
    stats_dir = statistics_dir(run_dir, model_path)
    return model, run_config, run_dir, RunPolicy(model, stats_dir, device)


def _batched_env(
    run: Any,
    model: Any,
    n_envs: int,
    split: str,
    device: torch.device,
    seed,
    need_context: bool = True,
):
    """The batched env of a run's config ``run``: its own env with its ``env_kwargs`` for a
    batched run; for an SB3 run, the batched twin of its env as the twin's defaults make it
    (a gymnasium env's keywords, e.g. a fixed list of contexts, do not carry over).

    :raises ValueError: when it shows no context (and ``need_context``), or when ``model`` was
        trained on other spaces."""
    kwargs = run.env_kwargs if run.env in envs.BATCHED_ENVS else {}
    env = envs.make_batched(envs.batched_twin(run.env), n_envs, split, device, seed, **kwargs)
    if need_context and CONTEXT_KEY not in env.observation_space.spaces:
        raise ValueError(f"{run.env} shows no context; there is nothing to infer")
    if spaces_of(model) != spaces_of(env):
        raise ValueError(
            f"the run's model does not fit the batched env it is played on "
            f"({envs.batched_twin(run.env)} with its defaults; model: {spaces_of(model)}, env: "
            f"{spaces_of(env)}): the run's env keywords may not carry over to its batched twin"
        )
    return env


class ContextEstimator:
    """An :class:`AdaptationModule` following ``num_envs`` worlds: the history it reads, and
    its estimates clipped to the context's observation bounds.

    :param module: the adaptation module.
    :param num_envs: worlds followed.
    :param observation_space: the env's (single-world) Dict space, with its ``context`` box.
    :param action_space: the env's action space (the history keeps actions clipped to it).
    :param device: where the history lives.
    """

    def __init__(
        self,
        module: AdaptationModule,
        num_envs: int,
        observation_space: gym.spaces.Dict,
        action_space: gym.spaces.Box,
        device: torch.device | str = "cpu",
    ) -> None:
        if not isinstance(action_space, gym.spaces.Box):
            raise ValueError(
                f"the adaptation module reads continuous actions; this env's are "
                f"{type(action_space).__name__}"
            )
        self.module = module
        self.history = TransitionHistory(num_envs, module.history, module.transition_dim, device)
        box = observation_space[CONTEXT_KEY]
        as_tensor = functools.partial(torch.as_tensor, dtype=torch.float32, device=device)
        self.low, self.high = as_tensor(box.low), as_tensor(box.high)
        self.act_low, self.act_high = as_tensor(action_space.low), as_tensor(action_space.high)

    @torch.no_grad()
    def estimate(self) -> torch.Tensor:
        """``(N, c)`` estimated contexts, in the observation's scale."""
        return torch.maximum(torch.minimum(self.module.estimate(self.history), self.high), self.low)

    def observe(
        self, obs: Obs, actions: torch.Tensor, reward: torch.Tensor, final: Obs, done: torch.Tensor
    ) -> None:
        """Fold in one vector step (``final``: the observation the step led to, before any
        auto-reset); finished worlds start an empty history."""
        actions = torch.maximum(torch.minimum(actions, self.act_high), self.act_low)
        step = transition(plain_observation(obs), actions, reward, plain_observation(final))
        self.history.push(step)
        self.history.clear(done)


class SingleEnvSource:
    """Where one gymnasium env's policy reads its context from, for ``evaluate.py
    --context-source``: ``true`` (the observation's), ``inferred`` (an adaptation module's
    estimate from the episode so far) or ``nominal`` (the centre of the train range).

    :param source: one of :data:`CONTEXT_SOURCES`.
    :param module: the run's adaptation module (``inferred`` only).
    :param env: the env (its spaces).
    """

    def __init__(self, source: str, module: AdaptationModule | None, env: gym.Env) -> None:
        if source not in CONTEXT_SOURCES:
            raise ValueError(f"unknown context source {source!r}; choose one of {CONTEXT_SOURCES}")
        if CONTEXT_KEY not in getattr(env.observation_space, "spaces", {}):
            raise ValueError("this env shows no context; --context-source needs one that does")
        self.source = source
        self.estimator = None
        if source == "inferred":
            if module is None:
                raise ValueError("the inferred context needs an adaptation module")
            self.estimator = ContextEstimator(module, 1, env.observation_space, env.action_space)

    @staticmethod
    def _batch(obs: Mapping[str, Any]) -> Obs:
        return {
            k: torch.as_tensor(np.asarray(v), dtype=torch.float32)[None] for k, v in obs.items()
        }

    def given(self, obs: dict[str, Any]) -> dict[str, Any]:
        """``obs`` with the context the policy is to read."""
        if self.source == "true":
            return obs
        if self.source == "nominal":
            return obs | {CONTEXT_KEY: np.zeros_like(obs[CONTEXT_KEY])}
        estimate = self.estimator.estimate()[0].numpy().astype(obs[CONTEXT_KEY].dtype)
        return obs | {CONTEXT_KEY: estimate}

    def observe(self, obs, action, reward: float, next_obs, done: bool) -> None:
        """Fold in one step of the episode (a finished one empties the history)."""
        if self.estimator is None:
            return
        self.estimator.observe(
            self._batch(obs),
            torch.as_tensor(np.asarray(action), dtype=torch.float32).reshape(1, -1),
            torch.tensor([float(reward)]),
            self._batch(next_obs),
            torch.tensor([bool(done)]),
        )


def train_adaptation(
    run: str | Path,
    config: AdaptationConfig,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress_bar: bool = False,
    logger: Any | None = None,
    save_every: int = 10,
) -> dict[str, float]:
    """Train ``run``'s adaptation module (RMA phase 2, :func:`fit_adaptation`) for
    ``config.n_timesteps`` env steps on its batched twin, writing ``RUN/adaptation.pt`` every
    ``save_every`` rollouts and when it stops, however it stops (Ctrl-C:
    :class:`~agents.run_folder.TrainingInterruptedError`). An unfinished module there (fewer
    steps than ``config.n_timesteps``, same shape) is continued. Returns the last rollout's
    ``adaptation/*`` values and ``time/fps``."""
    device = torch.device(device)
    torch.manual_seed(seed)
    model, run_config, run_dir, policy = _load(run, device)
    if isinstance(model.policy, RecurrentActorCriticPolicy):
        raise ValueError(
            f"{run} holds a recurrent policy, which reads no context: there is none to infer "
            "for it (its memory is its adaptation)"
        )
    env = _batched_env(run_config, model, config.n_envs, config.split, device, seed)
    module = new_module(env, config).to(device)
    optimizer = torch.optim.Adam(module.parameters(), lr=config.learning_rate)
    steps = {"done": _continue(run_dir, module, optimizer, config)}
    bar = None
    if progress_bar:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=config.n_timesteps, initial=steps["done"], unit="step", unit_scale=True,
            dynamic_ncols=True,
        )  # fmt: skip
    start, start_steps, logged = time.perf_counter(), steps["done"], {}

    def save() -> None:
        save_adaptation(run_dir, module, optimizer, config, steps["done"])

    def after_rollout(done: int, values: dict[str, float]) -> None:
        steps["done"] = done
        logged.clear()
        logged.update(values)
        logged["time/fps"] = (done - start_steps) / (time.perf_counter() - start)
        if logger is not None:
            for key, value in logged.items():
                logger.record(key, value)
            logger.dump(done)
        if bar is not None:
            bar.update(config.n_envs * config.n_steps)
        if (done - start_steps) % (save_every * config.n_envs * config.n_steps) == 0:
            save()

    act = functools.partial(policy.act, deterministic=config.deterministic)
    with save_on_stop(run_dir, save, lambda: steps["done"], resume_hint=f"--adapt {run_dir}"):
        fit_adaptation(act, env, module, optimizer, config, steps["done"], seed, after_rollout)
    if bar is not None:
        bar.close()
    return logged


def new_module(env: BatchedContextualEnv, config: AdaptationConfig) -> AdaptationModule:
    """An :class:`AdaptationModule` sized for ``env``'s observations, actions and context."""
    spaces = env.observation_space.spaces
    obs_dim = sum(int(np.prod(space.shape)) for key, space in spaces.items() if key != CONTEXT_KEY)
    width = 2 * obs_dim + int(np.prod(env.action_space.shape)) + 1
    return AdaptationModule(width, spaces[CONTEXT_KEY].shape[0], config.history, config.hidden)


def fit_adaptation(
    act: Callable[[Obs], torch.Tensor],
    env: BatchedContextualEnv,
    module: AdaptationModule,
    optimizer: torch.optim.Optimizer,
    config: AdaptationConfig,
    steps: int = 0,
    seed: int = 0,
    after_rollout: Callable[[int, dict[str, float]], None] | None = None,
) -> int:
    """RMA phase 2 from ``steps`` to ``config.n_timesteps``: ``act`` (the frozen policy, raw
    observations -> ``(N, act_dim)`` actions) reads the module's estimate in place of the
    context, and after every rollout of ``config.n_steps`` vector steps the module regresses
    (mean squared error, in the observation's context scale) from each step's history onto the
    true context the env reported at that step. ``after_rollout(steps, values)`` sees
    ``adaptation/loss`` and ``adaptation/abs_error_<feature>`` (mean error of the estimates
    made from a full history). Returns the steps done."""
    obs = env.reset(seed=seed)
    estimator = ContextEstimator(
        module, env.num_envs, env.observation_space, env.action_space, env.device
    )
    c = obs[CONTEXT_KEY].shape[-1]
    names = env.context_names or tuple(str(i) for i in range(c))
    T, N, k, d = config.n_steps, env.num_envs, module.history, module.transition_dim
    while steps < config.n_timesteps:
        histories = torch.empty(T, N, k, d, device=env.device)
        valid = torch.empty(T, N, k, dtype=torch.bool, device=env.device)
        labels = torch.empty(T, N, c, device=env.device)
        for t in range(T):
            histories[t], valid[t] = estimator.history.transitions, estimator.history.valid
            labels[t] = obs[CONTEXT_KEY]
            # before any data the estimate is noise: act on the nominal context instead
            guess = estimator.estimate() if module.count > 0 else torch.zeros_like(labels[t])
            actions = act({**obs, CONTEXT_KEY: guess})
            next_obs, reward, terminated, truncated, info = env.step(actions)
            estimator.observe(obs, actions, reward, info["final_observation"],
                              terminated | truncated)  # fmt: skip
            obs = next_obs
        module.update_statistics(histories[valid])
        values = _fit(module, optimizer, histories, valid, labels, config, names)
        steps += T * N
        if after_rollout is not None:
            after_rollout(steps, values)
    return steps


def _continue(run_dir: Path, module, optimizer, config: AdaptationConfig) -> int:
    """Load an unfinished module of the same shape from ``run_dir`` into ``module`` and
    ``optimizer``; its step count (0 when there is none to continue)."""
    path = run_dir / ADAPTATION_FILE
    if not path.is_file():
        return 0
    state = _read(path, run_dir)
    if state["module"] != module.config():
        print(f"replacing the adaptation module in {path}: it has another shape")
        return 0
    if state["num_timesteps"] >= config.n_timesteps:
        print(f"replacing the adaptation module in {path}: it finished its "
              f"{state['num_timesteps']} steps")  # fmt: skip
        return 0
    module.load_state_dict(state["state_dict"])
    if "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # the config's rate, not the saved one
            group["lr"] = config.learning_rate
    print(f"continuing the adaptation module in {path} from {state['num_timesteps']} steps")
    return int(state["num_timesteps"])


def _fit(module, optimizer, histories, valid, labels, config: AdaptationConfig, names):
    """``n_epochs`` passes of mean-squared regression on one rollout, in shuffled minibatches."""
    histories = histories.flatten(0, 1)
    valid, labels = valid.flatten(0, 1), labels.flatten(0, 1)
    total = histories.shape[0]
    losses = []
    for _ in range(config.n_epochs):
        for idx in torch.randperm(total, device=histories.device).split(config.batch_size):
            loss = torch.nn.functional.mse_loss(module(histories[idx], valid[idx]), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
    out = {"adaptation/loss": float(torch.stack(losses).mean())}
    with torch.no_grad():
        full = valid.all(dim=-1)
        if bool(full.any()):
            error = (module(histories[full], valid[full]) - labels[full]).abs().mean(0)
            out |= {
                f"adaptation/abs_error_{n}": float(e) for n, e in zip(names, error, strict=True)
            }
    return out


def save_adaptation(
    run_dir: Path,
    module: AdaptationModule,
    optimizer: torch.optim.Optimizer | None,
    config: AdaptationConfig,
    steps: int,
) -> None:
    """``run_dir/adaptation.pt`` (atomically): the module's constructor arguments and weights,
    the optimizer's state (to continue), the config it was trained with and its step count."""
    state = {
        "module": module.config(),
        "state_dict": {k: v.cpu() for k, v in module.state_dict().items()},
        "config": dataclasses.asdict(config),
        "num_timesteps": int(steps),
    }
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    atomic_save(run_dir / ADAPTATION_FILE, lambda tmp: torch.save(state, tmp))


def _read(path: Path, run_dir: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        AdaptationModule(**state["module"]).load_state_dict(state["state_dict"])
    except Exception as err:  # a truncated or foreign file means the same to a user
        raise ValueError(
            f"{path} is corrupt or not an adaptation module ({type(err).__name__}: {err}); "
            f"delete it and train it again with python scripts/train_agent.py --adapt {run_dir}"
        ) from None
    return state


def load_adaptation(run_dir: str | Path, device: str | torch.device = "cpu") -> AdaptationModule:
    """The adaptation module in ``run_dir``, in eval mode on ``device``.

    :raises ValueError: when it is missing (train it with ``train_agent.py --adapt RUN``) or
        unreadable."""
    path = Path(run_dir) / ADAPTATION_FILE
    if not path.is_file():
        raise ValueError(
            f"{run_dir} has no adaptation module ({ADAPTATION_FILE}); train one with "
            f"python scripts/train_agent.py --adapt {run_dir}"
        )
    state = _read(path, Path(run_dir))
    module = AdaptationModule(**state["module"])
    module.load_state_dict(state["state_dict"])
    return module.to(device).eval()


def adapt_run(args: TrainArgs) -> Path:
    """``train_agent.py --adapt RUN``: the preset's ``adaptation`` section for the run's env
    (or its CPU twin's), ``--hyperparams``, ``-n`` and ``--n-envs`` over
    :class:`AdaptationConfig`'s defaults; TensorBoard under ``RUN/tb/adaptation``."""
    run_dir = Path(args.adapt)
    run = read_run_config(run_dir)
    preset = load_preset(run.env, "adaptation", args.conf_file) or load_preset(
        envs.cpu_twin(run.env), "adaptation", args.conf_file
    )
    values = preset | parse_overrides(args.hyperparams)
    if args.timesteps:
        values["n_timesteps"] = args.timesteps
    if args.n_envs:
        values["n_envs"] = args.n_envs
    config = AdaptationConfig.from_dict(values)
    tb = args.tensorboard_dir(run_dir)
    logger = configure(f"{tb}/adaptation" if tb else None, ["tensorboard"] if tb else [])
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    logged = train_adaptation(run_dir, config, device, args.seed, args.progress_bar, logger)
    prefix = "adaptation/abs_error_"
    errors = {k.removeprefix(prefix): round(v, 3) for k, v in logged.items() if prefix in k}
    print(f"adaptation module: {run_dir / ADAPTATION_FILE}; last rollout's error {errors}")
    return run_dir


@torch.no_grad()
def play_batched(
    policy: RunPolicy,
    env: BatchedContextualEnv,
    source: str,
    module: AdaptationModule | None = None,
    seed: int = 1000,
    on_step: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    change_at: int | None = None,
) -> torch.Tensor:
    """One deterministic episode in each world of ``env``, the policy reading the context from
    ``source`` (``true``: the env's; ``inferred``: ``module``'s estimate; ``nominal``: the
    centre of the train range, 0 in the observation's scale). Returns ``(N,)`` returns;
    ``on_step(t, given, true)`` sees every step's context given and the true one, ``(n, c)``
    in the observation's scale for the ``n`` worlds whose first episode runs. ``change_at``:
    after that many steps every world gets a new context from the env's split, its state and
    its history kept (:meth:`~envs.batched.BatchedContextualEnv.change_contexts`)."""
    if source not in CONTEXT_SOURCES:
        raise ValueError(f"unknown context source {source!r}; choose one of {CONTEXT_SOURCES}")
    if source == "inferred" and module is None:
        raise ValueError("the inferred context needs an adaptation module")
    if source != "true" and CONTEXT_KEY not in env.observation_space.spaces:
        raise ValueError(
            f"this env shows no context: only the 'true' source applies, not {source!r}"
        )
    obs = env.reset(seed=seed)
    policy.start_episodes()
    estimator = None
    if module is not None:
        estimator = ContextEstimator(
            module, env.num_envs, env.observation_space, env.action_space, env.device
        )
    total = torch.zeros(env.num_envs, device=env.device)
    live = torch.ones(env.num_envs, dtype=torch.bool, device=env.device)
    for t in range(env.max_episode_steps):
        if t == change_at:
            obs = env.change_contexts(torch.ones_like(live))
        if CONTEXT_KEY not in obs:  # a policy without context (e.g. on history observations)
            actions = policy.act(obs)
        else:
            true = obs[CONTEXT_KEY]
            if source == "inferred":
                given = estimator.estimate()
            else:
                given = true if source == "true" else torch.zeros_like(true)
            if on_step is not None:
                on_step(t, given[live], true[live])
            actions = policy.act({**obs, CONTEXT_KEY: given})
        next_obs, reward, terminated, truncated, info = env.step(actions)
        done = terminated | truncated
        if estimator is not None:
            estimator.observe(obs, actions, reward, info["final_observation"], done)
        total += reward * live
        live &= ~done
        obs = next_obs
        if not bool(live.any()):
            break
    return total


def evaluate_sources(
    run: str | Path,
    splits: Sequence[str] | None = None,
    sources: Sequence[str] = CONTEXT_SOURCES,
    worlds: int = 64,
    device: str | torch.device = "cpu",
    seed: int = 1000,
) -> dict[str, dict[str, Any]]:
    """split -> ``{"<source>_return": mean, ..., "abs_error": {feature: mean |estimate - true|
    in the context's own units, over the steps with a full history}}``, on ``worlds`` episodes
    of the run's batched twin per split, the same contexts for every source. A run whose env
    shows no context (a no-context or history policy) plays the ``true`` source only, as
    ``true_return`` (no adaptation module is needed)."""
    device = torch.device(device)
    model, run_config, run_dir, policy = _load(run, device)
    module = None
    out: dict[str, dict[str, Any]] = {}
    for split in splits or envs.splits_of(run_config.env):
        env = _batched_env(run_config, model, worlds, split, device, seed, need_context=False)
        if CONTEXT_KEY not in env.observation_space.spaces:
            sources = ["true"]
        elif "inferred" in sources and module is None:
            module = load_adaptation(run_dir, device)
        row: dict[str, Any] = {}
        errors: list[torch.Tensor] = []
        full_from = module.history if module is not None else 0

        def track(t: int, given, true, errors=errors, full_from=full_from) -> None:
            if t >= full_from:
                errors.append((given - true).abs())

        for source in sources:
            hook = track if source == "inferred" else None
            returns = play_batched(policy, env, source, module, seed, hook)
            row[f"{source}_return"] = float(returns.mean())
        if errors and env.context_space is not None:
            _, half = env.context_space.train_scaling()
            mean_error = torch.cat(errors).mean(0).cpu() * torch.as_tensor(half)
            row["abs_error"] = dict(zip(env.context_names, mean_error.tolist(), strict=True))
        out[split] = row
    return out


def settling(
    run: str | Path,
    change_at: int,
    split: str = "train",
    worlds: int = 64,
    device: str | torch.device = "cpu",
    seed: int = 1000,
    tolerance: float = 1.25,
) -> dict[str, Any]:
    """How the inferred context follows a change mid-episode: every world of the run's batched
    twin gets a new context (from ``split``) after ``change_at`` steps. Returns ``error``: the
    estimate's mean absolute error per step (observation scale, averaged over features and
    worlds), ``before``: its mean over the full-history steps before the change, ``peak``: its
    largest value after, and ``settle_steps``: the steps after the change until it is back
    within ``tolerance`` times ``before`` (``None`` if it never is)."""
    device = torch.device(device)
    model, run_config, run_dir, policy = _load(run, device)
    module = load_adaptation(run_dir, device)
    env = _batched_env(run_config, model, worlds, split, device, seed)
    if not env.supports_context_change:
        raise ValueError(
            f"{envs.batched_twin(run_config.env)} cannot change contexts mid-episode (the "
            "MuJoCo Warp and Fetch backends): --change-at works on classic control and on "
            "locomotion on MuJoCo threads"
        )
    if change_at <= module.history or change_at >= env.max_episode_steps:
        raise ValueError(
            f"change_at must lie between the history ({module.history}) and the episode "
            f"length ({env.max_episode_steps}), got {change_at}"
        )
    errors: list[float] = []

    def track(t: int, given: torch.Tensor, true: torch.Tensor) -> None:
        errors.append(float((given - true).abs().mean()) if len(given) else float("nan"))

    play_batched(policy, env, "inferred", module, seed, track, change_at)
    before = float(np.nanmean(errors[module.history : change_at]))
    after = errors[change_at:]
    settled = [i for i, e in enumerate(after) if e <= tolerance * before]
    return {
        "error": errors,
        "before": before,
        "peak": float(np.nanmax(after)),
        "settle_steps": settled[0] if settled else None,
    }
