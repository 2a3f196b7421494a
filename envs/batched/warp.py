"""MuJoCo Warp worlds whose state and per-world model fields are torch tensors, without copies.

:class:`WarpWorlds` holds ``nworld`` copies of one ``mujoco.MjModel`` on the Warp device that
matches a torch device (``"cpu"`` runs on Warp's CPU backend, ``"cuda:i"`` on GPU ``i``). It
exposes the live simulation state (``qpos``, ``qvel``, ``ctrl``...) and the model fields given a
leading world dimension as ``wp.to_torch`` views: writing into them writes the simulation. One
:meth:`WarpWorlds.step` advances every world by ``substeps`` MuJoCo steps; on CUDA those are
captured once in a CUDA graph and replayed.

Masses feed quantities that ``mj_setConst`` derives at ``qpos0`` and that MuJoCo Warp reads while
stepping: ``body_subtreemass`` (centre of mass, subtree velocities), ``dof_invweight0`` and
``body_invweight0`` (constraint impedance of joint limits and contacts), ``actuator_acc0``
(actuators with a damping ratio) and ``tendon_invweight0`` (tendon limits). With
``derived=True`` these are batched too and :meth:`WarpWorlds.update_derived` recomputes them per
world on the device with MuJoCo Warp's own ``set_const``, run on a scratch ``Data`` so the live
state is untouched. (MuJoCo's ``stat.meaninertia``, which ``mj_setConst`` also updates, is not
read by MuJoCo Warp.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import mujoco
import mujoco_warp as mjw
import numpy as np
import torch
import warp as wp

#: model fields ``mj_setConst`` derives from masses, inertias and gears that MuJoCo Warp reads
DERIVED_FIELDS = (
    "body_subtreemass",
    "dof_invweight0",
    "body_invweight0",
    "actuator_acc0",
    "tendon_invweight0",
)


class WarpWorlds:
    """``nworld`` MuJoCo Warp worlds of one model, shared with torch.

    :param mjm: the compiled model (host); its current values are every world's nominal ones.
    :param nworld: number of worlds.
    :param device: the torch device; Warp runs on the matching device.
    :param batched: model fields given a per-world leading dimension (e.g. ``"body_mass"``),
        reachable through :meth:`field`; ``"gravity"`` batches ``opt.gravity``.
    :param derived: also batch :data:`DERIVED_FIELDS` (for :meth:`update_derived`).
    :param substeps: MuJoCo steps per :meth:`step`.
    :param rne_postconstraint: compute ``cfrc_ext`` / ``cfrc_int`` every step.
    :param nconmax: contacts per world (MuJoCo Warp's heuristic when ``None``).
    :param njmax: constraint rows per world (MuJoCo Warp's heuristic when ``None``).
    """

    def __init__(
        self,
        mjm: mujoco.MjModel,
        nworld: int,
        device: torch.device,
        batched: Sequence[str] = (),
        derived: bool = False,
        substeps: int = 1,
        rne_postconstraint: bool = False,
        nconmax: int | None = None,
        njmax: int | None = None,
    ) -> None:
        self.device, self.nworld, self.substeps = torch.device(device), nworld, substeps
        if self.device.type == "cuda" and self.device.index is None:  # Warp needs the index
            self.device = torch.device("cuda", torch.cuda.current_device())
        wp.init()
        self.wp_device = wp.device_from_torch(self.device)
        fields = [f for f in batched if f != "gravity"]
        if derived:
            fields += [f for f in DERIVED_FIELDS if f != "tendon_invweight0" or mjm.ntendon]
        with wp.ScopedDevice(self.wp_device):
            self.model = mjw.put_model(mjm, batch_sizes=dict.fromkeys(fields, nworld))
            if "gravity" in batched:
                gravity = np.tile(mjm.opt.gravity, (nworld, 1))
                self.model.opt.gravity = wp.array(gravity, dtype=wp.vec3)
            self.model.opt.run_rne_postconstraint = rne_postconstraint
            kwargs = {"nworld": nworld, "nconmax": nconmax, "njmax": njmax}
            self.data = mjw.put_data(mjm, mujoco.MjData(mjm), **kwargs)
            # set_const overwrites the kinematics of the Data it is given: a scratch one
            self._scratch = (
                mjw.make_data(mjm, nworld=nworld, nconmax=1, njmax=1) if derived else None
            )
        self._fields = {name: wp.to_torch(getattr(self.model, name)) for name in fields}
        if "gravity" in batched:
            self._fields["gravity"] = wp.to_torch(self.model.opt.gravity)
        d = self.data
        self.qpos = wp.to_torch(d.qpos)  #: ``(nworld, nq)``
        self.qvel = wp.to_torch(d.qvel)  #: ``(nworld, nv)``
        self.ctrl = wp.to_torch(d.ctrl)  #: ``(nworld, nu)``
        self.qacc_warmstart = wp.to_torch(d.qacc_warmstart)  #: ``(nworld, nv)``
        self.time = wp.to_torch(d.time)  #: ``(nworld,)``
        self.xpos = wp.to_torch(d.xpos)  #: ``(nworld, nbody, 3)``
        self.cfrc_ext = wp.to_torch(d.cfrc_ext)  #: ``(nworld, nbody, 6)``
        self.xquat = wp.to_torch(d.xquat)  #: ``(nworld, nbody, 4)``
        self.site_xpos = wp.to_torch(d.site_xpos)  #: ``(nworld, nsite, 3)``
        self.site_xmat = wp.to_torch(d.site_xmat)  #: ``(nworld, nsite, 3, 3)``
        self.cvel = wp.to_torch(d.cvel)  #: ``(nworld, nbody, 6)`` rotation, then translation
        self.subtree_com = wp.to_torch(d.subtree_com)  #: ``(nworld, nbody, 3)``
        self.mocap_pos = wp.to_torch(d.mocap_pos)  #: ``(nworld, nmocap, 3)``
        self.mocap_quat = wp.to_torch(d.mocap_quat)  #: ``(nworld, nmocap, 4)``
        self._graph, self._streams = None, {}
        if self.device.type == "cuda":
            with wp.ScopedDevice(self.wp_device):
                self._substeps()  # loads every kernel module: none may compile during capture
                with wp.ScopedCapture(device=self.wp_device) as capture:
                    self._substeps()
            self._graph = capture.graph

    def field(self, name: str) -> torch.Tensor:
        """The live ``(nworld, ...)`` view of a batched model field (``"gravity"``: ``(nworld,
        3)``; vector-valued fields gain a trailing dimension, e.g. ``body_inertia`` ``(nworld,
        nbody, 3)``)."""
        return self._fields[name]

    @contextlib.contextmanager
    def _scope(self) -> Iterator[None]:
        """Warp work on the device; on CUDA on torch's current stream, so it is ordered with the
        torch operations that read and write the shared tensors."""
        if self.device.type == "cuda":
            handle = torch.cuda.current_stream(self.device).cuda_stream
            if handle not in self._streams:
                self._streams[handle] = wp.stream_from_torch(self.device)
            with wp.ScopedStream(self._streams[handle]):
                yield
        else:
            with wp.ScopedDevice(self.wp_device):
                yield

    def _substeps(self) -> None:
        for _ in range(self.substeps):
            mjw.step(self.model, self.data)

    def step(self) -> None:
        """Advance every world by ``substeps`` MuJoCo steps with the current ``ctrl``."""
        with self._scope():
            if self._graph is not None:
                wp.capture_launch(self._graph)
            else:
                self._substeps()

    def update_derived(self) -> None:
        """Recompute :data:`DERIVED_FIELDS` of every world from its current masses, inertias and
        gears, as ``mj_setConst`` does (needs ``derived=True``)."""
        if self._scratch is None:
            raise RuntimeError("update_derived needs WarpWorlds(..., derived=True)")
        groups = mjw.SetConstGroup.FIXED | mjw.SetConstGroup.INERT0
        with self._scope():
            mjw.set_const(self.model, self._scratch, groups=groups, restore=False)

    def kinematics(self) -> None:
        """Recompute positions and orientations (``xpos``...) of every world from ``qpos``."""
        with self._scope():
            mjw.kinematics(self.model, self.data)

    def forward(self) -> None:
        """Full forward dynamics of every world at its current state (``mj_forward``)."""
        with self._scope():
            mjw.forward(self.model, self.data)
