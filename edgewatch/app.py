"""The process owner: one :class:`Application` runs one edgewatch dataflow process.

In the spirit of Quix Streams' ``Application``: built from the settings, it owns everything
around the dataflow, in one place and in one order::

    start     logging → the warm-start model and the shadow's (checked before anything else
              starts; the live controls of both; for the RUL flow its RUL model: the settings'
              ``model_kind`` says which kind ``--model`` must be) → the recovery
              directory → the metrics server → GC tuned for streaming → SIGTERM/Ctrl-C → stop
    run       the dataflow, through Bytewax's public ``bytewax.run.cli_main``
    close     the resources registered with :meth:`Application.closing` (clients, buffers), in the
              reverse order of registration, also after an error

``edgewatch run``, ``run --replay``, ``run-rul``, ``iotedge``, ``demo`` (its flow process), the
``python -m bytewax.run edgewatch.flows.anomaly:flow`` entry point and the bench all go through it.

>>> from edgewatch.config import FlowSettings
>>> app = Application(FlowSettings(), handle_signals=False)
>>> app.stop_requested.is_set(), app.artifact is None
(False, True)
"""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from bytewax.dataflow import Dataflow

from edgewatch.config import FlowSettings
from edgewatch.flows.anomaly import LiveControls
from edgewatch.online_models import artifact as artifact_module
from edgewatch.online_models.registry import resolve_detector
from edgewatch.telemetry import FLOW_METRICS

log = logging.getLogger(__name__)

SHARDS_FILE = "edgewatch-shards"
INPUT_FILE = "edgewatch-input"


class SetupError(ValueError):
    """Something the settings point at cannot be used (a model, a recovery directory, a port):
    the process does not start; the message says what and what to do."""


class Application:
    """Owns one edgewatch process: start-up, the dataflow run, and the close order.

    Args:
        settings: the flow settings.
        input_name: what the flow reads (the input topic, or a replayed file's name): a recovery
            directory holds the positions of one input only.
        single_process: this process holds the whole recovery directory (``edgewatch run``); under
            ``bytewax.run`` it may be one process of a cluster, each with its own volume.
        handle_signals: turn SIGTERM/Ctrl-C into :attr:`stop_requested` (the Kafka input ends,
            the flow drains and returns) instead of an exception wherever the flow happens to
            be. Off under ``bytewax.run``, which handles signals itself.
    """

    def __init__(
        self,
        settings: FlowSettings,
        *,
        handle_signals: bool = True,
        input_name: str | None = None,
        single_process: bool = True,
    ):
        self.settings = settings
        self.single_process = single_process
        self.input_name = input_name or settings.in_topic
        self.stop_requested = threading.Event()
        #: the model ``--model`` names, of the settings' ``model_kind``: a ModelArtifact (anomaly
        #: flow) or a RulModel (RUL flow), resolved, verified and cached through the registry code
        self.artifact = None
        #: the running flow's models and threshold (a module twin and ``retrain`` change them)
        self.controls: LiveControls | None = None
        self.follower = None  # follows the registry's aliases (--registry-poll-seconds)
        self._registry_versions: dict[str, str] = {}  # option → the registry version it resolved to
        self._handle_signals = handle_signals
        self._resources = contextlib.ExitStack()
        self._started = False

    # -- start ------------------------------------------------------------------------------

    def start(self) -> Application:
        """Everything before the dataflow; raises :class:`SetupError` with a one-line reason."""
        if self._started:
            return self
        configure_logging()
        try:
            resolve_detector(self.settings.detector)
        except ValueError as exc:
            raise SetupError(f"--detector: {exc}") from None
        self.artifact = self._load_model()
        if self.settings.model_kind == "anomaly":
            self.controls = LiveControls(threshold=self.settings.threshold, artifact=self.artifact)
            challenger = self._resolve(self.settings.shadow_model, "--shadow")
            if challenger is not None:
                self.controls.shadow(challenger)
            self._follow_registry()
            FLOW_METRICS.use_model(self.settings.detector, self.model_version)
        else:
            FLOW_METRICS.use_model(self.settings.model_kind, self.model_version)
        if self.settings.recovery_dir is not None:
            init_recovery_dir(
                self.settings.recovery_dir, self.settings.shard_count, self.input_name, self.single_process
            )
        if self.settings.metrics_port is not None:
            self._start_metrics_server()
        tune_gc_for_streaming()
        if self._handle_signals:
            self._stop_on_signals()
        self._started = True
        return self

    @property
    def model_version(self) -> str:
        """The warm-start artifact's version, else the detector's (the code's) version."""
        if self.artifact is not None:
            return self.artifact.version
        return resolve_detector(self.settings.detector).version

    def _load_model(self):
        kind = self.settings.model_kind
        fitted = self._resolve(self.settings.model_dir, "--model", kind)
        if fitted is None or kind != "anomaly":
            return fitted
        if "detector" in self.settings.model_fields_set and self.settings.detector != fitted.spec.name:
            raise SetupError(f"--model holds a {fitted.spec.name} detector, not {self.settings.detector}")
        self.settings.detector = fitted.spec.name
        return fitted

    def _follow_registry(self) -> None:
        """With ``--registry-poll-seconds`` and a ``models:/NAME@ALIAS`` model: follow NAME's aliases."""
        from edgewatch.registry.resolve import parse_uri

        parsed = parse_uri(str(self.settings.model_dir)) if self.settings.model_dir is not None else None
        if not self.settings.registry_poll_seconds or parsed is None:
            return
        from edgewatch.registry.follow import RegistryFollower

        self.follower = RegistryFollower(
            self.controls, parsed[0], self._registry_versions.get("--model"), self.settings.model_cache_dir,
            self.settings.tracking_uri, self.settings.model_public_key, self.settings.registry_poll_seconds,
        ).start()  # fmt: skip
        self.closing(self.follower.stop)

    def _resolve(self, uri, option: str, kind: str = "anomaly"):
        """A ``kind`` model directory or registry URI, resolved, verified and cached (``None``: none asked for)."""
        if uri is None:
            return None
        from edgewatch.registry import RegistryError
        from edgewatch.registry.resolve import resolve_model

        try:  # refuse a bad artifact before anything starts; a registry URI is resolved, verified, cached
            resolved = resolve_model(
                uri, self.settings.model_cache_dir, self.settings.tracking_uri, self.settings.model_public_key, kind
            )
        except (artifact_module.ArtifactError, RegistryError) as exc:
            raise SetupError(f"{option}: {exc}" if option != "--model" else str(exc)) from None
        if resolved.version is not None:
            log.info("%s %s", option.lstrip("-"), resolved.describe())
            self._registry_versions[option] = resolved.version
        return resolved.artifact

    def _start_metrics_server(self) -> None:
        from prometheus_client import start_http_server

        host, port = self.settings.metrics_host, self.settings.metrics_port
        try:
            server, _thread = start_http_server(port, addr=host)
        except OSError as exc:
            raise SetupError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
        self.closing(server.shutdown)
        log.info("metrics on http://%s:%d/metrics", host, server.server_port)

    def _stop_on_signals(self) -> None:
        def request_stop(signum, frame):
            self.stop_requested.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            previous = signal.signal(signum, request_stop)
            self.closing(signal.signal, signum, previous)

    # -- resources ----------------------------------------------------------------------------

    def closing(self, close: Callable, *args) -> None:
        """Call ``close(*args)`` when the process ends: last registered, first closed."""
        self._resources.callback(close, *args)

    def close(self) -> None:
        """Close every registered resource (reverse order); safe to call twice."""
        self._resources.close()

    # -- run ----------------------------------------------------------------------------------

    def run(self, flow: Dataflow) -> None:
        """Start (if not yet), run ``flow`` until its inputs end or a stop is requested, then close."""
        from bytewax.recovery import RecoveryConfig
        from bytewax.run import cli_main

        try:
            self.start()
            recovery = self.settings.recovery_dir
            if self.settings.status_seconds > 0:
                reporter = StatusReporter(
                    self.settings.status_seconds, self.settings.idle_warning_seconds, repr(self.input_name)
                )
                self.closing(reporter.stop)
                reporter.start()
            cli_main(
                flow,
                workers_per_process=self.settings.workers,
                epoch_interval=timedelta(seconds=self.settings.snapshot_seconds),
                recovery_config=RecoveryConfig(str(recovery)) if recovery is not None else None,
            )
        finally:
            self.close()


class StatusReporter:
    """A status line every ``interval`` seconds while the flow runs, and a summary when it ends:
    rate, lag, labeled, anomalies, active alarms, dead letters by reason, drift events; a warning
    when no message has arrived for ``idle_warning`` seconds (a topic nothing writes to, a
    stopped sender), repeated while it lasts."""

    def __init__(self, interval: float, idle_warning: float = 60.0, source: str = "the input"):
        self.interval = interval
        self.idle_warning = idle_warning
        self.source = source
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgewatch-status", daemon=True)
        self._started = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(5)
        log.info("summary: %s over %.0f s", self.line(), time.monotonic() - self._started)

    def _run(self) -> None:
        last_time, last_received = time.monotonic(), 0
        while not self._stopped.wait(self.interval):
            now, received = time.monotonic(), FLOW_METRICS.totals.received
            rate = (received - last_received) / max(now - last_time, 1e-9)
            log.info("status: %.0f msg/s, %s", rate, self.line())
            self._warn_if_idle()
            last_time, last_received = now, received

    def _warn_if_idle(self) -> None:
        totals = FLOW_METRICS.totals
        with totals.lock:
            last = max(totals.last_message.values(), default=None)
        quiet = time.time() - last if last is not None else time.monotonic() - self._started
        if self.idle_warning and quiet >= self.idle_warning:
            what = "no message yet" if last is None else "no new message"
            log.warning("%s from %s for %.0f s: is anything sending, and is the topic right?", what, self.source, quiet)

    @staticmethod
    def line() -> str:
        totals = FLOW_METRICS.totals
        with totals.lock:
            dead = sum(totals.dead_letters.values())
            reasons = ", ".join(f"{name} {count}" for name, count in totals.dead_letters.most_common(4))
            lag = sum(totals.lag.values()) if totals.lag else None
            return (
                f"received {totals.received}, labeled {totals.labeled}, anomalies {totals.anomalies}, "
                f"active alarms {totals.active_alarms}, dead letters {dead}{f' ({reasons})' if reasons else ''}, "
                f"drift events {totals.drift_events}, lag {lag if lag is not None else '?'}"
            )


def configure_logging() -> None:
    """Timestamped log lines on stderr; the Azure SDKs' per-message chatter left out."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)


def tune_gc_for_streaming() -> None:
    """Make Python's cyclic garbage collector run rarely in the flow's process.

    The flow allocates a few short-lived objects per message (parsed JSON, readings, output
    bytes); reference counting frees them all, yet every 700 allocations the default
    collector walks the young objects looking for cycles: up to a third of the parse time.
    Objects alive at start-up are frozen out of its way, and it runs every 100,000
    allocations instead.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def init_recovery_dir(
    path: Path, shards: int, input_name: str | None = None, whole: bool = True, partitions: int = 1
) -> None:
    """Create Bytewax's recovery partitions in ``path`` unless they are already there.

    Every snapshot in it is checked to be plain data first (:func:`edgewatch.state.recovery.verify_recovery_dir`).
    The shard count is recorded there: device state is stored per shard, so resuming
    with another count would silently start devices from scratch; refuse instead, and point to
    the offline reshard (:func:`edgewatch.state.reshard.reshard_recovery_dir`). So is the
    input: its read positions are stored per topic partition, and Bytewax cannot resume them
    for another topic.
    """
    from bytewax.recovery import init_db_dir

    from edgewatch.state.recovery import verify_recovery_dir

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not any(path.glob("part-*.sqlite3")):
            init_db_dir(path, partitions)
        try:  # before Bytewax unpickles anything: a planted pickle would run code
            verify_recovery_dir(path, check_pages=whole)
        except ValueError as exc:
            raise SetupError(str(exc)) from None
        recorded = path / SHARDS_FILE
        if recorded.exists() and int(recorded.read_text()) != shards:
            held = recorded.read_text().strip()
            raise SetupError(
                f"{path} holds state for {held} shards, not {shards}: run with --shards {held}, "
                f"reshard it offline (edgewatch recovery reshard {path} --shards {shards}), "
                "or use a new recovery directory"
            )
        recorded.write_text(str(shards))
        if input_name is not None:
            recorded_input = path / INPUT_FILE
            if recorded_input.exists() and recorded_input.read_text().strip() != input_name:
                held = recorded_input.read_text().strip()
                raise SetupError(
                    f"{path} holds the state of a flow reading {held!r}, not {input_name!r}: "
                    "use a recovery directory per input"
                )
            recorded_input.write_text(input_name)
    except OSError as exc:
        raise SetupError(f"cannot use recovery directory {path}: {exc.strerror or exc}") from None
