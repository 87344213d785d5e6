"""The compose topology without Docker: N api replicas and HAProxy, all on loopback.

Each replica is ``python -m service`` (WEB_CONCURRENCY workers, default
1) on its own port; HAProxy (Debian's haproxy, the same 2.6 as the compose
image) runs deploy/haproxy/haproxy.cfg with its servers replaced by the
replicas. Like compose's ``restart: unless-stopped``, a replica that dies is
started again on its port, and HAProxy puts it back once /health/ready says 200.

    .venv/bin/python bench/cluster.py [--replicas 2] [--port 8000]   # until Ctrl-C

``Cluster`` is what bench/failover.py and the tests use.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.launch import ROOT, free_port, start_server, stop_server, wait_ready  # noqa: E402

CONFIG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"


def haproxy_config(servers: list[tuple[str, int]], port: int, stats_port: int) -> str:
    """deploy/haproxy/haproxy.cfg with loopback servers, listening on ``port`` (stats on ``stats_port``)."""
    text = CONFIG.read_text()
    lines = "".join(f"    server {name} 127.0.0.1:{server_port}\n" for name, server_port in servers)
    text = re.sub(r"    # CLUSTER servers: begin\n.*?    # CLUSTER servers: end\n", lines, text, flags=re.DOTALL)
    text = re.sub(r"# CLUSTER resolvers: begin\n.*?# CLUSTER resolvers: end\n", "", text, flags=re.DOTALL)
    text = text.replace("    bind :8000\n", f"    bind 127.0.0.1:{port}\n").replace(
        "    bind :8404\n", f"    bind 127.0.0.1:{stats_port}\n"
    )
    return text


class Replica:
    def __init__(self, name: str, port: int, env: dict[str, str], log: Path) -> None:
        self.name, self.port, self.env, self.log = name, port, env, log
        self.process: subprocess.Popen | None = None
        self.starts: list[float] = []  # monotonic time of each start
        self.exits: list[tuple[float, int]] = []  # (monotonic time noticed, return code)

    def start(self, wait: bool = True) -> None:
        with open(self.log, "ab") as out:
            self.process, _ = (
                start_server(
                    self.env,
                    "--log-level",
                    "warning",
                    "--no-access-log",
                    port=self.port,
                    timeout=120,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
                if wait
                else (self._spawn(out), None)
            )
        self.starts.append(time.monotonic())

    def _spawn(self, out) -> subprocess.Popen:
        command = [
            sys.executable,
            "-m",
            "service",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            "--no-access-log",
        ]
        return subprocess.Popen(command, env={**os.environ, **self.env}, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


class Cluster:
    """``with Cluster(2) as cluster:`` replicas ready and HAProxy up at ``cluster.url``; everything stopped at exit."""

    def __init__(
        self, replicas: int = 2, port: int | None = None, workers: int = 1, env: dict[str, str] | None = None
    ) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="amortized-cluster-"))
        base = {"AMORTIZED_ARTIFACTS_DIR": str(ROOT / "artifacts"), "WEB_CONCURRENCY": str(workers), **(env or {})}
        base.pop("PROMETHEUS_MULTIPROC_DIR", None)  # each replica makes its own
        self.replicas = [
            Replica(f"api{i + 1}", free_port(), base, self.folder / f"api{i + 1}.log") for i in range(replicas)
        ]
        self.port, self.stats_port = port or free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.haproxy: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> Cluster:
        if shutil.which("haproxy") is None:
            raise RuntimeError("haproxy is needed: apt-get install haproxy")
        try:
            for replica in self.replicas:  # one at a time: two start-ups at once share the 2 cores
                replica.start()
            config = self.folder / "haproxy.cfg"
            config.write_text(haproxy_config([(r.name, r.port) for r in self.replicas], self.port, self.stats_port))
            check = subprocess.run(["haproxy", "-c", "-q", "-f", str(config)], capture_output=True, text=True)
            if check.returncode:
                raise RuntimeError(f"haproxy refused {config}:\n{check.stdout}{check.stderr}")
            with open(self.folder / "haproxy.log", "ab") as out:
                self.haproxy = subprocess.Popen(
                    ["haproxy", "-db", "-f", str(config)], stdout=out, stderr=subprocess.STDOUT
                )
            wait_ready(self.url, self.haproxy, timeout=30)
            self.wait_until(lambda states: all(s == "UP" for s in states.values()), 30)
        except BaseException:
            self.__exit__()
            raise
        self._watcher.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._watcher.is_alive():
            self._watcher.join()
        if self.haproxy is not None:
            stop_server(self.haproxy)
        for replica in self.replicas:
            if replica.process is not None and replica.process.poll() is None:
                stop_server(replica.process)
        shutil.rmtree(self.folder, ignore_errors=True)

    def _watch(self) -> None:
        """Start a replica again when it has died (compose's restart policy), on the same port."""
        while not self._stop.wait(0.05):
            for replica in self.replicas:
                if replica.process is not None and (code := replica.process.poll()) is not None:
                    replica.exits.append((time.monotonic(), code))
                    replica.start(wait=False)

    def stats(self) -> dict[str, dict[str, str]]:
        """HAProxy's statistics per server of the api backend.

        Status UP/DOWN, scur: requests on it now, stot: total.
        """
        with urllib.request.urlopen(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=2) as response:
            rows = csv.DictReader(io.StringIO(response.read().decode().lstrip("# ")))
            return {
                row["svname"]: row
                for row in rows
                if row["pxname"] == "api" and row["svname"] not in ("FRONTEND", "BACKEND")
            }

    def states(self) -> dict[str, str]:
        return {name: row["status"].split()[0] for name, row in self.stats().items()}

    def wait_until(self, condition, timeout: float, poll: float = 0.02) -> float:
        """Seconds until ``condition(states)`` held; raises after ``timeout``."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if condition(self.states()):
                return time.monotonic() - started
            time.sleep(poll)
        raise TimeoutError(f"HAProxy states after {timeout} s: {self.states()}")

    def kill(self, index: int) -> int:
        """SIGKILL replica ``index`` (its server process; with several workers, the supervisor and its workers)."""
        process = self.replicas[index].process
        children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
        os.kill(process.pid, signal.SIGKILL)
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(child), signal.SIGKILL)
        return process.pid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="WEB_CONCURRENCY of each replica")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    with Cluster(args.replicas, args.port, args.workers) as cluster:
        print(
            f"HAProxy on {cluster.url} -> "
            + ", ".join(f"{r.name} :{r.port}" for r in cluster.replicas)
            + f"; statistics on http://127.0.0.1:{cluster.stats_port}/stats; Ctrl-C stops",
            flush=True,
        )
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
