"""Start and stop the server for live tests and benchmarks: ``python -m service`` on a free 127.0.0.1 port.

Only the standard library. Not part of the service package: nothing here is
needed to serve.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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
    """``python -m service`` (the server's entry point) with ``env`` added.

    Returns (process, base URL) once /health/ready says 200.

    Workers: ``WEB_CONCURRENCY`` in ``env``, or ``--workers`` among the options.
    """
    port = port or free_port()
    command = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port), *uvicorn_options]
    popen.setdefault("cwd", ROOT)  # a benchmark may run another checkout's code (bench/serve_benchmark.py --baseline)
    process = subprocess.Popen(command, env={**os.environ, **env}, **popen)
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
