"""RUL estimates and maintenance alerts to the same cloud sinks as labeled events: the RUL flow's
``to_cloud`` wiring run in-process, to Event Hubs (the producer at the SDK boundary, real batches) and
to IoT Hub (the real TLS MQTT broker on 127.0.0.1:8883; run under ``flock /tmp/port8883.lock``)."""

from __future__ import annotations

import bytewax.operators as op
import orjson
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from edgewatch.config import RulSettings
from edgewatch.flows.rul import build_rul_flow, to_cloud
from edgewatch.rul.events import maintenance_alert_json, rul_estimate_json
from edgewatch.rul.online import RulFleet
from edgewatch.rul.train import train_runs
from tests.support.eventhubs import FakeProducer
from tests.support.iothub import DEVICE_CONNECTION_STRING, GATEWAY_DEVICE
from tests.support.rul import SMALL, raw_messages, synthetic_fleet

pytest.importorskip("lightgbm", reason="training needs the train extra (lightgbm)")

CS = "Endpoint=sb://factory-7.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=a2V5"


@pytest.fixture(scope="module")
def model():
    return train_runs(synthetic_fleet(6, seed=41), SMALL)


def run_rul_to_cloud(model, settings: RulSettings, engines: int = 2) -> list:
    """Two engines' runs (cut short) through the RUL flow with its cloud outputs; the estimates it made."""
    runs = [type(run)(run.device_id, run.rows[:60]) for run in synthetic_fleet(engines, seed=42)]
    messages = raw_messages(runs)
    flow, streams = build_rul_flow(settings, TestingSource([messages[:50], messages[50:]]), RulFleet(model, 300.0))
    estimates: list = []
    op.output("seen", streams.estimates, TestingSink(estimates))
    to_cloud(streams, settings)
    run_main(flow)
    return [estimate for batch in estimates for estimate in batch]


def test_estimates_and_alerts_to_event_hubs(model, tmp_path, monkeypatch):
    from azure.eventhub import EventHubProducerClient

    producers: list[FakeProducer] = []

    def fake(connection_string, eventhub_name=None, **_):
        assert (connection_string, eventhub_name) == (CS, "rul")
        producers.append(FakeProducer())
        return producers[-1]

    monkeypatch.setattr(EventHubProducerClient, "from_connection_string", staticmethod(fake))
    settings = RulSettings(eventhubs_sink_hub="rul", eventhubs_sink_connection_string=CS, buffer_dir=tmp_path)
    estimates = run_rul_to_cloud(model, settings)
    alerts = [e for e in estimates if e.alert]
    assert len(estimates) == 120 and len(alerts) == 2  # a horizon of 300 cycles: each engine alerts at once
    (producer,) = producers  # estimates and alerts share one buffer and one producer
    sent = [event for _, events in producer.sent for event in events]
    bodies = {(e.properties["event"], e.body_as_str().encode()) for e in sent}
    expected = {("rul", rul_estimate_json(e)) for e in estimates} | {
        ("maintenance-alert", maintenance_alert_json(e)) for e in alerts
    }
    assert bodies == expected and len(sent) == len(expected)
    assert len({e.message_id for e in sent}) == len(sent), "an estimate and its alert are distinct messages"
    assert {key for key, _ in producer.sent} == {"engine-000", "engine-001"}  # partition key: the engine

    # send mode "anomalies": the maintenance alerts only
    producers.clear()
    quiet = settings.model_copy(update={"eventhubs_sink_send": "anomalies", "buffer_dir": tmp_path / "quiet"})
    run_rul_to_cloud(model, quiet)
    sent = [event for producer in producers for _, events in producer.sent for event in events]
    assert [orjson.loads(e.body_as_str())["event"] for e in sent] == ["maintenance-alert"] * 2


def test_maintenance_alerts_to_iot_hub_through_the_mqtt_broker(model, mqtt_broker, mqtt_subscriber, pki, tmp_path):
    settings = RulSettings(
        iothub_connection_string=DEVICE_CONNECTION_STRING, iothub_ca_cert=pki.ca, buffer_dir=tmp_path
    )  # iothub_send "anomalies" (the default): maintenance alerts only
    estimates = run_rul_to_cloud(model, settings)
    alerts = [e for e in estimates if e.alert]
    assert len(alerts) == 2
    received = mqtt_subscriber.wait_for(len(alerts))  # the flow has ended: its buffer was drained
    expected = {
        (
            f"devices/{GATEWAY_DEVICE}/messages/events/%24.mid=telemetry%3A0%3A{alert.raw.offset}%3Amaintenance-alert"
            f"&%24.ct=application%2Fjson&%24.ce=utf-8&alert=true&deviceId={alert.device_id}"
            "&event=maintenance-alert&model=rul",
            maintenance_alert_json(alert),
        )
        for alert in alerts
    }
    assert set(received) == expected and len(received) == len(alerts)
    assert [p["qos"] for p in mqtt_broker.publishes()] == [1] * len(alerts)
