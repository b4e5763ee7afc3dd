"""Several replicas of the real service behind a real balancer, for the cluster tests.

Kong cannot run here; Debian's HAProxy stands in for it with the same upstream semantics as
kong/kong.yml: round-robin over every replica, an active check of `/ready` each second (a replica
that is not ready, or gone, leaves the rotation), WebSocket upgrades through the same route. Each
answer carries `X-Replica` (the server that answered), so a test can tell where a call landed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx

from support import free_port, wait_until

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def haproxy_config(port: int, replicas: dict[str, int]) -> str:
    servers = "\n".join(f"  server {name} 127.0.0.1:{p} check" for name, p in replicas.items())
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
