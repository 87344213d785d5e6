"""The few array operations whose spelling differs between torch and NumPy.

The science is written once and runs on either library: torch where
gradients are needed (training), NumPy on the request path, where torch's
fixed cost per call (1-2 us, and a query makes a few hundred calls) would be
most of the time an answer takes. Everything else the science uses
(arithmetic, ``exp``, ``log``, ``sqrt``, ``where``, ``clip``...) is spelled the
same in both, through the module :func:`lib` returns.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, TypeAlias

import numpy as np
import torch

# A torch tensor or a NumPy array. The science calls methods both share (``.exp()`` on one, ``np.exp`` through
# :func:`lib` on the other), which a type checker cannot follow through a union: to it an Array is Any.
Array: TypeAlias = Any


def lib(array: Array) -> ModuleType:
    """``torch`` or ``numpy``: the library of ``array``."""
    return torch if isinstance(array, torch.Tensor) else np


def like(values: Array, reference: Array) -> Array:
    """``values`` in the library and dtype of ``reference`` (constants of a model meet a request's arrays)."""
    if isinstance(reference, torch.Tensor):
        return torch.as_tensor(values, dtype=reference.dtype)
    return np.asarray(values, dtype=reference.dtype)


def finite_or_zero(shift: Array) -> Array:
    """A shift for exp(values - shift): the largest value, or 0 where that is not finite (nothing to keep there)."""
    xp = lib(shift)
    return xp.where(xp.isfinite(shift), shift, 0.0)


def logsumexp(array: Array, axis: int = -1, scratch: bool = False) -> Array:
    """log(sum(exp(array))) along ``axis``, stable, -inf where every term is -inf.

    ``scratch``: a NumPy ``array`` may be overwritten (no temporary copy on the request path).
    """
    if isinstance(array, torch.Tensor):
        return torch.logsumexp(array, axis)
    top = finite_or_zero(array.max(axis, keepdims=True))  # rows of -inf (or inf/nan) are shifted by 0
    shifted = np.subtract(array, top, out=array if scratch else None)
    total = np.exp(shifted, out=shifted).sum(axis)
    with np.errstate(divide="ignore"):
        return np.log(total, out=total) + top.squeeze(axis)


def gather(array: Array, index: Array) -> Array:
    """``array`` at ``index`` along the last axis, for 2-D arrays (torch.gather; NumPy by flat index)."""
    if isinstance(array, torch.Tensor):
        return torch.gather(array, -1, index)
    return array.reshape(-1)[flat_index(index, array.shape[-1])]


def flat_index(index: np.ndarray, width: int) -> np.ndarray:
    """Row-major positions of ``index`` (rows, n) into a (rows, width) array: one ``take`` then does a gather."""
    return index + np.arange(0, len(index) * width, width)[:, None]


def to_numpy(array: Array) -> np.ndarray:
    """A float64 NumPy array (detached, on CPU) of a tensor or array."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    return np.asarray(array, dtype=np.float64)
