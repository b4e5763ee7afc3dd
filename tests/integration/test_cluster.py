"""Several replicas of the real service behind HAProxy (standing in for Kong): the balancer
spreads calls over every ready replica and takes a dead one out of rotation by its /ready check."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal

import httpx
import pytest

from cluster import HAPROXY, Balancer
from servers import service_process
from support import wait_until

pytestmark = pytest.mark.skipif(not os.path.exists(HAPROXY), reason="haproxy is not installed")


@pytest.fixture
def two_replicas(tiny_model_dir, tmp_path):
    key = "cluster-" + secrets.token_hex(8)
    with contextlib.ExitStack() as parts:
        replicas = {}
        for name in ("r1", "r2"):
            folder = tmp_path / name
            folder.mkdir()
            service = service_process(tiny_model_dir, folder, API_KEYS=key)
            parts.callback(service.stop)
            replicas[name] = service
        balancer = Balancer({name: s.port for name, s in replicas.items()}, tmp_path)
        balancer.start()
        parts.callback(balancer.stop)
        yield balancer, replicas, key


def test_calls_land_on_every_ready_replica_and_a_dead_one_leaves_the_rotation(two_replicas):
    balancer, replicas, key = two_replicas
    # both replicas pass the /ready check within a few seconds of the balancer's start
    assert wait_until(lambda: set(balancer.landings("/health", 6)) == {"r1", "r2"}, timeout=10)
    with httpx.Client(base_url=balancer.url, headers={"apikey": key}, timeout=10) as http:
        answers = [http.get("/api/v1/video/sessions") for _ in range(20)]
    assert [a.status_code for a in answers] == [200] * 20
    landed = [a.headers["x-replica"] for a in answers]
    assert landed.count("r1") >= 8 and landed.count("r2") >= 8, landed

    replicas["r1"].proc.send_signal(signal.SIGKILL)
    replicas["r1"].proc.wait(5)
    # two failed checks a second apart take it out; the balancer retries a dead server's calls elsewhere
    assert wait_until(lambda: set(balancer.landings("/health", 6)) == {"r2"}, timeout=10)
    with httpx.Client(base_url=balancer.url, headers={"apikey": key}, timeout=10) as http:
        answers = [http.get("/api/v1/video/sessions") for _ in range(10)]
    assert [a.status_code for a in answers] == [200] * 10
    assert {a.headers["x-replica"] for a in answers} == {"r2"}
