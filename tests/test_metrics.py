"""The flow exports exactly the metrics the Grafana dashboard reads (names, kinds, labels)."""

from __future__ import annotations

import orjson
from prometheus_client import REGISTRY, generate_latest

from edgewatch.app import Application
from edgewatch.config import FlowSettings
from edgewatch.flows.wiring import replay_flow
from edgewatch.simulator import Fleet
from edgewatch.store_forward import StoreAndForward
from edgewatch.telemetry import FLOW_METRICS
from edgewatch.ui.dashboard_metrics import DASHBOARD_METRICS, exporter_problems


def test_the_flow_exports_what_the_dashboard_reads(tmp_path):
    history = tmp_path / "stream.jsonl"
    records = Fleet(devices=5, seed=3, fault_rate=0.02, malformed_rate=0.02, start_time=1.7e9).records(2000)
    history.write_bytes(b"".join(orjson.dumps(r.to_json()) + b"\n" for r in records))
    app = Application(FlowSettings(recovery_dir=tmp_path / "state", snapshot_seconds=0.05), handle_signals=False)
    app.run(replay_flow(app.start(), history, tmp_path / "labeled.jsonl"))
    with StoreAndForward(tmp_path / "buffer.sqlite3", "iothub"):  # a store-and-forward link, as in a run
        FLOW_METRICS.read_from("telemetry", 0, lag=0)  # what the Kafka source reports per batch
        assert exporter_problems(REGISTRY) == []
    text = generate_latest(REGISTRY).decode()
    for family in DASHBOARD_METRICS:
        assert family in text, family
    assert FLOW_METRICS.totals.dead_letters, "the malformed messages were counted by reason class"
