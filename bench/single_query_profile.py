"""Where a single query's CPU goes under load: py-spy on one uvicorn worker while wrk drives it (issue 15, item 6).

The worker serves the posterior endpoint, then the bare endpoint of
bench/serve_benchmark.py (same stack and body, a precomputed answer of the
same bytes), each for ``--seconds`` under wrk (1 thread, ``--connections``);
py-spy samples the worker meanwhile (``record --nonblocking -f raw``). Each
sample's stack is put in one part of the request path (the first rule of
:data:`PARTS` whose frame it holds), and each part's share of the samples,
times the worker's CPU per request (from /proc), gives its CPU per request,
for the posterior beside the bare endpoint: the difference is what the
posterior adds. Body: one y, 1000 samples, full diagnostics.

    .venv/bin/python bench/single_query_profile.py [--model gmm] [--seconds 20] [--connections 8] [--rate 200]

py-spy is a profiling tool, not a dependency of the service: ``.venv/bin/pip install -e '.[profile]'``.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from serve_benchmark import wrk  # bench/serve_benchmark.py, beside this script

from tests.launch import ROOT, start_server, stop_server

# (part, a frame that puts a sample in it): the first rule that matches a stack wins, so the science's parts come
# before the answer's layout, and both before the handler and the stack around them
PARTS = [
    ("science: cross-check (both networks' draws weighed, the mixture)", "cross_check (amortized/diagnostics.py"),
    ("science: PSIS k-hat", "pareto_k_hat (amortized/importance/psis.py"),
    ("science: q's own draws weighed (below the check's budget)", "weigh (amortized/importance/weighing.py"),
    ("science: exact answer, KL quadrature", "exact_summary (amortized/diagnostics.py"),
    ("science: networks' forward", "forward (service/registry.py"),
    ("science: seeding the rows' generators", "generator_for (amortized/importance/streams.py"),
    ("science: exact posterior and evidence", "exact_posterior_and_evidence"),
    ("science: verdicts", "verdict (amortized/diagnostics.py"),
    ("science: the rest of analyse", "analyse (amortized/diagnostics.py"),
    ("layout: JSON rows (service/answers.py)", "json_results (service/answers.py"),
    ("layout: the rest of answer_batch", "answer_batch (service/answers.py"),
    ("orjson: the answer's bytes", "json_response (service/responses.py"),
    ("endpoint: posterior handler (checks, batcher, headers, metrics)", "posterior (service/routers/posterior.py"),
    ("endpoint: bare handler", "bare (service/routers/bench.py"),
    ("FastAPI: body, validation, dependencies", "solve_dependencies (fastapi/dependencies/utils.py"),
    ("metrics middleware", "ResponseMetrics._record (service/metrics.py"),
    ("uvicorn: sending the response", "RequestResponseCycle.send (uvicorn/"),
    ("uvicorn: reading and parsing the request", "data_received (uvicorn/"),
]
OTHER = "the rest: event loop, routing, middleware, Starlette"


def py_spy() -> str | None:
    """py-spy on the PATH, or beside this interpreter (installed into the venv)."""
    return shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))


def profile(pid: int, url: str, body: dict, seconds: int, connections: int, rate: int) -> tuple[dict, dict]:
    """wrk's figures (with ``cpu_ms``: the worker's CPU per request) and py-spy's samples per part of the path."""
    with tempfile.NamedTemporaryFile(suffix=".txt") as raw:
        spy = subprocess.Popen(
            [str(py_spy()), "record", "--nonblocking", "-f", "raw", "-r", str(rate), "-d", str(seconds + 1)]
            + ["-o", raw.name, "--pid", str(pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(0.5)  # attached before the load starts
        figures = wrk(url, body, seconds, connections, pid)
        if spy.wait() != 0:
            raise SystemExit(f"py-spy failed (ptrace permitted?): {spy.stderr.read().decode() if spy.stderr else ''}")
        samples: collections.Counter[str] = collections.Counter()
        # "\n" only: str.splitlines also breaks at characters some frames hold (a form feed in a docstring line)
        for line in Path(raw.name).read_text().split("\n"):
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            if "WorkerThread.run" in stack and ";" not in stack.split("WorkerThread.run", 1)[1]:
                continue  # an idle thread of the pool, parked in C
            samples[next((part for part, frame in PARTS if frame in stack), OTHER)] += int(count)
    return figures, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gmm")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    args = parser.parse_args()
    if shutil.which("wrk") is None or py_spy() is None:
        raise SystemExit("wrk and py-spy are needed: apt-get install wrk; .venv/bin/pip install -e '.[profile]'")
    body = {"y": 0.3, "objective": "pq", "num_samples": 1000, "seed": 1}
    paths = {"posterior": f"/v1/models/{args.model}/posterior", "bare": f"/v1/_bench/bare/{args.model}"}
    results = {}
    with tempfile.TemporaryDirectory(prefix="single-query-profile-") as folder:
        env = {
            "AMORTIZED_BENCH_ENDPOINTS": "1",
            "AMORTIZED_ARTIFACTS_DIR": str(ROOT / "artifacts"),
            "PROMETHEUS_MULTIPROC_DIR": folder,
        }
        options = ("--workers", "1", "--log-level", "warning", "--no-access-log")
        process, base = start_server(env, *options, timeout=180)
        try:
            for endpoint, path in paths.items():
                wrk(base + path, body, 2, args.connections, process.pid)  # warm
                results[endpoint] = profile(process.pid, base + path, body, args.seconds, args.connections, args.rate)
        finally:
            stop_server(process)
    print(
        f"one uvicorn worker, wrk -t1 -c{args.connections} for {args.seconds} s per endpoint, py-spy at {args.rate}/s;"
        f" {args.model}, body {body}"
    )
    for endpoint, (figures, samples) in results.items():
        print(
            f"{endpoint}: {figures['rps']:.0f} req/s, p50 {figures['p50']:.2f} ms, worker CPU"
            f" {figures['cpu_ms']:.3f} ms per request, {sum(samples.values())} samples"
        )
    print("| part of the request path | posterior: share | posterior: CPU us / request | bare: CPU us / request |")
    print("|---|---|---|---|")
    per_request = {}
    for endpoint, (figures, samples) in results.items():
        total = sum(samples.values())
        per_request[endpoint] = {part: 1e3 * figures["cpu_ms"] * n / total for part, n in samples.items()}
    posterior_total = sum(results["posterior"][1].values())
    for part in [p for p, _ in PARTS] + [OTHER]:
        if part not in per_request["posterior"] and part not in per_request["bare"]:
            continue
        share = results["posterior"][1].get(part, 0) / posterior_total
        print(
            f"| {part} | {share:.1%} | {per_request['posterior'].get(part, 0.0):.0f} |"
            f" {per_request['bare'].get(part, 0.0):.0f} |"
        )
    cpu = {endpoint: figures["cpu_ms"] for endpoint, (figures, _) in results.items()}
    print(
        f"CPU per request: posterior {cpu['posterior']:.3f} ms, bare {cpu['bare']:.3f} ms; bare / posterior"
        f" {cpu['bare'] / cpu['posterior']:.2f} (0.7 needs the posterior under {cpu['bare'] / 0.7:.3f} ms)"
    )


if __name__ == "__main__":
    main()
