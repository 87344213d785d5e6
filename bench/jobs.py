"""Compile on request, measured: query latency while a job compiles against idle, and compile time API against CLI.

    .venv/bin/python bench/jobs.py                      # latency rounds and compile time (embedded queue)
    .venv/bin/python bench/jobs.py --acceptance         # the example specs whole, embedded and over Redis, checked

1. **Latency.** One server (``python -m service``, one worker, the embedded
   queue and consumer, as ``make serve`` runs with AMORTIZED_ADMIN_TOKEN set)
   serves the committed artifacts; a closed-loop load (bench/load.py) posts
   posterior queries (gmm_open, one y x 1000 samples, pq). Rounds alternate an
   idle window and a busy one, during which a compile job runs (posted before
   the window, cancelled after it); p50 / p99 of each window, and the CPU the
   job's worker process got in it.
2. **Compile time.** The same spec through the API (POST to succeeded, and to
   served) and through ``python -m trainer compile --spec --jobs 1`` (one
   process, objectives one after the other, as a job runs them), alternating;
   wall-clock and the compiling process's CPU seconds.
3. ``--acceptance``: the two example specs posted whole (both objectives, their
   recipes) to an embedded server and to one whose queue is a real Redis (with
   ``python -m trainer worker``), polled to success, then queried and checked
   with tests/test_service.py's accuracy checks; a third, invalid spec (422,
   nothing queued); a worker SIGKILLed mid-job (seconds until the job reads
   failed, earlier artifacts intact, the next job's status); then the embedded
   server itself SIGKILLed mid-job (``--kill-server`` alone).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from amortized.artifacts import load_artifact, manifest_paths  # noqa: E402
from amortized.variants import read_spec  # noqa: E402
from bench.load import drive, percentile  # noqa: E402
from tests.launch import ROOT, start_server, stop_server  # noqa: E402
from tests.test_jobs import TOKEN, JobClient, finished, live, served, started  # noqa: E402

EXAMPLES = ROOT / "examples" / "variants"
# a job that outlasts a busy window (cancelled after it): gmm_discrete's qp with the most steps a job may take
BUSY_SPEC = {"family": "gmm_discrete", "objectives": ["qp"], "training": {"steps": 20000}}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def latency(api: JobClient, args: argparse.Namespace) -> None:
    url = api.url
    body = b'{"y": 2.7, "objective": "pq", "num_samples": 1000}'
    mix: list[tuple[str, str, str, bytes | None, float]] = [
        ("posterior", "POST", "/v1/models/gmm_open/posterior", body, 1.0)
    ]
    drive(url, mix, args.connections, 3.0)  # warm the connections and the kernels
    rows: dict[str, list[tuple[float, float, int, float]]] = {"idle": [], "compiling": []}
    for round_ in range(args.rounds):
        for state in ("idle", "compiling"):
            job = None
            if state == "compiling":
                job = api.submit({"name": f"busy_{round_}", **BUSY_SPEC})
                record = api.wait(job["id"], started)
                pid = int(record["worker"].split(":")[1])
                cpu = cpu_seconds(pid)
            run = drive(url, mix, args.connections, args.seconds, seed=round_)
            worker_share = 0.0
            if job is not None:
                worker_share = (cpu_seconds(pid) - cpu) / run.wall
                record = api.http.get(f"/v1/jobs/{job['id']}").json()
                still = record["status"] == "running"
                api.http.delete(f"/v1/jobs/{job['id']}")
                api.wait(job["id"], finished)
                if not still:
                    print(f"  (round {round_ + 1}: the job ended before the window did: {record['status']})")
            ok = [r for r in run.records if r.status == 200]
            rows[state].append((percentile(ok, 50), percentile(ok, 99), len(ok), worker_share))
            print(
                f"round {round_ + 1} {state:>9}: {len(ok) / run.wall:7.1f} req/s, p50 {percentile(ok, 50):6.2f} ms, "
                f"p99 {percentile(ok, 99):6.2f} ms, errors {len(run.records) - len(ok)}"
                + (f"; the job's worker got {100 * worker_share:.0f}% of a core" if job else ""),
                flush=True,
            )
    print(f"\nposterior latency, gmm_open, {args.connections} connections, {args.rounds} rounds of {args.seconds:g} s:")
    print("| state | p50 ms (median of rounds) | p99 ms (median of rounds) | job's worker CPU, % of a core |")
    print("|---|---|---|---|")
    for state, values in rows.items():
        p50, p99 = statistics.median(v[0] for v in values), statistics.median(v[1] for v in values)
        share = statistics.median(v[3] for v in values)
        print(f"| {state} | {p50:.2f} | {p99:.2f} | {'-' if state == 'idle' else f'{100 * share:.0f}'} |")
    idle, busy = rows["idle"], rows["compiling"]
    print(
        f"compiling / idle: p50 x{statistics.median(b[0] for b in busy) / statistics.median(i[0] for i in idle):.2f}, "
        f"p99 x{statistics.median(b[1] for b in busy) / statistics.median(i[1] for i in idle):.2f}"
    )


def compile_time(api: JobClient, args: argparse.Namespace) -> None:
    spec = read_spec(args.spec).model_dump(mode="json")
    rows: dict[str, list[tuple[float, float, float]]] = {"API": [], "CLI": []}
    for round_ in range(args.compile_rounds):
        out = Path(tempfile.mkdtemp(prefix="bench-jobs-cli-"))
        before = os.times()
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "trainer", "compile", "--spec", str(args.spec), "--jobs", "1", "--out", str(out)],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        wall = time.perf_counter() - t0
        after = os.times()
        shutil.rmtree(out)
        rows["CLI"].append(
            (
                wall,
                wall,
                (after.children_user - before.children_user) + (after.children_system - before.children_system),
            )
        )
        name = f"{spec['name']}_api{round_}"
        t0 = time.perf_counter()
        job = api.submit(spec | {"name": name})
        record = api.wait(job["id"], started)
        pid = int(record["worker"].split(":")[1])
        cpu = cpu_seconds(pid)
        record = api.wait(job["id"], finished)
        done = time.perf_counter() - t0
        cpu = cpu_seconds(pid) - cpu  # from its first step on (the CLI's: from its start, imports included)
        api.wait(job["id"], served)
        to_served = time.perf_counter() - t0
        assert record["status"] == "succeeded", record
        rows["API"].append((done, to_served, cpu))
        print(
            f"round {round_ + 1}: CLI {rows['CLI'][-1][0]:.1f} s ({rows['CLI'][-1][2]:.1f} s CPU); API {done:.1f} s to "
            f"succeeded, {to_served:.1f} s to served ({cpu:.1f} s CPU of the worker)",
            flush=True,
        )
    print(f"\ncompile time of {args.spec.name} ({', '.join(spec['objectives'])}), medians of {args.compile_rounds}:")
    print("| path | wall s | to served s | CPU s |")
    print("|---|---|---|---|")
    for path, values in rows.items():
        wall, to_served, cpu = (statistics.median(v[i] for v in values) for i in range(3))
        print(f"| {path} | {wall:.1f} | {f'{to_served:.1f}' if path == 'API' else '-'} | {cpu:.1f} |")
    api_wall, cli_wall = (statistics.median(v[0] for v in rows[p]) for p in ("API", "CLI"))
    print(f"API / CLI wall-clock: {api_wall / cli_wall:.2f}")


def acceptance(mode: str, tmp: Path) -> None:
    from tests.test_service import VARIANTS, assert_answer_accurate, assert_meets_compile_bounds

    root = tmp / mode / "artifacts"
    shutil.copytree(ROOT / "artifacts" / "gaussian", root / "gaussian")
    with live(mode, root, {"AMORTIZED_JOB_STALE_SECONDS": "5"}, tmp / f"{mode}.log") as api:
        posted = time.perf_counter()
        jobs = {path.stem: api.submit(read_spec(path).model_dump(mode="json")) for path in sorted(EXAMPLES.iterdir())}
        bad = api.http.post("/v1/models", json={"name": "third", "family": "gmm", "params": {"sigma": -1}})
        listed = {j["name"] for j in api.http.get("/v1/jobs").json()}
        print(
            f"[{mode}] invalid third spec: {bad.status_code} {bad.json()['detail'][0]['loc']}; queued: "
            f"{'third' in listed} (jobs listed: {sorted(listed)})"
        )
        for name, job in jobs.items():
            record = api.wait(job["id"], served)
            print(
                f"[{mode}] {name}: {record['status']} after {time.perf_counter() - posted:.1f} s, served "
                f"{record['served']}, versions {record['versions']}"
            )
            family, y = VARIANTS[name]
            for objective in record["objectives"]:
                answer = api.http.post(
                    f"/v1/models/{name}/posterior",
                    json={"y": y, "objective": objective, "num_samples": 5000, "seed": 11},
                )
                artifact = load_artifact(root / name / f"{objective}.json")
                verdict = "pass"
                try:
                    assert_answer_accurate(answer.json(), artifact.network, artifact.model, family, objective, y)
                except AssertionError as error:
                    verdict = f"FAIL ({str(error).splitlines()[0][:100]})"
                print(f"[{mode}]   {name}/{objective} answer at y = {y}: accuracy checks {verdict}")
            try:
                assert_meets_compile_bounds(api.http.get(f"/v1/models/{name}").json(), name)
                print(f"[{mode}]   {name}: compile bounds pass")
            except AssertionError as error:
                print(f"[{mode}]   {name}: compile bounds FAIL {error}")
        before = {path: load_artifact(path).version for path in manifest_paths(root)}
        job = api.submit({"name": "killed", **BUSY_SPEC})
        record = api.wait(job["id"], started)
        os.kill(int(record["worker"].split(":")[1]), signal.SIGKILL)
        killed = time.perf_counter()
        record = api.wait(job["id"], finished, timeout=60)
        after = {path: load_artifact(path).version for path in manifest_paths(root)}
        print(
            f"[{mode}] worker SIGKILLed at step {record['step']}: {record['status']} after "
            f"{time.perf_counter() - killed:.1f} s (bound: AMORTIZED_JOB_STALE_SECONDS = 5 + a 1 s heartbeat); "
            f"earlier artifacts intact: {after == before} ({len(after)} manifests, sha256 verified)"
        )
        nxt = api.wait(api.submit({"name": "after_kill", "family": "gaussian", "objectives": ["pq"]})["id"], finished)
        print(f"[{mode}] the next job: {nxt['status']}")


def kill_server(tmp: Path) -> None:
    """The embedded server SIGKILLed mid-job: its consumer stops, the job ends failed, a new server runs the next."""
    root = tmp / "kill" / "artifacts"
    shutil.copytree(ROOT / "artifacts" / "gaussian", root / "gaussian")
    env = {"AMORTIZED_ADMIN_TOKEN": TOKEN, "AMORTIZED_ARTIFACTS_DIR": str(root), "AMORTIZED_JOB_STALE_SECONDS": "5"}
    before = {path: load_artifact(path).version for path in manifest_paths(root)}
    with (tmp / "kill.log").open("w") as log:
        server, url = start_server(env, stdout=log, stderr=log, timeout=120)
        api = JobClient("embedded", url, root, tmp / "kill.log")
        job = api.submit({"name": "killed", **BUSY_SPEC})
        record = api.wait(job["id"], started)
        worker = int(record["worker"].split(":")[1])
        os.kill(server.pid, signal.SIGKILL)
        killed = time.perf_counter()
        server.wait()
        while Path(f"/proc/{worker}").exists() and time.perf_counter() - killed < 60:
            time.sleep(0.05)
        gone = time.perf_counter() - killed
        server, url = start_server(env, stdout=log, stderr=log, timeout=120)
        try:
            api = JobClient("embedded", url, root, tmp / "kill.log")
            record = api.http.get(f"/v1/jobs/{job['id']}").json()
            after = {path: load_artifact(path).version for path in manifest_paths(root)}
            nxt = api.submit({"name": "after_kill", "family": "gaussian", "objectives": ["pq"]})
            nxt = api.wait(nxt["id"], finished)
        finally:
            stop_server(server)
    print(
        f"[embedded] server SIGKILLed at step {record['step']}: the job's worker gone {gone:.1f} s after; after a "
        f"restart the job reads {record['status']} ({record['error']}); earlier artifacts intact: {after == before}; "
        f"the next job: {nxt['status']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each latency window")
    parser.add_argument("--rounds", type=int, default=3, help="idle / compiling rounds")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--spec", type=Path, default=EXAMPLES / "gmm_open_k3.yaml", help="the compile-time spec")
    parser.add_argument("--compile-rounds", type=int, default=2)
    parser.add_argument("--nice", type=int, default=10, help="AMORTIZED_JOB_NICE of the embedded consumer")
    parser.add_argument("--acceptance", action="store_true", help="the acceptance runs instead (both modes)")
    parser.add_argument("--kill-server", action="store_true", help="only the acceptance's SIGKILL of the server")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as folder:
        tmp = Path(folder)
        if args.acceptance:
            for mode in ("embedded", "redis"):
                acceptance(mode, tmp)
            kill_server(tmp)
            return
        if args.kill_server:
            kill_server(tmp)
            return
        root = tmp / "artifacts"
        shutil.copytree(ROOT / "artifacts", root, ignore=shutil.ignore_patterns(".*"))
        env = {"AMORTIZED_JOB_NICE": str(args.nice), "AMORTIZED_JOB_MAX_STEPS": "20000"}
        with live("embedded", root, env, tmp / "server.log") as api:
            print(f"server {api.url}: embedded queue, consumer at nice +{args.nice}, {os.cpu_count()} cores\n")
            latency(api, args)
            print()
            compile_time(api, args)


if __name__ == "__main__":
    main()
