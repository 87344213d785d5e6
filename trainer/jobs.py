"""Compile on request: variant specs as jobs on a Huey task queue, their state beside the queue.

One queue, two storages, the same code (:func:`open_queue`):

- **embedded** (the default): Huey's SQLite storage, a file under the
  artifacts folder (``<artifacts>/.jobs/queue.sqlite3``); no extra server.
  The API server starts the consumer itself (``service/consumer.py``).
- **distributed**: Huey's Redis storage (``AMORTIZED_QUEUE=redis://host:6379/0``);
  ``python -m trainer worker`` on any machine that shares the artifacts folder.

Huey was chosen over RQ, Celery and Dramatiq because it is the one of them
with a storage that needs no server (SQLite) *and* a Redis storage behind the
same task code, a consumer with process workers that restarts a dead one,
revocation, and a key-value store in the same storage (where the job state
lives), in one small pure-Python package. Its messages are JSON here
(:class:`JsonSerializer`), not pickle: whoever can write to a shared Redis
must not be able to run code on the workers.

**State.** A job's record (:class:`JobRecord`: status, phase, step and total
steps, loss, an estimate of the time left, metrics and versions on success,
the worker and its heartbeat) is a JSON value under ``job:<id>`` in the
queue's own key-value store, so every API process and every worker sees the
same record in both modes. The worker running a job rewrites it every
:data:`HEARTBEAT_SECONDS`; a ``running`` record whose heartbeat is older than
the staleness bound (``AMORTIZED_JOB_STALE_SECONDS``) belonged to a worker
that died (SIGKILL, power): whoever reads it next marks it ``failed`` and
says so. Heartbeats are wall-clock times, so machines that share a Redis
queue need synchronised clocks (NTP).

**Cancelling.** A queued job is revoked (Huey skips it) and marked
``cancelled`` at once; a running one gets a flag, which the worker reads with
each heartbeat and the training loop's progress callback turns into
:class:`JobCancelled` (within about a second). An objective already written
stays written: artifacts are only ever written whole (``amortized.artifacts``).

**One path.** A job validates its spec with ``amortized.variants.parse_spec``
(as the trainer's command line does) and compiles with
``trainer.compile.compile_all``, which writes through the same atomic
``save_artifact``; a running server's live reload then serves it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import signal
import socket
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Literal

import redis
import redis.exceptions
from huey import RedisHuey, SqliteHuey
from huey.api import Huey
from huey.registry import Message
from huey.serializer import Serializer
from pydantic import BaseModel, Field

from amortized.evaluation import Replace
from amortized.variants import VariantSpec, parse_spec

log = logging.getLogger("trainer.jobs")

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
ACTIVE: tuple[Status, ...] = ("queued", "running")
CONSUMER_KEY = "consumer"  # beside the job records: {"worker": host:pid, "seen": epoch seconds} of the last consumer
HEARTBEAT_SECONDS = 1.0  # how often a running job's worker rewrites its record (and reads the cancel flag)
KEEP_FINISHED = 200  # finished job records kept for GET /v1/jobs; older ones are dropped on the next submit
QUEUE_NAME = "amortized"
TASK_NAME = "compile_variant"
EMBEDDED_QUEUE_FILE = Path(".jobs") / "queue.sqlite3"  # under the artifacts folder (a dot folder: never loaded)


class JobCancelled(Exception):
    """Raised inside a running job when its cancel flag is seen."""


class JobRecord(BaseModel):
    """What ``GET /v1/jobs/{id}`` answers: a job's state, as stored beside the queue (JSON)."""

    id: str = Field(..., description="the job's id (also its Huey task id)")
    name: str = Field(..., description="the variant the job compiles")
    family: str
    objectives: list[str] = Field(..., description="the losses it compiles")
    status: Status = Field(..., description="queued, running, succeeded, failed or cancelled")
    phase: str = Field(
        "queued", description="what it does now: queued, starting, pq or qp (training), evaluate, calibrate, save, done"
    )
    objective: str | None = Field(None, description="the objective being compiled")
    step: int = Field(0, description="optimiser steps done, over all objectives")
    total_steps: int = Field(..., description="optimiser steps in all, over all objectives")
    loss: float | None = Field(None, description="the current running loss of the objective being trained, nats")
    eta_seconds: float | None = Field(
        None, description="estimated seconds left (from the pace so far; evaluation, calibration and figures add a few)"
    )
    created_at: str = Field(..., description="ISO 8601, UTC")
    started_at: str | None = None
    finished_at: str | None = None
    heartbeat: float | None = Field(None, description="the worker's last sign of life, seconds since the epoch (UTC)")
    worker: str | None = Field(None, description="host:pid of the process running it")
    error: str | None = Field(None, description="why it failed")
    metrics: dict[str, Any] = Field(default_factory=dict, description="on success: each objective's evaluation metrics")
    versions: dict[str, str] = Field(
        default_factory=dict,
        description="each objective's version written (the first 16 hex digits of its sha256), as soon as it is "
        "written: a running job lists the objectives it has finished, which are served from then on",
    )
    spec: dict[str, Any] = Field(..., description="the validated spec")
    quality: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="each written network's closeness to its family's best: {\"verdict\": good, poor or unknown, "
        '"amortisation_gap": nats, "why"} (amortized.evaluation.compile_quality); a poor network is still served, '
        "and each answer's diagnostics say how far to trust it",
    )
    replace: Replace = Field(
        "if_better",
        description="if_better: a network that scores clearly worse than the served one (its objective's KL on the "
        "test set) is not written, the served one stays and the job fails saying so; always: it replaces it",
    )
    waiting: str | None = Field(
        None,
        description="a queued job's hint when no worker has taken jobs from this queue lately (none started, or all "
        "stopped): how to start one; null while a worker is about (the job then waits for a free one)",
    )


# Huey's messages as JSON (no pickle)


def _encode(value: Any) -> Any:
    if isinstance(value, Message):
        return {"__message__": [_encode(v) for v in value]}
    if isinstance(value, dt.datetime):
        return {"__datetime__": value.isoformat()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"cannot put a {type(value).__name__} on the queue (JSON only)")


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"__message__"}:
            return Message(*[_decode(v) for v in value["__message__"]])
        if set(value) == {"__datetime__"}:
            return dt.datetime.fromisoformat(value["__datetime__"])
        return {k: _decode(v) for k, v in value.items()}
    return value


class JsonSerializer(Serializer):
    """Huey's serializer with JSON in place of pickle: task messages (their args are plain data) and revocations."""

    def _serialize(self, data: Any) -> bytes:
        return json.dumps(_encode(data), separators=(",", ":")).encode()

    def _deserialize(self, data: bytes) -> Any:
        return _decode(json.loads(data))


def embedded_queue_url(artifacts_dir: Path) -> str:
    """The default queue: Huey's SQLite storage in a file under the artifacts folder."""
    return f"sqlite:///{(Path(artifacts_dir) / EMBEDDED_QUEUE_FILE).resolve()}"


def is_embedded(url: str) -> bool:
    return url.startswith("sqlite:")


# what a queue's storage raises when it cannot be reached or used (Redis down, unreachable, refusing or not Redis at
# all; a SQLite file locked, gone or corrupt): the service answers the job routes 503 naming the queue
# (service/errors.py), not 500
UNAVAILABLE: tuple[type[Exception], ...] = (redis.exceptions.RedisError, sqlite3.DatabaseError)


# a queued job cancelled before a worker took it: its record says so, as a running one's does (error was null)
CANCELLED_QUEUED: dict[str, Any] = {
    "status": "cancelled",
    "phase": "done",
    "error": "cancelled on request before it started; nothing was written",
}
REDIS_CONNECT_SECONDS, REDIS_SOCKET_SECONDS = 5.0, 5.0  # a Redis queue's longest waits to connect and to answer


def public_url(url: str) -> str:
    """A queue's URL without its credentials (``redis://user:secret@host`` names ``redis://host``), to be said."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rsplit('@', 1)[-1]}" if rest else url


def make_huey(url: str) -> Huey:
    """A Huey over SQLite (``sqlite:///path``) or Redis (``redis://``, ``rediss://``, ``unix://``); ValueError else."""
    common: dict[str, Any] = {"name": QUEUE_NAME, "results": False, "serializer": JsonSerializer(), "utc": True}
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.is_absolute():
            path = Path("/") / path
        path.parent.mkdir(parents=True, exist_ok=True)
        return SqliteHuey(filename=str(path), **common)
    if url.startswith(("redis://", "rediss://", "unix://")):
        # bounded waits (options in the URL's query win): an unreachable host held requests for the OS's connect
        # timeout (minutes); the consumer's blocking reads last read_timeout (1 s), well within the socket's
        pool = redis.ConnectionPool.from_url(
            url, socket_connect_timeout=REDIS_CONNECT_SECONDS, socket_timeout=REDIS_SOCKET_SECONDS
        )
        return RedisHuey(connection_pool=pool, blocking=True, read_timeout=1, **common)
    raise ValueError(f"a queue is sqlite:///path or redis://host:port/db (got {url.split('://')[0]}://...)")


def now_iso() -> str:
    """Now in UTC, ISO 8601 to the microsecond: jobs posted within one second still list newest first."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


class JobQueue:
    """The job API over one Huey: submit, read, list, cancel (the API's side); run (the worker's side).

    Args:
        url: the queue (:func:`make_huey`).
        artifacts_dir: where the worker writes artifacts (only the worker needs it).
        stale_seconds: a running job whose heartbeat is older is reported failed.
    """

    def __init__(self, url: str, artifacts_dir: Path | None = None, stale_seconds: float = 15.0) -> None:
        self.url = url
        self.huey = make_huey(url)
        self.storage = self.huey.storage
        self.artifacts_dir = artifacts_dir
        self.stale_seconds = stale_seconds
        self.task = self.huey.task(name=TASK_NAME, retries=0)(self.run)

    # the store

    def write(self, record: JobRecord) -> None:
        self.storage.put_data(f"job:{record.id}", record.model_dump_json().encode())

    def _read_raw(self, job_id: str) -> JobRecord | None:
        data = self.storage.peek_data(f"job:{job_id}")
        if not isinstance(data, bytes | str):  # huey's EmptyData
            return None
        return JobRecord.model_validate_json(data)

    def read(self, job_id: str) -> JobRecord | None:
        """The job's record, a dead worker's job turned ``failed`` (and stored so)."""
        record = self._read_raw(job_id)
        return None if record is None else self._settle(record)

    # the consumer's presence: every consumer rewrites it (run_worker), so a queued job can say when none is about

    def mark_consumer(self, worker: str) -> None:
        self.storage.put_data(CONSUMER_KEY, json.dumps({"worker": worker, "seen": time.time()}).encode())

    def consumer_seen(self) -> float | None:
        """When a consumer last said it was about (seconds since the epoch), or None if none ever did."""
        data = self.storage.peek_data(CONSUMER_KEY)
        if not isinstance(data, bytes | str):
            return None
        try:
            return float(json.loads(data)["seen"])
        except (ValueError, KeyError, TypeError):
            return None

    def waiting_hint(self, record: JobRecord, now: float) -> str | None:
        """Why a queued job may wait for ever: no consumer seen for ``stale_seconds`` (None while one is about).

        A job younger than ``stale_seconds`` gets no hint yet: an embedded consumer takes a moment to start.
        """
        if now - dt.datetime.fromisoformat(record.created_at).timestamp() <= self.stale_seconds:
            return None  # young: the store is not read (GET /v1/jobs settles every record)
        seen = self.consumer_seen()
        if seen is not None and now - seen <= self.stale_seconds:
            return None
        when = "has ever taken jobs" if seen is None else f"has taken jobs for {now - seen:.0f} s"
        return (
            f"no worker {when} from this queue ({self.url.split('@')[-1]}): start one with python -m trainer worker "
            "--queue <this queue> --artifacts <the served folder>, or with a SQLite queue let the server run it "
            "(AMORTIZED_EMBEDDED_WORKER unset or 1)"
        )

    def _settle(self, record: JobRecord) -> JobRecord:
        if record.status == "queued":
            hint = self.waiting_hint(record, time.time())
            return record if hint is None else record.model_copy(update={"waiting": hint})  # said, not stored
        if record.status == "running" and time.time() - (record.heartbeat or 0) > self.stale_seconds:
            record = record.model_copy(
                update={
                    "status": "failed",
                    "finished_at": now_iso(),
                    "eta_seconds": None,
                    "error": f"the worker ({record.worker}) sent no heartbeat for more than {self.stale_seconds:g} s "
                    "(killed or stopped mid-job); artifacts written before stay whole; post the spec again",
                }
            )
            self.write(record)
            log.warning("job %s: %s", record.id, record.error)
        return record

    def records(self) -> list[JobRecord]:
        """Every stored job, newest first."""
        out = []
        for key, value in self.storage.result_items().items():
            if str(key).startswith("job:"):
                out.append(self._settle(JobRecord.model_validate_json(value)))
        return sorted(out, key=lambda r: r.created_at, reverse=True)

    def active(self) -> list[JobRecord]:
        return [r for r in self.records() if r.status in ACTIVE]

    def _prune(self, records: list[JobRecord]) -> None:
        finished = [r for r in records if r.status not in ACTIVE]
        for record in finished[KEEP_FINISHED:]:
            self.storage.delete_data(f"job:{record.id}")
            self.storage.delete_data(f"cancel:{record.id}")

    def stopped(self, tracker: Tracker, status: Status, why: str) -> None:
        """Finish a job that did not succeed, naming the versions it wrote before it stopped (they stay served)."""
        written = self.written_versions(tracker.record, tracker.record.started_at)
        tracker.finish(status, error=why + stay_served(written), versions=written)

    def written_versions(self, record: JobRecord, started_at: str | None) -> dict[str, str]:
        """The versions of the job's objectives whose artifacts it wrote (manifests created since ``started_at``).

        A job that fails or stops after writing some artifacts (its figures, say, come after its networks)
        leaves them served: its record says which, as a successful job's does. Unreadable manifests count as
        not written (the registry refuses them too).
        """
        from amortized.artifacts import read_manifest

        assert self.artifacts_dir is not None
        start = dt.datetime.fromisoformat(started_at) if started_at else None
        written = {}
        for objective in record.objectives:
            try:
                manifest = read_manifest(self.artifacts_dir / record.name / f"{objective}.json")
            except Exception:  # missing, partial or refused: not this job's to report
                continue
            if start is not None and dt.datetime.fromisoformat(manifest.created_at) >= start:
                written[objective] = manifest.version
        return written

    # the API's side

    def submit(self, spec: VariantSpec, replace: Replace = "if_better") -> JobRecord:
        """Store the job as queued, then enqueue its task (same id): a worker never sees a job without a record."""
        job_id = uuid.uuid4().hex
        record = JobRecord(
            id=job_id,
            name=spec.name,
            family=spec.family,
            objectives=list(spec.objectives),
            status="queued",
            total_steps=sum(spec.training_config(o).total_steps for o in spec.objectives),
            created_at=now_iso(),
            spec=spec.model_dump(mode="json"),
            replace=replace,
        )
        self._prune(self.records())
        self.write(record)
        try:
            self.huey.enqueue(self.task.s(job_id, record.spec, id=job_id))
        except Exception as error:
            self.write(record.model_copy(update={"status": "failed", "error": f"could not enqueue: {error}"}))
            raise
        return record

    def cancel(self, job_id: str) -> JobRecord | None:
        """Revoke a queued job (cancelled now) or flag a running one (cancelled within about a second)."""
        record = self.read(job_id)
        if record is None or record.status not in ACTIVE:
            return record
        self.storage.put_data(f"cancel:{job_id}", b"1")
        self.huey.revoke_by_id(job_id)
        record = self._read_raw(job_id) or record
        if record.status == "queued":
            record = record.model_copy(update=CANCELLED_QUEUED | {"finished_at": now_iso()})
            self.write(record)
        return record

    def cancel_requested(self, job_id: str) -> bool:
        return isinstance(self.storage.peek_data(f"cancel:{job_id}"), bytes | str)

    # the worker's side

    def run(self, job_id: str, spec_data: dict[str, Any]) -> None:
        """The task: compile the spec through the trainer's own path, keeping the record current."""
        from trainer.compile import Job, compile_all  # torch and the science: only where jobs run

        record = self._read_raw(job_id)
        if record is None:
            log.warning("job %s has no record: skipped", job_id)
            return
        if record.status != "queued" or self.cancel_requested(job_id):
            if record.status == "queued":
                self.write(record.model_copy(update=CANCELLED_QUEUED | {"finished_at": now_iso()}))
            return
        assert self.artifacts_dir is not None, "a worker needs the artifacts folder"
        tracker = Tracker(self, record.model_copy(update={"status": "running", "phase": "starting"}))
        tracker.start()
        try:
            spec = parse_spec(spec_data, f"job {job_id}")  # checked when posted; again, as the CLI does
            jobs = [
                Job(spec=spec, objective=objective, out=self.artifacts_dir, replace=record.replace)
                for objective in spec.objectives
            ]
            rows = compile_all(jobs, workers=1, figures=True, progress=tracker.progress)
        except JobCancelled:
            self.stopped(tracker, "cancelled", "cancelled on request")
        except KeyboardInterrupt:  # Huey's immediate stop (SIGTERM) interrupts the task so
            self.stopped(tracker, "failed", "the worker was stopped mid-job")
            raise
        except Exception as error:  # a job's failure is its record's, not the worker's
            log.exception("job %s failed", job_id)
            self.stopped(tracker, "failed", f"{type(error).__name__}: {error}")
        else:
            from amortized.artifacts import read_manifest
            from amortized.evaluation import compile_quality

            metrics = {row["objective"]: row["metrics"] for row in rows}  # a network not written: its scores too
            versions = {row["objective"]: read_manifest(Path(row["path"])).version for row in rows if row["path"]}
            quality = {o: compile_quality(metrics[o], o) for o in versions}  # of the networks written
            kept = [row for row in rows if row["kept"] is not None]
            if not kept:
                tracker.finish("succeeded", metrics=metrics, versions=versions, quality=quality)
                return
            whys = "; ".join(
                f"the new {row['objective']} network scored {row['kept']['why']}: the served one "
                f"({row['kept']['version']}) stays"
                for row in kept
            )
            written = (
                f"; the new {' and '.join(sorted(versions))} network is written and served (versions in this record)"
                if versions
                else "; no artifact was written"
            )
            advice = ". Post the spec again with ?replace=always to replace it anyway"
            tracker.finish("failed", error=whys + written + advice, metrics=metrics, versions=versions, quality=quality)


class Tracker:
    """A running job's record, published every heartbeat by a thread.

    The progress callback, called at every training step, only stores where the
    job is (a tuple: no lock, no copy on the hot path) and reads the cancel flag
    that the heartbeat thread sets; the thread builds and writes the record.
    """

    def __init__(self, queue: JobQueue, record: JobRecord) -> None:
        self.queue, self.stop, self.cancelled = queue, threading.Event(), threading.Event()
        self.started = time.monotonic()
        self.steps = {o: parse_spec(record.spec).training_config(o).total_steps for o in record.objectives}  # type: ignore[arg-type]
        self.now: tuple[str, int, float, str] | None = None  # (objective, step, loss, phase) at the last callback
        self.seen: set[str] = set()  # objectives trained so far (one at a time: those before the current are done)
        self.checked = 0  # len(seen) when the versions written so far were last read
        self.written: dict[str, str] = {}  # those versions
        self.record = record.model_copy(
            update={
                "started_at": now_iso(),
                "heartbeat": time.time(),
                "worker": worker_name(),
            }
        )
        self.thread = threading.Thread(target=self._beat, name=f"heartbeat {record.id}", daemon=True)

    def start(self) -> None:
        self.queue.write(self.record)
        self.thread.start()

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_SECONDS):
            try:
                if self.queue.cancel_requested(self.record.id):
                    self.cancelled.set()
                # an objective finished before the others is served from its manifest on: the record says so now.
                # Objectives run one after another, so one is written once the next has started: the manifests are
                # read when another objective starts, not at every beat
                if len(self.seen) != self.checked:
                    self.checked = len(self.seen)
                    self.written = self.queue.written_versions(self.record, self.record.started_at)
                self.queue.write(self.current(versions=self.written))
            except Exception:  # the store is briefly unreachable: the next beat tries again
                log.exception("heartbeat of job %s", self.record.id)

    def current(self, **update: Any) -> JobRecord:
        """The record as of now: progress, the time left from the pace so far, the heartbeat."""
        fields: dict[str, Any] = {"heartbeat": time.time()}
        if self.now is not None:
            objective, step, loss, phase = self.now
            done = step + sum(steps for o, steps in self.steps.items() if o in self.seen and o != objective)
            elapsed = time.monotonic() - self.started
            fields |= {
                "phase": phase,
                "objective": objective,
                "step": done,
                "loss": loss if math.isfinite(loss) else None,
                "eta_seconds": round(elapsed / done * (self.record.total_steps - done), 1) if done else None,
            }
        return self.record.model_copy(update=fields | update)

    def progress(self, objective: str, step: int, loss: float, phase: str) -> None:
        """compile_all's callback: training steps (phase pq or qp), then evaluate, calibrate, save."""
        if self.cancelled.is_set():
            raise JobCancelled(self.record.id)
        self.seen.add(objective)
        self.now = (objective, step, loss, phase)

    def finish(self, status: Status, **update: Any) -> None:
        self.stop.set()
        self.thread.join()
        self.record = self.current(
            status=status,
            phase="done",
            finished_at=now_iso(),
            eta_seconds=0.0 if status == "succeeded" else None,
            **update,
        )
        self.queue.write(self.record)


def stay_served(written: dict[str, str]) -> str:
    """What a stopped job's error adds about the artifacts it wrote: those stay served."""
    if not written:
        return "; no artifact was written"
    return f"; {', '.join(sorted(written))} finished before and stay served (versions in this record)"


def worker_name() -> str:
    """This process as a job record names its worker: host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_worker(
    url: str,
    artifacts_dir: Path,
    workers: int = 1,
    nice: int = 10,
    stale_seconds: float = 15.0,
    parent_pid: int | None = None,
    health_check_seconds: float = 2.0,
) -> None:
    """The consumer (``python -m trainer worker``): Huey's process workers, at most one per core, niced.

    Each job runs in a worker process (torch on one thread); the consumer
    restarts a worker that dies (checked every ``health_check_seconds``).
    ``nice`` is added to this process's niceness before the workers start, so
    that an API on the same machine keeps its CPU. With ``parent_pid`` (the
    embedded consumer), the consumer stops when that process is gone.
    """
    workers = max(1, min(workers, cpu_count()))
    if nice:
        os.nice(nice)
    queue = JobQueue(url, artifacts_dir, stale_seconds)
    consumer = queue.huey.create_consumer(
        workers=workers,
        worker_type="process",
        periodic=False,
        check_worker_health=True,
        health_check_interval=health_check_seconds,
    )

    @queue.huey.on_startup("presence")
    def presence() -> None:  # in each worker process, once forked: a thread started before the fork could hold
        # the SQLite storage's lock as the fork copies it, and the worker would wait on it for ever
        def beat() -> None:
            own = JobQueue(url, stale_seconds=stale_seconds)  # this thread's own connection to the store
            while True:
                try:
                    own.mark_consumer(worker_name())
                except Exception:  # the store is briefly unreachable: said again at the next beat
                    log.exception("could not mark this worker present in the queue")
                time.sleep(min(HEARTBEAT_SECONDS * 5, stale_seconds / 3))

        threading.Thread(target=beat, name="worker presence", daemon=True).start()

    if parent_pid is not None:

        def orphaned() -> None:
            while os.getppid() == parent_pid:
                time.sleep(1.0)
            log.warning("the server (pid %d) is gone: stopping the embedded consumer", parent_pid)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=orphaned, name="parent watch", daemon=True).start()
    log.info(
        "consuming %s with %d worker process(es), nice +%d, artifacts in %s",
        url.split("@")[-1],
        workers,
        nice,
        artifacts_dir,
    )
    consumer.run()


__all__ = ["JobCancelled", "JobQueue", "JobRecord", "JsonSerializer", "embedded_queue_url", "make_huey", "run_worker"]
