"""After the start-up warm-up no request compiles a kernel (the cold-start p99 was a batch compiling one, ~1 s).

numba compiles once per signature per process, so this runs in a fresh
process: in this one, earlier tests may have compiled every variant already.
"""

import platform
import subprocess
import sys

import pytest
from pydantic import ValidationError

from service.main import keep_heap
from service.settings import Settings
from tests.conftest import ARTIFACTS

SCRIPT = """
import itertools, random, sys
from pathlib import Path
from numba.core.registry import CPUDispatcher
import amortized.diagnostics as diagnostics
import amortized.divergences as divergences
import amortized.importance.kernels as kernels
import amortized.importance.streams as streams
from service.answers import PosteriorQuery, answer_batch
from service.main import warm_up
from service.registry import Registry

def signatures():  # the compiled functions of the request path
    return {f"{module.__name__}.{name}": len(f.signatures) for module in (kernels, streams, diagnostics, divergences)
            for name, f in vars(module).items() if isinstance(f, CPUDispatcher)}

registry = Registry(Path(sys.argv[1]))
warm_up(registry)
after_warm_up, rng = signatures(), random.Random(0)
for served in registry.models.values():
    objectives = served.objectives + ["both"]
    for objective, cross_check, resample in itertools.product(objectives, (True, False), (True, False)):
        for queries, observations, samples in ((1, 1, 1000), (32, 1, 1000), (3, 3, 50), (2, 1, 1), (5, 2, 2)):
            answer_batch([PosteriorQuery(served, [rng.uniform(-30, 30) for _ in range(observations)], objective,
                                         samples, rng.randrange(2**32), resample, cross_check)
                          for _ in range(queries)])
new = {name: count - after_warm_up[name] for name, count in signatures().items() if count != after_warm_up[name]}
print(new)
"""


def test_nothing_compiles_after_the_warm_up():
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(ARTIFACTS)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    # kernels that compiled a new signature after warm-up
    assert out.stdout.strip().splitlines()[-1] == "{}", out.stdout


def test_a_worker_keeps_large_arrays_on_the_heap():
    """AMORTIZED_HEAP_BYTES: glibc's mallopt takes it (0: the defaults); the setting refuses what a C int cannot."""
    assert keep_heap(0) is False
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's: elsewhere the setting has no effect (logged at start)")
    try:
        assert keep_heap(64 * 2**20) is True
    finally:
        keep_heap(128 * 1024)  # glibc's default thresholds for the rest of this test process
    assert Settings(heap_bytes=0).heap_bytes == 0
    for bad in (-1, 2**31):
        with pytest.raises(ValidationError, match="heap_bytes"):
            Settings(heap_bytes=bad)
