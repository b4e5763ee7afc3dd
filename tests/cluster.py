"""Several replicas of the real service behind a real balancer, for the cluster tests.

Kong cannot run here; Debian's HAProxy stands in for it with the same upstream semantics as
kong/kong.yml: round-robin over every replica, an active check of `/ready` each second (a replica
that is not ready, or gone, leaves the rotation), WebSocket upgrades through the same route. Each
answer carries `X-Replica` (the server that answered), so a test can tell where a call landed, and a
test can ask for a replica by name (`X-Route-To: r2`, or the cookie `route=r2` for a browser); a
call asked for a replica that is out of the rotation is balanced like any other.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from websockets.sync.client import connect

from servers import NatsServer, soak_native
from support import free_port, wait_until

LEASE_S = 3.0  # SESSION_LEASE_S of a deployment unless a test asks for another
# The service with the scripted walking people instead of the random model's nothing: real events.
SCRIPTED = [sys.executable, str(Path(__file__).resolve().parent / "scripted_service.py")]

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def haproxy_config(port: int, replicas: dict[str, int]) -> str:
    servers = "\n".join(f"  server {name} 127.0.0.1:{p} check" for name, p in replicas.items())
    # the rule is passed over while its server is down (no force-persist): the call is balanced
    pinned = "\n".join(
        f"  use-server {name} if {{ req.hdr(x-route-to) -m str {name} }} || {{ req.cook(route) -m str {name} }}"
        for name in replicas
    )
    return f"""global
  maxconn 512

defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  timeout tunnel 1h
  option redispatch
  retries 2

frontend entry
  bind 127.0.0.1:{port}
  default_backend replicas

backend replicas
  balance roundrobin
  option httpchk GET /ready
  http-check expect status 200
  default-server inter 1s fall 2 rise 1
  http-response set-header X-Replica %s
{pinned}
{servers}
"""


class Balancer:
    """HAProxy in the foreground on a free port, in front of `replicas` (name -> port)."""

    def __init__(self, replicas: dict[str, int], folder: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = folder / "haproxy.cfg"
        self.config.write_text(haproxy_config(self.port, replicas))
        self._log = folder / "haproxy.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        check = subprocess.run([HAPROXY, "-c", "-q", "-f", str(self.config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy refused its configuration: {check.stderr}")
        with open(self._log, "ab") as log:
            self.process = subprocess.Popen([HAPROXY, "-db", "-f", str(self.config)], stdout=log, stderr=log)
        if not wait_until(self._answers, 10.0, 0.05):
            raise RuntimeError(f"haproxy did not start; see {self._log}")

    def _answers(self) -> bool:
        try:
            return httpx.get(self.url + "/health", timeout=1).status_code in (200, 503)
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def landings(self, path: str, n: int, headers: dict | None = None) -> list[str]:
        """Which replica answered each of `n` GETs of `path`."""
        with httpx.Client(base_url=self.url, headers=headers or {}, timeout=10) as http:
            return [http.get(path).headers.get("x-replica", "?") for _ in range(n)]


class Replicas:
    """Replicas of the real service (`python -m rtdetr_service`, or `command`) named r1..rN, each in
    its own folder on its own port, started side by side; one that was killed starts again on the
    same port with `start(name)`."""

    def __init__(self, model: Path, folder: Path, n: int, command: list[str] | None = None, **env: str) -> None:
        make = soak_native().ServiceProcess
        self.services = {}
        for i in range(1, n + 1):
            name = f"r{i}"
            (folder / name).mkdir()
            self.services[name] = make(model, folder / name, free_port(), dict(env, REPLICA_ID=name), command=command)

    @property
    def names(self) -> list[str]:
        return list(self.services)

    def __getitem__(self, name: str):
        return self.services[name]

    def start(self, *names: str) -> None:
        names = names or tuple(self.services)
        with ThreadPoolExecutor(len(names)) as pool:
            list(pool.map(lambda name: self.services[name].start(), names))

    def signal(self, name: str, sig: int) -> None:
        self.services[name].proc.send_signal(sig)

    def wait(self, name: str, timeout: float = 30.0) -> int:
        return self.services[name].proc.wait(timeout)

    def stop(self) -> None:
        for service in self.services.values():
            if service.proc is not None and service.proc.poll() is None:
                service.proc.send_signal(signal.SIGCONT)  # a frozen one takes its stop all the same
            service.stop()


class Deployment:
    """Replicas sharing one PostgreSQL database and a NATS bus, behind the balancer."""

    def __init__(self, replicas: Replicas, balancer: Balancer, bus: NatsServer, key: str, database_url: str) -> None:
        self.replicas = replicas
        self.balancer = balancer
        self.bus = bus
        self.key = key
        self.database_url = database_url

    def client(self, to: str | None = None) -> httpx.Client:
        """An HTTP client through the balancer; `to` asks it for that replica."""
        headers = {"apikey": self.key, **({"X-Route-To": to} if to else {})}
        return httpx.Client(base_url=self.balancer.url, headers=headers, timeout=30)

    def viewer(self, websocket_path: str, to: str):
        """A JSON WebSocket viewer through the balancer, on replica `to`."""
        url = f"ws://127.0.0.1:{self.balancer.port}{websocket_path}"
        return connect(url, open_timeout=10, additional_headers={"X-Route-To": to})

    def in_rotation(self, *names: str) -> bool:
        return set(self.balancer.landings("/health", 3 * len(self.replicas.names))) == set(names)


@contextlib.contextmanager
def deploy(
    model: Path, folder: Path, database_url: str, *, replicas: int, lease_s: float, max_sessions: int
) -> Iterator[Deployment]:
    """`replicas` replicas of the service with the scripted walking people, sharing `database_url`,
    a DATA_DIR and a NATS bus of their own, behind the balancer, every one in its rotation."""
    key = "cluster-" + secrets.token_hex(8)
    with contextlib.ExitStack() as parts:
        bus = NatsServer(free_port(), folder)
        bus.start()
        parts.callback(bus.kill)
        # One DATA_DIR for all, as the ReadWriteMany volume of deploy/k8s or compose's named volume:
        # a snapshot written by one replica is served by any, also after its writer died.
        group = Replicas(
            model, folder, replicas, command=SCRIPTED, API_KEYS=key, DATABASE_URL=database_url,
            SESSION_LEASE_S=str(lease_s), MAX_SESSIONS=str(max_sessions), BUS_URL=bus.url,
            DATA_DIR=str(folder / "shared-data"),
        )  # fmt: skip
        parts.callback(group.stop)
        group.start()
        balancer = Balancer({name: group[name].port for name in group.names}, folder)
        balancer.start()
        parts.callback(balancer.stop)
        deployment = Deployment(group, balancer, bus, key, database_url)
        if not wait_until(lambda: deployment.in_rotation(*group.names), timeout=10):
            raise RuntimeError(f"not every replica entered the balancer's rotation; see {folder}")
        yield deployment
