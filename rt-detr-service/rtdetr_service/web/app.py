"""The FastAPI application: settings, model loading in the lifespan, routers, viewer page."""

from __future__ import annotations

import asyncio
import logging
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Callable

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from rtdetr_service import __version__
from rtdetr_service.core.search import Embedder
from rtdetr_service.core.slot import ModelSlot
from rtdetr_service.core.vlm import VisionLanguageModel
from rtdetr_service.inference.detector import Detector
from rtdetr_service.inference.loading import detector_from_settings
from rtdetr_service.inference.worker import InferenceWorker
from rtdetr_service.outputs import messages
from rtdetr_service.outputs.bus.link import BusLink
from rtdetr_service.outputs.bus.owner import BusSink, OwnerHub
from rtdetr_service.outputs.bus.relay import BusRelay
from rtdetr_service.outputs.embeddings.reindex import Reindexer, ReindexOptions
from rtdetr_service.outputs.embeddings.stage import EmbedderSlot, EmbeddingParts
from rtdetr_service.outputs.encode import JpegEncoder
from rtdetr_service.outputs.hub import Hub
from rtdetr_service.outputs.prometheus import Metrics
from rtdetr_service.outputs.recordings.recordings import Recordings
from rtdetr_service.outputs.registry import SinkContext, build_sinks, connect_republishers
from rtdetr_service.outputs.store.event_store import EventStore
from rtdetr_service.outputs.store.queries import ClipWindow
from rtdetr_service.outputs.websocket import FrameRenderer
from rtdetr_service.sessions.cluster import Cluster
from rtdetr_service.sessions.manager import SessionManager
from rtdetr_service.sessions.records import SessionRecords
from rtdetr_service.web.auth import install_api_key_check
from rtdetr_service.web.deps import Asks
from rtdetr_service.web.errors import error_response, install_error_handlers
from rtdetr_service.web.middleware import install_body_limit, install_cancel_on_disconnect
from rtdetr_service.web.routes import ask, events, health, recordings, search, video, ws
from rtdetr_service.web.settings import Settings

log = logging.getLogger(__name__)


def _load_model(app: FastAPI, settings: Settings, ready: threading.Event) -> None:
    """Runs on a thread so /health answers while a large model loads and compiles."""
    state = app.state
    try:
        detector = state.detector_factory(settings)
        state.encoder = JpegEncoder(detector.info.device)
        renderer = FrameRenderer(state.encoder)
        parts = _embedding_parts(app, settings)
        context = SinkContext(
            settings, state.hub, state.metrics, state.encoder, state.event_store, renderer, parts, state.vlm
        )
        sinks = build_sinks(context)
        session_hub = None
        if state.bus is not None:
            manager = state.manager
            bus_sink = BusSink(
                state.bus,
                renderer,
                is_local=lambda session_id: manager.find(session_id) is not None,
                on_control=manager.control,
                stream_info=lambda session_id: (s := manager.find(session_id)) and s.stream_info_message(),
            )
            bus_sink.start()
            sinks.append(bus_sink)
            session_hub = OwnerHub(state.hub, bus_sink)
        connect_republishers(sinks)  # the embedding stage's global_id updates go to every other output
        worker = InferenceWorker(
            detector,
            max_batch=settings.max_batch,
            batch_wait_s=settings.batch_wait_ms / 1000.0,
            on_batch=state.metrics.batch,
        )
        worker.start()
        info = detector.info
        state.metrics.model_info.labels(
            info.name, info.backend, info.device, info.dtype, str(info.trained).lower()
        ).set(1)
        state.manager.attach_worker(worker, sinks, session_hub)
        if state.cluster is not None:
            state.cluster.start()  # sessions recorded before (this replica's before a restart) run again
        if not info.trained:
            log.warning("!!! %s !!!", info.warning)
        log.info(
            "ready: %s on %s (%s), JPEG via %s, outputs: %s",
            info.name,
            info.device,
            info.dtype,
            state.encoder.backend,
            ", ".join(s.name for s in sinks),
        )
    except Exception as exc:  # noqa: BLE001 - reported by /ready and the log; the process stays up to say so
        state.model_error = f"Model failed to load: {exc}"
        log.error("%s", state.model_error, exc_info=not isinstance(exc, RuntimeError))
    finally:
        ready.set()


def _embedding_parts(app: FastAPI, settings: Settings) -> EmbeddingParts | None:
    """What the embedding stage needs, when there is a vector index to fill and an encoder to load; the
    encoder loads on a thread of its own, and the stage's requests wait for it meanwhile."""
    state = app.state
    if state.vector_index is None or state.embedder_factory is None or state.event_store is None:
        return None
    if not settings.embeds():
        log.info(
            "events are not embedded for search: EMBED_ENABLED=%s and %s (make models fetches the encoder)",
            settings.embed_enabled,
            "no trained weights at EMBED_MODEL" if settings.embed_enabled == "auto" else "switched off",
        )
        return None
    factory = state.embedder_factory
    loader = threading.Thread(
        target=_load_embedder, args=(state.embedder, factory, settings), name="embedder-loader", daemon=True
    )
    loader.start()
    return EmbeddingParts(
        settings,
        state.embedder,
        state.vector_index,
        state.event_store.records,
        state.event_store.decisions,
        batch=settings.embed_batch,
    )


def embedder_from_settings(settings: Settings) -> Embedder:
    """The image encoder EMBED_MODEL names, on the device and backend the settings pick."""
    from rtdetr_service.inference.embedder import load_embedder  # transformers' towers: only when embedding

    return load_embedder(settings, settings)


def _load_embedder(slot: EmbedderSlot, factory: Callable[[Settings], Embedder], settings: Settings) -> None:
    try:
        embedder = factory(settings)
    except Exception as exc:  # noqa: BLE001 - said by the stage's state and the log; detection goes on
        slot.fail(str(exc) or type(exc).__name__)
        log.error("the image encoder failed to load: %s", exc, exc_info=not isinstance(exc, RuntimeError))
        return
    slot.set(embedder)
    if not embedder.trained:
        log.warning("!!! the image encoder %s has random weights: similarities mean nothing !!!", embedder.model_id)


def vlm_from_settings(settings: Settings) -> VisionLanguageModel | None:
    """The vision-language model VLM_PROVIDER names (None when off): a hosted endpoint's client or
    a local transformers model."""
    from rtdetr_service.inference.vlm.loading import load_vlm  # transformers or httpx: only when asked for

    return load_vlm(settings)


def _start_vlm(app: FastAPI, settings: Settings) -> None:
    """The VLM loads on a thread of its own when VLM_PROVIDER asks for one: a large local model or an
    endpoint that is down delays nothing and stops nothing; its slot says why it is not there."""
    state = app.state
    if settings.vlm_provider == "off" or state.vlm_factory is None:
        state.vlm.fail("VLM_PROVIDER=off")
        return
    threading.Thread(
        target=_load_vlm, args=(state.vlm, state.vlm_factory, settings), name="vlm-loader", daemon=True
    ).start()


def _load_vlm(
    slot: ModelSlot[VisionLanguageModel], factory: Callable[[Settings], VisionLanguageModel | None], settings: Settings
) -> None:
    try:
        vlm = factory(settings)
    except Exception as exc:  # noqa: BLE001 - said by the VLM's status and the log; detection goes on
        slot.fail(str(exc) or type(exc).__name__)
        log.error("the vision-language model failed to load: %s", exc, exc_info=not isinstance(exc, RuntimeError))
        return
    if vlm is None:
        slot.fail("VLM_PROVIDER=off")
        return
    slot.set(vlm)
    if not vlm.trained:
        log.warning("!!! the vision-language model %s has random weights: its words mean nothing !!!", vlm.model_id)


def _reindexer(app: FastAPI, settings: Settings) -> Reindexer | None:
    """The reindex runner, when events are embedded (the same conditions as the embedding stage's)."""
    state = app.state
    if state.event_store is None or state.embedder_factory is None or not settings.embeds():
        return None
    options = ReindexOptions(settings.reindex_batch, settings.reindex_duty, settings.embed_crop_px)
    return Reindexer(state.vector_index, state.event_store, state.embedder, options)


def _open_event_store(settings: Settings) -> EventStore | None:
    if not settings.events_enabled:
        return None
    try:
        store = EventStore(
            settings.database_url.get_secret_value(),
            settings.data_dir,
            queue_size=settings.event_queue_size,
            retention_days=settings.event_retention_days,
            max_snapshot_bytes=settings.snapshot_max_mb * 1024 * 1024,
            # A live open event is written at every heartbeat (5 s) while seen and ends
            # EVENT_END_AFTER_S after it was last seen: one unwritten ten times that long is a
            # stopped replica's, and another replica sharing the database may close it.
            stale_after_s=max(600.0, 10 * settings.event_end_after_s),
            track_max_points=settings.event_track_max_points,
            # has_clip: a kept segment overlaps what the event's clip would hold.
            clips=ClipWindow(settings.record_pre_s, settings.record_post_s),
        )
    except (RuntimeError, ValueError, OSError) as exc:
        # Detection goes on without a history; /ready and the events routes say why.
        log.error("events are not kept: %s", exc)
        return None
    store.start()
    return store


def _open_recordings(settings: Settings, store: EventStore | None) -> Recordings | None:
    """The recordings, indexed in the event store's database; none without a store (sessions asking to
    record say so in their status)."""
    if store is None:
        return None
    recordings = Recordings(settings, settings.data_dir, store.database)
    recordings.start()
    return recordings


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings: Settings = app.state.settings
    app.state.hub = Hub(stall_s=settings.viewer_stall_s)
    app.state.metrics = Metrics()
    app.state.model_error = None
    app.state.encoder = JpegEncoder("cpu")
    app.state.event_store = _open_event_store(settings)
    app.state.embedder = EmbedderSlot()
    app.state.vlm = ModelSlot("the vision-language model", "descriptions and questions wait, the oldest dropped")
    _start_vlm(app, settings)
    store = app.state.event_store
    app.state.vector_index = store.vectors if store is not None else None  # sqlite-vec / pgvector
    app.state.history_reads = events.history_reads_pool()
    app.state.search_embeds = search.search_embeds_pool()
    app.state.asks = Asks(settings.ask_concurrency)
    app.state.metrics.watch_vlm(lambda: ask.vlm_metrics(settings, app.state.vlm, app.state.asks))
    app.state.reindexer = _reindexer(app, settings)
    if app.state.reindexer is not None:
        app.state.metrics.watch_reindex(app.state.reindexer.progress)
    app.state.manager = manager = SessionManager(settings, app.state.hub)
    app.state.recordings = manager.recordings = _open_recordings(settings, app.state.event_store)
    app.state.bus = app.state.relay = None
    if settings.bus_url.get_secret_value():
        # The bus between replicas: viewers here of sessions other replicas run (outputs/bus/).
        app.state.bus = BusLink(settings.bus_url.get_secret_value(), name=settings.replica_id)
        app.state.relay = BusRelay(
            app.state.bus,
            app.state.hub,
            is_local=lambda session_id: manager.find(session_id) is not None,
            replica_id=settings.replica_id,
        )
        app.state.bus.start()
        app.state.relay.start()
    app.state.cluster = None
    if app.state.event_store is not None:
        # Sessions are recorded in the store's database: they run again after a restart, and
        # replicas sharing a PostgreSQL database share them (sessions/cluster.py).
        app.state.cluster = manager.cluster = Cluster(
            SessionRecords(app.state.event_store.database),
            manager,
            replica=settings.replica_id,
            lease_s=settings.session_lease_s,
            loop=asyncio.get_running_loop(),
        )
        app.state.metrics.watch_cluster(app.state.cluster.figures)
        app.state.event_store.set_fence(app.state.cluster.refused)
    app.state.metrics.watch_sessions(lambda: [s.snapshot() for s in manager.list()])
    app.state.metrics.watch_sinks(lambda: manager.sinks)
    app.state.model_ready = threading.Event()
    loader = threading.Thread(
        target=_load_model, args=(app, settings, app.state.model_ready), name="model-loader", daemon=True
    )
    loader.start()
    try:
        yield
    finally:
        if app.state.reindexer is not None:
            await asyncio.to_thread(app.state.reindexer.stop, 5.0)  # first: it is background work only
        drained = app.state.cluster is not None
        if drained:
            # Drain: the sessions go back to the store, still wanted; another replica takes them
            # at once, or this one again when it restarts. Only their copies here stop, and their
            # viewers on other replicas are told `moving` and stay connected.
            app.state.cluster.drain()
        stopped = app.state.manager.stop_all(HANDED_OVER if drained else "service shutting down", handover=drained)
        for session in stopped:
            # A reader inside FFmpeg's open (reconnecting) ends within OPEN_TIMEOUT_S, one
            # inside a read within READ_TIMEOUT_S.
            session.join(max(settings.open_timeout_s, settings.read_timeout_s) + 1.0)
        loader.join(timeout=1.0)
        worker = app.state.manager.worker
        if worker is not None:
            worker.stop()
        # Outputs drain after every session has ended (their last events included).
        for sink in app.state.manager.sinks:
            sink.close(2.0)
        if app.state.relay is not None:
            app.state.relay.close()
            await asyncio.to_thread(app.state.bus.close, 2.0)
        app.state.history_reads.shutdown(wait=True, cancel_futures=True)
        app.state.search_embeds.shutdown(wait=True, cancel_futures=True)
        vlm = app.state.vlm.get()
        if vlm is not None:
            # Asks in progress end at their next batch once the model answers "closed": close first.
            await asyncio.to_thread(vlm.close)  # after the outputs: their last questions had their bound
        await asyncio.to_thread(app.state.asks.shutdown, wait=True, cancel_futures=True)
        if app.state.recordings is not None:
            app.state.recordings.stop()
        if app.state.event_store is not None:
            app.state.event_store.stop(5.0)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        log.info("shut down: %d session(s) stopped", len(stopped))


HANDED_OVER = "this replica shuts down; the session resumes on another replica, or here when it restarts"


class ServiceServer(uvicorn.Server):
    """uvicorn's server, which on shutdown first tells every viewer why and closes it with 1012
    (service restart); uvicorn itself would drop them with a bare 1012 before the application hears
    of the shutdown. Sessions recorded in the store go on (on another replica, or here after the
    restart): their viewers are told `moving`, and the viewer page reconnects; without a store
    they end here: `session_stopped`."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app

    async def shutdown(self, sockets=None) -> None:
        hub = getattr(self._app.state, "hub", None)
        if hub is not None:
            if getattr(self._app.state, "cluster", None) is not None:
                reason = HANDED_OVER
                await hub.close_all(lambda sid: messages.moving_message(sid, reason), reason, code=1012, timeout=1.0)
            else:
                reason = "service shutting down"
                await hub.close_all(lambda sid: messages.stopped_message(sid, reason), reason, code=1012, timeout=1.0)
        await super().shutdown(sockets=sockets)


# /docs without a CDN: Swagger UI (swagger-ui-dist, Apache-2.0) is served from the package,
# under /ui/ so that the gateway's route for the viewer page carries it too.
STATIC_DIR = Path(__file__).resolve().parent / "static"
SWAGGER_PREFIX = "/ui/swagger"
DOCS_HEADERS = {
    # Swagger UI sets inline styles (React); its scripts are all files of ours.
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} - API</title>
<link rel="icon" type="image/png" href="{prefix}/favicon-32x32.png">
<link rel="stylesheet" href="{prefix}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{prefix}/swagger-ui-bundle.js"></script>
<script src="{prefix}/docs.js"></script>
</body>
</html>
"""


# The viewer page takes an API key: it runs only its own scripts, talks only to its own origin,
# cannot be framed, and is revalidated after an upgrade so old and new modules never mix. Snapshots
# and clips need the key header, so the page fetches them and shows them through blob: URLs.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def create_app(
    settings: Settings | None = None,
    detector_factory: Callable[[Settings], Detector] = detector_from_settings,
    embedder_factory: Callable[[Settings], Embedder] | None = embedder_from_settings,
    vlm_factory: Callable[[Settings], VisionLanguageModel | None] | None = vlm_from_settings,
) -> FastAPI:
    """The service. `detector_factory` builds the model in the lifespan (another Detector can be
    given: the same pipeline then runs on it); `embedder_factory` the image encoder events are embedded
    with, when EMBED_ENABLED says so (None: events are never embedded); `vlm_factory` the
    vision-language model, when VLM_PROVIDER names one (None: never)."""
    settings = settings or Settings()
    app = FastAPI(
        title="rt-detr-service",
        version=__version__,
        summary="Real-time RT-DETRv2 analysis of RTSP streams",
        lifespan=lifespan,
        # No 307 to "the same path without the slash": behind Kong its Location would name the
        # internal upstream host. A trailing slash is a plain 404.
        redirect_slashes=False,
        # FastAPI's pages load their scripts from a CDN; /docs is served below from the package.
        docs_url=None,
        redoc_url=None,
    )
    app.docs_url = "/docs"  # served below, with local assets
    app.state.settings = settings
    app.state.detector_factory = detector_factory
    app.state.embedder_factory = embedder_factory
    app.state.vlm_factory = vlm_factory
    install_error_handlers(app)
    # A "find this" picture is the one body allowed to be larger than MAX_BODY_KB.
    larger = {("POST", "/api/v1/events/search"): settings.search_image_max_kb * 1024}
    install_body_limit(app, settings.max_body_kb * 1024, larger)
    install_api_key_check(app)
    install_cancel_on_disconnect(app)
    app.include_router(health.router)
    app.include_router(video.router)
    app.include_router(search.router)  # before events: /events/search is not an event id
    app.include_router(events.router)
    app.include_router(ask.router)
    app.include_router(recordings.router)
    app.include_router(ws.router)

    @app.middleware("http")
    async def page_headers(request: Request, call_next):
        response = await call_next(request)
        if request.url.path == "/" or request.url.path.startswith("/ui/"):
            response.headers.update(PAGE_HEADERS)
        return response

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        page = DOCS_PAGE.format(title=app.title, prefix=SWAGGER_PREFIX)
        return HTMLResponse(page, headers=DOCS_HEADERS)

    app.mount(SWAGGER_PREFIX, StaticFiles(directory=STATIC_DIR / "swagger-ui"), name="swagger-ui")
    frontend = settings.frontend_dir
    if (frontend / "ui").is_dir():
        app.mount("/ui", StaticFiles(directory=frontend / "ui"), name="ui")

    @app.get("/", include_in_schema=False)
    async def index():
        page = frontend / "index.html"
        if page.is_file():
            return FileResponse(page)
        return error_response("not_found", f"No viewer page at {page}; the API is at /docs")

    return app
