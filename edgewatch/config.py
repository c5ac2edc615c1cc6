"""All edgewatch settings in one place.

Every setting can come from an ``EDGEWATCH_<NAME>`` environment variable, from the
CLI option of the same name (``--in-topic`` for ``in_topic``) or from the Helm chart's
value of the same name. ``python -m bytewax.run edgewatch.flows.anomaly:flow`` reads
only the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Where the NAB and CMAPSS data live unless ``EDGEWATCH_DATA_DIR`` says otherwise: the
#: ``shared/data`` folder next to the checkout.
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"


class KafkaSettings(BaseSettings):
    """How to reach the Kafka cluster (Apache Kafka, Redpanda, Tansu or Event Hubs)."""

    model_config = SettingsConfigDict(env_prefix="EDGEWATCH_", extra="ignore")

    bootstrap: str = Field("127.0.0.1:9092", description="HOST:PORT[,HOST:PORT...] of the brokers")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_ca_location: str | None = None
    eventhubs_connection_string: str | None = Field(
        None, description="Event Hubs namespace connection string: sets SASL_SSL/PLAIN for its Kafka endpoint"
    )

    @field_validator("bootstrap")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"bootstrap must be HOST:PORT[,HOST:PORT...], got {value!r}")
        return value

    def client_config(self) -> dict[str, str]:
        """The librdkafka settings shared by consumers, producers and admin clients."""
        from edgewatch.connectors.kafka import client_config

        return client_config(self)


class FlowSettings(KafkaSettings):
    """Settings of the anomaly flow (``edgewatch run``)."""

    in_topic: str = "telemetry"
    out_topic: str = "labeled"
    dlq_topic: str = "deadletter"
    recovery_dir: Path | None = Field(None, description="Bytewax recovery database; enables resume")
    snapshot_seconds: float = Field(5.0, gt=0, description="epoch length: how often state is snapshotted")
    model_dir: Path | None = Field(None, description="warm-start artifact written by `edgewatch train`")
    model_public_key: str | None = Field(
        None, description="ed25519 public key (PEM text or file): load only models signed by it (train --sign-key)"
    )
    detector: str = Field("compact-novelty", description="detector name (see `edgewatch run --help`)")
    threshold: float | None = Field(None, ge=0, le=1, description="label threshold; default: the detector's")
    shards: int = Field(
        1, ge=1, le=4096, description="device shards, one model bank each: at least the number of Bytewax workers"
    )
    batch_size: int = Field(2000, ge=1, description="most messages taken from Kafka per poll")
    from_beginning: bool = Field(True, description="without recovery state, start at the earliest offset")
    # Azure: labeled events to IoT Hub and/or Event Hubs (AMQP), through an on-disk store-and-forward buffer
    iothub: bool = Field(False, description="send to IoT Hub as this IoT Edge module (edge environment)")
    iothub_connection_string: str | None = Field(None, description="send to IoT Hub as this device (or module)")
    iothub_send: Literal["anomalies", "all"] = "anomalies"
    iothub_output: str = Field("labeled", description="module output name (IoT Edge routes)")
    iothub_ca_cert: Path | None = Field(None, description="CA to trust, e.g. a transparent gateway's")
    eventhubs_sink_hub: str | None = Field(None, description="send to this event hub over AMQP")
    eventhubs_sink_connection_string: str | None = Field(
        None, description="namespace connection string of the AMQP sink [eventhubs_connection_string]"
    )
    eventhubs_sink_send: Literal["anomalies", "all"] = "all"
    buffer_dir: Path = Field(Path("edgewatch-buffer"), description="store-and-forward files (a persistent volume)")
    buffer_max_mb: float = Field(256.0, gt=0, description="buffer size limit; the oldest are dropped beyond it")
    buffer_max_age_hours: float = Field(24.0, gt=0, description="buffered events older than this are dropped")


class SimulatorSettings(KafkaSettings):
    """Settings of ``edgewatch simulate``."""

    topic: str = "telemetry"
    devices: int = Field(200, ge=1)
    rate: float = Field(1000.0, gt=0, description="events per second over the whole fleet")
    duration: float = Field(30.0, gt=0, description="seconds of simulated telemetry")
    seed: int = 0
    fault_rate: float = Field(0.002, ge=0, le=1, description="chance per device and tick that a fault starts")


def data_dir() -> Path:
    """The data folder: ``EDGEWATCH_DATA_DIR`` or ``../shared/data`` next to the checkout."""
    import os

    return Path(os.environ.get("EDGEWATCH_DATA_DIR", DEFAULT_DATA_DIR))
