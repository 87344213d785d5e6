"""Settings from the environment (prefix ``AMORTIZED_``), so a deployment changes no code."""

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal, get_args

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from amortized.diagnostics import DEFAULT_CHECK_SAMPLES
from amortized.inputs import quoted


def default_compute_threads() -> int:
    """The CPUs this process may use (its affinity) over its worker processes ($WEB_CONCURRENCY, else 1); at least 1."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
    except ValueError:
        workers = 1
    return max(1, cpus // max(workers, 1))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AMORTIZED_", frozen=True)

    artifacts_dir: Path = Field(
        Path("artifacts"), description="folder of compiled artifacts (one subfolder per variant)"
    )
    reload: Literal["auto", "watch", "poll", "off"] = Field(
        "auto",
        description="live reload of artifacts: watch file events (watchfiles), poll, off; auto = watch if watchfiles "
        "imports, else poll",
    )
    reload_interval: float = Field(
        1.0,
        ge=0.1,
        le=3600,
        description="seconds between rescans of the artifacts folder (poll; and watch's safety net); at least 0.1: "
        "each rescan reads every manifest's files (1e-300 kept an idle server at full CPU)",
    )
    max_batch: int = Field(10_000, ge=1, description="most observations in one request")
    max_samples: int = Field(
        100_000,
        ge=1,
        le=100_000,
        description="most samples per observation (can lower the API's bound of 100000, not raise it)",
    )
    max_total_samples: int = Field(
        5_000_000,
        ge=1,
        description="most draws in one request: observations x objectives x (num_samples + cross-check draws + "
        "resampled draws)",
    )
    max_body_bytes: int = Field(1_048_576, ge=1024, description="largest request body accepted")
    body_timeout_seconds: float = Field(
        30.0,
        ge=1,
        le=3600,
        description="a request body that stops arriving for this long is answered 408 (a client that sent less than "
        "its Content-Length would otherwise hold its connection open for ever)",
    )
    offload_samples: int = Field(
        50_000,
        ge=1,
        description="requests that draw more (observations x samples x objectives, cross-check draws included) run off "
        "the event loop;"
        " also the most a micro-batch holds",
    )
    heavy_concurrency: int = Field(
        2,
        ge=1,
        le=1000,
        description="heavy requests (more draws than offload_samples) answered at once, each until its answer is sent; "
        "the others wait (service/admission.py). Bounds memory: 4.8 million draws make about 115 MB of JSON",
    )
    heavy_wait_seconds: float = Field(
        30.0, gt=0, le=3600, description="the longest a heavy request waits for a place; then 503 with Retry-After"
    )
    send_timeout_seconds: float = Field(
        60.0,
        ge=1,
        le=3600,
        description="a heavy answer's client that takes no chunk of it (4 MiB) for this long is cut off: its "
        "connection is closed and its place freed (a client that stopped reading would otherwise hold it for ever); "
        "at least 1: a chunk takes a fast client milliseconds, but a timeout of 1e-9 cut off every heavy answer",
    )
    cross_check_samples: int = Field(
        DEFAULT_CHECK_SAMPLES,
        ge=100,
        le=100_000,
        description="draws of each compiled network the cross-check makes per observation when a query asks for fewer",
    )
    compute_threads: int = Field(
        default_factory=default_compute_threads,
        ge=1,
        le=64,
        description="threads that answer a big request's blocks of rows in parallel (a request of one block, as every "
        "single query, runs on one); default: the CPUs the process may use, shared among $WEB_CONCURRENCY workers",
    )
    micro_batch: bool = Field(
        True, description="answer concurrent queries for the same model and settings in one vectorised call"
    )
    compress_min_bytes: int = Field(
        4096,
        ge=0,
        description="answers of at least this many bytes are compressed when Accept-Encoding allows (zstd or gzip)",
    )
    gzip_level: int = Field(
        1,
        ge=1,
        le=9,
        description="gzip level of compressed answers (1 fastest, 9 smallest; on answers' float text 6 saves 2% more "
        "bytes than 1 for 3 times the CPU: bench/answer_formats.py)",
    )
    zstd_level: int = Field(3, ge=1, le=19, description="zstd level of compressed answers (zstd's default: 3)")
    bench_endpoints: bool = Field(False, description="expose /v1/_bench/bare for the benchmark script")
    heap_bytes: int = Field(
        256 * 2**20,
        ge=0,
        lt=2**31,
        description="arrays up to this size come from the heap and up to this much freed memory is kept for the next "
        "request (glibc's malloc: M_MMAP_THRESHOLD and M_TRIM_THRESHOLD); 0 keeps glibc's defaults",
    )
    # compile on request (service/routers/jobs.py, trainer/jobs.py)
    admin_token: SecretStr | None = Field(
        None,
        description="the bearer token of the job endpoints (POST /v1/models, /v1/jobs), at least 16 characters "
        "(shorter stops the server at start); unset or empty: they are off (403)",
    )
    queue: str | None = Field(
        None,
        description="the job queue: redis://host:port/db (workers anywhere: python -m trainer worker) or "
        "sqlite:///path; unset: the embedded SQLite file <artifacts_dir>/.jobs/queue.sqlite3",
    )
    embedded_worker: bool | None = Field(
        None,
        description="start the queue's consumer with the server (one per machine, under a lock); unset: on for a "
        "SQLite queue, off for Redis",
    )
    job_workers: int = Field(
        1, ge=1, le=64, description="jobs compiled at once by the embedded consumer (at most the cores)"
    )
    job_nice: int = Field(
        10, ge=0, le=19, description="niceness added to the embedded consumer (compiles yield to queries)"
    )
    job_stale_seconds: float = Field(
        15.0, ge=3, le=3600, description="a running job without a heartbeat for this long is reported failed"
    )
    job_max_steps: int = Field(
        20_000, ge=1, le=100_000, description="most optimiser steps per objective of a job (recipes: up to 10000)"
    )
    job_max_branches: int = Field(
        16, ge=1, le=64, description="most branches of a job's q: the model's discrete branches x mixture components"
    )
    job_max_queued: int = Field(4, ge=1, le=1000, description="most jobs queued or running at once; past it, 429")

    @field_validator("admin_token", "queue", "embedded_worker", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """Blank is unset, for every setting whose default is "unset".

        Surrounding whitespace is dropped (HTTP strips it from the Authorization header too).
        """
        if isinstance(value, str):
            value = value.strip()
        return None if value == "" else value

    @property
    def queue_url(self) -> str:
        from trainer.jobs import embedded_queue_url

        return self.queue or embedded_queue_url(self.artifacts_dir)


# the settings whose values are never said: those typed SecretStr (derived, so a new secret is kept quiet too)
SECRET_SETTINGS = frozenset(
    name
    for name, field in Settings.model_fields.items()
    if SecretStr in (field.annotation, *get_args(field.annotation))
)


def settings_refusal(error: ValidationError) -> str:
    """What is wrong with the environment's settings, one line per variable: ``AMORTIZED_X='value': why``.

    A secret's value is never said (:data:`SECRET_SETTINGS`); a value is quoted to 200 characters
    (:func:`amortized.inputs.quoted`).
    """
    lines = []
    for item in error.errors(include_url=False):
        field = str(item["loc"][0]) if item["loc"] else ""
        name = f"{Settings.model_config.get('env_prefix', '')}{field}".upper()
        value = "" if field in SECRET_SETTINGS or "input" not in item else f"={quoted(str(item['input']))}"
        lines.append(f"{name}{value}: {item['msg']}")
    return "; ".join(lines)


@lru_cache
def get_settings() -> Settings:
    return Settings()
