"""Start the app as ``make serve`` does, in a subprocess on a free 127.0.0.1 port (live tests, benchmark).

Only the standard library: the image installs the service without the client's httpx.
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


def start_server(env: dict[str, str], *uvicorn_options: str, timeout: float = 30.0) -> tuple[subprocess.Popen, str]:
    """``uvicorn service.main:app`` with ``env`` added; returns (process, base URL) once /health/ready says 200."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1", "--port", str(port), *uvicorn_options]
    process = subprocess.Popen(command, env={**os.environ, **env}, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode} (its output is above)")
        try:
            with urllib.request.urlopen(f"{url}/health/ready", timeout=2) as response:
                if response.status == 200:
                    return process, url
        except (urllib.error.URLError, ConnectionError, TimeoutError):  # not listening yet, or 503 while loading
            pass
        time.sleep(0.1)
    stop_server(process)
    raise RuntimeError(f"the server was not ready after {timeout:.0f} s")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
