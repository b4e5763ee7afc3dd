"""A replica's bus parts under a real uvicorn, for the bus tests: its hub and WebSocket viewers,
the owner's sink and the relay on one NATS link, and which sessions it owns. Its viewer route
does what the service's does for a session another replica runs: attach, watch, relay control."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from contextlib import asynccontextmanager

import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from rtdetr_service.core.results import Published
from rtdetr_service.outputs import messages
from rtdetr_service.outputs.bus.link import BusLink
from rtdetr_service.outputs.bus.owner import BusSink, OwnerHub
from rtdetr_service.outputs.bus.relay import BusRelay
from rtdetr_service.outputs.encode import JpegEncoder
from rtdetr_service.outputs.hub import Hub
from rtdetr_service.outputs.websocket import FrameRenderer, WebSocketSink

from support import free_port, wait_until


class CountingEncoder:
    """The real CPU encoder, counting the JPEGs it makes."""

    def __init__(self) -> None:
        self._encoder = JpegEncoder("cpu")
        self.calls = 0

    def encode(self, image, quality: int) -> bytes:
        self.calls += 1
        return self._encoder.encode(image, quality)


class Refused(Exception):
    pass


class Replica:
    """One replica: `owns` is what the lease code would say; `controls` what reached it."""

    def __init__(self, name: str, bus_url: str, *, pending_bytes: int = 4 * 1024 * 1024) -> None:
        self.name = name
        self.owns: set[str] = set()
        self.refuse: dict[str, str] = {}  # session -> why its owner refuses control
        self.controls: list[tuple[str, str]] = []
        self.encoder = CountingEncoder()
        self.link = BusLink(bus_url, name=name, pending_bytes=pending_bytes, reconnect_wait_s=0.2, ping_interval_s=2)
        self.port = free_port()
        self.ws_base = f"ws://127.0.0.1:{self.port}/ws"
        self.hub: Hub | None = None
        self.sink: BusSink | None = None
        self.relay: BusRelay | None = None
        self.local: WebSocketSink | None = None
        app = Starlette(routes=[WebSocketRoute("/ws/{session_id}", self._viewer)], lifespan=self._lifespan)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name=f"uvicorn-{name}", daemon=True)

    def start(self) -> Replica:
        self._thread.start()
        if not wait_until(lambda: self._server.started, 20):
            raise RuntimeError(f"replica {self.name} did not start")
        return self

    @asynccontextmanager
    async def _lifespan(self, app):
        self.hub = Hub(stall_s=5.0)
        renderer = FrameRenderer(self.encoder)
        self.local = WebSocketSink(self.hub, self.encoder, renderer)
        self.sink = BusSink(
            self.link, renderer, is_local=self.is_local, on_control=self._control, stream_info=self._info
        )
        self.relay = BusRelay(self.link, self.hub, is_local=self.is_local, replica_id=self.name, presence_every_s=0.5)
        self.owner_hub = OwnerHub(self.hub, self.sink)
        self.link.start()
        self.sink.start()
        self.relay.start()
        yield
        self.relay.close()
        self.sink.close()
        await asyncio.to_thread(self.link.close, 2.0)

    def is_local(self, session_id: str) -> bool:
        return session_id in self.owns

    def _control(self, session_id: str, action: str) -> None:
        if session_id in self.refuse:
            raise Refused(self.refuse[session_id])
        self.controls.append((session_id, action))

    def _info(self, session_id: str) -> dict:
        return {"type": "stream_info", "session_id": session_id, "replica": self.name}

    def publish(self, item: Published) -> None:
        """What the session's publisher thread does with a step: every sink's `handle`."""
        self.local.handle(item)
        self.sink.handle(item)

    async def _viewer(self, websocket: WebSocket) -> None:
        session_id = websocket.path_params["session_id"]
        await websocket.accept()
        viewer = self.hub.attach(websocket, session_id, websocket.query_params.get("format", "json"))
        remote = not self.is_local(session_id)
        if remote:
            self.relay.watch(session_id)
        sender = asyncio.create_task(self.hub.serve(viewer))
        try:
            while not sender.done():
                received = await websocket.receive()
                if received["type"] == "websocket.disconnect":
                    break
                action = json.loads(received["text"])["action"]
                error = (
                    await self.relay.control(session_id, action) if remote else self._local_control(session_id, action)
                )
                if error:
                    self.hub.reply(viewer, messages.error_message(error))
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
            self.hub.detach(viewer)
            if remote:
                self.relay.unwatch(session_id)

    def _local_control(self, session_id: str, action: str) -> str | None:
        try:
            self._control(session_id, action)
        except Refused as exc:
            return str(exc)
        return None

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
