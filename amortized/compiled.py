"""One home for compiling the science's per-draw loops with numba: the options they share, and the disk cache.

Every kernel is compiled with ``error_model="numpy"`` (a float division by
zero gives inf or NaN, as in NumPy, instead of raising) and ``nogil=True``
(a batch's blocks run on threads), without fastmath: infinities and NaN
propagate as in NumPy, and sums run in the order the code states (the
compiler may not reorder them).

Compiling every kernel costs a process several seconds of CPU at start (the
service warms them up before it answers). numba can keep the machine code on
disk (``cache=True``; numba's documentation, "Caching"), which this module
enables only where the environment names a writable ``NUMBA_CACHE_DIR``
(numba's own setting): ``make serve`` and ``make test`` do, in the virtual
environment. The cache holds code compiled from this package by this
package's processes, like Python's own ``.pyc`` files, and is loaded as
such (numba's index is pickled); compiled artifacts never go near it and stay
data only. Unset, nothing is written or read, as before. The container image
fills it at build time (``python -m service.warm_cache``, the Dockerfile), so
that a replica starts without compiling.

numba invalidates a function's cache when its own source file changes, but
not when a kernel it calls changes in another file, so the cache lives in a
subfolder named by a hash of every source file of the package (and numba's
and Python's versions): an edit anywhere starts a fresh folder.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
from numba import njit
from numba.core import config

logger = logging.getLogger(__name__)
OPTIONS: dict[str, Any] = {"error_model": "numpy", "nogil": True}
PACKAGE = Path(__file__).resolve().parent


def sources_fingerprint() -> str:
    """16 hex digits of sha256 over the package's sources (paths and bytes), numba's and Python's versions."""
    digest = hashlib.sha256(f"{numba.__version__} {sys.version}".encode())
    for path in sorted(PACKAGE.rglob("*.py")):
        digest.update(str(path.relative_to(PACKAGE)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def cache_folder() -> str | None:
    """Where the kernels' machine code is kept: ``$NUMBA_CACHE_DIR/amortized-<fingerprint>``, or None (no cache).

    None when ``NUMBA_CACHE_DIR`` is unset or empty, or when the folder cannot be created and written (logged as
    a warning: the kernels then compile in memory, as without the setting). A relative path is resolved against
    the working directory at import. A folder that exists but cannot be written (a cache built into a container
    image whose root file system is mounted read-only) is copied to a fresh temporary folder, used from there
    and removed at exit: numba writes beside what it loads (:func:`writable_copy`).
    """
    base = os.environ.get("NUMBA_CACHE_DIR")
    if not base:
        return None
    folder = os.path.abspath(os.path.join(base, f"amortized-{sources_fingerprint()}"))
    if os.path.isdir(folder) and not os.access(folder, os.W_OK):
        return writable_copy(folder, base)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        logger.warning(
            "NUMBA_CACHE_DIR=%r cannot hold the compiled kernels (%s): compiling them in memory", base, error
        )
        return None
    if not os.access(folder, os.W_OK):
        logger.warning("NUMBA_CACHE_DIR=%r is not writable: compiling the kernels in memory", base)
        return None
    return folder


COPY_PREFIX = "amortized-numba-"  # + the process id + "-": a copy of a read-only cache (writable_copy)


def remove_dead_copies() -> None:
    """Remove the copies that processes no longer running left in the temporary folder (killed before their exit).

    A process id still running is left alone unless it is this process's own (a copy of an earlier process that had
    the same id: this one has made none yet), as a restarted container's processes reuse low ids.
    """
    for stale in Path(tempfile.gettempdir()).glob(f"{COPY_PREFIX}*-*"):
        try:
            pid = int(stale.name[len(COPY_PREFIX) :].split("-")[0])
            if pid != os.getpid():
                os.kill(pid, 0)
                continue
        except ProcessLookupError:
            pass
        except (ValueError, PermissionError):  # not one of ours, or another user's live process
            continue
        shutil.rmtree(stale, ignore_errors=True)


def writable_copy(folder: str, base: str) -> str | None:
    """A copy of a read-only cache ``folder`` in a fresh temporary folder (removed at exit); None if it cannot be.

    Copies that killed processes left behind (no exit handler ran) are removed first (:func:`remove_dead_copies`).
    """
    try:
        remove_dead_copies()
        copy = tempfile.mkdtemp(prefix=f"{COPY_PREFIX}{os.getpid()}-")
        atexit.register(shutil.rmtree, copy, ignore_errors=True)
        shutil.copytree(folder, copy, dirs_exist_ok=True)
    except OSError as error:
        logger.warning(
            "NUMBA_CACHE_DIR=%r is read-only and cannot be copied (%s): compiling the kernels in memory", base, error
        )
        return None
    return copy


CACHE_FOLDER = cache_folder()


def compiled(function: Callable) -> Any:
    """``numba.njit`` with :data:`OPTIONS`, its machine code kept in :data:`CACHE_FOLDER` when there is one.

    numba places a function's cache when it is decorated, from its global
    ``config.CACHE_DIR``: that is set to the folder for the decoration only,
    so nothing else in the process is affected.
    """
    if CACHE_FOLDER is None:
        return njit(**OPTIONS)(function)
    saved = config.CACHE_DIR
    config.CACHE_DIR = CACHE_FOLDER
    try:
        return njit(cache=True, **OPTIONS)(function)
    finally:
        config.CACHE_DIR = saved


# Scalar helpers that compiled kernels share (kernels inline them)


@compiled
def nan_max(value: float, current: float) -> float:
    """The larger of two floats, NaN if either is NaN (NumPy's ``max`` and ``maximum``)."""
    return value if value > current or math.isnan(value) else current


@compiled
def finite_or_zero(value: float) -> float:
    """``value``, or 0 where it is not finite: a shift for exp (as :func:`amortized.arrays.finite_or_zero`)."""
    return value if math.isfinite(value) else 0.0
