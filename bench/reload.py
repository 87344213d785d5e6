"""Live reload under load: replace an artifact by recompiled ones, then by a corrupt one, while requests keep coming.

A copy of the committed artifacts is served by uvicorn (--workers 2 by default;
each worker watches the folder). A load of --rate requests/s on a fixed
schedule runs for at least --seconds, until the replacements below are done,
over a mix of variants (the four defaults and the two examples; pq, qp, both).
Meanwhile the target artifact (gmm_sigma5/pq) is replaced:

1. with --trainer-in-place, first by the trainer recompiling it (seed 1)
   straight into the served folder (on 2 cores the compile competes with the
   server and the load for CPU, so this is optional);
2. every --every seconds (--swaps times), by one of two versions recompiled
   beforehand with the trainer (seeds 2 and 3), installed the way the trainer
   commits: new weights, then the manifest by an atomic rename;
3. and last by a corrupt one (a flipped byte in new weights, the manifest
   claiming their true sha256), which every worker must refuse while the
   version before it keeps answering.

Printed: requests sent and failed (must be 0), the rate reached, latency, and
for each replacement the time from the manifest's replacement to the first
answer of the new version and to the moment every worker answers with it
(median and max; target under 2 s).

    .venv/bin/python bench/reload.py [--seconds 30] [--rate 250] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

from amortized.artifacts import atomic_write

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.launch import ROOT, start_server, stop_server

SPEC = ROOT / "examples" / "variants" / "gmm_sigma5.json"
TARGET, OBJECTIVE = "gmm_sigma5", "pq"
SAMPLES = 100  # per observation: a light answer, so that the client keeps the rate on a shared 2-core machine
MIX = [  # (variant, body) cycled; every third request asks the target
    (TARGET, {"y": 3.0, "objective": OBJECTIVE}),
    ("gmm_open_k3", {"y": 2.7, "objective": "qp"}),
    ("gaussian", {"y": 0.8, "objective": "both"}),
    (TARGET, {"y": -1.0, "objective": "both"}),
    ("gmm", {"y": 6.0, "objective": "pq"}),
    ("gmm_discrete", {"y": -3.0, "objective": "qp"}),
    (TARGET, {"y": 8.0, "objective": OBJECTIVE}),
    ("gmm_open", {"y": [2.7, -1.0], "objective": "pq"}),
    ("gmm_sigma5", {"y": 0.0, "objective": "qp"}),
]


@dataclass
class Record:
    sent: float
    received: float
    variant: str
    status: int | None
    version: str | None = None  # the target network's version, for answers of the target
    error: str | None = None


@dataclass
class Replacement:
    kind: str
    at: float
    old: str
    new: str
    first_new: float | None = None
    all_new: float | None = None


@dataclass
class Run:
    records: list[Record] = field(default_factory=list)
    replacements: list[Replacement] = field(default_factory=list)


def target_version(body: dict) -> str | None:
    results = body.get("results", [body])
    first = results[0]
    first = first["objectives"][OBJECTIVE] if "objectives" in first else first
    return first["versions"].get(OBJECTIVE)


async def one_request(client: httpx.AsyncClient, base: str, i: int, run: Run) -> None:
    variant, body = MIX[i % len(MIX)]
    sent = time.monotonic()
    try:
        response = await client.post(
            f"{base}/v1/models/{variant}/posterior", json={**body, "num_samples": SAMPLES, "seed": i}
        )
        record = Record(sent, time.monotonic(), variant, response.status_code)
        if response.status_code == 200 and variant == TARGET:
            record.version = target_version(orjson.loads(response.content))
        elif response.status_code != 200:
            record.error = response.text[:200]
    except httpx.HTTPError as error:
        record = Record(sent, time.monotonic(), variant, None, error=repr(error))
    run.records.append(record)


async def load(base: str, rate: float, stop: asyncio.Event, run: Run, connections: int) -> float:
    """Request i is due at start + i / rate until ``stop``.

    ``connections`` lanes, one keep-alive connection each, send what is due.

    A lane sends the next request at its time, or at once when behind (then
    the rate reached falls below the one asked for, and the report says so).
    One connection per lane: httpx's shared pool slows down quadratically with
    the requests queued in it.
    """
    start = time.monotonic()
    counter = itertools.count()

    async def lane() -> None:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=1), timeout=30) as client:
            for i in counter:  # shared: each request is taken by one lane
                if stop.is_set():
                    return
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await one_request(client, base, i, run)

    await asyncio.gather(*(lane() for _ in range(connections)))
    return time.monotonic() - start


def version_of(manifest: Path) -> str:
    return json.loads(manifest.read_bytes())["weights"]["sha256"][:16]


def install(source: Path, folder: Path) -> float:
    """Put the artifact of manifest ``source`` into ``folder`` as the trainer commits.

    Weights, then the manifest (atomic).
    """
    manifest = json.loads(source.read_bytes())
    weights = manifest["weights"]["file"]
    atomic_write(folder / weights, (source.parent / weights).read_bytes())
    atomic_write(folder / source.name, source.read_bytes())  # the commit point
    at = time.monotonic()
    for stale in folder.glob(f"{source.stem}-*.safetensors"):
        if stale.name != weights:
            stale.unlink(missing_ok=True)
    return at


def install_corrupt(source: Path, folder: Path) -> tuple[float, Path]:
    manifest = json.loads(source.read_bytes())
    data = bytearray((source.parent / manifest["weights"]["file"]).read_bytes())
    data[len(data) // 2] ^= 0xFF
    atomic_write(folder / manifest["weights"]["file"], bytes(data))
    atomic_write(folder / source.name, source.read_bytes())
    return time.monotonic(), folder / source.name


def compile_command(seed: int, out: Path) -> list[str]:
    """The trainer recompiling the target from its spec with ``seed``, into ``out``."""
    return [
        *[sys.executable, "-m", "trainer", "compile", "--spec", str(SPEC), "--objective", OBJECTIVE],
        *["--seed", str(seed), "--jobs", "1", "--no-figures", "--out", str(out)],
    ]


def compile_versions(seeds: list[int], root: Path) -> list[Path]:
    """The target recompiled with each seed, side by side (one trainer process each), each in its own folder."""
    processes = [
        subprocess.Popen(
            compile_command(seed, root / f"version-{seed}"),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for seed in seeds
    ]
    if any(process.wait() != 0 for process in processes):
        raise SystemExit("compiling the replacement versions failed")
    return [root / f"version-{seed}" / TARGET / f"{OBJECTIVE}.json" for seed in seeds]


async def readiness_of_every_worker(base: str, workers: int) -> dict[int, dict]:
    """/health/ready over fresh connections until every worker has answered (the kernel spreads connections)."""
    seen: dict[int, dict] = {}
    async with httpx.AsyncClient(timeout=10) as client:
        for _ in range(200):
            body = (await client.get(f"{base}/health/ready", headers={"connection": "close"})).json()
            seen[body["worker"]] = body
            if len(seen) == workers:
                break
    return seen


async def replace(
    base: str,
    folder: Path,
    versions: list[Path],
    args: argparse.Namespace,
    run: Run,
    started: float,
    stop: asyncio.Event,
):
    """The replacements, on a schedule: (the trainer in place,) precompiled swaps, then the corrupt one.

    Then stop the load.
    """
    live = folder / TARGET / f"{OBJECTIVE}.json"
    await asyncio.sleep(2.0)
    if args.trainer_in_place:
        old = version_of(live)
        process = await asyncio.create_subprocess_exec(
            *compile_command(1, folder),
            cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await process.wait()
        # the manifest's mtime is wall-clock time: its rename, give or take its fsync
        offset = time.time() - time.monotonic()
        replaced = live.stat().st_mtime_ns / 1e9 - offset
        run.replacements.append(Replacement("recompiled by the trainer, in place", replaced, old, version_of(live)))
        await asyncio.sleep(args.every)
    for i in range(args.swaps):
        source = versions[i % len(versions)]
        old = version_of(live)
        at = await asyncio.to_thread(install, source, folder / TARGET)
        run.replacements.append(
            Replacement(f"recompiled (seed {2 + i % len(versions)}), installed", at, old, version_of(source))
        )
        await asyncio.sleep(args.every)
    kept = version_of(live)
    corrupt_at, corrupt_path = await asyncio.to_thread(
        install_corrupt, versions[args.swaps % len(versions)], folder / TARGET
    )
    await asyncio.sleep(4.0)
    verdicts = await readiness_of_every_worker(base, args.workers)
    await asyncio.sleep(max(0.0, args.seconds - (time.monotonic() - started)))
    stop.set()
    return corrupt_at, corrupt_path, kept, verdicts


def measure(run: Run) -> None:
    """For each replacement: first answer with the new version, and when no later-sent request got the old one."""
    target = sorted((r for r in run.records if r.version is not None), key=lambda r: r.sent)
    for k, rep in enumerate(run.replacements):
        until = run.replacements[k + 1].at if k + 1 < len(run.replacements) else float("inf")
        window = [r for r in target if rep.at <= r.sent < until]
        new = [r.received for r in window if r.version == rep.new]
        if not new:
            continue
        rep.first_new = min(new) - rep.at
        stale = [r.received for r in window if r.version == rep.old]
        rep.all_new = max([min(new), *stale]) - rep.at


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="reload-bench-") as tmp:
        folder = Path(tmp) / "artifacts"
        shutil.copytree(ROOT / "artifacts", folder, ignore=shutil.ignore_patterns("*.png"))
        print(f"compiling two replacement versions of {TARGET}/{OBJECTIVE} beforehand (seeds 2 and 3) ...", flush=True)
        versions = compile_versions([2, 3], Path(tmp))
        env = {"AMORTIZED_ARTIFACTS_DIR": str(folder)}
        server, base = start_server(
            env, "--workers", str(args.workers), "--log-level", "warning", "--no-access-log", timeout=180
        )
        try:
            async with httpx.AsyncClient() as client:  # every worker warmed up before the clock starts
                for _ in range(50):
                    await client.post(
                        f"{base}/v1/models/{TARGET}/posterior", json={"y": 0.0}, headers={"connection": "close"}
                    )
            run, stop = Run(), asyncio.Event()
            started = time.monotonic()
            loader = asyncio.create_task(load(base, args.rate, stop, run, args.connections))
            corrupt_at, corrupt_path, kept, verdicts = await replace(base, folder, versions, args, run, started, stop)
            elapsed = await loader
        finally:
            stop_server(server)
    measure(run)
    failed = [r for r in run.records if r.status != 200]
    latencies = [1000 * (r.received - r.sent) for r in run.records]
    print(
        f"\n{args.workers} uvicorn worker(s), load of {args.rate:g} requests/s for {elapsed:.1f} s (at least "
        f"{args.seconds:g}) over "
        f"{len({v for v, _ in MIX})} variants ({SAMPLES} samples each, pq / qp / both), {args.connections} connections"
    )
    print(
        f"requests: {len(run.records)} sent, {len(run.records) / elapsed:.0f} per second reached; "
        f"latency p50 {percentile(latencies, 0.5):.1f} ms, p99 {percentile(latencies, 0.99):.1f} ms"
    )
    first = min(r.sent for r in run.records)
    per_second = [0] * int(elapsed)
    for record in run.records:
        if int(record.received - first) < len(per_second):
            per_second[int(record.received - first)] += 1
    print(
        f"answers per second over the {len(per_second)} whole seconds: min {min(per_second)}, median "
        f"{statistics.median(per_second):.0f}, max {max(per_second)}: {' '.join(map(str, per_second))}"
    )
    print(f"replacements at t = {', '.join(f'{r.at - first:.1f}' for r in run.replacements)} s")
    print(f"FAILED REQUESTS: {len(failed)}")
    for record in failed[:10]:
        print(f"  {record.variant}: status {record.status} {record.error}")
    print(f"\nreplacements of {TARGET}/{OBJECTIVE} (from the manifest's replacement to the new version answering):")
    print("| # | how | old -> new | first answer of the new version | every worker on it |")
    print("|---|---|---|---|---|")
    for k, rep in enumerate(run.replacements, 1):
        first = f"{1000 * rep.first_new:.0f} ms" if rep.first_new is not None else "never"
        every = f"{1000 * rep.all_new:.0f} ms" if rep.all_new is not None else "never"
        print(f"| {k} | {rep.kind} | {rep.old} -> {rep.new} | {first} | {every} |")
    measured = [r for r in run.replacements if r.first_new is not None]
    if measured:
        firsts, alls = [r.first_new for r in measured], [r.all_new for r in measured]
        print(
            f"first new answer: median {1000 * statistics.median(firsts):.0f} ms, max {1000 * max(firsts):.0f} ms; "
            f"every worker: median {1000 * statistics.median(alls):.0f} ms, max {1000 * max(alls):.0f} ms "
            f"({len(measured)} of {len(run.replacements)} replacements answered; target under 2000 ms)"
        )
    after = [r for r in run.records if r.version is not None and r.sent >= corrupt_at]
    answered_by = sorted({r.version for r in after})
    refusing = {pid: body["refused"].get(str(corrupt_path), "") for pid, body in verdicts.items()}
    print(
        f"\ncorrupt replacement at t = {corrupt_at - started:.1f} s: refused by "
        f"{sum('checksum mismatch' in why for why in refusing.values())}"
        f" of {len(verdicts)} worker(s)"
    )
    for pid, why in refusing.items():
        print(f"  worker {pid}: {why or 'NOT REFUSED'}")
    print(
        f"  {len(after)} answers of {TARGET} after it, by version(s) {answered_by}; the version before it: {kept}"
        f" -> {'the old version kept answering' if answered_by == [kept] else 'UNEXPECTED'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--seconds",
        type=float,
        default=30,
        help="least duration of the load (it lasts until the replacements are done)",
    )
    parser.add_argument("--rate", type=float, default=250, help="requests per second (open loop)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--connections", type=int, default=16, help="client connections (lanes), spread over the workers"
    )
    parser.add_argument("--every", type=float, default=2.5, help="seconds between the precompiled replacements")
    parser.add_argument("--swaps", type=int, default=8, help="replacements by the versions compiled beforehand")
    parser.add_argument(
        "--trainer-in-place",
        action="store_true",
        help="first, let the trainer recompile the target straight into the served folder during the load "
        "(on 2 cores it competes with the server for CPU)",
    )
    args = parser.parse_args()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
