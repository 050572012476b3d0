"""Triton kernels and their launchers (``triton_logprobs``).

Importing this package does not import Triton; import ``sdar_kernels.ops.triton_logprobs`` where the
kernels are needed (it requires ``triton``, and CUDA tensors or ``TRITON_INTERPRET=1`` set before Triton
is imported).
"""

from __future__ import annotations

import importlib.util

__all__ = ["triton_available"]


def triton_available() -> bool:
    """True when the ``triton`` package can be imported (the kernels still need CUDA or the interpreter)."""
    return importlib.util.find_spec("triton") is not None
