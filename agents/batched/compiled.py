"""Training steps compiled by ``torch.compile``, with the eager step as the fallback.

A batched trainer's minibatch step is many small operations on a few thousand samples; compiled,
PyTorch's Inductor fuses the elementwise ones between the matmuls (what that saves is measured in
``docs/BENCHMARKS.md``). On the CPU the compiler needs a C++ compiler (``g++``: ``apt-get install
g++`` on Debian); where it cannot run, :class:`CompiledStep` says so once and runs the step
eagerly, so a run never fails for want of it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch


def _is_compiler_error(error: BaseException) -> bool:
    """An error raised by the compiler itself (``torch._dynamo``/``torch._inductor``), as
    opposed to one the step raises eagerly too."""
    return type(error).__module__.startswith(("torch._dynamo", "torch._inductor"))


class CompiledStep:
    """``fn`` compiled by ``torch.compile`` (``enabled``), or ``fn`` itself.

    The first calls compile (tens of seconds on a CPU: once for the first shapes and once more,
    with dynamic sizes, when a size such as a minibatch's number of distinct contexts changes).
    A compiler error falls back to ``fn`` for good, with a warning naming the cause and the
    setting that skips compiling (``compile: false``).

    :param fn: the step; its inputs are tensors, ints and tuples of them.
    :param enabled: compile (``True``) or run ``fn`` eagerly.
    """

    def __init__(self, fn: Callable[..., Any], enabled: bool) -> None:
        self.fn = fn
        self._compiled: Callable[..., Any] | None = torch.compile(fn) if enabled else None

    @property
    def compiled(self) -> bool:
        """Whether calls run the compiled step (false when disabled or after a fallback)."""
        return self._compiled is not None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._compiled is None:
            return self.fn(*args, **kwargs)
        try:
            return self._compiled(*args, **kwargs)
        except Exception as error:
            if not _is_compiler_error(error):
                raise
            cause = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
            warnings.warn(
                f"torch.compile could not compile the training step ({type(error).__name__}: "
                f"{cause}); it runs eagerly from now on (same update, slower). On the CPU the "
                "compiler needs g++ (apt-get install g++); set compile: false to skip it.",
                RuntimeWarning,
                stacklevel=2,
            )
            self._compiled = None
            return self.fn(*args, **kwargs)
