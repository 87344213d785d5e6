"""Two uvicorn workers behind one port (python -m service, WEB_CONCURRENCY=2): /metrics sums them."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from pydantic import ValidationError

from service.__main__ import uvicorn_options, worker_count
from service.settings import Settings, settings_refusal
from tests.conftest import ARTIFACTS
from tests.launch import ROOT, start_server, stop_server

N = 24


def get(url: str, body: bytes | None = None) -> str:
    """One request on a new connection each time, so the kernel may hand it to either worker."""
    request = urllib.request.Request(url, body, {"content-type": "application/json", "connection": "close"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read().decode()


def value(text: str, pattern: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{pattern} (\S+)$", text, re.MULTILINE))


def worker_pids(text: str) -> set[str]:
    return set(re.findall(r'^process_resident_memory_bytes\{pid="(\d+)"\}', text, re.MULTILINE))


def wait_for_workers(url: str, count: int, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = get(f"{url}/metrics")
        if value(text, "amortized_workers") == count and len(worker_pids(text)) == count:
            return text
        time.sleep(0.3)
    raise AssertionError(f"not {count} workers after {timeout} s:\n{text}")


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("multiproc")
    (folder / "counter_1.db").write_bytes(b"stale")  # a previous start's file: the launcher must clear it
    process, url = start_server(
        {"AMORTIZED_ARTIFACTS_DIR": str(ARTIFACTS), "WEB_CONCURRENCY": "2", "PROMETHEUS_MULTIPROC_DIR": str(folder)},
        "--log-level",
        "warning",
        timeout=90,
    )
    wait_for_workers(url, 2)
    yield url, folder, process.pid
    stop_server(process)


def per_worker_counts(folder) -> list[float]:
    """Each worker's own count of posterior requests, read from its file."""
    counts = []
    for path in folder.glob("counter_*.db"):
        families = MultiProcessCollector.merge([str(path)])
        counts.append(
            sum(s.value for f in families for s in f.samples if s.name == "amortized_posterior_requests_total")
        )
    return counts


def test_counters_are_the_sum_over_workers_and_survive_a_dead_worker(two_workers):
    url, folder, _ = two_workers
    # 30 y x 1000 draws: answered on the event loop (~20 ms), so while one worker is busy the other accepts
    body = json.dumps({"y": [0.1 * i for i in range(30)], "objective": "qp", "num_samples": 1000}).encode()
    sent = 0
    with ThreadPoolExecutor(4) as pool:
        while sent < N or (sum(c > 0 for c in per_worker_counts(folder)) < 2 and sent < 20 * N):
            list(pool.map(lambda _: get(f"{url}/v1/models/gmm/posterior", body), range(8)))
            sent += 8
    ok = r'amortized_posterior_requests_total\{code="200",model="gmm",objective="qp"\}'
    for _ in range(8):  # whichever worker answers the scrape
        assert value(get(f"{url}/metrics"), ok) == sent
    counts = per_worker_counts(folder)
    assert sum(c > 0 for c in counts) == 2 and sum(counts) == sent, counts  # both answered some: the total is a sum

    before = worker_pids(get(f"{url}/metrics"))
    os.kill(int(min(before)), signal.SIGKILL)  # uvicorn starts another worker; the dead one's counts stay in the sum
    text = wait_for_workers(url, 2)
    deadline = time.monotonic() + 30
    while worker_pids(text) & before == before and time.monotonic() < deadline:
        time.sleep(0.3)
        text = wait_for_workers(url, 2)
    assert len(worker_pids(text) - before) == 1 and value(text, "amortized_workers") == 2
    assert value(text, ok) == sent
    get(f"{url}/v1/models/gmm/posterior", body)
    assert value(get(f"{url}/metrics"), ok) == sent + 1


@pytest.mark.parametrize("workers", ["1", "2"])
def test_stopping_leaves_no_temporary_files(tmp_path, workers):
    """SIGTERM (what Kubernetes and ``docker stop`` send) removes the metrics folder and the logging file it made."""
    process, _ = start_server(
        {"TMPDIR": str(tmp_path), "WEB_CONCURRENCY": workers}, "--log-level", "warning", timeout=90
    )
    made = sorted(path.name for path in tmp_path.iterdir())
    assert any(name.startswith("amortized-metrics-") for name in made), made
    assert any(name.startswith("amortized-logging-") for name in made), made
    stop_server(process)
    assert process.returncode in (0, 128 + signal.SIGTERM), process.returncode
    assert not [path.name for path in tmp_path.iterdir() if path.name.startswith("amortized-")]


def refused_start(env: dict[str, str], *options: str) -> tuple[int, str]:
    """``python -m service`` with ``env`` added: its exit status and stderr (90 s at most)."""
    command = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", "0", *options]
    environment = {**os.environ, "AMORTIZED_ARTIFACTS_DIR": str(ARTIFACTS), **env}
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=90, cwd=ROOT)
    return done.returncode, done.stderr


@pytest.mark.parametrize("workers", [(), ("--workers", "2"), ("WEB_CONCURRENCY", "2")])
def test_settings_out_of_range_stop_the_server_at_start_in_one_line_with_any_worker_count(workers):
    """A setting out of its range printed a traceback; with several workers uvicorn restarted each failed worker for
    ever and the server never exited. Now every such setting is named in one line, with exit status 3."""
    env = {"AMORTIZED_HEAVY_CONCURRENCY": "0", "AMORTIZED_GZIP_LEVEL": "fast", "AMORTIZED_SEND_TIMEOUT_SECONDS": "-1"}
    options: tuple[str, ...] = workers
    if workers and workers[0] == "WEB_CONCURRENCY":
        env, options = {**env, "WEB_CONCURRENCY": "2"}, ()
    status, stderr = refused_start(env, *options)
    assert status == 3 and "Traceback" not in stderr, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("service: not started: "), stderr[-2000:]
    assert "AMORTIZED_HEAVY_CONCURRENCY='0': Input should be greater than or equal to 1" in last
    assert "AMORTIZED_GZIP_LEVEL='fast': Input should be a valid integer" in last
    assert "AMORTIZED_SEND_TIMEOUT_SECONDS='-1': Input should be greater than or equal to 1" in last


def test_one_refusal_names_the_token_beside_the_settings_out_of_range():
    """The token's problem came only once the other settings were mended: a start names every problem."""
    status, stderr = refused_start({"AMORTIZED_HEAVY_CONCURRENCY": "0", "AMORTIZED_ADMIN_TOKEN": "short"})
    last = stderr.strip().splitlines()[-1]
    assert (
        status == 3 and "AMORTIZED_HEAVY_CONCURRENCY='0'" in last and "AMORTIZED_ADMIN_TOKEN has 5 characters" in last
    )
    assert "short" not in last


@pytest.mark.parametrize("token", ["~" * 9, "\u00e9" * 16])
def test_an_unusable_admin_token_stops_a_server_of_two_workers_at_start_and_is_never_said(token):
    status, stderr = refused_start({"AMORTIZED_ADMIN_TOKEN": token, "WEB_CONCURRENCY": "2"})
    assert status == 3 and "Traceback" not in stderr, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].startswith("service: not started: AMORTIZED_ADMIN_TOKEN ")
    assert token not in stderr


def test_a_secret_setting_of_the_wrong_type_is_named_and_its_value_never_said():
    with pytest.raises(ValidationError) as refused:
        Settings(admin_token=12345678901234567, gzip_level=0)
    said = settings_refusal(refused.value)
    assert "AMORTIZED_ADMIN_TOKEN: Input should be a valid string" in said and "12345" not in said
    assert "AMORTIZED_GZIP_LEVEL='0': Input should be greater than or equal to 1" in said


@pytest.mark.parametrize(
    "line, words",
    [
        ("AMORTIZED_HEAVY_CONCURRENCY=0", "AMORTIZED_HEAVY_CONCURRENCY='0'"),
        ("PROMETHEUS_MULTIPROC_DIR=FILE", "cannot be the metrics folder"),  # the file was read after the folder
    ],
)
def test_an_env_file_is_checked_like_the_environment_with_two_workers(tmp_path, line, words):
    """uvicorn's --env-file got past the check: with two workers uvicorn restarted them for ever."""
    env_file = tmp_path / "bad.env"
    (tmp_path / "file").write_text("")
    env_file.write_text(line.replace("FILE", str(tmp_path / "file")) + "\n")
    status, stderr = refused_start({}, "--workers", "2", "--env-file", str(env_file))
    assert status == 3 and "Traceback" not in stderr, stderr[-2000:]
    assert words in stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "env, words",
    [
        ({"WEB_CONCURRENCY": "two"}, "WEB_CONCURRENCY='two': the number of worker processes is a whole number"),
        ({"PROMETHEUS_MULTIPROC_DIR": "FILE"}, "cannot be the metrics folder"),
        ({"PROMETHEUS_MULTIPROC_DIR": "/proc/self"}, "PROMETHEUS_MULTIPROC_DIR='/proc/self' cannot be the metrics"),
        ({"AMORTIZED_ADMIN_TOKEN": "a" * 32, "AMORTIZED_QUEUE": "sqlite:///DIR"}, "cannot be opened"),
        ({"AMORTIZED_RELOAD_INTERVAL": "1e-300"}, "AMORTIZED_RELOAD_INTERVAL='1e-300': Input should be greater than"),
        ({"AMORTIZED_SEND_TIMEOUT_SECONDS": "1e-9"}, "AMORTIZED_SEND_TIMEOUT_SECONDS='1e-9': Input should be greater"),
        ({"AMORTIZED_BODY_TIMEOUT_SECONDS": "0.001"}, "AMORTIZED_BODY_TIMEOUT_SECONDS='0.001': Input should be"),
    ],
)
def test_every_environment_that_cannot_serve_is_refused_in_one_line(tmp_path, env, words):
    """Each used to end in a traceback (or to start and then spin: a rescan every 1e-300 s kept an idle server at full
    CPU; a send timeout of 1e-9 s cut off every heavy answer)."""
    (tmp_path / "file").write_text("")
    (tmp_path / "dir").mkdir()
    env = {k: v.replace("FILE", str(tmp_path / "file")).replace("DIR", str(tmp_path / "dir")) for k, v in env.items()}
    status, stderr = refused_start(env)
    assert status == 3 and "Traceback" not in stderr, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("service: not started: ") and words in last, last


@pytest.mark.parametrize("options", [("--bogus",), ("--port", "notanumber"), ("--workers", "abc"), ("main:app",)])
def test_an_option_uvicorn_cannot_read_gets_its_usage_message_not_a_traceback(options):
    status, stderr = refused_start({}, *options)
    assert status == 2 and "Traceback" not in stderr and "Error: " in stderr, stderr[-2000:]


def test_help_is_answered_whatever_the_settings():
    status, stderr = refused_start({"AMORTIZED_HEAVY_CONCURRENCY": "0"}, "--help")
    assert status == 0 and "not started" not in stderr


def test_the_workers_are_counted_as_uvicorn_counts_them(monkeypatch):
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    assert worker_count(uvicorn_options(["--workers", "2"])) == 2 and worker_count(uvicorn_options([])) == 1
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    assert worker_count(uvicorn_options([])) == 3 and worker_count(uvicorn_options(["--workers", "1"])) == 1


def test_the_supervisor_of_two_workers_never_loads_torch(two_workers):
    """With several workers the settings are checked in a child process: the check in the supervisor loaded torch
    there (383 MB resident in a process that only watches its workers)."""
    _, _, supervisor = two_workers
    maps = Path(f"/proc/{supervisor}/maps").read_text()
    assert "libtorch" not in maps and "libtorch" in Path(f"/proc/{os.getpid()}/maps").read_text()
