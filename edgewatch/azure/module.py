"""edgewatch as an Azure IoT Edge module: edgeHub input in, module outputs out, twin-controlled.

``edgewatch iotedge`` (the module's ``Cmd``) runs the anomaly flow of :mod:`edgewatch.flows.anomaly`
with edgeHub in place of Kafka::

    input "telemetry" ─► EdgeHubSource ─► parse ─► detect ─┬─► IoT Hub sink ─► output "labeled"   (sendMode)
                                                           ├─► alarm events ─► output "alarms"    (alarms_topic)
                                                           ├─► drift events ─► output "drift"     (drift_topic)
                                                           └─► dead letters ─► output "deadletter"

and applies the module twin's desired properties while it runs (:mod:`edgewatch.azure.twin`).

**One connection.** A module identity holds one MQTT connection to edgeHub (a second one
with the same identity disconnects the first), so a single module client carries the input,
the twin, the ``labeled``, ``alarms`` and ``drift`` outputs (each an
:class:`~edgewatch.azure.iothub.IoTHubSink` given that client) and the ``deadletter`` output.
The alarm and drift outputs are named by the ``alarms_topic`` and ``drift_topic`` settings
(empty: not sent); an operator's ``accept`` in the twin leaves as an ``alarm-cleared`` and a
``drift`` message there. None of the sinks shuts it down or replaces it;
:func:`run_iotedge` does, after the flow has drained.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_delay, stop_any, wait_exponential

from edgewatch.app import Application
from edgewatch.azure.edgehub import (
    DEFAULT_DEADLETTER_OUTPUT,
    DEFAULT_INPUT,
    DeadLetterOutputSink,
    EdgeHubInput,
    EdgeHubSource,
    OutputRejecter,
)
from edgewatch.azure.iothub import IoTHubClient, IoTHubSink, IoTHubTarget
from edgewatch.azure.messages import alarm_selection, drift_selection
from edgewatch.azure.twin import ModuleTwin, TwinControls, set_handler
from edgewatch.config import FlowSettings
from edgewatch.flows.anomaly import LiveControls, build_flow
from edgewatch.flows.wiring import buffer_policy, secret
from edgewatch.store_forward import call_with_timeout

log = logging.getLogger(__name__)


def create_module_client(settings: FlowSettings) -> IoTHubClient:
    """The module's one client: from the edge environment, or from a module connection string
    (``EDGEWATCH_IOTHUB_CONNECTION_STRING`` with ``ModuleId`` and ``GatewayHostName``) for development."""
    target = IoTHubTarget(secret(settings.iothub_connection_string), settings.iothub_output, settings.iothub_ca_cert)
    if target.mode == "device":
        raise ValueError("edgewatch iotedge runs as a module: the connection string needs a ModuleId")
    return target.create_client()


def connect(client: IoTHubClient, timeout: float, stop: threading.Event) -> None:
    """Connect within ``timeout`` s, retrying refused connections with backoff; raise
    ``ConnectionError`` after (the IoT Edge runtime then restarts the module)."""
    retrying = Retrying(
        retry=retry_if_exception_type(Exception),
        wait=wait_exponential(multiplier=0.5, max=10.0),
        stop=stop_any(stop_after_delay(timeout), lambda _state: stop.is_set()),
        sleep=stop.wait,
        before_sleep=lambda state: log.info(
            "iotedge: edgeHub not reachable yet (%s); retrying", state.outcome.exception()
        ),
    )
    try:
        retrying(call_with_timeout, client.connect, timeout)
    except RetryError as exc:
        error = exc.last_attempt.exception()
        raise ConnectionError(f"could not connect to edgeHub within {timeout:g} s: {error}") from error


def build_module_flow(
    settings: FlowSettings,
    client: IoTHubClient,
    queue: EdgeHubInput,
    controls: LiveControls,
    deadletter_output: str = DEFAULT_DEADLETTER_OUTPUT,
    artifact=None,
) -> tuple[Dataflow, IoTHubSink]:
    """The anomaly flow reading ``queue``: labeled events to the module output ``settings.iothub_output``
    (filtered by send mode), alarm and drift events to the outputs ``settings.alarms_topic`` and
    ``settings.drift_topic`` (when set) and dead letters to ``deadletter_output``, all on ``client``."""
    policy = buffer_policy(settings)
    connection_string = secret(settings.iothub_connection_string)
    flow, streams = build_flow(settings, EdgeHubSource(queue, settings.batch_size), controls, artifact)
    labeled_sink = IoTHubSink(
        settings.buffer_dir,
        connection_string,
        settings.iothub_output,
        settings.iothub_send,
        settings.iothub_ca_cert,
        policy=policy,
        client=client,
    )
    op.output("labeled-edgehub", streams.labeled, labeled_sink)
    for kind, output, stream, select in [
        ("alarms", settings.alarms_topic, streams.alarms, alarm_selection),
        ("drift", settings.drift_topic, streams.drift, drift_selection),
    ]:
        if output:  # a buffer of its own: the flood of labeled events never pushes an alarm out
            sink = IoTHubSink(settings.buffer_dir, connection_string, output, "all", settings.iothub_ca_cert,
                              policy=policy, client=client, name=f"edgehub-{kind}", select=select)  # fmt: skip
            op.output(f"{kind}-edgehub", stream, sink)
    dead_letters = DeadLetterOutputSink(
        settings.buffer_dir, client, deadletter_output, connection_string, policy=policy
    )
    op.output("dead-letters-edgehub", streams.dead_letters, dead_letters)
    return flow, labeled_sink


def run_iotedge(
    app: Application,
    *,
    input_name: str = DEFAULT_INPUT,
    deadletter_output: str = DEFAULT_DEADLETTER_OUTPUT,
    queue_capacity: int = 10_000,
    queue_wait_seconds: float = 30.0,
    connect_timeout: float = 120.0,
    twin_timeout: float = 30.0,
    client_factory: Callable[[FlowSettings], IoTHubClient] = create_module_client,
) -> None:
    """Run edgewatch as an IoT Edge module until a stop is requested (SIGTERM), then drain and return.

    Reads ``input_name`` through edgeHub, labels, sends labeled events on ``settings.iothub_output``
    (``labeled``, filtered by the twin's ``sendMode``) and dead letters on ``deadletter_output``,
    both through store-and-forward files in ``settings.buffer_dir``; recovery and epochs as in
    ``edgewatch run``. The client is shut down last, after the flow has drained.
    """
    app.start()
    settings, stop = app.settings, app.stop_requested
    client = client_factory(settings)
    app.closing(_shutdown, client, twin_timeout)
    try:
        connect(client, connect_timeout, stop)
        queue = EdgeHubInput(
            input_name, queue_capacity, queue_wait_seconds, OutputRejecter(client, deadletter_output, twin_timeout)
        )
        controls = app.controls  # the model, the shadow and the threshold, as the settings give them
        flow, labeled_sink = build_module_flow(settings, client, queue, controls, deadletter_output, app.artifact)
        ModuleTwin(client, TwinControls(settings, controls, labeled_sink), twin_timeout).start()
        set_handler(client, "on_message_received", queue.handle, twin_timeout)
        closer = threading.Thread(
            target=_close_input_on_stop,
            args=(stop, client, queue, twin_timeout),
            name="edgewatch-input-closer",
            daemon=True,  # joined below; never keeps a failing process alive
        )
        closer.start()
        log.info(
            "iotedge: input %r → output %r (sendMode %s), dead letters → output %r",
            input_name,
            settings.iothub_output,
            labeled_sink.send,
            deadletter_output,
        )
        try:
            app.run(flow)
        finally:
            stop.set()
            closer.join(twin_timeout + 5)
    finally:
        app.close()


def _close_input_on_stop(stop: threading.Event, client: IoTHubClient, queue: EdgeHubInput, timeout: float) -> None:
    """On stop: unsubscribe from the inputs (edgeHub keeps what comes next), then let the source
    drain what was already taken and end, which ends the flow."""
    stop.wait()
    try:
        set_handler(client, "on_message_received", None, timeout)
    except Exception as exc:
        log.warning("iotedge: could not unsubscribe from the inputs (%s: %s)", type(exc).__name__, exc)
    queue.close()
    log.info("iotedge: input closed; draining %d queued message(s)", len(queue))


def _shutdown(client: IoTHubClient, timeout: float) -> None:
    try:
        call_with_timeout(client.shutdown, timeout)
    except Exception as exc:  # the process is ending: say so, do not raise
        log.warning("iotedge: client shutdown failed (%s: %s)", type(exc).__name__, exc)
