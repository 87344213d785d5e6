"""The compose topology on loopback (bench/cluster.py): 2 replicas behind Debian's HAProxy, one killed and back."""

import shutil
import urllib.request

import pytest

from bench.cluster import Cluster

pytestmark = pytest.mark.skipif(
    shutil.which("haproxy") is None, reason="Debian's haproxy is not installed (.ci/run installs it)"
)

BODY = b'{"y": 0.5, "objective": "pq", "num_samples": 50, "seed": 3}'


def post(url: str) -> tuple[int, bytes]:
    request = urllib.request.Request(f"{url}/v1/models/gmm_open/posterior", BODY, {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, response.read()


def test_two_replicas_behind_haproxy_survive_a_sigkill_and_the_replica_rejoins():
    with Cluster(2) as cluster:
        answers = {post(cluster.url) for _ in range(12)}
        assert answers == {(200, next(iter(answers))[1])}  # same seed, same bytes, whichever replica answered
        served = {name: int(row["stot"]) for name, row in cluster.stats().items()}
        assert all(count > 0 for count in served.values()), served  # HAProxy spread them over both

        cluster.kill(0)
        assert all(post(cluster.url)[0] == 200 for _ in range(12))  # routed around it (or retried on the other)
        cluster.wait_until(lambda states: states["api1"] != "UP", 5)
        cluster.wait_until(lambda states: states["api1"] == "UP", 60)  # restarted, ready, health-checked back in
        assert len(cluster.replicas[0].starts) == 2 and cluster.replicas[0].exits[0][1] == -9
        before = int(cluster.stats()["api1"]["stot"])
        assert all(post(cluster.url)[0] == 200 for _ in range(12))
        assert int(cluster.stats()["api1"]["stot"]) > before  # and serves again
