"""An output that appends every event change and alert to a file, one JSON object a line."""

from __future__ import annotations

from pathlib import Path

from rtdetr_service.core.results import Published
from rtdetr_service.outputs.base import QueuedSink
from rtdetr_service.outputs.messages import dumps, output_messages


class JsonLinesSink(QueuedSink):
    """`rtdetr.event.v1` and `rtdetr.alert.v1` messages, appended to `path` from the sink's own thread."""

    name = "jsonl"

    def __init__(self, path: Path, *, queue_size: int = 1024) -> None:
        self._path = path
        super().__init__(queue_size=queue_size, batch_max=64)

    def accept(self, item: Published):
        # On the session's publisher thread: only pick what to queue, never touch the disk here.
        return output_messages(item) or None

    def write(self, batch: list) -> None:
        # On the sink's thread: a slow disk costs this sink its queue (drops counted), never a frame.
        with self._path.open("a") as out:
            for messages in batch:
                out.writelines(dumps(message) + "\n" for message in messages)
