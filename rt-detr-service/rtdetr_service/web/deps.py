"""Typed dependencies of the routes: what the lifespan (app.py) keeps on the app, by type.

The one place besides the lifespan that knows where these live. Routes take them as parameters
(`manager: ManagerDep`); they take no parameters of their own, so /openapi.json does not see them.
HTTP and WebSocket routes alike: each reads the connection's app. Read at every request, since the
model loader replaces some of them (the JPEG encoder, the model error) after start-up; `async` so
that FastAPI runs them on the event loop, not on a thread of its pool.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from rtdetr_service.core.slot import ModelSlot
from rtdetr_service.core.vlm import VisionLanguageModel
from rtdetr_service.outputs.bus.relay import BusRelay
from rtdetr_service.outputs.embeddings.reindex import Reindexer
from rtdetr_service.outputs.embeddings.stage import EmbedderSlot
from rtdetr_service.outputs.encode import JpegEncoder
from rtdetr_service.outputs.hub import Hub
from rtdetr_service.outputs.prometheus import Metrics
from rtdetr_service.outputs.recordings.recordings import Recordings
from rtdetr_service.outputs.store.event_store import EventStore
from rtdetr_service.outputs.store.vectors import VectorIndex
from rtdetr_service.sessions.manager import SessionManager
from rtdetr_service.web.errors import ApiError
from rtdetr_service.web.settings import Settings

SEARCH_EMBEDS_WAITING = 8  # search queries waiting for (or in) the one encoder call at a time


class SearchEmbeds:
    """The one thread search queries are embedded on (a model call: one at a time, off the loop), and
    at most SEARCH_EMBEDS_WAITING queries waiting for it or in it: past that a search is answered 429
    at once, rather than queued behind a model call each for as long as the burst lasts. Made and shut
    down by the app's lifespan; `run` is called on the event loop only, so the count needs no lock."""

    def __init__(self, waiting: int = SEARCH_EMBEDS_WAITING) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="search-embed")
        self._waiting = waiting
        self._in = 0

    async def run(self, fn, *args):
        if self._in >= self._waiting:
            raise ApiError(
                "too_many_searches", f"{self._waiting} searches are waiting for the encoder already; retry shortly"
            )
        self._in += 1
        future = asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        future.add_done_callback(self._done)  # also when the caller went away and the call was cancelled
        return await future

    def _done(self, _future) -> None:
        self._in -= 1

    def shutdown(self, **kwargs) -> None:
        self._pool.shutdown(**kwargs)


class Asks:
    """The threads POST /ask checks its candidates on (their snapshots, then the VLM, batch after batch),
    one per ask, and at most `limit` asks at once: one more is answered 429 at once. Each holds a person
    waiting and a share of the provider's keys; queued behind the others it would only be later, and
    the provider already bounds what asks may hold (VLM_ASK_SHARE). An ask counts until its thread is
    done, also when the person went away meanwhile (it stops at its next batch), so the bound holds on
    the threads, not only on the requests. `enter`/`leave` run on the event loop only: no lock."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running = 0
        self.refused = 0  # answered 429 too_many_asks
        self.finished = 0  # asks whose thread is done, answered or not
        self._pool = ThreadPoolExecutor(limit, thread_name_prefix="ask")

    def enter(self) -> None:
        if self.running >= self.limit:
            self.refused += 1
            raise ApiError(
                "too_many_asks",
                f"{self.running} questions are being answered already (ASK_CONCURRENCY={self.limit}); "
                "ask again once one has its answer",
            )
        self.running += 1

    def leave(self) -> None:
        self.running -= 1

    def _done(self) -> None:
        self.running -= 1
        self.finished += 1

    async def run(self, fn, *args):
        """fn(*args) on an ask thread; the slot `enter` took is given back when the thread is done (at
        once if it never started)."""
        loop = asyncio.get_running_loop()
        future = self._pool.submit(fn, *args)
        future.add_done_callback(lambda _f: self._left(loop))
        return await asyncio.wrap_future(future)

    def _left(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            loop.call_soon_threadsafe(self._done)
        except RuntimeError:  # the loop closed at shutdown: nobody is counting any more
            pass

    def shutdown(self, **kwargs) -> None:
        self._pool.shutdown(**kwargs)


async def get_settings(connection: HTTPConnection) -> Settings:
    """The service's settings (middleware calls this too: it cannot take dependencies)."""
    return connection.app.state.settings


async def get_manager(connection: HTTPConnection) -> SessionManager:
    """The session manager of this replica."""
    return connection.app.state.manager


async def get_hub(connection: HTTPConnection) -> Hub:
    """The WebSocket hub every viewer is attached to."""
    return connection.app.state.hub


async def get_event_store(connection: HTTPConnection) -> EventStore | None:
    """The event store; None when events are off or the store could not be opened."""
    return connection.app.state.event_store


async def get_recordings(connection: HTTPConnection) -> Recordings | None:
    """The recordings (index, clips); None without an event store, whose database indexes them."""
    return connection.app.state.recordings


async def get_metrics(connection: HTTPConnection) -> Metrics:
    """The Prometheus metrics of this replica."""
    return connection.app.state.metrics


async def get_encoder(connection: HTTPConnection) -> JpegEncoder:
    """The JPEG encoder (the CPU's until the model has loaded on its device)."""
    return connection.app.state.encoder


async def get_relay(connection: HTTPConnection) -> BusRelay | None:
    """The bus relay for viewers here of sessions other replicas run; None without BUS_URL."""
    return connection.app.state.relay


async def get_history_reads(connection: HTTPConnection) -> ThreadPoolExecutor:
    """The threads history lists run on, apart from the default pool (events.py says why)."""
    return connection.app.state.history_reads


async def get_model_error(connection: HTTPConnection) -> str | None:
    """Why the model failed to load; None while it loads or once it has."""
    return connection.app.state.model_error


async def get_embedder(connection: HTTPConnection) -> EmbedderSlot:
    """The image encoder's slot: the encoder once loaded, or why not (loading, failed)."""
    return connection.app.state.embedder


async def get_vlm(connection: HTTPConnection) -> ModelSlot[VisionLanguageModel]:
    """The vision-language model's slot: the model once loaded, or why not (off, loading, failed)."""
    return connection.app.state.vlm


async def get_vector_index(connection: HTTPConnection) -> VectorIndex | None:
    """The event store's vector index; None without a store."""
    return connection.app.state.vector_index


async def get_search_embeds(connection: HTTPConnection) -> SearchEmbeds:
    """The one thread a search's text or image is embedded on (a model call: one at a time)."""
    return connection.app.state.search_embeds


async def get_asks(connection: HTTPConnection) -> Asks:
    """The threads and the bound of POST /ask."""
    return connection.app.state.asks


async def get_reindexer(connection: HTTPConnection) -> Reindexer | None:
    """The reindex runner; None when events are not embedded (search off, or no store)."""
    return connection.app.state.reindexer


SettingsDep = Annotated[Settings, Depends(get_settings)]
ManagerDep = Annotated[SessionManager, Depends(get_manager)]
HubDep = Annotated[Hub, Depends(get_hub)]
StoreDep = Annotated[EventStore | None, Depends(get_event_store)]
RecordingsDep = Annotated[Recordings | None, Depends(get_recordings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
EncoderDep = Annotated[JpegEncoder, Depends(get_encoder)]
ModelErrorDep = Annotated[str | None, Depends(get_model_error)]
HistoryReadsDep = Annotated[ThreadPoolExecutor, Depends(get_history_reads)]
RelayDep = Annotated[BusRelay | None, Depends(get_relay)]
EmbedderDep = Annotated[EmbedderSlot, Depends(get_embedder)]
VlmDep = Annotated[ModelSlot[VisionLanguageModel], Depends(get_vlm)]
VectorIndexDep = Annotated[VectorIndex | None, Depends(get_vector_index)]
SearchEmbedsDep = Annotated[SearchEmbeds, Depends(get_search_embeds)]
AsksDep = Annotated[Asks, Depends(get_asks)]
ReindexerDep = Annotated[Reindexer | None, Depends(get_reindexer)]
