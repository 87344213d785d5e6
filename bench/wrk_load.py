"""wrk (Debian's HTTP load generator) POSTing one JSON body, and the figures of its report, for every benchmark."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile

UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def post(
    url: str, body: dict, seconds: int, connections: int, headers: dict[str, str] | None = None
) -> dict[str, float]:
    """POST ``body`` to ``url`` for ``seconds`` over ``connections`` (one wrk thread): requests/s, p50, p99 and max
    latency (ms), and the count of non-2xx responses (``errors``). ``headers``: more request headers (Accept...)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            f'wrk.method = "POST"\nwrk.body = {json.dumps(json.dumps(body))}\nwrk.headers["Content-Type"] = '
            '"application/json"\n'
        )
        for name, value in (headers or {}).items():
            script.write(f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}\n")
    try:
        command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script.name, url]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(script.name)
    latency = {
        p: float(v) * UNIT_MS[u] for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)", out, re.MULTILINE)
    }
    peak = re.search(r"Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps is None or peak is None:
        raise SystemExit(f"could not read wrk's report for {url}:\n{out}")
    return {
        "rps": float(rps.group(1)),
        "p50": latency["50"],
        "p99": latency["99"],
        "max": float(peak.group(1)) * UNIT_MS[peak.group(2)],
        "errors": int(errors.group(1)) if errors else 0,
    }
