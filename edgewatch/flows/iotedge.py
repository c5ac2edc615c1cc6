"""edgewatch as an Azure IoT Edge module: edgeHub input in, module outputs out, twin-controlled.

``edgewatch iotedge`` (the module's ``Cmd``) runs the anomaly flow of :mod:`edgewatch.flows.anomaly`
with edgeHub in place of Kafka::

    input "telemetry" ─► EdgeHubSource ─► parse ─► detect ─┬─► IoT Hub sink ─► output "labeled"   (sendMode)
                                                           └─► dead letters ─► output "deadletter"

and applies the module twin's desired properties while it runs:

=============== ==============================================================================
``threshold``   label threshold, a number in [0, 1]; ``null`` restores the default
``sendMode``    ``anomalies`` (only anomalous events leave on ``labeled``) or ``all``
``modelVersion`` the warm-start model version: a different one is loaded from
                ``EDGEWATCH_MODEL_DIR`` and, if that is the version asked for, every device
                restarts from it; otherwise the mismatch is reported
=============== ==============================================================================

What is in effect is reported back (``threshold``, ``sendMode``, ``modelVersion``, ``detector``,
``status`` ``ok``/``error``, ``error``, ``desiredVersion``). A value that does not validate is
ignored (the previous one stays), logged, and reported in ``error``; it never stops the module.

**One connection.** A module identity holds one MQTT connection to edgeHub (a second one
with the same identity disconnects the first), so a single module client carries the input,
the twin, the ``labeled`` output (the IoT Hub sink, via :meth:`IoTHubSink.use_client
<edgewatch.connectors.iothub.IoTHubSink.use_client>`) and the ``deadletter`` output. None of the
sinks shuts it down or replaces it; :func:`run_iotedge` does, after the flow has drained.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

from bytewax.dataflow import Dataflow

from edgewatch.config import FlowSettings
from edgewatch.connectors.edgehub import (
    DEFAULT_DEADLETTER_OUTPUT,
    DEFAULT_INPUT,
    DeadLetterOutputSink,
    EdgeHubInput,
    EdgeHubSource,
    OutputRejecter,
)
from edgewatch.connectors.iothub import IoTHubClient, IoTHubSink, IoTHubTarget
from edgewatch.connectors.store_forward import SEND_MODES, BufferPolicy, ForwardingSink, call_with_timeout
from edgewatch.flows.anomaly import LiveControls, build_flow, init_recovery_dir, tune_gc_for_streaming
from edgewatch.online_models import artifact as artifact_module
from edgewatch.online_models.registry import resolve_detector

log = logging.getLogger(__name__)


# -- desired properties → the running flow ----------------------------------------------------------


class TwinControls:
    """Applies desired properties to the flow's :class:`LiveControls` and the IoT Hub sink.

    Not thread-safe by itself: :class:`ModuleTwin` calls it under a lock.

    Args:
        settings: the flow settings (defaults: ``threshold``, ``iothub_send``, ``model_dir``).
        controls: the flow's live controls.
        labeled_sink: the sink whose send mode ``sendMode`` sets (``None``: refused).
        load_artifact: reads a model directory (tests replace it; default: ``artifact.load`` with
            ``settings.model_public_key``).
    """

    def __init__(
        self,
        settings: FlowSettings,
        controls: LiveControls,
        labeled_sink: ForwardingSink | None,
        load_artifact: Callable[[Path], artifact_module.ModelArtifact] | None = None,
    ):
        self._settings = settings
        self._controls = controls
        self._sink = labeled_sink
        # a rolled-out model is checked like --model: its sha256, and its signature when a key is set
        self._load_artifact = load_artifact or (lambda path: artifact_module.load(path, settings.model_public_key))
        metadata = _model_metadata(settings.model_dir)
        self.model_version: str | None = metadata.get("version")
        self.detector = metadata.get("detector") or settings.detector
        self._twin_threshold: float | None = None
        self.errors: dict[str, str] = {}
        self.desired_version: int | None = None
        self._controls.threshold = self.threshold

    @property
    def threshold(self) -> float:
        """The threshold in effect: the twin's, else the settings', else the detector's."""
        if self._twin_threshold is not None:
            return self._twin_threshold
        if self._settings.threshold is not None:
            return self._settings.threshold
        return resolve_detector(self.detector).threshold

    @property
    def send_mode(self) -> str | None:
        return self._sink.send if self._sink is not None else None

    def apply(self, desired: dict, complete: bool) -> dict | None:
        """Apply a full desired-properties document (``complete``) or a patch.

        Returns the reported-properties patch, or ``None`` for a document older than what was
        applied (``$version``; a complete document of the same version is applied again).
        Properties missing from a complete document, and ``null`` ones in a patch, go back to
        their defaults (``modelVersion``: the model stays).
        """
        version, applied = desired.get("$version"), self.desired_version
        # patches come on several SDK threads, and one may beat the initial GET: older news is skipped
        older = isinstance(version, int) and applied is not None and (version < applied or version == applied)
        if older and not (complete and version == applied):
            log.info("twin: ignoring desired properties $version %d (already at %d)", version, applied)
            return None
        handlers = {"threshold": self._set_threshold, "sendMode": self._set_send_mode, "modelVersion": self._set_model}
        for name, handler in handlers.items():
            if name not in desired and not complete:
                continue
            try:
                handler(desired.get(name))
            except ValueError as exc:
                self.errors[name] = str(exc)
                log.warning("twin: desired %s=%s ignored: %s", name, json.dumps(desired.get(name)), exc)
            else:
                self.errors.pop(name, None)
        if isinstance(version, int):
            self.desired_version = version
        return self.reported()

    def reported(self) -> dict:
        """What is in effect, as reported properties."""
        return {
            "threshold": self.threshold,
            "sendMode": self.send_mode,
            "modelVersion": self.model_version,
            "detector": self.detector,
            "status": "error" if self.errors else "ok",
            "error": "; ".join(f"{name}: {why}" for name, why in sorted(self.errors.items())) or None,
            "desiredVersion": self.desired_version,
        }

    def _set_threshold(self, value: object) -> None:
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"must be a number in [0, 1], got {json.dumps(value)}")
            if not 0 <= value <= 1:
                raise ValueError(f"must be in [0, 1], got {value}")
            value = float(value)
        self._twin_threshold = value
        self._controls.threshold = self.threshold

    def _set_send_mode(self, value: object) -> None:
        if self._sink is None:
            if value is not None:
                raise ValueError("no IoT Hub output to set it on")
            return
        mode = self._settings.iothub_send if value is None else value
        if mode not in SEND_MODES:
            raise ValueError(f"must be one of {', '.join(SEND_MODES)}, got {json.dumps(value)}")
        self._sink.send = mode

    def _set_model(self, value: object) -> None:
        if value is None or value == self.model_version:
            return
        if not isinstance(value, str) or not value:
            raise ValueError(f"must be a version string, got {json.dumps(value)}")
        model_dir = self._settings.model_dir
        if model_dir is None:
            raise ValueError(f"{value!r} asked for, but no model directory (EDGEWATCH_MODEL_DIR) to load it from")
        try:
            fitted = self._load_artifact(Path(model_dir))
        except (OSError, artifact_module.ArtifactError) as exc:
            raise ValueError(f"{value!r} asked for; loading {model_dir} failed: {exc}") from None
        if fitted.version != value:
            raise ValueError(
                f"{value!r} asked for, but {model_dir} holds {fitted.version!r}: deploy that model first "
                f"(still running {self.model_version!r})"
            )
        self._controls.use_artifact(fitted)
        self.model_version, self.detector = fitted.version, fitted.spec.name
        self._controls.threshold = self.threshold
        log.info("twin: every device restarts from model %s (%s)", fitted.version, fitted.spec.name)


def _model_metadata(model_dir: Path | None) -> dict:
    """``model.json`` of a warm-start directory (version, detector), or ``{}``."""
    if model_dir is None:
        return {}
    try:
        return json.loads((Path(model_dir) / artifact_module.METADATA_FILE).read_text())
    except (OSError, ValueError):
        return {}


class ModuleTwin:
    """The module twin: desired properties at start, on every patch and after a reconnect;
    what is in effect goes back as reported properties.

    Args:
        client: the module client.
        controls: applies the desired properties.
        timeout: longest wait for one twin request (get or report).
    """

    def __init__(self, client: IoTHubClient, controls: TwinControls, timeout: float = 30.0):
        self._client = client
        self.controls = controls
        self._timeout = timeout
        self._lock = threading.Lock()
        self._disconnected = False

    def start(self) -> bool:
        """Subscribe to patches, then read the whole twin; False if the twin could not be read
        (the flow starts with the settings' values and reads it again after a reconnect)."""
        set_handler(self._client, "on_twin_desired_properties_patch_received", self.on_patch, self._timeout)
        set_handler(self._client, "on_connection_state_change", self.on_connection_state_change, self._timeout)
        return self.resync()

    def resync(self) -> bool:
        """Read the full twin and apply its desired properties."""
        try:
            twin = call_with_timeout(self._client.get_twin, self._timeout)
        except Exception as exc:
            log.warning(
                "twin: could not read the module twin (%s: %s); keeping what is in effect", type(exc).__name__, exc
            )
            return False
        self._apply(twin.get("desired") or {}, complete=True)
        return True

    def on_patch(self, patch: dict) -> None:
        """The SDK's desired-properties patch handler."""
        self._apply(patch or {}, complete=False)

    def on_connection_state_change(self) -> None:
        """After a reconnect, read the twin again: patches sent while disconnected are not replayed."""
        if not self._client.connected:
            self._disconnected = True
        elif self._disconnected:
            self._disconnected = False
            threading.Thread(target=self.resync, name="edgewatch-twin-resync", daemon=True).start()

    def _apply(self, desired: dict, complete: bool) -> None:
        with self._lock:  # the SDK may call handlers on several threads; apply and report in order
            try:
                reported = self.controls.apply(desired, complete)
            except Exception:  # a bug here must not stop the module: say so and keep going
                log.exception("twin: applying desired properties failed")
                return
            if reported is not None:
                self.report(reported)

    def report(self, reported: dict) -> None:
        try:
            call_with_timeout(self._client.patch_twin_reported_properties, self._timeout, reported)
        except Exception as exc:
            log.warning("twin: could not report %s (%s: %s)", reported, type(exc).__name__, exc)
        else:
            log.info("twin: reported %s", json.dumps(reported))


def set_handler(client: IoTHubClient, name: str, handler: Callable | None, timeout: float) -> None:
    """Set (or with ``None`` remove) an SDK handler; setting one subscribes, so it is bounded."""
    call_with_timeout(setattr, timeout, client, name, handler)


# -- the module --------------------------------------------------------------------------------------


def create_module_client(settings: FlowSettings) -> IoTHubClient:
    """The module's one client: from the edge environment, or from a module connection string
    (``EDGEWATCH_IOTHUB_CONNECTION_STRING`` with ``ModuleId`` and ``GatewayHostName``) for development."""
    target = IoTHubTarget(settings.iothub_connection_string, settings.iothub_output, settings.iothub_ca_cert)
    if target.mode == "device":
        raise ValueError("edgewatch iotedge runs as a module: the connection string needs a ModuleId")
    return target.create_client()


def connect(client: IoTHubClient, timeout: float, stop: threading.Event) -> None:
    """Connect within ``timeout`` s, retrying refused connections; raise ``ConnectionError`` after
    (the IoT Edge runtime then restarts the module)."""
    deadline = time.monotonic() + timeout
    delay = 0.5
    while True:
        try:
            call_with_timeout(client.connect, max(1.0, deadline - time.monotonic()))
            return
        except Exception as exc:
            if stop.is_set() or time.monotonic() + delay >= deadline:
                raise ConnectionError(f"could not connect to edgeHub within {timeout:g} s: {exc}") from exc
            log.info("iotedge: edgeHub not reachable yet (%s: %s); retrying", type(exc).__name__, exc)
            stop.wait(delay)
            delay = min(delay * 2, 10.0)


def sinks_of(flow: Dataflow, kind: type) -> Iterator:
    """The sinks of a given type in a built dataflow (its steps are plain dataclasses)."""
    steps = list(flow.substeps)
    while steps:
        step = steps.pop()
        if isinstance(getattr(step, "sink", None), kind):
            yield step.sink
        steps.extend(getattr(step, "substeps", ()))


def buffer_policy(settings: FlowSettings) -> BufferPolicy:
    return BufferPolicy(
        max_bytes=int(settings.buffer_max_mb * 2**20), max_age_seconds=settings.buffer_max_age_hours * 3600
    )


def build_module_flow(
    settings: FlowSettings,
    client: IoTHubClient,
    queue: EdgeHubInput,
    controls: LiveControls,
    deadletter_output: str = DEFAULT_DEADLETTER_OUTPUT,
) -> tuple[Dataflow, IoTHubSink]:
    """The anomaly flow reading ``queue``, with its IoT Hub sink and dead letters on ``client``."""
    dead_letters = DeadLetterOutputSink(
        settings.buffer_dir,
        client,
        deadletter_output,
        settings.dlq_topic,
        settings.iothub_connection_string,
        policy=buffer_policy(settings),
    )
    source = EdgeHubSource(queue, settings.batch_size)
    flow = build_flow(settings, source=source, sink=dead_letters, controls=controls)
    (labeled_sink,) = sinks_of(flow, IoTHubSink)
    labeled_sink.use_client(client)
    return flow, labeled_sink


def run_iotedge(
    settings: FlowSettings,
    stop: threading.Event,
    *,
    workers: int = 1,
    input_name: str = DEFAULT_INPUT,
    deadletter_output: str = DEFAULT_DEADLETTER_OUTPUT,
    queue_capacity: int = 10_000,
    queue_wait_seconds: float = 30.0,
    connect_timeout: float = 120.0,
    twin_timeout: float = 30.0,
    client_factory: Callable[[FlowSettings], IoTHubClient] = create_module_client,
) -> None:
    """Run edgewatch as an IoT Edge module until ``stop`` is set (SIGTERM), then drain and return.

    Reads ``input_name`` through edgeHub, labels, sends labeled events on ``settings.iothub_output``
    (``labeled``, filtered by the twin's ``sendMode``) and dead letters on ``deadletter_output``,
    both through store-and-forward files in ``settings.buffer_dir``; recovery and epochs as in
    ``edgewatch run`` (``settings.recovery_dir``, ``settings.snapshot_seconds``).
    """
    from bytewax._bytewax import cli_main
    from bytewax.recovery import RecoveryConfig

    settings = settings.model_copy(update={"iothub": True})
    recovery = None
    if settings.recovery_dir is not None:
        init_recovery_dir(settings.recovery_dir, settings)
        recovery = RecoveryConfig(str(settings.recovery_dir))
    client = client_factory(settings)
    try:
        connect(client, connect_timeout, stop)
        queue = EdgeHubInput(
            input_name, queue_capacity, queue_wait_seconds, OutputRejecter(client, deadletter_output, twin_timeout)
        )
        controls = LiveControls(threshold=settings.threshold)
        flow, labeled_sink = build_module_flow(settings, client, queue, controls, deadletter_output)
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
        tune_gc_for_streaming()
        try:
            cli_main(
                flow,
                workers_per_process=workers,
                epoch_interval=timedelta(seconds=settings.snapshot_seconds),
                recovery_config=recovery,
            )
        finally:
            stop.set()
            closer.join(twin_timeout + 5)
    finally:
        _shutdown(client, twin_timeout)


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
