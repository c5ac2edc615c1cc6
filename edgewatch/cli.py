"""The ``edgewatch`` command.

Options that are settings (``--bootstrap``, ``--in-topic`` …) fall back to the
``EDGEWATCH_*`` environment variables, then to the defaults in :mod:`edgewatch.config`.
"""

from __future__ import annotations

import functools
import logging
import signal
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from edgewatch.config import FlowSettings, KafkaSettings

app = typer.Typer(
    help="Streaming anomaly detection for industrial device fleets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

Bootstrap = Annotated[str | None, typer.Option(help="Kafka HOST:PORT (env EDGEWATCH_BOOTSTRAP)", show_default=False)]
Partitions = Annotated[int, typer.Option(help="partitions of topics edgewatch creates")]
# Options `run` and `iotedge` share.
RecoveryDir = Annotated[
    Path | None, typer.Option(help="Bytewax recovery directory: resume after a crash", show_default=False)
]
SnapshotSeconds = Annotated[
    float | None, typer.Option(help="seconds between state snapshots (default 5)", show_default=False)
]
Detector = Annotated[
    str | None,
    typer.Option(
        help="compact-novelty | robust-zscore | half-space-trees | package.module:factory", show_default=False
    ),
]
Shards = Annotated[
    int | None, typer.Option(help="device shards (default 1; 4 per worker with --workers)", show_default=False)
]
Workers = Annotated[int, typer.Option(help="Bytewax workers in this process")]
MetricsPort = Annotated[int | None, typer.Option(help="serve Prometheus metrics on this port", show_default=False)]
CaCert = Annotated[Path | None, typer.Option(help="CA to trust (gateway)", show_default=False)]


def _settings(cls, **options):
    """Settings from the given options, the environment and the defaults, in that order."""
    from pydantic import ValidationError

    try:
        return cls(**{name: value for name, value in options.items() if value is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise typer.BadParameter(problems) from None


def _flow_settings(*, workers: int, shards: int | None, **options) -> FlowSettings:
    """Flow settings of `run` and `iotedge`; with several workers, 4 device shards each by default."""
    return _settings(FlowSettings, shards=shards if shards is not None or workers == 1 else 4 * workers, **options)


def _prepare_flow_process(settings: FlowSettings, detector: str | None, metrics_port: int | None):
    """What `run` and `iotedge` do before a flow starts: logging, a checked warm-start model,
    the recovery directory (its Bytewax config, or None), metrics, and GC tuned for streaming."""
    from bytewax.recovery import RecoveryConfig

    from edgewatch.flows.anomaly import init_recovery_dir, tune_gc_for_streaming

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)  # the IoT SDK logs every message it sends
    if settings.model_dir is not None:
        from edgewatch.online_models import artifact

        try:  # refuse a bad artifact before anything starts
            warm_start = artifact.load(settings.model_dir)
        except artifact.ArtifactError as exc:
            raise typer.BadParameter(str(exc)) from None
        if detector is not None and detector != warm_start.spec.name:
            raise typer.BadParameter(f"--model holds a {warm_start.spec.name} detector, not {detector}")
        settings.detector = warm_start.spec.name
    recovery = None
    if settings.recovery_dir is not None:
        try:
            init_recovery_dir(settings.recovery_dir, settings)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        recovery = RecoveryConfig(str(settings.recovery_dir))
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port)
    tune_gc_for_streaming()
    return recovery


def _stop_event_on_signals() -> threading.Event:
    """An event set by SIGTERM (Kubernetes, `kill`) or Ctrl-C instead of an exception
    raised wherever the flow happens to be: the flow drains and ends cleanly."""
    stop = threading.Event()

    def request_stop(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return stop


@app.command()
def broker(
    port: Annotated[int, typer.Option(help="port to listen on; 0 = a free one")] = 0,
) -> None:
    """Run the embedded Tansu Kafka broker (memory storage) on 127.0.0.1 until Ctrl-C."""
    from edgewatch.connectors.broker import EmbeddedBroker

    stop = _stop_event_on_signals()
    with EmbeddedBroker(port or None) as running:
        typer.echo(f"broker: bootstrap={running.bootstrap} (Ctrl-C to stop)")
        while running.running and not stop.wait(0.5):
            pass
    typer.echo("broker: stopped")


@app.command()
def simulate(
    devices: Annotated[int, typer.Option(help="machines in the fleet")] = 200,
    rate: Annotated[float, typer.Option(help="events per second over the fleet")] = 1000.0,
    duration: Annotated[float, typer.Option(help="seconds of telemetry")] = 30.0,
    seed: Annotated[int, typer.Option(help="random seed; same seed, same stream")] = 0,
    fault_rate: Annotated[float, typer.Option(help="chance per machine and tick that a fault starts")] = 0.002,
    malformed_rate: Annotated[float, typer.Option(help="chance that a message is a broken payload")] = 0.0,
    start_time: Annotated[
        datetime | None, typer.Option(help="source time of the first reading (default: now)", show_default=False)
    ] = None,
    bootstrap: Bootstrap = None,
    topic: Annotated[str, typer.Option(help="topic to send to")] = "telemetry",
    partitions: Partitions = 4,
    out: Annotated[
        Path | None, typer.Option(help="record to this JSONL file instead of sending", show_default=False)
    ] = None,
    iothub_connection_string: Annotated[
        str | None,
        typer.Option(
            help="send to IoT Hub as this device, like the SimulatedTemperatureSensor module", show_default=False
        ),
    ] = None,
    iothub_module: Annotated[
        bool, typer.Option("--iothub-module", help="send as this IoT Edge module (output temperatureOutput)")
    ] = False,
    iothub_ca_cert: CaCert = None,
) -> None:
    """Stream a simulated fleet (SimulatedTemperatureSensor messages with labeled faults)."""
    from edgewatch.connectors.kafka import publish
    from edgewatch.simulator import Fleet
    from edgewatch.simulator.publish import paced, write_jsonl

    begin = start_time or datetime.now(UTC)
    if begin.tzinfo is None:
        begin = begin.replace(tzinfo=UTC)
    fleet = Fleet(
        devices=devices,
        seed=seed,
        fault_rate=fault_rate,
        malformed_rate=malformed_rate,
        start_time=begin.timestamp(),
        tick_seconds=devices / rate,
    )
    total = round(rate * duration)
    if out is not None:
        stats = write_jsonl(fleet.records(total), out)
        where = str(out)
    elif iothub_connection_string or iothub_module:
        from edgewatch.simulator.publish import publish_iothub

        try:
            stats = publish_iothub(paced(fleet.records(total), rate), iothub_connection_string, ca_cert=iothub_ca_cert)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        where = "IoT Hub"
    else:
        kafka = _settings(KafkaSettings, bootstrap=bootstrap)
        from edgewatch.connectors.kafka import ensure_topics

        ensure_topics(kafka.client_config(), [topic], partitions)
        stats = publish(paced(fleet.records(total), rate), kafka.client_config(), topic)
        where = f"{topic}@{kafka.bootstrap}"
    typer.echo(
        f"simulate: sent={stats.messages} faults={fleet.faults_started} fault_messages={stats.fault_messages} "
        f"malformed={stats.malformed} to={where} seconds={stats.seconds:.1f}"
    )


@app.command()
def run(
    bootstrap: Bootstrap = None,
    in_topic: Annotated[
        str | None, typer.Option(help="telemetry topic (default telemetry)", show_default=False)
    ] = None,
    out_topic: Annotated[
        str | None, typer.Option(help="labeled events topic (default labeled)", show_default=False)
    ] = None,
    dlq_topic: Annotated[
        str | None, typer.Option(help="dead-letter topic (default deadletter)", show_default=False)
    ] = None,
    recovery_dir: RecoveryDir = None,
    snapshot_seconds: SnapshotSeconds = None,
    detector: Detector = None,
    model: Annotated[
        Path | None, typer.Option(help="warm-start every device from `edgewatch train` output", show_default=False)
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(help="label threshold (default: the detector's)", show_default=False)
    ] = None,
    shards: Shards = None,
    batch_size: Annotated[
        int | None, typer.Option(help="messages per Kafka poll (default 2000)", show_default=False)
    ] = None,
    workers: Workers = 1,
    partitions: Partitions = 4,
    metrics_port: MetricsPort = None,
    eventhubs_connection_string: Annotated[
        str | None,
        typer.Option(
            help="read/write Event Hubs' Kafka endpoint (SASL_SSL, PLAIN, $ConnectionString)", show_default=False
        ),
    ] = None,
    iothub: Annotated[
        bool | None, typer.Option("--iothub/--no-iothub", help="also send to IoT Hub as this IoT Edge module")
    ] = None,
    iothub_connection_string: Annotated[
        str | None, typer.Option(help="also send to IoT Hub as this device (GatewayHostName= allowed)")
    ] = None,
    iothub_send: Annotated[
        str | None, typer.Option(help="anomalies | all (default anomalies)", show_default=False)
    ] = None,
    iothub_output: Annotated[
        str | None, typer.Option(help="module output (default labeled)", show_default=False)
    ] = None,
    iothub_ca_cert: CaCert = None,
    eventhubs_sink_hub: Annotated[
        str | None, typer.Option(help="also send to this event hub over AMQP", show_default=False)
    ] = None,
    buffer_dir: Annotated[
        Path | None, typer.Option(help="store-and-forward files for IoT Hub/Event Hubs", show_default=False)
    ] = None,
    replay: Annotated[
        Path | None,
        typer.Option(help="run on a recorded file (.jsonl/.csv/CMAPSS .txt) instead of Kafka", show_default=False),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="with --replay: labeled events JSONL (default labeled.jsonl)", show_default=False),
    ] = None,
) -> None:
    """Run the anomaly flow: telemetry topic → labeled topic (+ dead-letter topic, IoT Hub, Event Hubs)."""
    from bytewax._bytewax import cli_main

    from edgewatch.connectors.kafka import ensure_topics
    from edgewatch.flows.anomaly import build_flow, records

    settings = _flow_settings(
        workers=workers,
        shards=shards,
        bootstrap=bootstrap,
        in_topic=in_topic,
        out_topic=out_topic,
        dlq_topic=dlq_topic,
        recovery_dir=recovery_dir,
        snapshot_seconds=snapshot_seconds,
        detector=detector,
        model_dir=model,
        threshold=threshold,
        batch_size=batch_size,
        eventhubs_connection_string=eventhubs_connection_string,
        iothub=iothub,
        iothub_connection_string=iothub_connection_string,
        iothub_send=iothub_send,
        iothub_output=iothub_output,
        iothub_ca_cert=iothub_ca_cert,
        eventhubs_sink_hub=eventhubs_sink_hub,
        buffer_dir=buffer_dir,
    )
    recovery = _prepare_flow_process(settings, detector, metrics_port)
    stop = _stop_event_on_signals()
    if replay is not None:  # the embedded mode: a file in, JSONL out, no broker
        from edgewatch.connectors.files import FileSource, JsonlSink

        if not replay.exists():
            raise typer.BadParameter(f"{replay} does not exist")
        serialize = functools.partial(records, settings=settings)
        sink = JsonlSink(out or Path("labeled.jsonl"), serialize, settings.dlq_topic)
        flow = build_flow(settings, source=FileSource(replay, settings.batch_size), sink=sink)
        where = f"{replay} → {sink.labeled} (dead letters → {sink.dead})"
    else:
        ensure_topics(settings.client_config(), [settings.in_topic, settings.out_topic, settings.dlq_topic], partitions)
        flow = build_flow(settings, stop=stop)
        where = f"{settings.in_topic}@{settings.bootstrap} → {settings.out_topic} (dead letters → {settings.dlq_topic})"
    typer.echo(f"run: {where} detector={settings.detector}", err=True)
    cli_main(
        flow,
        workers_per_process=workers,
        epoch_interval=timedelta(seconds=settings.snapshot_seconds),
        recovery_config=recovery,
    )
    typer.echo("run: stopped", err=True)


@app.command()
def iotedge(
    input_name: Annotated[str, typer.Option("--input", help="module input to read")] = "telemetry",
    iothub_output: Annotated[
        str | None, typer.Option(help="module output of labeled events (default labeled)", show_default=False)
    ] = None,
    deadletter_output: Annotated[str, typer.Option(help="module output of dead letters")] = "deadletter",
    iothub_send: Annotated[
        str | None,
        typer.Option(help="anomalies | all, until the twin's sendMode says (default anomalies)", show_default=False),
    ] = None,
    recovery_dir: RecoveryDir = None,
    snapshot_seconds: SnapshotSeconds = None,
    detector: Detector = None,
    model: Annotated[
        Path | None,
        typer.Option(help="warm-start model; the twin's modelVersion rolls out what is here", show_default=False),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(help="label threshold until the twin sets one (default: the detector's)", show_default=False),
    ] = None,
    shards: Shards = None,
    batch_size: Annotated[
        int | None, typer.Option(help="most messages per flow item (default 2000)", show_default=False)
    ] = None,
    workers: Workers = 1,
    queue_capacity: Annotated[int, typer.Option(help="input messages held for the flow")] = 10_000,
    metrics_port: MetricsPort = None,
    iothub_connection_string: Annotated[
        str | None,
        typer.Option(help="development: a module connection string (ModuleId=, GatewayHostName=)", show_default=False),
    ] = None,
    iothub_ca_cert: CaCert = None,
    buffer_dir: Annotated[
        Path | None, typer.Option(help="store-and-forward files of the outputs", show_default=False)
    ] = None,
) -> None:
    """Run as an Azure IoT Edge module: edgeHub input → outputs 'labeled' and 'deadletter'; twin controls."""
    from edgewatch.flows.iotedge import run_iotedge

    settings = _flow_settings(
        workers=workers,
        shards=shards,
        recovery_dir=recovery_dir,
        snapshot_seconds=snapshot_seconds,
        detector=detector,
        model_dir=model,
        threshold=threshold,
        batch_size=batch_size,
        iothub=True,
        iothub_connection_string=iothub_connection_string,
        iothub_send=iothub_send,
        iothub_output=iothub_output,
        iothub_ca_cert=iothub_ca_cert,
        buffer_dir=buffer_dir,
    )
    _prepare_flow_process(settings, detector, metrics_port)  # run_iotedge sets up recovery itself
    stop = _stop_event_on_signals()
    typer.echo(
        f"iotedge: input {input_name} → output {settings.iothub_output} (dead letters → output {deadletter_output}) "
        f"detector={settings.detector}",
        err=True,
    )
    try:
        run_iotedge(
            settings,
            stop,
            workers=workers,
            input_name=input_name,
            deadletter_output=deadletter_output,
            queue_capacity=queue_capacity,
        )
    except ConnectionError as exc:  # edgeHub unreachable: exit non-zero, the edge runtime restarts the module
        typer.echo(f"iotedge: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo("iotedge: stopped", err=True)


@app.command()
def replay(
    path: Annotated[Path, typer.Argument(help="recorded stream: .jsonl (simulate --out), .csv, CMAPSS .txt")],
    speed: Annotated[str, typer.Option(help="X (original inter-arrival times / X) or max")] = "1",
    bootstrap: Bootstrap = None,
    topic: Annotated[str, typer.Option(help="topic to publish to")] = "telemetry",
    partitions: Partitions = 4,
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
        raise typer.BadParameter(f"--speed must be a positive number or max, not {speed!r}") from None
    if not path.exists():
        raise typer.BadParameter(f"{path} does not exist")
    kafka = _settings(KafkaSettings, bootstrap=bootstrap)
    ensure_topics(kafka.client_config(), [topic], partitions)
    stats = publish(
        paced(read_messages(path, cycle_seconds), factor), kafka.client_config(), topic, keep_timestamps=False
    )
    typer.echo(f"replay: sent={stats.messages} from={path} to={topic}@{kafka.bootstrap} seconds={stats.seconds:.1f}")


@app.command()
def demo(
    seconds: Annotated[float, typer.Option(envvar="DEMO_SECONDS", help="how long the fleet streams")] = 30.0,
    devices: Annotated[int, typer.Option(help="machines in the fleet")] = 200,
    rate: Annotated[float, typer.Option(help="events per second over the fleet")] = 2000.0,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    bootstrap: Annotated[
        str | None, typer.Option(help="use this Kafka instead of the embedded broker", show_default=False)
    ] = None,
) -> None:
    """Broker + simulated fleet + flow + live console; ends with a `demo:` summary line."""
    from edgewatch.demo import run_demo

    summary = run_demo(seconds=seconds, devices=devices, rate=rate, seed=seed, bootstrap=bootstrap)
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
) -> None:
    """Throughput of a null flow, the naive River flow and edgewatch, in one run (source checkout)."""
    checkout = Path(__file__).resolve().parents[1]
    if not (checkout / "bench" / "throughput.py").exists():
        raise typer.BadParameter("edgewatch bench runs from a source checkout (bench/throughput.py)")
    sys.path.insert(0, str(checkout))
    from bench.throughput import main as bench_main

    bench_main(messages=messages, devices=devices, bootstrap=bootstrap, broker_kind=broker_kind, quick=quick)


@app.command()
def train(
    input_path: Annotated[
        Path, typer.Option("--input", help="history: .jsonl (edgewatch simulate --out) or .csv (timestamp + columns)")
    ],
    out: Annotated[Path, typer.Option(help="model directory to write (model.pkl + model.json)")],
    detector: Annotated[str, typer.Option(help="detector to fit")] = "compact-novelty",
    task: Annotated[str, typer.Option(help="anomaly | rul (run-to-failure history, e.g. CMAPSS train_FD001.txt)")] = (
        "anomaly"
    ),
) -> None:
    """Batch-fit the detector on history, one model per device; `run --model` warm-starts from it."""
    if task == "rul":
        return train_rul_command(input_path, out)
    if task != "anomaly":
        raise typer.BadParameter(f"--task must be anomaly or rul, not {task!r}")
    from edgewatch.connectors.files import read_history
    from edgewatch.online_models import artifact
    from edgewatch.online_models.registry import resolve_detector

    try:
        spec = resolve_detector(detector)
        readings, dead = read_history(input_path)
        saved = artifact.save(artifact.train(spec, readings, source=str(input_path)), out)
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from None
    if dead:
        typer.echo(
            f"train: skipped {len(dead)} unusable rows, e.g. row {dead[0].raw.offset}: {dead[0].reason}", err=True
        )
    training = saved.metadata["training"]
    typer.echo(
        f"train: version={saved.version} rows={training['rows']} devices={training['devices']} "
        f"from={training['first_timestamp']} to={training['last_timestamp']} out={out}"
    )


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
    detector: Annotated[str, typer.Option(help="detector to evaluate")] = "compact-novelty",
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
    with Progress(transient=True) as bar:
        task = bar.add_task("replaying NAB", total=sum(f.n_rows for f in corpus.files.values()))
        run = nab_replay.evaluate(corpus, spec, lambda rows: bar.advance(task, rows))
    nab_replay.write_results(run, out)
    if report:
        typer.echo(f"report: {nab_replay.write_report(run, out)}", err=True)
    typer.echo(run.line())


def train_rul_command(input_path: Path, out: Path) -> None:
    """`edgewatch train --task rul`: the fleet RUL model of run-to-failure histories (one run per device)."""
    from edgewatch.connectors.files import read_history
    from edgewatch.rul import artifact as rul_artifact
    from edgewatch.rul.train import train_rul

    if not input_path.exists():
        raise typer.BadParameter(f"{input_path} does not exist")
    try:
        readings, dead = read_history(input_path)
        saved = rul_artifact.save(train_rul(readings, source=str(input_path)), out)
    except ImportError as exc:
        raise typer.BadParameter(f"training needs the train extra (pip install 'edgewatch[train]'): {exc}") from None
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from None
    if dead:
        typer.echo(
            f"train: skipped {len(dead)} unusable rows, e.g. row {dead[0].raw.offset}: {dead[0].reason}", err=True
        )
    training = saved.metadata["training"]
    typer.echo(
        f"train: task=rul version={saved.version} runs={training['runs']} rows={training['rows']} "
        f"regimes={training['regimes']} sensors={len(training['sensors'])} "
        f"band_margins={saved.lower_margin:.1f},{saved.upper_margin:.1f} out={out}"
    )


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
    from edgewatch.serving import serve as run_server

    run_server(model, host=host, port=port, workers=workers)


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
            raise typer.BadParameter(f"could not fetch {dataset}: {exc}") from None
    typer.echo(f"data: {dataset} in {root}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
