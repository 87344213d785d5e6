"""Replay a fixed set of requests against a checkout and record every response, to compare two versions byte for byte.

A refactoring that should change nothing is checked by running this against
the code before and after (each in its own process, with the same artifacts)
and comparing: every status, content type and body must be the same bytes.

    .venv/bin/python bench/replay_requests.py record --root /path/to/old/checkout --out /tmp/old.json
    .venv/bin/python bench/replay_requests.py record --root . --out /tmp/new.json
    .venv/bin/python bench/replay_requests.py compare /tmp/old.json /tmp/new.json

``--artifacts`` (default: the current checkout's artifacts/) is used for both,
so only the code differs.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
MODELS = ("gaussian", "gmm", "gmm_discrete", "gmm_open")


def requests() -> list[tuple[str, str, dict | None, bytes | None, dict]]:
    """(name, method and path, JSON body, raw body, headers).

    Every model, objective, batch, both, resample, cross-check, bad input.
    """
    out: list[tuple[str, str, dict | None, bytes | None, dict]] = []
    for model in MODELS:
        url = f"POST /v1/models/{model}/posterior"
        for objective in ("pq", "qp", "both"):
            for y in (0.0, 2.7, -20.7, 1e6):
                for num_samples in (1, 2, 50, 1000):
                    out.append(
                        (
                            f"{model} {objective} y={y} n={num_samples}",
                            url,
                            {"y": y, "objective": objective, "num_samples": num_samples, "seed": 11},
                            None,
                            {},
                        )
                    )
            out.append(
                (
                    f"{model} {objective} batch resample",
                    url,
                    {
                        "y": [-3.0, 0.5, 0.5, 9.0],
                        "objective": objective,
                        "num_samples": 300,
                        "seed": 2**60 + 3,
                        "resample": True,
                    },
                    None,
                    {},
                )
            )
            out.append(
                (
                    f"{model} {objective} no cross-check",
                    url,
                    {"y": [1.0, -1.0], "objective": objective, "num_samples": 200, "seed": 5, "cross_check": False},
                    None,
                    {},
                )
            )
        # big batches (computed in row blocks, on several threads), in both formats
        ys = [round(-30.0 + 60.0 * i / 199, 3) for i in range(200)]
        for media in ("application/json", "application/vnd.apache.arrow.stream"):
            out.append(
                (
                    f"{model} both big batch {media}",
                    url,
                    {"y": ys, "objective": "both", "num_samples": 1000, "seed": 3, "resample": True},
                    None,
                    {"accept": media},
                )
            )
            out.append(
                (
                    f"{model} pq big batch, few samples, summaries {media}",
                    url,
                    {"y": ys * 3, "num_samples": 40, "seed": 4, "include": ["diagnostics", "summary", "samples"]},
                    None,
                    {"accept": media},
                )
            )
        out.append(
            (
                f"{model} qp big batch no cross-check",
                url,
                {"y": ys * 2, "objective": "qp", "num_samples": 700, "seed": 6, "cross_check": False},
                None,
                {"accept": "application/vnd.apache.arrow.stream"},
            )
        )
        out.append((f"{model} model", f"GET /v1/models/{model}", None, None, {}))
        out.append((f"{model} png", f"GET /v1/models/{model}/posterior.png?y=0.5", None, None, {}))
    url = "POST /v1/models/gmm/posterior"
    # bench/answer_formats.py's request: 1000 observations x 1000 samples, cross-checked
    ys = [round(-40.0 + 80.0 * i / 999, 3) for i in range(1000)]
    for media in ("application/json", "application/vnd.apache.arrow.stream"):
        body = {"y": ys, "objective": "pq", "num_samples": 1000, "seed": 7}
        out.append((f"gmm 1000 x 1000 {media}", url, body, None, {"accept": media}))
    for name, raw in {
        "y string": b'{"y": "abc"}',
        "y list with bad values": b'{"y": [1, "a", 3, null]}',
        "y 1e400": b'{"y": 1e400}',
        "y 10**400": b'{"y": ' + b"1" + b"0" * 400 + b"}",
        "y 2e9": b'{"y": 2e9}',
        "n 0": b'{"y": 1, "num_samples": 0}',
        "unknown field": b'{"y": 1, "foo": 2}',
        "bad objective": b'{"y": 1, "objective": "kl"}',
        "not json": b"{y: 1",
        "not utf8": b'{"y": "\xff"}',
        "too many draws": b'{"y": [' + b",".join([b"1.0"] * 5000) + b'], "num_samples": 1000}',
    }.items():
        out.append((f"bad: {name}", url, None, raw, {"content-type": "application/json"}))
    out.append(("bad: no content type", url, None, b'{"y": 1}', {}))
    out.append(("bad: unknown model", "POST /v1/models/nosuch/posterior", {"y": 1.0}, None, {}))
    out.append(
        ("bad: br encoding", url, None, b'{"y": 1}', {"content-type": "application/json", "content-encoding": "br"})
    )
    for path in ("/v1/models", "/health/live", "/health/ready", "/openapi.json"):
        out.append((f"get {path}", f"GET {path}", None, None, {}))
    return out


def record(root: Path, artifacts: Path, out: Path) -> None:
    sys.path.insert(0, str(root))
    from fastapi.testclient import TestClient

    from service.main import create_app
    from service.settings import Settings

    results = {}
    with TestClient(create_app(Settings(artifacts_dir=artifacts))) as client:
        for name, target, body, raw, headers in requests():
            method, path = target.split(" ", 1)
            if method == "GET":
                response = client.get(path)
            elif raw is not None:
                response = client.post(path, content=raw, headers=headers)
            else:
                response = client.post(path, json=body, headers=headers)
            content = response.content
            if path == "/health/ready":  # names the answering process (its pid): the same code differs by run
                content = json.dumps({k: v for k, v in response.json().items() if k != "worker"}).encode()
            results[name] = {
                "status": response.status_code,
                "content_type": response.headers.get("content-type"),
                "sha256": hashlib.sha256(content).hexdigest(),
                "body": content.decode()
                if len(content) < 4000 and response.headers.get("content-type", "").startswith("application/json")
                else base64.b64encode(content[:200]).decode(),
            }
    out.write_text(json.dumps(results, indent=1))
    print(f"{len(results)} responses recorded from {root} into {out}")


def compare(old: Path, new: Path) -> int:
    a, b = json.loads(old.read_text()), json.loads(new.read_text())
    differ = [
        name
        for name in a
        if name not in b
        or {k: a[name][k] for k in ("status", "content_type", "sha256")}
        != {k: b[name][k] for k in ("status", "content_type", "sha256")}
    ]
    missing = [name for name in b if name not in a]
    for name in differ[:20]:
        print(f"DIFFERS: {name}\n  old: {a[name]}\n  new: {b.get(name)}")
    print(
        f"{len(a)} responses compared: {len(a) - len(differ)} identical to the byte, {len(differ)} differ, "
        f"{len(missing)} only in the new"
    )
    return 1 if differ or missing else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    rec = commands.add_parser("record")
    rec.add_argument("--root", type=Path, default=HERE)
    rec.add_argument("--artifacts", type=Path, default=HERE / "artifacts")
    rec.add_argument("--out", type=Path, required=True)
    cmp = commands.add_parser("compare")
    cmp.add_argument("old", type=Path)
    cmp.add_argument("new", type=Path)
    args = parser.parse_args()
    if args.command == "record":
        record(args.root.resolve(), args.artifacts.resolve(), args.out)
    else:
        raise SystemExit(compare(args.old, args.new))


if __name__ == "__main__":
    main()
