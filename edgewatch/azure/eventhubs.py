"""Azure Event Hubs, both ways edgewatch talks to it.

* **Kafka endpoint** (input and output of the flow): one namespace connection string gives
  everything librdkafka needs — bootstrap ``<namespace>.servicebus.windows.net:9093``,
  ``SASL_SSL``, ``PLAIN``, user ``$ConnectionString``, the connection string as password —
  plus the client settings Microsoft recommends for Event Hubs
  (:func:`edgewatch.azure.connection_string.eventhubs_kafka_config`; the settings use it).
* **AMQP** (output only, azure-eventhub): :class:`EventHubsSink` stores labeled events in the
  store-and-forward buffer like the IoT Hub sink, and :class:`EventHubsSender` sends them with
  ``EventHubProducerClient``: one ``EventDataBatch`` per device (``partition_key`` = device id,
  so a device's events stay in one partition, in order), a new batch whenever one is full.
  An unreachable namespace only makes the buffer grow; it drains when the link returns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from azure.eventhub import EventData, EventDataBatch, EventHubProducerClient
from azure.eventhub.exceptions import EventHubError

from edgewatch.azure.connection_string import EventHubsConnectionString
from edgewatch.azure.messages import LabeledEventSink, Selection, SendMode, labeled_selection
from edgewatch.store_forward import BufferPolicy, Envelope, StoreAndForward, Stored, call_with_timeout
from edgewatch.store_forward.forwarder import close_in_background, close_quietly

log = logging.getLogger(__name__)

# -- AMQP --------------------------------------------------------------------------------------------


def to_event_data(envelope: Envelope) -> EventData:
    """The Event Hubs event for an envelope: JSON body, content type, message id, properties."""
    event = EventData(envelope.body)
    event.content_type = "application/json"
    if envelope.message_id:
        event.message_id = envelope.message_id
    event.properties = dict(envelope.properties)
    return event


def by_device(batch: list[Stored]) -> dict[str, list[Stored]]:
    """The batch split per device, each device's messages in their order."""
    groups: dict[str, list[Stored]] = {}
    for stored in batch:
        groups.setdefault(stored.envelope.device_id, []).append(stored)
    return groups


class EventHubsSender:
    """Sends buffered envelopes as one ``EventDataBatch`` per device (partition key), in order.

    Args:
        producer_factory: builds an ``EventHubProducerClient`` (or an object with the same
            ``create_batch``/``send_batch``/``close``); called again after a stalled send.
        send_timeout: longest wait for ``create_batch`` (it opens the link) or one ``send_batch``.
    """

    batch_size = 500

    def __init__(self, producer_factory: Callable[[], EventHubProducerClient], send_timeout: float = 30.0):
        self._producer_factory = producer_factory
        self.send_timeout = send_timeout
        self._producer: EventHubProducerClient | None = None

    def deliver(self, batch: list[Stored], buffer: StoreAndForward) -> None:
        for device_id, items in by_device(batch).items():
            event_batch, seqs = self._new_batch(device_id), []
            for stored in items:
                event = to_event_data(stored.envelope)
                if _fits(event_batch, event):
                    seqs.append(stored.seq)
                    continue
                if seqs:  # full: send it, then start the next batch with this event
                    self._send(event_batch)
                    buffer.ack(seqs)
                    event_batch, seqs = self._new_batch(device_id), []
                    if _fits(event_batch, event):
                        seqs.append(stored.seq)
                        continue
                buffer.discard(
                    [stored.seq], "too-large", f"larger than an Event Hubs batch ({event_batch.max_size_in_bytes} B)"
                )
            if seqs:
                self._send(event_batch)
                buffer.ack(seqs)

    def _new_batch(self, device_id: str) -> EventDataBatch:
        producer = self._connected_producer()
        return self._call(lambda: producer.create_batch(partition_key=device_id))

    def _send(self, event_batch: EventDataBatch) -> None:
        producer = self._connected_producer()
        self._call(lambda: producer.send_batch(event_batch, timeout=self.send_timeout))

    def _call(self, action: Callable):
        try:
            # a little more than the SDK's own timeout, for calls that ignore it (opening the link)
            return call_with_timeout(action, self.send_timeout + min(self.send_timeout, 5.0))
        except EventHubError:
            raise  # the SDK reconnects by itself on the next call
        except BaseException as exc:
            # stalled or in an unexpected state: a new producer for the next attempt. A batch the
            # old one still delivers is a duplicate (same message ids): at least once, never lost.
            self._replace_producer(exc)
            raise

    def _connected_producer(self) -> EventHubProducerClient:
        if self._producer is None:
            self._producer = self._producer_factory()
        return self._producer

    def _replace_producer(self, reason: BaseException) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            log.info("eventhubs: replacing the producer after %s: %s", type(reason).__name__, reason)
            close_in_background(producer.close, "edgewatch-eventhubs-close")

    def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            close_quietly(producer.close, "edgewatch-eventhubs-close")


def _fits(event_batch: EventDataBatch, event: EventData) -> bool:
    try:
        event_batch.add(event)
    except ValueError:  # the SDK's signal that the batch is full
        return False
    return True


class EventHubsSink(LabeledEventSink):
    """Bytewax sink: lists of LabeledEvent to an event hub over AMQP, through
    ``<buffer_dir>/eventhubs.sqlite3``.

    Args:
        buffer_dir: folder of the store-and-forward file.
        connection_string: namespace or event hub connection string.
        eventhub_name: the event hub, unless the connection string has ``EntityPath``.
        send: ``all`` (default) or ``anomalies``.
        send_timeout: longest wait for one batch.
        policy: buffer limits and retry timings.
        producer_factory: replaces ``EventHubProducerClient.from_connection_string`` (tests).
        name: buffer name (file stem, metrics label); sinks of one name share a buffer and a producer.
        select: which items go and as what (default: labeled events; see :mod:`edgewatch.azure.messages`).
    """

    def __init__(
        self,
        buffer_dir: Path | str,
        connection_string: str,
        eventhub_name: str | None = None,
        send: SendMode = "all",
        send_timeout: float = 30.0,
        policy: BufferPolicy | None = None,
        producer_factory: Callable[[], EventHubProducerClient] | None = None,
        name: str = "eventhubs",
        select: Selection = labeled_selection,
    ):
        parsed = EventHubsConnectionString.parse(connection_string)
        if not (eventhub_name or parsed.entity_path):
            raise ValueError("name the event hub: eventhub_name or EntityPath= in the connection string")

        def producer() -> EventHubProducerClient:
            return EventHubProducerClient.from_connection_string(connection_string, eventhub_name=eventhub_name)

        factory = producer_factory or producer
        super().__init__(name, buffer_dir, lambda: EventHubsSender(factory, send_timeout), send, policy, select)
