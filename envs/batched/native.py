"""Batched MuJoCo on CPU threads: ``mujoco.rollout`` with one ``MjModel`` per world.

:class:`NativeWorlds` holds ``nworld`` copies of one compiled model (so every world can carry its
own context), their states as rows of one float64 array, and a ``mujoco.rollout.Rollout`` whose
thread pool stays open across steps. One :meth:`NativeWorlds.step` advances every world by
``substeps`` MuJoCo steps under a constant control; MuJoCo's C++ threads run it with the GIL
released. The state arrays are shared with torch (``torch.from_numpy``), so reading ``qpos`` or
``qvel`` of every world costs no copy and no Python loop.

Each step's inputs are one row per world of the components of ``control_spec`` (actuator
controls by default; the Fetch robot's mocap target too), held for its ``substeps``.

What ``mj_step`` computes besides the state (``cfrc_ext``, ``cinert``, ``cvel``,
``qfrc_actuator``, ``xipos``) is not part of the rollout's output. Envs that observe it ask for
it as ``extras``: :meth:`NativeWorlds.forward` recomputes it per world from a state of the last
step (``mj_forward`` and ``mj_rnePostConstraint``), on the same number of threads (MuJoCo
releases the GIL in both calls).

The rollout does not return the constraint solver's warm start (``qacc_warmstart``). Passing
none would leave each thread's last world's in place, so results would depend on the thread
count: every step passes one per world instead, the last substep's acceleration estimated from
its velocities (``(qvel_K - qvel_{K-1}) / timestep``). MuJoCo keeps whichever of that and the
unconstrained acceleration is better as its starting point and solves to its tolerance either
way; results do not depend on the thread count.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import mujoco
import numpy as np
import torch
from mujoco import rollout

FULLPHYSICS = int(mujoco.mjtState.mjSTATE_FULLPHYSICS)
CTRL = int(mujoco.mjtState.mjSTATE_CTRL)


def default_threads() -> int:
    """Threads for this process: the cores it may run on, shared among the ranks of a
    ``torchrun`` job on this machine (``LOCAL_WORLD_SIZE``), and no more than torch's thread
    budget (so a process held to ``torch.set_num_threads(1)``, a benchmark worker, steps on one)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min((cores or 1) // max(1, ranks), torch.get_num_threads()))


def state_offset(model: mujoco.MjModel, component: mujoco.mjtState, spec: int = FULLPHYSICS) -> int:
    """Where ``component`` starts in a state vector of ``spec`` (``mjSTATE_FULLPHYSICS`` by
    default; components are laid out in the order of their bits)."""
    bit = int(component)
    below = sum(1 << k for k in range(bit.bit_length() - 1)) & spec
    return mujoco.mj_stateSize(model, below)


class NativeWorlds:
    """``nworld`` MuJoCo worlds of one model stepped by ``mujoco.rollout`` on CPU threads.

    :param mjm: the compiled model; every world starts as a copy of it.
    :param nworld: number of worlds.
    :param substeps: MuJoCo steps per :meth:`step`.
    :param nthread: threads of the rollout pool (:func:`default_threads` when ``None``); ``1``
        steps on the calling thread.
    :param extras: ``MjData`` fields :meth:`forward` computes per world (``"cfrc_ext"``,
        ``"cinert"``...), each then an ``(nworld, *shape)`` float64 tensor in :attr:`extra`.
    :param control_spec: the ``mjtState`` components a step's input holds (``mjSTATE_CTRL``;
        add ``mjSTATE_MOCAP_POS | mjSTATE_MOCAP_QUAT`` to move mocap bodies), laid out as
        ``mj_getState`` lays them out.
    """

    def __init__(
        self,
        mjm: mujoco.MjModel,
        nworld: int,
        substeps: int = 1,
        nthread: int | None = None,
        extras: Sequence[str] = (),
        control_spec: int = CTRL,
    ) -> None:
        if nthread is None:
            nthread = default_threads()
        if nthread < 1:
            raise ValueError(f"nthread must be >= 1, got {nthread}")
        self.nworld, self.substeps = nworld, substeps
        self.nthread = min(nthread, nworld)
        self.models = [copy.copy(mjm) for _ in range(nworld)]  #: one per world: its context
        self._datas = [mujoco.MjData(mjm) for _ in range(self.nthread)]
        self._pool = rollout.Rollout(nthread=self.nthread if self.nthread > 1 else 0)
        self._threads = ThreadPoolExecutor(self.nthread) if self.nthread > 1 else None
        nstate = mujoco.mj_stateSize(mjm, FULLPHYSICS)
        data = mujoco.MjData(mjm)
        self._initial = np.empty(nstate)
        mujoco.mj_getState(mjm, data, self._initial, FULLPHYSICS)
        self.state = np.tile(self._initial, (nworld, 1))  #: ``(nworld, nstate)``, every world's
        #: ``(nworld, substeps, nstate)``: the state after each substep of the last step
        self.trajectory = np.repeat(self.state[:, None], substeps, axis=1)
        self._previous = self.state.copy()  # the state a step started from (for substeps == 1)
        self.control_spec = int(control_spec)
        #: ``(nworld, substeps, ncontrol)``: every world's inputs of the last step
        self.control = np.zeros((nworld, substeps, mujoco.mj_stateSize(mjm, self.control_spec)))
        self.warmstart = np.zeros((nworld, mjm.nv))
        self._sensordata = np.empty((nworld, substeps, mjm.nsensordata))
        self._timestep = float(mjm.opt.timestep)
        self._rk4 = mjm.opt.integrator == mujoco.mjtIntegrator.mjINT_RK4
        qpos = state_offset(mjm, mujoco.mjtState.mjSTATE_QPOS)
        qvel = state_offset(mjm, mujoco.mjtState.mjSTATE_QVEL)
        self._qpos = slice(qpos, qpos + mjm.nq)
        self._qvel = slice(qvel, qvel + mjm.nv)
        self.qpos = torch.from_numpy(self.state[:, self._qpos])  #: ``(nworld, nq)`` live view
        self.qvel = torch.from_numpy(self.state[:, self._qvel])  #: ``(nworld, nv)`` live view
        self.extra: dict[str, torch.Tensor] = {
            name: torch.zeros(nworld, *getattr(data, name).shape, dtype=torch.float64)
            for name in extras
        }

    def close(self) -> None:
        """Stop the thread pools (also done when the object is collected)."""
        self._pool.close()
        if self._threads is not None:
            self._threads.shutdown()

    def set_state(self, worlds: np.ndarray, qpos: np.ndarray, qvel: np.ndarray) -> None:
        """Put the worlds of index array ``worlds`` ``(n,)`` in the state of a fresh ``MjData``
        (``mj_resetData``) with ``qpos`` ``(n, nq)`` and ``qvel`` ``(n, nv)``, and clear their
        warm starts and controls."""
        self.state[worlds] = self._initial
        self.state[worlds, self._qpos] = qpos
        self.state[worlds, self._qvel] = qvel
        self.warmstart[worlds] = 0.0
        self.control[worlds] = 0.0

    def step(self, ctrl: np.ndarray) -> None:
        """Advance every world by ``substeps`` MuJoCo steps under ``ctrl`` ``(nworld,
        ncontrol)``, one row of ``control_spec`` components per world."""
        self.control[:] = ctrl[:, None, :]
        if self.substeps == 1:
            self._previous[:] = self.state
        self._pool.rollout(
            self.models,
            self._datas,
            self.state,
            self.control,
            control_spec=self.control_spec,
            skip_checks=True,
            nstep=self.substeps,
            initial_warmstart=self.warmstart,
            state=self.trajectory,
            sensordata=self._sensordata,
        )
        before, last = self.before_last_substep(), self.trajectory[:, -1]
        np.subtract(last[:, self._qvel], before[:, self._qvel], out=self.warmstart)
        self.warmstart /= self._timestep
        self.state[:] = last

    def before_last_substep(self) -> np.ndarray:
        """``(nworld, nstate)``: every world's state before the last substep of the last step."""
        return self.trajectory[:, -2] if self.substeps > 1 else self._previous

    def forward(
        self,
        states: np.ndarray,
        worlds: np.ndarray | None = None,
        post_constraint: bool = True,
        velocities: np.ndarray | None = None,
    ) -> None:
        """Fill :attr:`extra` for the worlds of index array ``worlds`` (all when ``None``) under
        the last control.

        With ``post_constraint``, ``states`` ``(nworld, nstate)`` are the states a last substep
        started from (:meth:`before_last_substep`) and :attr:`extra` gets what ``mj_step`` and
        ``mj_rnePostConstraint`` leave in ``MjData`` after that substep: the forward pass at
        that state (Euler), or at the last Runge-Kutta stage (RK4: ``mj_RungeKutta`` evaluates
        three more stages and leaves the last in place). Without, the forward pass at
        ``states`` and ``cfrc_ext`` zero, as ``mj_resetData`` and ``mj_forward`` leave them."""
        if not self.extra:
            return
        worlds = np.arange(self.nworld) if worlds is None else np.asarray(worlds)
        out = {name: t.numpy() for name, t in self.extra.items()}
        inputs = self.control[:, 0]

        def run(chunk: np.ndarray, data: mujoco.MjData) -> None:
            for i in chunk:
                model = self.models[i]
                mujoco.mj_setState(model, data, states[i], FULLPHYSICS)
                mujoco.mj_setState(model, data, inputs[i], self.control_spec)
                data.qacc_warmstart[:] = self.warmstart[i]
                mujoco.mj_forward(model, data)
                if post_constraint:
                    if self._rk4:
                        _last_rk4_stage(model, data)
                    mujoco.mj_rnePostConstraint(model, data)
                else:
                    data.cfrc_ext[:] = 0.0
                if velocities is not None:
                    data.qvel[:] = velocities[i, self._qvel]
                    mujoco.mj_comVel(model, data)
                for name, array in out.items():
                    array[i] = getattr(data, name)

        if self._threads is None or len(worlds) < 2 * self.nthread:
            run(worlds, self._datas[0])
            return
        chunks = np.array_split(worlds, self.nthread)
        jobs = [self._threads.submit(run, c, d) for c, d in zip(chunks, self._datas, strict=True)]
        for job in jobs:
            job.result()

    def set_const(self, world: int) -> None:
        """Recompute what ``mj_setConst`` derives (subtree masses, inverse weights...) from the
        current masses, inertias and gears of world ``world``'s model."""
        mujoco.mj_setConst(self.models[world], self._datas[0])


#: classic Runge-Kutta: stage i's state is X0 + h * _RK4_STEP[i] * F(stage i - 1)
_RK4_STEP = (0.5, 0.5, 1.0)


def _last_rk4_stage(model: mujoco.MjModel, data: mujoco.MjData) -> None:
    """From ``data`` after ``mj_forward`` at a substep's start ``X0``, run the forward passes at
    the three further stages of MuJoCo's RK4 (``mj_RungeKutta``), leaving the last in ``data``.
    Assumes no actuator activations (``na == 0``), as in the gymnasium locomotion models."""
    h, t0 = model.opt.timestep, data.time
    qpos0, qvel0 = data.qpos.copy(), data.qvel.copy()
    for c in _RK4_STEP:
        velocity, acceleration = data.qvel.copy(), data.qacc.copy()
        data.qpos[:] = qpos0
        mujoco.mj_integratePos(model, data.qpos, velocity, c * h)
        data.qvel[:] = qvel0 + c * h * acceleration
        data.time = t0 + c * h
        mujoco.mj_forward(model, data)
