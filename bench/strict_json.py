"""How long reading a hostile JSON body takes: ``amortized.inputs.strict_json`` on bodies of about 1 MB.

A repeated key or a lone surrogate is located in the decoded document (its place is the 422's ``loc``). The
first walk built a path per value, through recursive generators: a body of 520,000 numbers nested 900 deep
took 12 s, on the event loop, to locate a repeated key after it. Each body here is timed beside the plain
decode of the same size (``json.loads``), medians of ``--repeats``.

    .venv/bin/python bench/strict_json.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from amortized.inputs import DuplicateKey, LoneSurrogate, strict_json

DEEP = "[" * 900 + ",".join(["0"] * 520_000) + "]" * 900
WIDE = "[" + ",".join(['{"k":[1,2,{"a":"x"}]}'] * 40_000) + "]"
BODIES = {
    "deep, plain": '{"y":0.5,"b":' + DEEP + "}",
    "deep, a key repeated after it": '{"y":0.5,"b":' + DEEP + ',"y":1}',
    "deep, a lone surrogate after it": '{"y":0.5,"b":' + DEEP + ',"z":"\\ud800"}',
    "deep, a surrogate pair after it": '{"y":0.5,"b":' + DEEP + ',"z":"\\ud83d\\ude00"}',
    "wide, plain": '{"y":0.5,"b":' + WIDE + "}",
    "wide, a key repeated after it": '{"y":0.5,"b":' + WIDE + ',"b":1}',
    "wide, a lone surrogate after it": '{"y":0.5,"b":' + WIDE + ',"z":"\\udc00"}',
}


def timed(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with contextlib.suppress(DuplicateKey, LoneSurrogate):
            call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats
    print(f"medians of {repeats}, ms | body | MB | strict_json | json.loads | ratio | what it says")
    for name, text in BODIES.items():
        body = text.encode()
        try:
            strict_json(body)
            said = "read"
        except (DuplicateKey, LoneSurrogate) as error:
            said = f"{type(error).__name__} at {error.path[:4]}"
        strict = timed(functools.partial(strict_json, body), repeats)
        plain = timed(functools.partial(json.loads, body), repeats)
        print(f"| {name} | {len(body) / 1e6:.2f} | {strict:.1f} | {plain:.1f} | {strict / plain:.1f} | {said} |")


if __name__ == "__main__":
    main()
