"""After the start-up warm-up no request compiles a kernel (the cold-start p99 was a batch compiling one, ~1 s).

numba compiles once per signature per process, so this runs in a fresh
process: in this one, earlier tests may have compiled every variant already.
"""

import subprocess
import sys

from tests.conftest import ARTIFACTS

SCRIPT = """
import itertools, random, sys
from pathlib import Path
from numba.core.registry import CPUDispatcher
import amortized.importance.kernels as kernels
from service.answers import PosteriorQuery, answer_batch
from service.main import warm_up
from service.registry import Registry

def signatures():
    return {name: len(f.signatures) for name, f in vars(kernels).items() if isinstance(f, CPUDispatcher)}

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
