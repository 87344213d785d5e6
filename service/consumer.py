"""The embedded job consumer: the server starts ``python -m trainer worker`` itself, once per machine.

With a SQLite queue (the default) no one else would run the consumer, so the
server does (``AMORTIZED_EMBEDDED_WORKER``, on by default for SQLite). Every
uvicorn worker runs :func:`supervise`, but only the one holding an exclusive
``flock`` on ``<queue file>.lock`` starts the consumer: the others retry every
few seconds, so if that uvicorn worker dies (uvicorn starts another; the
kernel releases its lock) another one takes over. The consumer is a child
process at lower CPU priority (``AMORTIZED_JOB_NICE``, default +10) with at
most one job per core (``AMORTIZED_JOB_WORKERS``, default 1); it is started
again if it exits, stopped with the server, and stops by itself when its
server is gone (SIGKILL included).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import IO

from service.settings import Settings

log = logging.getLogger("service.consumer")

RETRY_SECONDS = 2.0  # how often a uvicorn worker without the lock tries it, and checks its consumer


def lock_path(queue_url: str) -> Path:
    return Path(queue_url.removeprefix("sqlite:///")).with_suffix(".lock")


def try_lock(path: Path) -> IO[bytes] | None:
    """The open lock file if this process now holds the exclusive lock, else None."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("ab")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def command(settings: Settings) -> list[str]:
    return [
        sys.executable,
        "-m",
        "trainer",
        "worker",
        "--queue",
        settings.queue_url,
        "--artifacts",
        str(settings.artifacts_dir),
        "--workers",
        str(settings.job_workers),
        "--nice",
        str(settings.job_nice),
        "--stale-seconds",
        str(settings.job_stale_seconds),
        "--parent-pid",
        str(os.getpid()),
    ]


async def supervise(settings: Settings, stop: asyncio.Event) -> None:
    """Until ``stop``: hold the lock and keep one consumer running, or wait for the lock."""
    path = lock_path(settings.queue_url)
    handle: IO[bytes] | None = None
    process: subprocess.Popen | None = None
    try:
        while not stop.is_set():
            if handle is None:
                handle = try_lock(path)
            if handle is not None and (process is None or process.poll() is not None):
                if process is not None:
                    log.warning("the job consumer exited with status %s: starting it again", process.returncode)
                process = subprocess.Popen(command(settings), stdin=subprocess.DEVNULL)
                log.info("started the job consumer (pid %d) for %s", process.pid, settings.queue_url)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RETRY_SECONDS)
    finally:
        if process is not None and process.poll() is None:
            process.terminate()  # Huey's immediate stop: a job in flight ends failed (or by its stale heartbeat)
            try:
                await asyncio.to_thread(process.wait, 10)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)
        if handle is not None:
            handle.close()
