"""Loading a run's ``vecnormalize.pkl`` without running code from it.

SB3 saves ``VecNormalize`` with ``pickle``, and unpickling a crafted file can call any function.
:func:`load_vecnormalize` unpickles with only the classes such a file holds (the normaliser, its
running statistics, gymnasium spaces and numpy arrays); anything else is refused with a clear
error, so ``evaluate.py`` and ``--resume`` never run code from a run folder's statistics file.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

#: what the command-line tools that read run folders say in ``--help``
TRUST_NOTE = (
    "Only load run folders you trust: model.zip and replay_buffer.pkl are Python pickles, and "
    "loading one made by someone else can run their code (as with any SB3 model); "
    "vecnormalize.pkl and trainer_state.pt are read without running code from them."
)

#: (module, name) pairs a VecNormalize pickle may name (numpy's modules as of 1.x and 2.x)
ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {
        ("stable_baselines3.common.vec_env.vec_normalize", "VecNormalize"),
        ("stable_baselines3.common.running_mean_std", "RunningMeanStd"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("collections", "OrderedDict"),
        # the random generators of gymnasium spaces (constructors of numpy's own bit generators)
        ("numpy.random._pickle", "__generator_ctor"),
        ("numpy.random._pickle", "__bit_generator_ctor"),
        ("numpy.random.bit_generator", "SeedSequence"),
        ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"),
        ("numpy.random._pcg64", "PCG64"),
        ("numpy.random._pcg64", "PCG64DXSM"),
        ("numpy.random._mt19937", "MT19937"),
        ("numpy.random._philox", "Philox"),
        ("numpy.random._sfc64", "SFC64"),
    }
    | {
        (f"gymnasium.spaces.{module}", name)
        for module, name in [
            ("box", "Box"),
            ("dict", "Dict"),
            ("discrete", "Discrete"),
            ("multi_discrete", "MultiDiscrete"),
            ("multi_binary", "MultiBinary"),
            ("tuple", "Tuple"),
        ]
    }
)


class _Restricted(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a statistics file")
        return super().find_class(module, name)


def load_vecnormalize(path: str | Path) -> Any:
    """The ``VecNormalize`` saved in ``path`` (not attached to an env: ``set_venv`` it to train).

    :raises ValueError: for a file that is not one (truncated, foreign, or naming anything but
        the classes in :data:`ALLOWED`), naming the file and what to do.
    """
    from stable_baselines3.common.vec_env import VecNormalize

    try:
        with open(path, "rb") as f:
            vec = _Restricted(f).load()
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, TypeError) as err:
        raise ValueError(
            f"{path} is not a usable normalisation file ({type(err).__name__}: {err}); it is "
            "loaded without running code, so a crafted or foreign file is refused. Delete it to "
            "use the model without normalisation (wrong if it trained with it), or retrain"
        ) from None
    if not isinstance(vec, VecNormalize):
        raise ValueError(f"{path} holds a {type(vec).__name__}, not SB3's VecNormalize")
    return vec
