"""The MQTT sink: events, per-label counts, alerts and availability, Frigate-style topics.

    <prefix>/available               "online" (retained) after connect; "offline" on a clean close,
                                     and as the last will when the connection dies
    <prefix>/events                  {"schema": "rtdetr.event.v1", "type", "before", "after", ...}, QoS 1
    <prefix>/<camera>/<label>        tracked objects of that label now in view, retained, on change
    <prefix>/<camera>/alerts         {"schema": "rtdetr.alert.v1", ...}, QoS 1
    <prefix>/<camera>/answers        {"schema": "rtdetr.answer.v1", ...}: a rule's question answered, QoS 1

`<camera>` is the session's camera name, or its id when it has none. paho's own thread keeps the
connection and reconnects with capped backoff; the connect is asynchronous, so a broker that is
down at start costs only this output. Messages go through the sink's bounded queue; while the
broker is unreachable they are dropped, counted, not buffered: they describe a moment that has
passed. The current counts are kept here and published again on every connect, so a broker
that restarted without persistence, or a count dropped meanwhile, is set right.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections import Counter
from dataclasses import replace
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from rtdetr_service.core.results import Published
from rtdetr_service.outputs.base import DEGRADED_FOR_S, QueuedSink, SinkStats
from rtdetr_service.outputs.messages import dumps, output_alert, output_answer, output_detections, output_event
from rtdetr_service.outputs.settings import MqttSettings

log = logging.getLogger(__name__)

_DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


def _topic_part(name: str) -> str:
    """A camera or label as one topic level: wildcards and separators would change the topic."""
    return "".join("_" if c in "/+#\0" else c for c in name) or "_"


class MqttSink(QueuedSink):
    name = "mqtt"

    def __init__(
        self,
        settings: MqttSettings,
        *,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 30.0,
        keepalive_s: int = 30,
    ) -> None:
        parts = urlsplit(settings.url.get_secret_value().strip())
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError("MQTT_URL must look like mqtt://[user:password@]host[:port] (or mqtts:// for TLS)")
        super().__init__(queue_size=settings.queue_size, batch_max=1)
        self.host = parts.hostname
        self.port = parts.port or _DEFAULT_PORTS[parts.scheme]
        self.prefix = settings.topic_prefix.strip("/") or "rtdetr"
        self.available_topic = f"{self.prefix}/available"
        self._keepalive = keepalive_s
        self._connected = threading.Event()
        self._state_lock = threading.Lock()
        self._link_error: str | None = f"connecting to {self.host}:{self.port}"
        self._counts: dict[str, tuple[str, Counter]] = {}  # session id -> (topic camera, label counts)
        # Per-frame detections on <prefix>/<camera>/detections, at most this many a second per
        # session (0 = off): a 30 fps camera would otherwise flood a home-automation broker.
        fps = settings.detections_max_fps
        self._detections_interval = 1.0 / fps if fps > 0 else None
        self._last_detections: dict[str, float] = {}  # session id -> frame time of the last one sent
        self._closed = False

        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=settings.client_id, protocol=mqtt.MQTTv311)
        if parts.username is not None:
            client.username_pw_set(unquote(parts.username), unquote(parts.password or "") or None)
        if parts.scheme == "mqtts":
            client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
        client.will_set(self.available_topic, "offline", qos=1, retain=True)
        client.reconnect_delay_set(reconnect_min_s, reconnect_max_s)
        # paho's own store of unacknowledged QoS 1 messages, bounded like the queue in front of it.
        client.max_queued_messages_set(settings.queue_size)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        self._client = client

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start connecting (in the background) and the writer thread; returns at once."""
        self._client.connect_async(self.host, self.port, keepalive=self._keepalive)
        self._client.loop_start()
        super().start()

    def close(self, timeout: float = 5.0) -> None:
        """Publish what is queued and `offline`, disconnect; bounded by `timeout` even when the
        broker is gone."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout
        super().close(timeout / 2)
        if self._connected.is_set():
            info = self._client.publish(self.available_topic, "offline", qos=1, retain=True)
            try:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            except (RuntimeError, ValueError):  # lost the connection meanwhile: the will says offline
                pass
        self._client.disconnect()
        # loop_stop() joins paho's thread without a bound; a connect to a dead host blocks it for
        # the connect timeout, so it is waited for here only as long as is left.
        stopper = threading.Thread(target=self._client.loop_stop, name="mqtt-loop-stop", daemon=True)
        stopper.start()
        stopper.join(max(0.0, deadline - time.monotonic()))

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # -- paho callbacks (paho's thread) ------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            # Bad credentials, not authorised: said once, paho keeps trying with its backoff.
            self._set_link_error(f"the MQTT broker {self.host}:{self.port} refused the connection: {reason_code}")
            return
        self._connected.set()
        with self._state_lock:
            self._link_error = None
            counts = [(camera, dict(labels)) for camera, labels in self._counts.values()]
        log.info("mqtt: connected to %s:%d", self.host, self.port)
        client.publish(self.available_topic, "online", qos=1, retain=True)
        for camera, labels in counts:
            for label, count in labels.items():
                client.publish(f"{self.prefix}/{camera}/{label}", str(count), qos=1, retain=True)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if self._closed:
            return
        self._set_link_error(f"lost the connection to the MQTT broker {self.host}:{self.port} ({reason_code})")
        if was_connected:
            log.warning("mqtt: %s; reconnecting", self._link_error)

    def _on_connect_fail(self, client, userdata) -> None:
        if self._closed:
            return
        first = self._set_link_error(f"cannot reach the MQTT broker at {self.host}:{self.port}; retrying")
        if first:
            log.warning("mqtt: %s", self._link_error)

    def _set_link_error(self, message: str) -> bool:
        with self._state_lock:
            changed = self._link_error != message
            self._link_error = message
        return changed

    # -- publisher side ----------------------------------------------------------------------

    def handle(self, item: Published) -> None:
        """Queue the item's messages; while the broker is unreachable, count them as dropped."""
        entries = self._messages(item)
        if not entries:
            return
        if not self._connected.is_set():
            with self._lock:
                self.handled += len(entries)
                self.dropped += len(entries)
                self._last_drop = time.monotonic()
            return
        for entry in entries:
            self.offer(entry, item.session.session_id)

    def session_ended(self, session_id: str) -> None:
        """Its objects are gone: every label it counted goes back to 0."""
        with self._state_lock:
            camera, labels = self._counts.pop(session_id, ("", Counter()))
            self._last_detections.pop(session_id, None)
        entries = [(f"{self.prefix}/{camera}/{label}", "0", 1, True) for label, n in labels.items() if n]
        for entry in entries:
            self.offer(entry, session_id)

    def _messages(self, item: Published) -> list[tuple[str, str, int, bool]]:
        view = item.session
        camera = _topic_part(view.camera or view.session_id)
        out = [(f"{self.prefix}/events", dumps(output_event(view, change)), 1, False) for change in item.events]
        if item.result is not None:
            now = Counter(_topic_part(d.class_name) for d in item.result.detections if d.track_id is not None)
            with self._state_lock:
                _, before = self._counts.get(view.session_id, (camera, Counter()))
                changed = {label: now[label] for label in set(before) | set(now) if now[label] != before[label]}
                # Labels that went to 0 keep their key: the 0 is published again on reconnect.
                self._counts[view.session_id] = (camera, Counter({**before, **changed}))
            out.extend(
                (f"{self.prefix}/{camera}/{label}", str(count), 1, True) for label, count in sorted(changed.items())
            )
            if self._detections_due(view.session_id, item.result.timestamp):
                detections = dumps(output_detections(view, item.result))
                out.append((f"{self.prefix}/{camera}/detections", detections, 0, False))
        out.extend(
            (f"{self.prefix}/{camera}/alerts", dumps(output_alert(view, alert)), 1, False) for alert in item.alerts
        )
        out.extend(
            (f"{self.prefix}/{camera}/answers", dumps(output_answer(view, answer)), 1, False) for answer in item.answers
        )
        return out

    def _detections_due(self, session_id: str, timestamp: float) -> bool:
        if self._detections_interval is None:
            return False
        with self._state_lock:
            last = self._last_detections.get(session_id)
            if last is not None and 0 <= timestamp - last < self._detections_interval:
                return False
            self._last_detections[session_id] = timestamp
            return True

    # -- writer side -------------------------------------------------------------------------

    def write(self, batch: list) -> None:
        topic, payload, qos, retain = batch[0]
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        # NO_CONN for QoS 1: the connection dropped after the message was queued here; paho keeps
        # it (bounded by max_queued_messages) and sends it after the reconnect.
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos > 0):
            return
        raise ConnectionError(f"not published to {topic}: {mqtt.error_string(info.rc)}")

    def stats(self) -> SinkStats:
        base = replace(super().stats(), detail={"broker": f"{self.host}:{self.port}"})
        with self._state_lock:
            link_error = self._link_error
        if not self._connected.is_set():
            return replace(base, state="failing", last_error=link_error or "not connected to the MQTT broker")
        # Connected: a failed write before the reconnect is history; recent drops are not.
        state = "degraded" if time.monotonic() - self._last_drop < DEGRADED_FOR_S else "ok"
        return replace(base, state=state)
