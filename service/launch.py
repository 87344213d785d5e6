"""Start the server: ``python -m service.launch [uvicorn options]`` (what ``make serve``, the image and compose run).

It is ``uvicorn service.main:app`` with two additions:

- workers: uvicorn's ``--workers``, which defaults to ``$WEB_CONCURRENCY``
  (1 when unset); uvicorn restarts a worker that dies;
- metrics: a fresh Prometheus multiprocess folder for this start
  (``PROMETHEUS_MULTIPROC_DIR``), so that ``/metrics`` sums the counters and
  histograms of every worker, whichever worker answers the scrape. When the
  variable is already set (a mounted volume), the folder's metric files are
  removed first; otherwise a temporary folder is made and removed at exit.

``start_server`` runs it in a subprocess on a free 127.0.0.1 port (live tests,
benchmarks). Only the standard library and uvicorn: the image installs the
service without the client's httpx.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP = "service.main:app"


def fresh_metrics_folder() -> tuple[str, bool]:
    """The multiprocess folder for this start, emptied; and whether it is ours to remove at exit."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        for stale in Path(folder).glob("*.db"):  # values of an earlier start would be summed with this one's
            stale.unlink()
        return folder, False
    return tempfile.mkdtemp(prefix="amortized-metrics-"), True


def main(argv: list[str] | None = None) -> int:
    import uvicorn  # only here: start_server below needs nothing but the standard library

    folder, ours = fresh_metrics_folder()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder  # before any worker imports prometheus_client
    try:
        uvicorn.main.main(args=[APP, *(sys.argv[1:] if argv is None else argv)], standalone_mode=False)
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 1
    finally:
        if ours:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen | None = None, timeout: float = 30.0) -> None:
    """Until ``url``/health/ready answers 200; raises if ``process`` exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode} (its output is above)")
        try:
            with urllib.request.urlopen(f"{url}/health/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):  # not listening yet, or 503 while loading
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} was not ready after {timeout:.0f} s")


def start_server(
    env: dict[str, str], *uvicorn_options: str, timeout: float = 30.0, port: int | None = None, **popen
) -> tuple[subprocess.Popen, str]:
    """``python -m service.launch`` with ``env`` added; returns (process, base URL) once /health/ready says 200.

    Workers: ``WEB_CONCURRENCY`` in ``env``, or ``--workers`` among the options.
    """
    port = port or free_port()
    command = [sys.executable, "-m", "service.launch", "--host", "127.0.0.1", "--port", str(port), *uvicorn_options]
    process = subprocess.Popen(command, env={**os.environ, **env}, cwd=ROOT, **popen)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, timeout)
    except RuntimeError:
        stop_server(process)
        raise
    return process, url


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


if __name__ == "__main__":
    sys.exit(main())
