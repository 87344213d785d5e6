"""Live reload: notice new, changed and removed artifacts and swap them in without a restart.

The app's lifespan runs :func:`watch_artifacts` as a task; each uvicorn worker
process has its own app, registry and watcher, so every worker reloads by
itself. Modes (``AMORTIZED_RELOAD``):

- ``watch`` (the default where watchfiles is installed, which uvicorn[standard]
  brings): file-system events (inotify on Linux) via watchfiles trigger a
  rescan within about 0.1 s; the folder is also rescanned every
  ``AMORTIZED_RELOAD_INTERVAL`` seconds in case an event was missed.
- ``poll``: a rescan every ``AMORTIZED_RELOAD_INTERVAL`` seconds (default 1),
  standard library only. The fallback where events do not arrive (network
  file systems such as NFS, some container volume mounts) or watchfiles is
  missing; ``auto`` (the default setting) picks ``watch`` when watchfiles
  imports, else ``poll``. A folder that does not exist yet is polled until it
  appears.
- ``off``: artifacts are read once, at start.

A rescan (:meth:`service.registry.Registry.reload`) stats each manifest and
loads only what changed, in a worker thread, so the event loop keeps
answering while new weights are verified and warmed up.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from service.registry import Registry

log = logging.getLogger("service.reload")

MODES = ("auto", "watch", "poll", "off")


def watchfiles_available() -> bool:
    try:
        import watchfiles  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_mode(mode: str) -> str:
    """``auto`` becomes ``watch`` where watchfiles imports, else ``poll``.

    ``watch`` without watchfiles falls back to ``poll``.
    """
    if mode in ("auto", "watch") and not watchfiles_available():
        if mode == "watch":
            log.warning("AMORTIZED_RELOAD=watch but watchfiles is not installed: polling instead")
        return "poll"
    return "watch" if mode == "auto" else mode


def describe(mode: str, interval: float) -> str:
    """For readiness: how this worker notices new artifacts."""
    return {
        "watch": f"watch: file events (watchfiles), and a rescan every {interval:g} s",
        "poll": f"poll: a rescan every {interval:g} s",
        "off": "off: artifacts were read at start only",
    }[mode]


def is_artifact_file(path: str) -> bool:
    """Manifests and weights, not staging files (the trainer's atomic writes) nor anything hidden."""
    name = Path(path).name
    return not name.startswith(".") and name.endswith((".json", ".safetensors"))


async def rescan(registry: Registry) -> None:
    try:
        await asyncio.to_thread(registry.reload)
    except Exception:  # never let the watcher die: the next event or tick tries again
        log.exception("rescanning %s failed", registry.folder)


async def watch_artifacts(registry: Registry, mode: str, interval: float, stop: asyncio.Event) -> None:
    """Rescan ``registry``'s folder until ``stop`` is set.

    On file events (``watch``), or every ``interval`` seconds (``poll``).
    """
    if mode == "off":
        return
    # not a line per batch of file events: the registry logs what changed
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
    while not stop.is_set():
        if mode == "watch" and registry.root.is_dir():
            from watchfiles import awatch

            try:
                async for _ in awatch(
                    registry.root,
                    watch_filter=lambda _change, path: is_artifact_file(path),
                    debounce=400,
                    step=30,
                    stop_event=stop,
                    rust_timeout=max(1, int(interval * 1000)),
                    yield_on_timeout=True,
                ):
                    await rescan(registry)
                    if not registry.root.is_dir():
                        break  # the folder went away: poll until it is back, then watch it again
            except Exception as error:  # e.g. out of inotify watches: poll this round instead
                log.warning("watching %s failed (%r): polling every %g s instead", registry.folder, error, interval)
                mode = "poll"
            continue
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except TimeoutError:
            await rescan(registry)
