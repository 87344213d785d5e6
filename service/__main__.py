"""The server's entry point.

``python -m service [uvicorn options]`` (what ``make serve``, the image, compose and Kubernetes run).

It runs ``uvicorn --factory service.main:create_app`` with what must happen
once per start, before any worker exists:

- workers: uvicorn's ``--workers`` defaults to ``$WEB_CONCURRENCY`` (1 when
  unset); uvicorn restarts a worker that dies;
- metrics: a fresh Prometheus multiprocess folder (``PROMETHEUS_MULTIPROC_DIR``),
  so that ``/metrics`` sums the counters and histograms of every worker,
  whichever worker answers the scrape. When the variable is already set (a
  mounted volume), the folder's metric files are removed first; otherwise a
  temporary folder is made and removed at exit.

- logging: uvicorn configures it in every worker from ``--log-config``; unless
  one is given, :data:`LOG_CONFIG` (uvicorn's own loggers, and the service's
  at INFO on stderr);
- stopping: SIGTERM and SIGINT end the process with status 128 + the signal's
  number *after* the temporary files above are removed. (uvicorn shuts down
  gracefully and then raises the signal again with the handler it found, which
  by default would end the process before any clean-up runs.)

- settings: checked before uvicorn starts (:func:`service.main.startup_refusal`); a refusal is one line on stderr
  and exit status 3 (uvicorn's for a failed start). A worker that failed at start printed a traceback, and with
  several workers uvicorn restarted them for ever. With one worker the check runs in this process (which then
  serves); with several, in a child process, so that the supervisor never loads torch.

What each worker sets for itself (torch's threads, the garbage collector) it
sets when its app starts (``service.main.lifespan``): uvicorn's workers are
fresh interpreters.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import uvicorn

FACTORY = "service.main:create_app"
LOG_CONFIG = {  # uvicorn's default configuration, plus the root logger for the service's own messages
    **uvicorn.config.LOGGING_CONFIG,
    "root": {"handlers": ["service"], "level": "INFO"},
    "handlers": {
        **uvicorn.config.LOGGING_CONFIG["handlers"],
        "service": {"class": "logging.StreamHandler", "formatter": "service", "stream": "ext://sys.stderr"},
    },
    "formatters": {
        **uvicorn.config.LOGGING_CONFIG["formatters"],
        "service": {"format": "%(levelname)s %(name)s: %(message)s"},
    },
}


def fresh_metrics_folder() -> tuple[str, bool]:
    """The multiprocess folder for this start, emptied; and whether it is ours to remove at exit."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        for stale in Path(folder).glob("*.db"):  # values of an earlier start would be summed with this one's
            stale.unlink()
        return folder, False
    return tempfile.mkdtemp(prefix="amortized-metrics-"), True


STARTUP_FAILURE = 3  # uvicorn's exit status for a server that could not start
CHECK = "from service.main import startup_refusal; print(startup_refusal() or '', end='')"


def worker_count(options: list[str]) -> int:
    """The workers uvicorn would run for these options (``--workers``, else $WEB_CONCURRENCY, else 1).

    Read by uvicorn's own command-line parser; options it refuses count as one worker (it then says why itself).
    """
    try:
        command: Any = uvicorn.main.main  # the click command uvicorn's CLI runs
        with command.make_context("uvicorn", ["--factory", FACTORY, *options]) as context:
            return int(context.params.get("workers") or 1)
    except Exception:  # a usage error, --help or --version: uvicorn answers them
        return 1


def startup_refusal(options: list[str]) -> str | None:
    """Why the settings would stop the server (:func:`service.main.startup_refusal`), or None."""
    if worker_count(options) <= 1:
        from service.main import startup_refusal as refusal

        return refusal()
    checked = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True)
    if checked.returncode != 0:  # the check itself failed: what it printed is the reason
        return checked.stderr.strip().splitlines()[-1] if checked.stderr.strip() else "the start-up check failed"
    return checked.stdout or None


def exit_on(signum: int, frame: object) -> None:
    """Signal handler: leave through ``finally`` blocks, with the shell's status for a signal (128 + its number)."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Serve until stopped; returns uvicorn's exit status (128 + the signal's number when stopped by one)."""
    options = sys.argv[1:] if argv is None else argv
    for stop_signal in (signal.SIGTERM, signal.SIGINT):  # uvicorn raises the signal again once it has shut down
        signal.signal(stop_signal, exit_on)
    folder, ours = fresh_metrics_folder()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder  # before any worker imports prometheus_client
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="amortized-logging-") as log_config:
        json.dump(LOG_CONFIG, log_config)
        log_config.flush()
        if "--log-config" not in options:
            options = ["--log-config", log_config.name, *options]
        try:
            refusal = startup_refusal(options)
            if refusal:
                print(f"service: not started: {refusal}", file=sys.stderr)
                return STARTUP_FAILURE
            uvicorn.main.main(args=["--factory", FACTORY, *options], standalone_mode=False)
        except SystemExit as stop:
            return stop.code if isinstance(stop.code, int) else 1
        finally:
            if ours:
                shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
