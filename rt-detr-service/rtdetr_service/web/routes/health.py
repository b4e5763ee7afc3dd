"""Liveness, readiness (model loaded? trained?) and Prometheus metrics. No key needed."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from rtdetr_service.outputs.registry import output_warnings
from rtdetr_service.web.deps import (
    EmbedderDep,
    EncoderDep,
    ManagerDep,
    MetricsDep,
    ModelErrorDep,
    SettingsDep,
    StoreDep,
    VlmDep,
)
from rtdetr_service.web.routes.ask import vlm_status
from rtdetr_service.web.routes.search import search_status

router = APIRouter(tags=["health"])


@router.get("/health", summary="Liveness")
async def health() -> dict:
    return {"status": "ok"}


@router.get("/ready", summary="Readiness: model loaded and warmed up; says whether weights are trained")
async def ready(
    manager: ManagerDep,
    settings: SettingsDep,
    store: StoreDep,
    encoder: EncoderDep,
    model_error: ModelErrorDep,
    embedder: EmbedderDep,
    vlm: VlmDep,
) -> JSONResponse:
    worker = manager.worker
    if worker is None:
        detail = model_error or "model loading"
        return JSONResponse({"ready": False, "detail": detail, "model": None}, status_code=503)
    if not worker.alive:
        why = worker.last_error or "no error recorded"
        detail = f"The inference worker has stopped ({why}); restart the service"
        model = worker.detector.info.as_dict()
        return JSONResponse({"ready": False, "detail": detail, "model": model}, status_code=503)
    outputs = [sink.stats() for sink in manager.sinks]
    # Inference works, so the service is ready; an output that fails or drops is said in words.
    warnings = output_warnings(manager.sinks)
    if store is None and settings.events_enabled:
        warnings.append("the event store could not be opened; events are not kept (see the log)")
    for session in manager.list():
        recording = session.snapshot().recording
        if recording is not None and recording["failing"]:
            warnings.append(f"session {session.id} is not recording: {recording['last_error']}")
    if manager.recordings is not None and manager.recordings.sweep_error is not None:
        warnings.append(f"recordings are not swept (kept past their limits): {manager.recordings.sweep_error}")
    cluster = manager.cluster
    if cluster is not None and cluster.store_error is not None:
        warnings.append(
            f"the session store cannot be reached ({cluster.store_error}): sessions here keep running; "
            "calls that need the store answer 503 until it is back"
        )
    return JSONResponse(
        {
            "ready": True,
            "warnings": warnings,
            "outputs": [o.as_dict() for o in outputs],
            "model": worker.detector.info.as_dict(),
            "jpeg_encoder": encoder.backend,
            "sessions": len(manager.list()),
            "batches": worker.batches,
            "inference_errors": worker.errors,
            "last_inference_error": worker.last_error,
            "max_sessions": settings.max_sessions,
            "search": search_status(settings, store, embedder),
            "vlm": vlm_status(settings, vlm),
        }
    )


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(prometheus: MetricsDep) -> Response:
    return Response(generate_latest(prometheus.registry), media_type=CONTENT_TYPE_LATEST)
