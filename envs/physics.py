"""Physics contexts as model edits: one table per env family says which MuJoCo model fields each
physics feature scales (which column, which rows), and :class:`PhysicsTable` applies it alike to a
host ``MjModel`` (the gymnasium envs, and the batched CPU backend's per-world models) and to
per-world field tensors (MuJoCo Warp).

A feature scales the *nominal* field values (kept when the env is built) by ``value / nominal``,
so a context is never applied on top of another and the nominal context restores the model
exactly. What ``mj_setConst`` derives (subtree masses, inverse weights...) is the caller's to
recompute next.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import mujoco
import numpy as np
import torch

from envs.context import ContextFeature


@dataclass(frozen=True)
class Scaled:
    """One model field a physics feature multiplies.

    :param field: an ``MjModel`` array (``"gravity"``: ``opt.gravity``).
    :param column: the column scaled (e.g. 0: sliding friction of ``geom_friction``); ``None``:
        every column.
    :param rows: the name of a row set given to :class:`PhysicsTable` (e.g. the object's
        geoms); ``None``: every row.
    """

    field: str
    column: int | None = None
    rows: str | None = None


#: the locomotion envs' physics features (:data:`envs.locomotion.PHYSICS_FEATURES`): every row
LOCOMOTION_FIELDS: dict[str, tuple[Scaled, ...]] = {
    "gravity": (Scaled("gravity"),),
    "mass_scale": (Scaled("body_mass"), Scaled("body_inertia")),
    "friction_scale": (Scaled("geom_friction", column=0),),
    "damping_scale": (Scaled("dof_damping"),),
    "actuator_scale": (Scaled("actuator_gear", column=0),),
}

#: a Fetch object task's (:data:`envs.manipulation.FETCH_FEATURES`): the object body, its geoms
#: and the table's geoms (row sets ``"object"``, ``"object_geoms"``, ``"table_geoms"``)
FETCH_FIELDS: dict[str, tuple[Scaled, ...]] = {
    "object_mass_scale": (
        Scaled("body_mass", rows="object"),
        Scaled("body_inertia", rows="object"),
    ),
    "object_friction_scale": (Scaled("geom_friction", column=0, rows="object_geoms"),),
    "table_friction_scale": (Scaled("geom_friction", column=0, rows="table_geoms"),),
}


def model_field(model: mujoco.MjModel, name: str) -> np.ndarray:
    """The live array of a model field (``"gravity"``: ``opt.gravity``)."""
    return model.opt.gravity if name == "gravity" else getattr(model, name)


class PhysicsTable:
    """Applies the physics features of contexts to MuJoCo models.

    :param model: the model as compiled; its fields' nominal values are copied here.
    :param table: feature -> the fields it scales.
    :param features: the features' definitions (their nominal values).
    :param rows: the row sets the table names, as index arrays ``(k,)`` (e.g. a body's id).
    """

    def __init__(
        self,
        model: mujoco.MjModel,
        table: Mapping[str, tuple[Scaled, ...]],
        features: Mapping[str, ContextFeature],
        rows: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        self.table, self.features = dict(table), dict(features)
        self.rows = {k: np.atleast_1d(np.asarray(v)) for k, v in (rows or {}).items()}
        missing = {s.rows for ss in table.values() for s in ss if s.rows} - set(self.rows)
        if missing:
            raise ValueError(f"the table names row sets {sorted(missing)} that were not given")
        #: field -> its values as compiled
        self.nominal: dict[str, np.ndarray] = {
            s.field: model_field(model, s.field).copy() for ss in table.values() for s in ss
        }

    def fields(self, features: list[str] | tuple[str, ...] | None = None) -> list[str]:
        """The fields that ``features`` (all of the table's when ``None``) scale, in table
        order, each once."""
        chosen = self.table if features is None else [f for f in self.table if f in features]
        return list(dict.fromkeys(s.field for f in chosen for s in self.table[f]))

    def _index(self, scaled: Scaled, rows: Mapping[str, object]) -> tuple:
        row = slice(None) if scaled.rows is None else rows[scaled.rows]
        return (row,) if scaled.column is None else (row, scaled.column)

    def apply(self, model: mujoco.MjModel, context: Mapping[str, float]) -> None:
        """Write the nominal fields scaled by ``context`` into ``model``; a feature missing from
        ``context`` takes its nominal value."""
        for name, value in self.nominal.items():
            model_field(model, name)[:] = value
        for feature, targets in self.table.items():
            spec = self.features[feature]
            factor = context.get(feature, spec.nominal) / spec.nominal
            for scaled in targets:
                model_field(model, scaled.field)[self._index(scaled, self.rows)] *= factor

    def batched(
        self, nominal: Mapping[str, torch.Tensor], values: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Per-world fields for the features in ``values``.

        :param nominal: field -> its nominal values as a tensor (on the worlds' device, in their
            dtype), as :attr:`nominal`.
        :param values: feature -> ``(n,)`` its value in each of ``n`` worlds.
        :returns: field -> ``(n, *field shape)`` the scaled values, for every field that the
            features in ``values`` scale (the others stay nominal).
        """
        n = len(next(iter(values.values()))) if values else 0
        fields = self.fields(tuple(values))
        out = {f: nominal[f].expand(n, *nominal[f].shape).clone() for f in fields}
        device = next(iter(nominal.values())).device if nominal else None
        rows = {k: torch.as_tensor(v, device=device) for k, v in self.rows.items()}
        for feature in (f for f in self.table if f in values):
            factor = values[feature].to(torch.float64) / self.features[feature].nominal
            for scaled in self.table[feature]:
                index = (slice(None), *self._index(scaled, rows))
                field = out[scaled.field]
                part = field[index]
                shape = (-1, *[1] * (part.dim() - 1))
                field[index] = (part.double() * factor.view(shape)).to(field.dtype)
        return out
