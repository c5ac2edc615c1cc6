"""``edgewatch demo``: a fleet streams through Kafka into the flow, watched live.

It fits the fleet's models on its fault-free history first (``edgewatch train``: the warm start a
user makes from the machines' past telemetry; ``history_ticks=0`` starts cold), then starts the
embedded broker (or uses ``--bootstrap``), the anomaly flow as its own process with that model,
the simulator in a thread going on from the history, and reads the labeled and dead-letter topics
back to show them and to score the labels against the simulator's ground truth. Everything it
started is stopped when it returns, also on Ctrl-C or error.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path

import orjson
from confluent_kafka import Consumer, TopicPartition
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from edgewatch.connectors.broker import EmbeddedBroker, _die_with_parent, stop_process
from edgewatch.connectors.files import paced
from edgewatch.connectors.kafka import ensure_topics, publish
from edgewatch.evaluation.faults import FaultScore
from edgewatch.simulator import FAULT_HEADER, Fleet

PARTITIONS = 4
DRAIN_TIMEOUT = 60.0
#: legitimate operating changes (setpoint and load steps) and a daily-like ambient cycle, labeled normal
CHANGE_RATE = 0.001  # per machine and tick
#: ticks of each machine's fault-free past the demo fits its models on before streaming
HISTORY_TICKS = 600
AMBIENT_PERIOD = 1800  # ticks


@dataclass
class DemoSummary:
    events: int
    labeled: int
    deadletter: int
    faults: int
    detected: int
    precision: float
    recall: float
    changes: int = 0
    alarmed_after_change: int = 0

    def line(self) -> str:
        return (
            f"demo: events={self.events} labeled={self.labeled} deadletter={self.deadletter} "
            f"faults={self.faults} detected={self.detected} "
            f"precision={self.precision:.3f} recall={self.recall:.3f} "
            f"changes={self.changes} alarmed_after_change={self.alarmed_after_change}"
        )


class _Watch:
    """Reads the flow's output topics and keeps the numbers the console shows."""

    def __init__(self, bootstrap: str, labeled_topic: str, dead_topic: str, truth: FaultScore):
        self.truth = truth
        self.labeled = 0
        self.deadletter = 0
        self.anomalies_by_device: Counter[str] = Counter()  # alarms raised per device
        self.in_alarm: set[str] = set()
        self.latest: deque[tuple] = deque(maxlen=8)
        self._labeled_topic = labeled_topic
        self._consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": "edgewatch-demo", "enable.auto.commit": "false"}
        )
        self._consumer.assign([TopicPartition(t, p, 0) for t in (labeled_topic, dead_topic) for p in range(PARTITIONS)])
        self.lock = threading.Lock()

    def poll(self, seconds: float) -> None:
        for msg in self._consumer.consume(5000, seconds):
            if msg.error() is not None:
                continue
            headers = dict(msg.headers() or [])
            if msg.topic() != self._labeled_topic:
                self.deadletter += 1
                continue
            self.labeled += 1
            event = orjson.loads(msg.value())
            device = event["device_id"]
            if not event["is_anomaly"]:
                self.in_alarm.discard(device)
                continue
            fault = headers.get(FAULT_HEADER, b"").decode()
            with self.lock:
                self.truth.labeled(device, int(headers["sequenceNumber"]), True)
            if device in self.in_alarm:
                continue
            # the device's alarm was raised at this reading: one row, with what drove it
            self.in_alarm.add(device)
            self.anomalies_by_device[device] += 1
            explanation = event.get("explanation") or {}
            why = max(explanation, key=explanation.get).split(".")[-1] if explanation else "?"
            self.latest.appendleft((event["timestamp"][11:23], device, event["score"], why, fault))

    def close(self) -> None:
        self._consumer.close()


def _ratio(value: float, measurable: bool) -> str:
    """A precision or recall, or "–" until there is something to measure."""
    return f"{value:.3f}" if measurable else "–"


def _view(
    watch: _Watch, sent: int, elapsed: float, seconds: float, devices: int, rate: float, width: int = 80
) -> Group:
    """The live console; readable at 80 columns (narrow columns, no model names)."""
    truth = watch.truth
    stats = Table.grid(padding=(0, 1))
    stats.add_row(f"[b]edgewatch demo[/b]  {devices} machines · {rate:.0f} ev/s · {elapsed:4.1f}/{seconds:.0f} s")
    stats.add_row(
        f"sent [b]{sent}[/b]  labeled [b]{watch.labeled}[/b]  "
        f"dead letters [b]{watch.deadletter}[/b] [dim](injected malformed test messages)[/dim]"
    )
    stats.add_row(
        f"faults [b]{truth.faults}[/b]  detected [b]{truth.detected}[/b]  "
        f"precision [b]{_ratio(truth.episode_precision, truth.flagged > 0)}[/b]  "
        f"recall [b]{_ratio(truth.recall, truth.faults > 0)}[/b]"
    )
    stats.add_row(
        f"legitimate changes [b]{truth.changes}[/b]  readings alarmed after one [b]{truth.alarmed_after_change}[/b]"
    )
    latest = Table(
        title=f"alarms raised · {len(watch.in_alarm)} active", expand=False, padding=(0, 1), box=box.SIMPLE_HEAD
    )
    latest.add_column("time", no_wrap=True)
    latest.add_column("device", no_wrap=True)
    latest.add_column("score", justify="right", no_wrap=True)
    latest.add_column("why", no_wrap=True)
    latest.add_column("fault", no_wrap=True)
    for time_of_day, device, score, why, fault in watch.latest:
        latest.add_row(time_of_day[:8], device, f"{score:.2f}", why, fault or "[red]none[/red]")
    top = Table(title="top devices", padding=(0, 1), box=box.SIMPLE_HEAD)
    top.add_column("device", no_wrap=True)
    top.add_column("alarms", justify="right")
    for device, count in watch.anomalies_by_device.most_common(8):
        top.add_row(device, str(count))
    if width >= 110:  # side by side where there is room; stacked at 80 columns
        grid = Table.grid(padding=(0, 2))
        grid.add_row(latest, top)
        return Group(stats, grid)
    return Group(stats, latest, top)


def _fit_history(records: list, model_dir: Path) -> Path:
    """The fleet's models fitted on its history's records (as ``edgewatch train`` fits them), saved."""
    from edgewatch.online_models import artifact
    from edgewatch.online_models.registry import BUILTIN, DEFAULT_DETECTOR
    from edgewatch.schema import RawMessage, Reading, parse_message

    raws = (RawMessage(r.key, r.value, r.headers, "history", 0, i, r.timestamp_ms) for i, r in enumerate(records))
    readings = [reading for reading in map(parse_message, raws) if isinstance(reading, Reading)]
    fitted = artifact.train(BUILTIN[DEFAULT_DETECTOR], readings, source="the demo fleet's fault-free history")
    artifact.save(fitted, model_dir)
    return model_dir


def _start_flow(bootstrap: str, topics: dict[str, str], log_path: Path, model_dir: Path | None) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "edgewatch",
        "run",
        "--bootstrap",
        bootstrap,
        "--in-topic",
        topics["in"],
        "--out-topic",
        topics["out"],
        "--dlq-topic",
        topics["dlq"],
        "--partitions",
        str(PARTITIONS),
        *(["--model", str(model_dir)] if model_dir else []),
        "--model-cache-dir",  # what the flow keeps of its model (fleet drift) stays in the demo's directory
        str(log_path.parent / "model-cache"),
    ]
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
        )


def run_demo(
    seconds: float = 30.0,
    devices: int = 200,
    rate: float = 2000.0,
    seed: int = 0,
    bootstrap: str | None = None,
    console: Console | None = None,
    history_ticks: int = HISTORY_TICKS,
) -> DemoSummary:
    """Run the demo for ``seconds`` of streaming and return its summary."""
    console = console or Console(stderr=True)
    workdir = Path(tempfile.mkdtemp(prefix="edgewatch-demo-"))
    tick_seconds = devices / rate
    fleet = Fleet(
        devices=devices,
        seed=seed,
        fault_rate=0.003,
        malformed_rate=0.002,
        change_rate=CHANGE_RATE,
        ambient_period=AMBIENT_PERIOD,
        warmup_ticks=max(history_ticks, 50),  # no fault in the history (50: the simulator's own warm-up)
        start_time=time.time() - history_ticks * tick_seconds,  # the history is the fleet's past
        tick_seconds=tick_seconds,
    )
    records = fleet.records(devices * history_ticks + round(rate * seconds))
    model_dir = None
    if history_ticks > 0:
        started = time.monotonic()
        model_dir = _fit_history([next(records) for _ in range(devices * history_ticks)], workdir / "model")
        console.print(
            f"fitted {devices} machines' models on {history_ticks} ticks of fault-free history "
            f"in {time.monotonic() - started:.1f} s"
        )
    suffix = "" if bootstrap is None else f"-{os.getpid()}-{int(time.time())}"
    topics = {"in": f"telemetry{suffix}", "out": f"labeled{suffix}", "dlq": f"deadletter{suffix}"}
    with contextlib.ExitStack() as cleanup:
        if bootstrap is None:
            bootstrap = cleanup.enter_context(EmbeddedBroker(log_file=workdir / "broker.log")).bootstrap
        ensure_topics({"bootstrap.servers": bootstrap}, topics.values(), PARTITIONS)
        flow = _start_flow(bootstrap, topics, workdir / "flow.log", model_dir)
        cleanup.callback(stop_process, flow, 20.0)

        truth = FaultScore()
        watch = _Watch(bootstrap, topics["out"], topics["dlq"], truth)
        cleanup.callback(watch.close)
        stop_sending = threading.Event()
        sent = Counter()

        def on_record(record) -> None:
            with watch.lock:
                truth.sent(record.key.decode(), int(record.headers[0][1]), record.fault, record.change)
            sent["events"] += 1

        send_errors: list[BaseException] = []

        def send() -> None:
            try:
                publish(
                    paced(records, stop=stop_sending.is_set, rate=rate),
                    {"bootstrap.servers": bootstrap},
                    topics["in"],
                    on_record,
                )
            except BaseException as exc:
                send_errors.append(exc)

        sender = threading.Thread(target=send, name="simulator", daemon=True)
        cleanup.callback(stop_sending.set)
        started = time.monotonic()
        sender.start()
        live_view = Live(console=console, refresh_per_second=4) if console.is_terminal else contextlib.nullcontext()
        with live_view as live:
            next_report = 0.0
            while True:
                elapsed = time.monotonic() - started
                watch.poll(0.2)
                done = not sender.is_alive() and watch.labeled + watch.deadletter >= sent["events"]
                if live is not None:
                    live.update(
                        _view(watch, sent["events"], min(elapsed, seconds), seconds, devices, rate, console.width)
                    )
                elif elapsed >= next_report or done:
                    console.print(
                        f"{elapsed:5.1f}s sent={sent['events']} labeled={watch.labeled} dead={watch.deadletter} "
                        f"faults={truth.faults} detected={truth.detected}"
                    )
                    next_report = elapsed + 5.0
                if send_errors:
                    raise RuntimeError(f"the simulator failed: {send_errors[0]}") from send_errors[0]
                if done:
                    break
                if flow.poll() is not None:
                    raise RuntimeError(f"the flow exited with {flow.returncode}; see {workdir / 'flow.log'}")
                if elapsed > seconds + DRAIN_TIMEOUT:
                    console.print(f"[red]demo: flow still behind after {DRAIN_TIMEOUT:.0f} s; see {workdir}")
                    break
        return DemoSummary(
            events=sent["events"],
            labeled=watch.labeled,
            deadletter=watch.deadletter,
            faults=truth.faults,
            detected=truth.detected,
            precision=truth.episode_precision,
            recall=truth.recall,
            changes=truth.changes,
            alarmed_after_change=truth.alarmed_after_change,
        )
