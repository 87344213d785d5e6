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

- settings: checked before uvicorn starts (:func:`service.main.startup_refusal`), those of an ``--env-file``
  included, with ``$WEB_CONCURRENCY`` and the metrics folder; a refusal is one line on stderr and exit status 3
  (uvicorn's for a failed start). A worker that failed at start printed a traceback, and with several workers
  uvicorn restarted them for ever. With one worker the check runs in this process (which then serves); with
  several, in a child process, so that the supervisor never loads torch. An option uvicorn cannot read gets its
  usage message and status 2, as from its own command line; ``--help`` and ``--version`` are answered unchecked.

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

import click
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
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".writable-"):  # each worker writes its files there
            pass
        return folder, False
    return tempfile.mkdtemp(prefix="amortized-metrics-"), True


STARTUP_FAILURE = 3  # uvicorn's exit status for a server that could not start
CHECK = "from service.main import startup_refusal; print(startup_refusal() or '', end='')"
ANSWERED_BY_UVICORN = ("--help", "--version")  # options uvicorn answers without starting: nothing to check


class Refused(Exception):
    """The server cannot start: the one line that says why (printed after ``service: not started: ``)."""


def uvicorn_options(options: list[str]) -> dict[str, Any]:
    """The options as uvicorn's command line reads them (its click command); ``click.ClickException`` if it refuses.

    ``--env-file`` is loaded into the environment here, as uvicorn loads it (python-dotenv, variables already set
    win), so that the settings it holds are checked like any other.
    """
    command: Any = uvicorn.main  # the package's ``main`` is the click command (uvicorn.main.main is its method)
    with command.make_context("uvicorn", ["--factory", FACTORY, *options]) as context:
        params = dict(context.params)
    if params.get("env_file"):
        from dotenv import load_dotenv  # uvicorn[standard]'s, which uvicorn itself uses for --env-file

        load_dotenv(dotenv_path=params["env_file"])
    return params


def worker_count(params: dict[str, Any]) -> int:
    """The workers uvicorn will run: ``--workers``, else ``$WEB_CONCURRENCY``, else 1 (uvicorn's ``Config``)."""
    if params.get("workers") is not None:
        return int(params["workers"])
    raw = os.environ.get("WEB_CONCURRENCY", "1")
    try:
        return int(raw)
    except ValueError:
        raise Refused(f"WEB_CONCURRENCY={raw[:200]!r}: the number of worker processes is a whole number") from None


def startup_refusal(params: dict[str, Any]) -> str | None:
    """Why the server would not start (:func:`service.main.startup_refusal`), or None; ``params``: uvicorn's options.

    With one worker the check runs here (this process then serves); with several, in a child process, so that the
    supervisor never loads torch. ``Refused`` for a worker count that cannot be read.
    """
    if worker_count(params) <= 1:
        from service.main import startup_refusal as refusal

        return refusal()
    checked = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True)
    if checked.returncode != 0:  # the check itself failed: its last line says why
        return checked.stderr.strip().splitlines()[-1] if checked.stderr.strip() else "the start-up check failed"
    return checked.stdout or None


def usage_error(error: click.ClickException) -> int:
    """An option uvicorn cannot read: its usage message on stderr and its status (2), as its own command line gives."""
    error.show()
    return error.exit_code


def exit_on(signum: int, frame: object) -> None:
    """Signal handler: leave through ``finally`` blocks, with the shell's status for a signal (128 + its number)."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Serve until stopped; returns uvicorn's exit status (128 + the signal's number when stopped by one)."""
    options = sys.argv[1:] if argv is None else argv
    for stop_signal in (signal.SIGTERM, signal.SIGINT):  # uvicorn raises the signal again once it has shut down
        signal.signal(stop_signal, exit_on)
    answered_by_uvicorn = any(option in ANSWERED_BY_UVICORN for option in options)
    try:  # first: an --env-file may set PROMETHEUS_MULTIPROC_DIR
        params = {} if answered_by_uvicorn else uvicorn_options(options)
    except click.ClickException as error:
        return usage_error(error)
    try:
        folder, ours = fresh_metrics_folder()
    except OSError as error:
        given = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
        print(
            f"service: not started: PROMETHEUS_MULTIPROC_DIR={given[:200]!r} cannot be the metrics folder "
            f"({error.strerror or error}): name a folder this process may write, or leave it unset",
            file=sys.stderr,
        )
        return STARTUP_FAILURE
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder  # before any worker imports prometheus_client
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="amortized-logging-") as log_config:
        json.dump(LOG_CONFIG, log_config)
        log_config.flush()
        if "--log-config" not in options:
            options = ["--log-config", log_config.name, *options]
        try:
            refusal = None if answered_by_uvicorn else startup_refusal(params)
            if refusal:
                raise Refused(refusal)
            uvicorn.main.main(args=["--factory", FACTORY, *options], standalone_mode=False)
        except Refused as refused:
            print(f"service: not started: {refused}", file=sys.stderr)
            return STARTUP_FAILURE
        except click.ClickException as error:
            return usage_error(error)
        except SystemExit as stop:
            return stop.code if isinstance(stop.code, int) else 1
        finally:
            if ours:
                shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
