"""Fill the numba cache ahead of serving: ``python -m service.warm_cache ARTIFACTS_DIR``.

Answers the service's warm-up queries (:func:`service.main.warm_up`) for every
variant compiled in ``ARTIFACTS_DIR``, so that numba writes the request path's
machine code into ``NUMBA_CACHE_DIR`` (:mod:`amortized.compiled`). The container
image runs it at build time on the committed artifacts: a replica then loads
the kernels instead of compiling them (about 5 s of CPU at each start). numba
keys its cache by the CPU as well, so on a host with another CPU the kernels
compile once more, as without the cache.

Exits 2 with a message when ``NUMBA_CACHE_DIR`` is unset or unusable (there
would be nothing to fill) or when the folder holds no servable artifact.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.warm_cache", description=__doc__.split("\n\n")[0])
    parser.add_argument("artifacts", type=Path, help="a folder of compiled artifacts (as AMORTIZED_ARTIFACTS_DIR)")
    args = parser.parse_args(argv)
    from amortized.compiled import CACHE_FOLDER  # after the arguments: --help needs no numba

    if CACHE_FOLDER is None:
        print("NUMBA_CACHE_DIR is unset or cannot be written: there is no cache to fill", file=sys.stderr)
        return 2
    from service.main import warm_up
    from service.registry import Registry

    registry = Registry(args.artifacts)
    if not registry.models:
        print(f"no servable artifact in {args.artifacts}: nothing to warm up", file=sys.stderr)
        return 2
    started = time.perf_counter()
    warm_up(registry)
    print(
        f"compiled the request path for {', '.join(sorted(registry.models))} into {CACHE_FOLDER} "
        f"in {time.perf_counter() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
