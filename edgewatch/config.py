"""All edgewatch settings, each declared once.

Every setting comes from the CLI option of the same name (``--in-topic`` for ``in_topic``,
generated from these models by :mod:`edgewatch.cli_options`), else an ``EDGEWATCH_<NAME>``
environment variable, else a file named like that variable in ``EDGEWATCH_SECRETS_DIR`` (how
Kubernetes mounts a Secret's keys), else the default here; the Helm chart's values use the same names.
``python -m bytewax.run edgewatch.flows.anomaly:flow`` reads only the environment.

Secrets (``SecretStr``) are never CLI options: a command line is readable by every local user
in ``ps``. They come from the environment or a secrets file, and print as ``**********``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgewatch.state.limits import StateLimits

#: Where the NAB, SKAB and CMAPSS data live unless ``EDGEWATCH_DATA_DIR`` says otherwise: the
#: ``shared/data`` folder next to the checkout.
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"

SendMode = Literal["anomalies", "all"]


def _settings_config() -> SettingsConfigDict:
    secrets_dir = os.environ.get("EDGEWATCH_SECRETS_DIR")
    return SettingsConfigDict(
        env_prefix="EDGEWATCH_",
        extra="ignore",
        secrets_dir=secrets_dir if secrets_dir and Path(secrets_dir).is_dir() else None,
    )


class KafkaSettings(BaseSettings):
    """How to reach the Kafka cluster (Apache Kafka, Redpanda, Tansu or Event Hubs)."""

    model_config = _settings_config()

    bootstrap: str = Field("127.0.0.1:9092", description="Kafka brokers, HOST:PORT[,HOST:PORT...]")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol"
    )
    sasl_mechanism: str | None = Field(None, description="SASL mechanism, e.g. PLAIN, SCRAM-SHA-512")
    sasl_username: str | None = Field(None, description="SASL user name")
    sasl_password: SecretStr | None = Field(None, description="SASL password")
    ssl_ca_location: str | None = Field(None, description="PEM file of the CAs to trust for Kafka TLS")
    eventhubs_connection_string: SecretStr | None = Field(
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
        """The librdkafka settings shared by consumers, producers and admin clients.

        An Event Hubs connection string sets everything its Kafka endpoint needs: SASL_SSL,
        PLAIN, user ``$ConnectionString`` and the connection string as the password.

        >>> KafkaSettings(bootstrap="k:9092", security_protocol="SASL_SSL", sasl_mechanism="PLAIN",
        ...               sasl_username="u", sasl_password="p").client_config()["sasl.password"]
        'p'
        """
        if self.eventhubs_connection_string is not None:
            from edgewatch.azure.connection_string import eventhubs_kafka_config

            # the namespace's Kafka endpoint, unless a bootstrap was given explicitly
            bootstrap = self.bootstrap if "bootstrap" in self.model_fields_set else None
            return eventhubs_kafka_config(
                self.eventhubs_connection_string.get_secret_value(), self.ssl_ca_location, bootstrap
            )
        config = {"bootstrap.servers": self.bootstrap, "security.protocol": self.security_protocol}
        for option, value in (
            ("sasl.mechanism", self.sasl_mechanism),
            ("sasl.username", self.sasl_username),
            ("sasl.password", self.sasl_password.get_secret_value() if self.sasl_password else None),
            ("ssl.ca.location", self.ssl_ca_location),
        ):
            if value:
                config[option] = value
        return config


class RegistryClientSettings(BaseSettings):
    """Where registered models come from (``--model models:/NAME@champion``) and where they are kept."""

    model_config = _settings_config()

    tracking_uri: str | None = Field(
        None, description="MLflow tracking/registry server, e.g. http://mlflow:5000 (default: MLFLOW_TRACKING_URI)"
    )
    model_cache_dir: Path = Field(
        Path("edgewatch-models"), description="verified registry models, kept for runs without uplink"
    )


class RegistrySettings(RegistryClientSettings):
    """Settings of ``edgewatch models``: the validation policy and the audit log."""

    audit_log: Path = Field(Path("edgewatch-audit.jsonl"), description="append-only log of lifecycle decisions")
    policy_max_alarm_rate_increase: float = Field(
        0.25, ge=0, description="candidate's fleet alarm rate may exceed the baseline's by at most this fraction"
    )
    policy_max_recall_drop: float = Field(
        0.05, ge=0, le=1, description="recall of labeled faults may fall below the baseline's by at most this"
    )
    policy_max_precision_drop: float = Field(
        0.05, ge=0, le=1, description="precision may fall below the baseline's by at most this"
    )
    retrain_shadow_seconds: float = Field(
        3600.0,
        ge=0,
        description="retrain: seconds a challenger that passed validation runs in the shadow of the "
        "champion (flows following the registry) before it may be promoted; 0: no shadow step",
    )
    policy_min_shadow_readings: int = Field(
        1000, ge=1, description="readings the shadow must have compared for its figures to decide"
    )
    policy_min_shadow_agreement: float = Field(
        0.5, ge=0, le=1, description="share of readings the challenger must label as the champion does in the shadow"
    )


class FlowSettings(KafkaSettings, RegistryClientSettings, StateLimits):
    """Settings of the anomaly flow (``edgewatch run``, ``edgewatch iotedge``); the memory limits
    of the device banks are :class:`~edgewatch.state.limits.StateLimits`'."""

    model_config = _settings_config()  # not the bases' merged: StateLimits' has no secrets folder
    #: the kind of model ``--model`` must be (the registry refuses the other kind)
    model_kind: ClassVar[str] = "anomaly"

    in_topic: str = Field("telemetry", description="telemetry topic")
    out_topic: str = Field("labeled", description="labeled events topic")
    dlq_topic: str = Field("deadletter", description="dead-letter topic")
    alarms_topic: str | None = Field(
        "alarms", description="alarms raised and cleared (a device's abnormal episodes); empty: not written"
    )
    drift_topic: str | None = Field("drift", description="new normals accepted (drift events); empty: not written")
    shadow_topic: str | None = Field(
        "shadow", description="the challenger's labels beside the champion's (--shadow); empty: not written"
    )
    fleet_drift_topic: str | None = Field(
        "fleet-drift", description="features whose fleet distribution left the model's reference; empty: not written"
    )
    fleet_drift_window: int = Field(10_000, ge=100, description="readings per fleet drift window")
    fleet_drift_psi: float = Field(
        0.25, gt=0, description="PSI of a feature's fleet window against the training reference that is drift"
    )
    fleet_drift_confirm: int = Field(
        2, ge=1, description="fleet windows above the threshold in a row before a feature is reported drifting"
    )
    training_store: Path | None = Field(
        None, description="SQLite file of readings labeled normal, what `edgewatch retrain` trains on (empty: none)"
    )
    training_store_max_age_hours: float = Field(168.0, gt=0, description="training readings older than this go")
    training_store_rows_per_device: int = Field(5000, ge=1, description="newest training readings kept per device")
    partitions: int = Field(4, ge=1, description="partitions of the topics edgewatch creates")
    create_topics: bool = Field(False, description="create the input topic if it is missing (else: an error)")
    workers: int = Field(1, ge=1, le=64, description="Bytewax workers in this process")
    recovery_dir: Path | None = Field(None, description="Bytewax recovery database; enables resume after a crash")
    snapshot_seconds: float = Field(5.0, gt=0, description="epoch length: how often state is snapshotted")
    model_dir: Path | None = Field(
        None,
        description="warm-start model: an `edgewatch train` directory (run-rul: `train --task rul`), "
        "or models:/NAME@ALIAS | models:/NAME/N",
        json_schema_extra={"cli": "--model"},
    )
    shadow_model: Path | None = Field(
        None,
        description="challenger run beside the champion on the same readings (its labels: the shadow topic); "
        "a directory or models:/NAME@ALIAS | models:/NAME/N",
        json_schema_extra={"cli": "--shadow"},
    )
    registry_poll_seconds: float = Field(
        0.0,
        ge=0,
        description="with --model models:/NAME@ALIAS: read NAME's aliases this often and follow them "
        "live (challenger: shadow; champion: promote or roll out); 0: never",
    )
    rollout_warm_readings: int = Field(
        48, ge=0, le=100_000, description="recent readings per device a new model learns before it takes over"
    )
    model_public_key: str | None = Field(
        None, description="ed25519 public key (PEM text or file): load only models signed by it (train --sign-key)"
    )
    detector: str = Field(
        "relational-novelty",
        description="relational-novelty | compact-novelty | robust-zscore | half-space-trees | package.module:factory",
    )
    threshold: float | None = Field(None, ge=0, le=1, description="label threshold (default: the detector's)")
    shards: int | None = Field(
        None, ge=1, le=4096, description="device shards, one model bank each (default: 1, or 4 per worker)"
    )
    batch_size: int = Field(2000, ge=1, description="most messages taken from Kafka per poll")
    start_from: Literal["earliest", "latest", "committed"] = Field(
        "committed",
        description="without recovery state, where to start reading: the consumer group's committed offsets "
        "(else the earliest: a restarted run resumes instead of re-reading), earliest or latest",
        json_schema_extra={"cli": "--from"},
    )
    consumer_group: str = Field("edgewatch", description="consumer group whose offsets `--from committed` uses")
    status_seconds: float = Field(30.0, ge=0, description="seconds between status lines while running (0: none)")
    idle_warning_seconds: float = Field(
        60.0, ge=0, description="warn when no message has arrived for this long (0: never)"
    )
    metrics_port: int | None = Field(None, ge=0, le=65535, description="serve Prometheus metrics on this port")
    metrics_host: str = Field("127.0.0.1", description="interface the metrics server binds (0.0.0.0: all)")
    # Azure: labeled events to IoT Hub and/or Event Hubs (AMQP), through an on-disk store-and-forward buffer
    iothub: bool = Field(False, description="also send to IoT Hub as this IoT Edge module (edge environment)")
    iothub_connection_string: SecretStr | None = Field(
        None, description="send to IoT Hub as this device or module (GatewayHostName= allowed)"
    )
    iothub_send: SendMode = Field(
        "anomalies", description="which events go to IoT Hub: anomalies (run-rul: maintenance alerts) | all"
    )
    iothub_output: str = Field("labeled", description="module output of labeled events (IoT Edge routes)")
    iothub_ca_cert: Path | None = Field(None, description="CA to trust, e.g. a transparent gateway's")
    eventhubs_sink_hub: str | None = Field(None, description="also send labeled events to this event hub over AMQP")
    eventhubs_sink_connection_string: SecretStr | None = Field(
        None, description="namespace connection string of the AMQP sink (default: eventhubs_connection_string)"
    )
    eventhubs_sink_send: SendMode = Field(
        "all", description="which events go to the event hub: anomalies (run-rul: maintenance alerts) | all"
    )
    buffer_dir: Path = Field(Path("edgewatch-buffer"), description="store-and-forward files (a persistent volume)")
    buffer_max_mb: float = Field(256.0, gt=0, description="buffer size limit; the oldest are dropped beyond it")
    buffer_max_age_hours: float = Field(24.0, gt=0, description="buffered events older than this are dropped")

    @property
    def shard_count(self) -> int:
        """Device shards: as set, else one, or four per worker (each worker then gets some)."""
        if self.shards is not None:
            return self.shards
        return 1 if self.workers == 1 else 4 * self.workers


class RulSettings(FlowSettings):
    """Settings of the RUL flow (``edgewatch run-rul``): the flow's input, model (``--model``: an
    RUL model, from a directory or the registry), recovery, metrics and cloud settings, and these."""

    model_kind: ClassVar[str] = "rul"

    rul_topic: str = Field("rul", description="RUL estimates, one per reading (P10/P50/P90)")
    maintenance_alerts_topic: str = Field(
        "maintenance-alerts", description="one alert per run when P10 first falls below the horizon"
    )
    run_end_topic: str | None = Field(
        "maintenance", description="run ends: a device failed or was serviced (empty: none read)"
    )
    horizon: float = Field(30.0, gt=0, description="alert when the 10 % quantile of the RUL falls below this")
    refit_every: int | None = Field(
        None, ge=1, description="refit the fleet model after this many observed failures (needs the train extra)"
    )
    refit_max_rows: int = Field(
        200_000, ge=1_000, description="readings of failed runs kept to refit from (oldest runs go first)"
    )
    replay_ends_in_failure: bool = Field(
        False, description="with --replay: every device's run ends in a failure at the end of the file"
    )


class SimulatorSettings(KafkaSettings):
    """Settings of ``edgewatch simulate``."""

    topic: str = Field("telemetry", description="topic to send to")
    partitions: int = Field(4, ge=1, description="partitions of the topic if edgewatch creates it")
    devices: int = Field(200, ge=1, description="machines in the fleet")
    rate: float = Field(1000.0, gt=0, description="events per second over the whole fleet")
    duration: float = Field(30.0, gt=0, description="seconds of simulated telemetry")
    seed: int = Field(0, description="random seed; same seed, same stream")
    fault_rate: float = Field(0.002, ge=0, le=1, description="chance per machine and tick that a fault starts")
    malformed_rate: float = Field(0.0, ge=0, le=1, description="chance that a message is a broken payload")
    change_rate: float = Field(
        0.0,
        ge=0,
        le=1,
        description="chance per machine and tick that a legitimate operating change (setpoint or load step, "
        "labeled normal) starts; the demo uses 0.001",
    )
    iothub_connection_string: SecretStr | None = Field(
        None, description="send to IoT Hub as this device, like the SimulatedTemperatureSensor module"
    )
    iothub_ca_cert: Path | None = Field(None, description="CA to trust (gateway)")


def data_dir() -> Path:
    """The data folder: ``EDGEWATCH_DATA_DIR`` or ``../shared/data`` next to the checkout."""
    return Path(os.environ.get("EDGEWATCH_DATA_DIR", DEFAULT_DATA_DIR))
