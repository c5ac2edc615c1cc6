"""The ``edgewatch`` command.

Options that are settings (``--bootstrap``, ``--in-topic`` …) are generated from the settings
models of :mod:`edgewatch.config` (:mod:`edgewatch.cli_options`): an option left out falls back
to its ``EDGEWATCH_*`` environment variable, then to the model's default. Secrets are never
options: set them in the environment or a file in ``EDGEWATCH_SECRETS_DIR``.
"""

from __future__ import annotations

import logging
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from edgewatch.cli_options import settings_command
from edgewatch.config import FlowSettings, KafkaSettings, RegistrySettings, RulSettings, SimulatorSettings
from edgewatch.registry.cli import models_app
from edgewatch.registry.cli import retrain as retrain_command

app = typer.Typer(
    help="Streaming anomaly detection for industrial device fleets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _fail(message: str) -> typer.BadParameter:
    """A one-line error for the user (exit code 2)."""
    return typer.BadParameter(message)


def _stop_on_signals() -> threading.Event:
    """For commands that run until stopped (broker, ui): SIGTERM or Ctrl-C sets the event."""
    import signal

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def _model_line(application) -> str:
    """What labels the readings: the detector, the model version, the devices warm-started."""
    fitted = application.artifact
    warm = f", {len(fitted.models)} device(s) warm-started" if fitted is not None else ", cold start"
    return f"detector {application.settings.detector} version {application.model_version}{warm}"


def _state_line(settings: FlowSettings) -> str:
    if settings.recovery_dir is not None:
        return f"recovery in {settings.recovery_dir} (every {settings.snapshot_seconds:g} s)"
    return f"no recovery state; starts from {settings.start_from} offsets (group {settings.consumer_group})"


def _say_skipped(dead) -> None:
    """One line about the history rows training could not use (with the first one's reason)."""
    if dead:
        typer.echo(
            f"train: skipped {len(dead)} unusable rows, e.g. row {dead[0].raw.offset}: {dead[0].reason}", err=True
        )


def _warn_future_history(last_timestamp: str) -> None:
    """A history that ends after now (``simulate --out`` records from now on) is not a past: live
    readings timed before its end do not follow it, and a warm-started device takes the jump from
    its last trained reading back to them for a fault (every device alarms on its first reading)."""
    if datetime.fromisoformat(last_timestamp) > datetime.now(UTC):
        typer.echo(
            f"train: warning: the history ends in the future ({last_timestamp});\n"
            "  live readings timed before that do not follow it and may all alarm at first.\n"
            "  Record history before the live data (e.g. simulate --start-time).",
            err=True,
        )


def _check_readable(path: Path) -> None:
    """A recorded stream that can be read: it exists and is of a kind edgewatch reads."""
    if not path.is_file():
        raise _fail(f"{path} does not exist or is not a file")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv", ".txt"):
        raise _fail(f"{path}: expected a .jsonl (simulate --out), .csv or CMAPSS .txt file")
    if suffix != ".jsonl":  # a bad CSV header or CMAPSS row stops the file: say so now, not mid-flow
        from collections import deque

        from edgewatch.connectors.files import read_messages

        try:  # a CSV's header is read with its first row; a CMAPSS file is read whole (sorted)
            deque(read_messages(path), maxlen=0) if suffix == ".txt" else next(read_messages(path), None)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise _fail(str(exc)) from None


def _check_writable(path: Path) -> None:
    """An output file whose folder exists and can be written."""
    import os

    folder = path.resolve().parent
    if not folder.is_dir():
        raise _fail(f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise _fail(f"cannot write {path}: folder {folder} is not writable")


def _make_folder(folder: Path) -> None:
    """A results folder that exists or can be made, checked before minutes of work are spent."""
    import os

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _fail(f"cannot write results to {folder}: {exc.strerror}") from None
    if not os.access(folder, os.W_OK):
        raise _fail(f"cannot write results to {folder}: not writable")


def _application(settings: FlowSettings, input_name: str | None = None):
    """The process owner for a flow command; a setup problem becomes a one-line error."""
    from edgewatch.app import Application, SetupError

    app_ = Application(settings, input_name=input_name)
    try:
        return app_.start()
    except SetupError as exc:
        raise _fail(str(exc)) from None


def _version(show: bool) -> None:
    if show:
        from edgewatch import __version__

        typer.echo(f"edgewatch {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """Streaming anomaly detection for industrial device fleets."""


@app.command()
def broker(
    port: Annotated[
        int, typer.Option(help="port to listen on (the other commands' default bootstrap); 0 = a free one")
    ] = 9092,
) -> None:
    """Run the embedded Tansu Kafka broker (memory storage) on 127.0.0.1 until Ctrl-C."""
    from edgewatch.connectors.broker import BrokerError, EmbeddedBroker

    stop = _stop_on_signals()
    running = EmbeddedBroker(port or None)
    try:
        running.start()
    except BrokerError as exc:
        raise _fail(str(exc)) from None
    try:
        typer.echo(f"broker: bootstrap={running.bootstrap} (Ctrl-C to stop)")
        while running.running and not stop.wait(0.5):
            pass
    finally:
        running.stop()
    typer.echo("broker: stopped")


@app.command()
@settings_command(
    SimulatorSettings, exclude=["security_protocol", "sasl_mechanism", "sasl_username", "ssl_ca_location"]
)
def simulate(
    settings: SimulatorSettings,
    start_time: Annotated[
        datetime | None, typer.Option(help="source time of the first reading (default: now)", show_default=False)
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="record to this JSONL file instead of sending", show_default=False)
    ] = None,
    iothub_module: Annotated[
        bool, typer.Option("--iothub-module", help="send as this IoT Edge module (output temperatureOutput)")
    ] = False,
) -> None:
    """Stream a simulated fleet (SimulatedTemperatureSensor messages with labeled faults).

    To IoT Hub as a device: set EDGEWATCH_IOTHUB_CONNECTION_STRING."""
    from edgewatch.connectors.files import paced
    from edgewatch.connectors.kafka import ensure_topics, publish
    from edgewatch.flows.wiring import secret
    from edgewatch.simulator import Fleet
    from edgewatch.simulator.publish import FaultTally, publish_iothub, write_jsonl

    begin = start_time or datetime.now(UTC)
    if begin.tzinfo is None:
        begin = begin.replace(tzinfo=UTC)
    fleet = Fleet(
        devices=settings.devices,
        seed=settings.seed,
        fault_rate=settings.fault_rate,
        malformed_rate=settings.malformed_rate,
        change_rate=settings.change_rate,
        start_time=begin.timestamp(),
        tick_seconds=settings.devices / settings.rate,
    )
    total = round(settings.rate * settings.duration)
    tally = FaultTally()
    connection_string = secret(settings.iothub_connection_string)
    if out is not None:
        _check_writable(out)
        stats = write_jsonl(fleet.records(total), out, tally.count)
        where = str(out)
    elif connection_string or iothub_module:
        try:
            stats = publish_iothub(
                paced(fleet.records(total), rate=settings.rate),
                connection_string,
                ca_cert=settings.iothub_ca_cert,
                on_record=tally.count,
            )
        except ValueError as exc:
            raise _fail(str(exc)) from None
        where = "IoT Hub"
    else:
        config = settings.client_config()
        for created in ensure_topics(config, [settings.topic], settings.partitions):
            typer.echo(f"simulate: created topic {created} ({settings.partitions} partitions)", err=True)
        stats = publish(paced(fleet.records(total), rate=settings.rate), config, settings.topic, tally.count)
        where = f"{settings.topic}@{settings.bootstrap}"
    typer.echo(
        f"simulate: sent={stats.messages} faults={fleet.faults_started} fault_messages={tally.fault_messages} "
        f"changes={fleet.changes_started} malformed={tally.malformed} to={where} seconds={stats.seconds:.1f}"
    )


@app.command()
@settings_command(FlowSettings)
def run(
    settings: FlowSettings,
    replay: Annotated[
        Path | None,
        typer.Option(help="run on a recorded file (.jsonl/.csv/CMAPSS .txt) instead of Kafka", show_default=False),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="with --replay: labeled events JSONL (default labeled.jsonl)", show_default=False),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option(
            help="with --replay: when the flow ends, plot every device (readings, score, threshold, alarms, "
            "fault periods, drift) to DIR/index.html",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the anomaly flow: telemetry topic → labeled topic (+ dead-letter topic, IoT Hub, Event Hubs).

    IoT Hub as a device: EDGEWATCH_IOTHUB_CONNECTION_STRING; Event Hubs: EDGEWATCH_EVENTHUBS_CONNECTION_STRING."""
    from edgewatch.connectors.kafka import ensure_topics
    from edgewatch.flows.wiring import kafka_flow, output_topics, replay_flow, sibling

    if report is not None and replay is None:
        raise _fail("--report plots a replayed file's devices: use it with --replay FILE")
    if replay is not None:
        _check_readable(replay)
        _check_writable(out or Path("labeled.jsonl"))
        if report is not None:
            _check_writable(report / "index.html" if report.is_dir() else report)
    application = _application(settings, input_name=replay.name if replay is not None else None)
    if replay is not None:  # the embedded mode: a file in, JSONL out, no broker
        labeled = out or Path("labeled.jsonl")
        if settings.recovery_dir is None:  # a run from the file's start: its outputs start empty
            _start_empty(labeled)  # (the sinks append: a resumed run continues what it wrote)
        flow = replay_flow(application, replay, labeled)
        where = f"{replay} → {labeled} (dead letters, alarms, drift → {sibling(labeled, '*')})"
    else:
        outputs = output_topics(settings)
        must_exist = [] if settings.create_topics else [settings.in_topic]
        ensure_topics(
            settings.client_config(), [settings.in_topic, *outputs], settings.partitions, must_exist=must_exist
        )
        flow = kafka_flow(application)
        where = f"{settings.in_topic}@{settings.bootstrap} → {settings.out_topic} (dead letters → {settings.dlq_topic})"
    state = _state_line(settings) if replay is None else "replay (no broker)"
    typer.echo(f"run: {where}; {_model_line(application)}; {state}", err=True)
    if replay is not None and report is not None:
        from edgewatch.evaluation.report import file_sizes

        before = file_sizes(labeled)  # the sinks append: plot only what this run writes
    application.run(flow)
    typer.echo("run: stopped", err=True)
    if replay is not None and report is not None:
        _write_device_report(application, labeled, replay, report, before)


def _start_empty(labeled: Path) -> None:
    """Empty ``labeled.jsonl`` and its siblings from an earlier run (else a second run doubles them)."""
    from edgewatch.flows.wiring import OUTPUT_FILE_KINDS, sibling

    for path in [labeled, *(sibling(labeled, kind) for kind in OUTPUT_FILE_KINDS)]:
        if path.is_file():
            path.write_bytes(b"")


def _write_device_report(application, labeled: Path, replay: Path, folder: Path, before: dict) -> None:
    """``run --replay --report``: the devices plotted from what the flow wrote."""
    from edgewatch.evaluation.report import write_device_report
    from edgewatch.online_models.registry import resolve_detector

    settings = application.settings
    threshold = settings.threshold
    if threshold is None:
        spec = application.artifact.spec if application.artifact is not None else resolve_detector(settings.detector)
        threshold = spec.threshold
    try:
        index = write_device_report(labeled, folder, threshold, replay, before)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"report: {index}", err=True)


#: settings of the anomaly flow that the RUL flow does not read
ANOMALY_ONLY = [
    *("detector", "threshold", "shards", "alarms_topic", "drift_topic", "out_topic", "shadow_topic", "shadow_model"),
    *("max_features_per_device", "max_feature_sets", "max_devices", "fleet_drift_topic", "fleet_drift_window"),
    *("fleet_drift_psi", "training_store", "training_store_max_age_hours", "training_store_rows_per_device"),
    "rollout_warm_readings",
]


@app.command("run-rul")
@settings_command(RulSettings, exclude=ANOMALY_ONLY)
def run_rul(
    settings: RulSettings,
    replay: Annotated[
        Path | None, typer.Option(help="run on a recorded file (CMAPSS .txt, .jsonl, .csv) instead of Kafka")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="with --replay: RUL estimates JSONL (default rul.jsonl)")] = None,
) -> None:
    """Run the RUL flow: telemetry → per-reading remaining useful life (P10/P50/P90) and maintenance alerts
    (+ IoT Hub, Event Hubs). --model: an `edgewatch train --task rul` directory or models:/NAME@ALIAS."""
    from edgewatch.connectors.kafka import ensure_topics
    from edgewatch.flows.rul import build_fleet, kafka_rul_flow, replay_rul_flow
    from edgewatch.flows.wiring import sibling

    if replay is not None:
        _check_readable(replay)
        _check_writable(out or Path("rul.jsonl"))
    if settings.model_dir is None:
        raise _fail("the RUL flow needs --model (an `edgewatch train --task rul` directory or models:/NAME@ALIAS)")
    application = _application(settings, input_name=replay.name if replay is not None else None)
    try:
        fleet = build_fleet(application)
    except ValueError as exc:
        application.close()
        raise _fail(str(exc)) from None
    if replay is not None:
        estimates = out or Path("rul.jsonl")
        flow = replay_rul_flow(application, fleet, replay, estimates)
        where = f"{replay} → {estimates} (alerts, dead letters → {sibling(estimates, '*')})"
    else:
        topics = [settings.rul_topic, settings.maintenance_alerts_topic, settings.dlq_topic]
        ends = [settings.run_end_topic] if settings.run_end_topic else []
        must_exist = [] if settings.create_topics else [settings.in_topic]
        ensure_topics(
            settings.client_config(), [settings.in_topic, *ends, *topics], settings.partitions, must_exist=must_exist
        )
        flow = kafka_rul_flow(application, fleet)
        alerts = settings.maintenance_alerts_topic
        where = f"{settings.in_topic}@{settings.bootstrap} → {settings.rul_topic}, alerts → {alerts}"
    learned = f", {len(fleet.runs)} failed runs kept" if fleet.store is not None else ""
    typer.echo(f"run-rul: {where}; model {fleet.model.version}{learned}, horizon {settings.horizon:g} cycles", err=True)
    application.run(flow)
    typer.echo("run-rul: stopped", err=True)


@app.command()
@settings_command(
    FlowSettings,
    exclude=["bootstrap", "security_protocol", "sasl_mechanism", "sasl_username", "ssl_ca_location", "in_topic",
             "out_topic", "partitions", "start_from", "consumer_group", "eventhubs_sink_hub", "eventhubs_sink_send"],
    iothub=True,
)  # fmt: skip
def iotedge(
    settings: FlowSettings,
    input_name: Annotated[str, typer.Option("--input", help="module input to read")] = "telemetry",
    deadletter_output: Annotated[str, typer.Option(help="module output of dead letters")] = "deadletter",
    queue_capacity: Annotated[int, typer.Option(help="input messages held for the flow")] = 10_000,
) -> None:
    """Run as an Azure IoT Edge module: edgeHub input → outputs 'labeled' and 'deadletter'; twin controls.

    Outside IoT Edge (development): EDGEWATCH_IOTHUB_CONNECTION_STRING with ModuleId=."""
    from edgewatch.azure.module import run_iotedge

    application = _application(settings, input_name=f"edgehub/{input_name}")
    typer.echo(
        f"iotedge: input {input_name} → output {settings.iothub_output} (dead letters → output {deadletter_output}) "
        f"detector={settings.detector}",
        err=True,
    )
    try:
        run_iotedge(
            application, input_name=input_name, deadletter_output=deadletter_output, queue_capacity=queue_capacity
        )
    except ValueError as exc:  # not inside IoT Edge and no module connection string
        raise _fail(str(exc)) from None
    except ConnectionError as exc:  # edgeHub unreachable: exit non-zero, the edge runtime restarts the module
        typer.echo(f"iotedge: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo("iotedge: stopped", err=True)


@app.command()
@settings_command(KafkaSettings, only=["bootstrap"])
def replay(
    settings: KafkaSettings,
    path: Annotated[Path, typer.Argument(help="recorded stream: .jsonl (simulate --out), .csv, CMAPSS .txt")],
    speed: Annotated[str, typer.Option(help="X (original inter-arrival times / X) or max")] = "1",
    topic: Annotated[str, typer.Option(help="topic to publish to")] = "telemetry",
    partitions: Annotated[int, typer.Option(help="partitions of the topic if edgewatch creates it")] = 4,
    cycle_seconds: Annotated[float, typer.Option(help="CMAPSS: seconds per engine cycle")] = 1.0,
) -> None:
    """Publish a recorded stream to Kafka at its recorded pace (or faster)."""
    from edgewatch.connectors.files import paced, read_messages
    from edgewatch.connectors.kafka import ensure_topics, publish

    try:
        factor = None if speed == "max" else float(speed)
        if factor is not None and factor <= 0:
            raise ValueError
    except ValueError:
        raise _fail(f"--speed must be a positive number or max, not {speed!r}") from None
    _check_readable(path)
    config = settings.client_config()
    ensure_topics(config, [topic], partitions)
    stats = publish(paced(read_messages(path, cycle_seconds), factor), config, topic, keep_timestamps=False)
    typer.echo(f"replay: sent={stats.messages} from={path} to={topic}@{settings.bootstrap} seconds={stats.seconds:.1f}")


@app.command()
def demo(
    seconds: Annotated[float, typer.Option(envvar="DEMO_SECONDS", help="how long the fleet streams")] = 30.0,
    devices: Annotated[int, typer.Option(help="machines in the fleet")] = 200,
    rate: Annotated[float, typer.Option(help="events per second over the fleet")] = 2000.0,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    bootstrap: Annotated[
        str | None, typer.Option(help="use this Kafka instead of the embedded broker", show_default=False)
    ] = None,
    history: Annotated[
        int, typer.Option(help="ticks of fault-free history the models are fitted on first (0: a cold start)")
    ] = 600,
) -> None:
    """Models fitted on the fleet's history, then broker + simulated fleet + flow + live console; ends with a
    `demo:` summary line."""
    from edgewatch.demo import run_demo

    if history < 0:
        raise typer.BadParameter("--history must be 0 or more ticks")
    summary = run_demo(
        seconds=seconds, devices=devices, rate=rate, seed=seed, bootstrap=bootstrap, history_ticks=history
    )
    typer.echo(summary.line())


@app.command()
def bench(
    messages: Annotated[int, typer.Option(help="messages pre-produced for every flow")] = 100_000,
    devices: Annotated[int, typer.Option(help="devices the messages come from")] = 50,
    bootstrap: Annotated[
        str | None, typer.Option(help="Kafka to measure on (default: a fresh Apache Kafka or Tansu)")
    ] = None,
    broker_kind: Annotated[str, typer.Option("--broker", help="kafka (Apache Kafka, JVM) | tansu")] = "kafka",
    quick: Annotated[bool, typer.Option("--quick", help="throughput only: no latency, memory or scaling")] = False,
    rul: Annotated[bool, typer.Option(help="then the RUL flow's bench (bench/rul_bench.py), as `make bench`")] = True,
) -> None:
    """Null flow, naive River flow and edgewatch in one run, then the RUL flow (from a source checkout)."""
    checkout = Path(__file__).resolve().parents[1]
    if not (checkout / "bench" / "throughput.py").exists():
        raise typer.BadParameter("edgewatch bench runs from a source checkout (bench/throughput.py)")
    sys.path.insert(0, str(checkout))
    from bench.rul_bench import main as rul_bench_main
    from bench.throughput import main as bench_main

    bench_main(messages=messages, devices=devices, bootstrap=bootstrap, broker_kind=broker_kind, quick=quick)
    if rul:
        rul_bench_main(bootstrap=bootstrap, broker_kind=broker_kind, quick=quick)


@app.command()
@settings_command(RegistrySettings, only=["tracking_uri", "audit_log"])
def train(
    settings: RegistrySettings,
    input_path: Annotated[
        Path, typer.Option("--input", help="history: .jsonl (edgewatch simulate --out) or .csv (timestamp + columns)")
    ],
    out: Annotated[Path, typer.Option(help="model directory to write (model.json + arrays.npz)")],
    detector: Annotated[str, typer.Option(help="detector to fit")] = "relational-novelty",
    sign_key: Annotated[
        Path | None,
        typer.Option(help="ed25519 private key (PEM file) to sign the model with (model.sig)", show_default=False),
    ] = None,
    task: Annotated[str, typer.Option(help="anomaly | rul (run-to-failure history, e.g. CMAPSS train_FD001.txt)")] = (
        "anomaly"
    ),
    register: Annotated[
        str | None, typer.Option(help="also register it in MLflow as this model's next version", show_default=False)
    ] = None,
    metrics: Annotated[
        Path | None,
        typer.Option(help="with --register: a JSON file {name: number} of evaluation figures", show_default=False),
    ] = None,
) -> None:
    """Batch-fit the detector on history, one model per device; `run --model` warm-starts from it."""
    if task == "rul":
        return train_rul_command(settings, input_path, out, sign_key, register, metrics)
    if task != "anomaly":
        raise typer.BadParameter(f"--task must be anomaly or rul, not {task!r}")
    from edgewatch.connectors.files import read_history
    from edgewatch.online_models import artifact
    from edgewatch.online_models.registry import resolve_detector

    try:
        spec = resolve_detector(detector)
        readings, dead = read_history(input_path)
        saved = artifact.save(artifact.train(spec, readings, source=str(input_path)), out, sign_key=sign_key)
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from None
    _say_skipped(dead)
    training = saved.metadata["training"]
    typer.echo(
        f"train: version={saved.version} rows={training['rows']} devices={training['devices']} "
        f"from={training['first_timestamp']} to={training['last_timestamp']} out={out}"
    )
    _warn_future_history(training["last_timestamp"])
    if register:
        from edgewatch.registry.cli import register_trained

        register_trained(settings, out, register, input_path, metrics)


evaluate_app = typer.Typer(help="Score edgewatch's detector on public benchmarks.", no_args_is_help=True)
app.add_typer(evaluate_app, name="evaluate")


@evaluate_app.command("nab")
def evaluate_nab(
    data_dir: Annotated[
        Path | None,
        typer.Option(help="a NAB root (data/, labels/, config/) (default EDGEWATCH_DATA_DIR/nab)", show_default=False),
    ] = None,
    groups: Annotated[
        str | None,
        typer.Option(help="comma-separated data groups, e.g. realKnownCause,realTraffic", show_default=False),
    ] = None,
    out: Annotated[Path, typer.Option(help="results directory: OUT/<group>/edgewatch_<file>.csv")] = Path(
        "nab-results"
    ),
    report: Annotated[bool, typer.Option("--report", help="also a PNG per file and OUT/report/index.html")] = False,
    detector: Annotated[str, typer.Option(help="detector to evaluate")] = "relational-novelty",
) -> None:
    """Replay every NAB file as one device through the flow's detector and score it the NAB way."""
    from rich.progress import Progress

    from edgewatch.config import data_dir as default_data_dir
    from edgewatch.evaluation import nab_replay
    from edgewatch.online_models.registry import resolve_detector

    root = data_dir or default_data_dir() / "nab"
    if not (root / "labels" / "combined_windows.json").exists():
        raise typer.BadParameter(f"{root} is not a NAB root (try `edgewatch data fetch nab`)")
    try:
        spec = resolve_detector(detector)
        corpus = nab_replay.load(root, groups.split(",") if groups else None)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    _make_folder(out)
    with Progress(transient=True) as bar:
        task = bar.add_task("replaying NAB", total=sum(f.n_rows for f in corpus.files.values()))
        run = nab_replay.evaluate(corpus, spec, lambda rows: bar.advance(task, rows))
    nab_replay.write_results(run, out)
    if report:
        typer.echo(f"report: {nab_replay.write_report(run, out)}", err=True)
    typer.echo(run.line())


@evaluate_app.command("skab")
def evaluate_skab(
    data_dir: Annotated[
        Path | None,
        typer.Option(help="a SKAB root holding valve1/ (default EDGEWATCH_DATA_DIR/skab)", show_default=False),
    ] = None,
    out: Annotated[Path, typer.Option(help="results directory: OUT/<subset>/<file>.csv")] = Path("skab-results"),
    report: Annotated[bool, typer.Option("--report", help="also a PNG per file and OUT/report/index.html")] = False,
    detector: Annotated[str, typer.Option(help="detector to evaluate")] = "relational-novelty",
) -> None:
    """Warm-start one device per SKAB experiment on its 400 training rows, stream the rest, score it the SKAB way."""
    from rich.progress import Progress

    from edgewatch.config import data_dir as default_data_dir
    from edgewatch.evaluation import skab
    from edgewatch.online_models.registry import resolve_detector

    root = data_dir or default_data_dir() / "skab"
    try:
        spec = resolve_detector(detector)
        files = skab.load(root)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    _make_folder(out)
    with Progress(transient=True) as bar:
        task = bar.add_task("replaying SKAB", total=sum(len(f.times) for f in files))
        run = skab.evaluate(files, spec, lambda rows: bar.advance(task, rows))
    skab.write_results(run, out)
    if report:
        typer.echo(f"report: {skab.write_report(run, out, spec.threshold)}", err=True)
    typer.echo(run.line())


def train_rul_command(
    settings: RegistrySettings,
    input_path: Path,
    out: Path,
    sign_key: Path | None = None,
    register: str | None = None,
    metrics: Path | None = None,
) -> None:
    """`edgewatch train --task rul`: the fleet RUL model of run-to-failure histories (one run per device);
    with --register, logged to MLflow with its lineage and, when the C-MAPSS test files of the input
    (test_X.txt, RUL_X.txt beside train_X.txt) are there, its `evaluate cmapss` figures as metrics."""
    from edgewatch.connectors.files import read_history
    from edgewatch.rul import artifact as rul_artifact
    from edgewatch.rul.train import train_rul

    if not input_path.exists():
        raise typer.BadParameter(f"{input_path} does not exist")
    try:
        readings, dead = read_history(input_path)
        saved = rul_artifact.save(train_rul(readings, source=str(input_path)), out, sign_key=sign_key)
    except ImportError as exc:
        raise typer.BadParameter(f"training needs the train extra (pip install 'edgewatch[train]'): {exc}") from None
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from None
    _say_skipped(dead)
    training = saved.metadata["training"]
    typer.echo(
        f"train: task=rul version={saved.version} runs={training['runs']} rows={training['rows']} "
        f"regimes={training['regimes']} sensors={len(training['sensors'])} "
        f"band_margins={saved.lower_margin:.1f},{saved.upper_margin:.1f} out={out}"
    )
    if register:
        from edgewatch.registry.cli import register_trained

        figures = _cmapss_figures(saved, input_path)
        register_trained(settings, out, register, input_path, metrics, figures)


def _cmapss_figures(model, train_path: Path) -> dict[str, float]:
    """``evaluate cmapss`` figures of ``model`` on the test set beside ``train_path`` (``train_X.txt``:
    ``test_X.txt`` and ``RUL_X.txt``), as metrics ``cmapss.X.rmse`` …; none when they are not there."""
    from edgewatch.evaluation import cmapss

    stem = train_path.stem
    if not stem.startswith("train_"):
        return {}
    subset, root = stem.removeprefix("train_"), train_path.parent
    if not all((root / f"{kind}_{subset}.txt").exists() for kind in ("test", "RUL")):
        return {}
    try:
        result = cmapss.evaluate_files(model, root, subset)
    except ValueError as exc:
        raise typer.BadParameter(f"cannot score on the {subset} test set: {exc}") from None
    figures = {"rmse": result.rmse, "score": result.score, "rmse_all_cycles": result.rmse_all_cycles,
               "coverage": result.coverage, "engines": result.engines}  # fmt: skip
    typer.echo(result.line())
    return {f"cmapss.{subset}.{name}": float(value) for name, value in figures.items()}


@evaluate_app.command("cmapss")
def evaluate_cmapss(
    model: Annotated[
        Path | None,
        typer.Option(help="`edgewatch train --task rul` output (default: train on train_<subset>.txt first)"),
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="CMAPSS folder (default EDGEWATCH_DATA_DIR/cmapss)", show_default=False)
    ] = None,
    subset: Annotated[str, typer.Option(help="FD001 | FD002 | FD003 | FD004")] = "FD001",
    report: Annotated[
        Path | None, typer.Option(help="write a PNG per test engine (true vs predicted RUL, band) here")
    ] = None,
) -> None:
    """RMSE, PHM08 score and band coverage of the RUL model on a C-MAPSS test set."""
    from edgewatch.config import data_dir as default_data_dir
    from edgewatch.evaluation import cmapss
    from edgewatch.rul import artifact as rul_artifact

    root = data_dir or default_data_dir() / "cmapss"
    needed = [root / f"{kind}_{subset}.txt" for kind in ("test", "RUL", *(() if model else ("train",)))]
    missing = [str(path) for path in needed if not path.exists()]
    if missing:
        raise typer.BadParameter(f"missing {', '.join(missing)} (try `edgewatch data fetch cmapss`)")
    try:
        if model is not None:
            fitted = rul_artifact.load(model)
        else:
            from edgewatch.rul.train import train_runs

            train_path = root / f"train_{subset}.txt"
            typer.echo(f"evaluate: training on {train_path}", err=True)
            fitted = train_runs(cmapss.load_runs(train_path, failed=True), source=str(train_path))
        result = cmapss.evaluate_files(fitted, root, subset)
    except ImportError as exc:
        raise typer.BadParameter(f"training needs the train extra (pip install 'edgewatch[train]'): {exc}") from None
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if report is not None:
        typer.echo(f"report: {cmapss.write_report(result, report, fitted.cap)}", err=True)
    typer.echo(result.line())


@app.command()
def serve(
    model: Annotated[
        Path | None, typer.Option(help="edgewatch train output (or a folder holding one)", show_default=False)
    ] = None,
    port: Annotated[int, typer.Option(help="port")] = 5001,
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    workers: Annotated[int, typer.Option(help="worker processes; each keeps its own device models")] = 1,
) -> None:
    """Serve POST /score and GET / as an Azure ML online endpoint does (azureml-inference-server-http)."""
    from edgewatch.online_models.artifact import ArtifactError
    from edgewatch.serving import check_model
    from edgewatch.serving import serve as run_server

    try:  # refuse a bad, unsigned or badly signed model in one line, before the server starts
        check_model(model)
    except (ArtifactError, OSError) as exc:
        raise _fail(f"--model {model}: {exc}") from None
    run_server(model, host=host, port=port, workers=workers)


@app.command()
@settings_command(
    KafkaSettings, only=["bootstrap", "security_protocol", "sasl_mechanism", "sasl_username", "ssl_ca_location"]
)
def ui(
    settings: KafkaSettings,
    port: Annotated[int, typer.Option(help="port to serve the view on")] = 8050,
    host: Annotated[str, typer.Option(help="interface to listen on (0.0.0.0: every interface)")] = "127.0.0.1",
    labeled_topic: Annotated[str, typer.Option(help="the flow's labeled events")] = "labeled",
    alarms_topic: Annotated[str, typer.Option(help="the flow's raised and cleared alarms")] = "alarms",
    drift_topic: Annotated[str, typer.Option(help="the flow's drift events")] = "drift",
    readings: Annotated[int, typer.Option(help="recent readings kept per device")] = 240,
    history: Annotated[int, typer.Option(help="messages read back per partition at start")] = 1000,
    threshold: Annotated[
        float | None, typer.Option(help="threshold drawn on the charts (default: the detector's)", show_default=False)
    ] = None,
) -> None:
    """Serve a live web view of the fleet (devices, alarms, explanations, drift) from the flow's topics."""
    from edgewatch.ui import FleetState, KafkaFeed, Topics, ViewServer

    if readings < 1 or history < 0:
        raise typer.BadParameter("--readings must be at least 1 and --history at least 0")
    if len({labeled_topic, alarms_topic, drift_topic}) < 3:
        raise typer.BadParameter("--labeled-topic, --alarms-topic and --drift-topic must be three different topics")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    feed = KafkaFeed(settings.client_config(), Topics(labeled_topic, alarms_topic, drift_topic), history=history)
    try:
        view = ViewServer(FleetState(readings_per_device=readings, threshold=threshold), feed, host=host, port=port)
    except OSError as exc:
        raise typer.BadParameter(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    stop = _stop_on_signals()
    with view:
        typer.echo(f"ui: serving {view.url} (Ctrl-C to stop); feed: {', '.join(feed.topics)} at {settings.bootstrap}")
        while not stop.wait(0.5):
            pass
    typer.echo("ui: stopped")


recovery_app = typer.Typer(help="A flow's recovery directory, offline (the flow stopped).", no_args_is_help=True)
app.add_typer(recovery_app, name="recovery")


@recovery_app.command("reshard")
def recovery_reshard(
    path: Annotated[Path, typer.Argument(help="the recovery directory (--recovery-dir of the stopped flow)")],
    shards: Annotated[int, typer.Option(help="the new number of device shards")],
) -> None:
    """Move every device's state to another shard count; the flow then resumes with --shards N."""
    from edgewatch.app import SHARDS_FILE
    from edgewatch.state.reshard import reshard_recovery_dir

    if not (path / SHARDS_FILE).is_file():
        raise _fail(f"{path} is not an edgewatch recovery directory (no {SHARDS_FILE})")
    try:
        moved = reshard_recovery_dir(path, shards)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    typer.echo(
        f"recovery: {sum(moved.values())} device(s) in {len(moved)} shard(s) of {shards}; run with --shards {shards}"
    )


app.add_typer(models_app, name="models")
app.command("retrain")(retrain_command)

data_app = typer.Typer(help="Public datasets: fetched on demand, never shipped.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("fetch")
def data_fetch(
    dataset: Annotated[str, typer.Argument(help="nab | cmapss")],
    dest: Annotated[
        Path | None,
        typer.Option(help="data directory (default EDGEWATCH_DATA_DIR or ../shared/data)", show_default=False),
    ] = None,
    url: Annotated[str | None, typer.Option(help="download from a mirror instead", show_default=False)] = None,
) -> None:
    """Download NAB (github.com/numenta/NAB) or NASA's CMAPSS into the data directory."""
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    from edgewatch.config import data_dir
    from edgewatch.evaluation import datasets

    fetchers = {"nab": (datasets.fetch_nab, datasets.NAB_URL), "cmapss": (datasets.fetch_cmapss, datasets.CMAPSS_URL)}
    if dataset not in fetchers:
        raise typer.BadParameter(f"unknown dataset {dataset!r}: nab or cmapss")
    fetch, default_url = fetchers[dataset]
    with Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(), transient=True) as bar:
        task = bar.add_task(f"fetching {dataset}", total=None)
        try:
            root = fetch(
                dest or data_dir(),
                url or default_url,
                lambda done, total: bar.update(task, completed=done, total=total),
            )
        except (OSError, datasets.DatasetError) as exc:
            target = (dest or data_dir()) / dataset
            have = f"; {target} already holds a copy (EDGEWATCH_DATA_DIR points there)" if target.is_dir() else ""
            why = getattr(exc, "reason", None) or exc
            raise _fail(
                f"could not fetch {dataset} from {url or default_url} ({why}){have}; "
                f"without internet, download that archive elsewhere and unpack it into {target}"
            ) from None
    typer.echo(f"data: {dataset} in {root}")


def main() -> None:
    """The ``edgewatch`` command: a user's mistake is one line (``error: ...``, exit code 2), not a
    usage block and a box of wrapped text; ``--help``, and a group run without a command, print
    their help as usual."""
    from typer import rich_utils

    from edgewatch.connectors.kafka import KafkaUnavailable

    try:
        code = app(standalone_mode=False)
    except KafkaUnavailable as exc:  # one line a person can act on, not librdkafka's trace
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None
    except typer.TyperException as exc:  # click's errors (typer vendors click: its base is public)
        if type(exc).__name__ == "NoArgsIsHelpError":  # `edgewatch evaluate`: the group's help
            rich_utils.rich_format_error(exc)
        else:
            typer.echo(f"error: {_one_line(exc)}", err=True)
        raise SystemExit(getattr(exc, "exit_code", 2)) from None
    except typer.Abort:
        typer.echo("aborted", err=True)
        raise SystemExit(1) from None
    if isinstance(code, int) and not isinstance(code, bool) and code:  # typer.Exit(code)
        raise SystemExit(code)


def _one_line(exc: Exception) -> str:
    """A CLI error as one line; an unknown option or a missing argument points at the help."""
    if isinstance(exc, typer.BadParameter) and exc.param is None and exc.param_hint is None:
        text = exc.message  # edgewatch's own message: no "Invalid value:" before it
    else:
        text = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    message = " ".join(text.split())
    context = getattr(exc, "ctx", None)
    if context is not None and not isinstance(exc, typer.BadParameter):
        message += f" (see {context.command_path} --help)"
    return message


if __name__ == "__main__":
    main()
