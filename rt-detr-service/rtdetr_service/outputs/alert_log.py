"""The alert log sink: one log line per alert, written from a thread of its own.

A log handler can block (a full pipe, a slow journald); the publisher must not wait on it.
"""

from __future__ import annotations

import logging

from rtdetr_service.core.results import Published
from rtdetr_service.outputs.base import QueuedSink

log = logging.getLogger("rtdetr_service.analytics.alerts")


class AlertLogSink(QueuedSink):
    name = "alert_log"

    def accept(self, item: Published):
        if not item.alerts:
            return None
        return item.session.session_id, item.session.camera, item.alerts

    def write(self, batch: list) -> None:
        for session_id, camera, alerts in batch:
            for alert in alerts:
                log.warning(
                    "ALERT session=%s camera=%s %s class=%s confidence=%.2f track=%s bbox=%s frame=%d",
                    session_id,
                    camera or "-",
                    f"rule={alert.rule} ({alert.kind})" if alert.rule else "rule=-",
                    alert.class_name,
                    alert.confidence,
                    alert.track_id if alert.track_id is not None else "-",
                    [round(v) for v in alert.bbox],
                    alert.frame_index,
                )
