"""A stand-in for ``EventHubProducerClient`` for the Event Hubs sink tests: the SDK's own batches
(real size accounting, real "batch full" ``ValueError``) and events, the sends recorded."""

from __future__ import annotations

import threading

from azure.eventhub import EventData, EventDataBatch
from azure.eventhub.exceptions import ConnectError


class RecordingBatch(EventDataBatch):
    """The SDK's batch, also remembering what was added (EventDataBatch keeps that private)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.events: list[EventData] = []

    def add(self, event_data) -> None:
        super().add(event_data)  # raises ValueError when full, before we record
        self.events.append(event_data)


class FakeProducer:
    """Stands in for EventHubProducerClient: real batches, sends recorded, failures on demand."""

    def __init__(self, max_size_in_bytes: int = 1_048_576, failures: int = 0, stall_first_send: bool = False):
        self.max_size_in_bytes = max_size_in_bytes
        self.failures = failures
        self.stall_first_send = stall_first_send
        self.sent: list[tuple[str, list[EventData]]] = []
        self.closed = False
        self._release = threading.Event()

    def create_batch(self, *, partition_key: str | None = None) -> RecordingBatch:
        if self.failures:
            self.failures -= 1
            raise ConnectError("namespace unreachable")
        return RecordingBatch(max_size_in_bytes=self.max_size_in_bytes, partition_key=partition_key)

    def send_batch(self, batch: RecordingBatch, *, timeout: float | None = None) -> None:
        if self.stall_first_send:
            self.stall_first_send = False
            self._release.wait(60)  # a send the SDK never finishes
            raise ConnectError("too late")
        self.sent.append((batch._partition_key, list(batch.events)))

    def close(self) -> None:
        self.closed = True
        self._release.set()
