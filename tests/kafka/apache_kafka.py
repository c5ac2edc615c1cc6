"""A single-node Apache Kafka 4.x broker (KRaft) for tests and benchmarks.

The jars come from Maven Central through ``tests/kafka/pom.xml`` (``mvn
dependency:copy-dependencies``) and are cached in ``~/.cache/edgewatch/kafka-<version>``
(``EDGEWATCH_KAFKA_CACHE`` overrides). The broker runs on the machine's JDK with a heap
of at most 512 MB, on free loopback ports, and dies with the Python process.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

from edgewatch.connectors.broker import _die_with_parent, free_port, stop_process, wait_for_kafka

KAFKA_VERSION = "4.1.1"
#: a test session's broker carries little traffic: the client compiler alone (C1) makes its start and
#: its work cost ~40 % less CPU on a 2-core machine (measured: 3.1 vs 5.5 CPU-s for 20 topics of 500
#: messages, 0.6 vs 0.9 CPU-s per idle 20 s); the benchmarks keep the JVM's default (C2) for throughput
TEST_JVM_OPTIONS = ("-XX:TieredStopAtLevel=1",)
POM = Path(__file__).with_name("pom.xml")


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "edgewatch" / f"kafka-{KAFKA_VERSION}"
    return Path(os.environ.get("EDGEWATCH_KAFKA_CACHE", default))


def java() -> str:
    home = os.environ.get("JAVA_HOME")
    binary = Path(home, "bin", "java") if home else shutil.which("java")
    if not binary:
        raise RuntimeError("no JDK: install Java 17+ or set JAVA_HOME")
    return str(binary)


def resolve_jars() -> Path:
    """The directory of broker jars, resolved once with Maven and cached."""
    libs = cache_dir() / "libs"
    if (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").exists():
        return libs
    mvn = shutil.which("mvn")
    if not mvn:
        raise RuntimeError("Maven (mvn) is needed once to fetch the Kafka jars")
    staging = Path(tempfile.mkdtemp(prefix="libs-", dir=libs.parent if libs.parent.exists() else None))
    subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={staging}",
        ],
        check=True,
        timeout=600,
    )
    libs.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(libs, ignore_errors=True)
    shutil.move(str(staging), libs)
    return libs


class ApacheKafka:
    """Start with :meth:`start` (or ``with``), stop with :meth:`stop`.

    Args:
        workdir: where the config, the log dirs and the broker log go.
        extra_properties: more ``server.properties`` lines (listeners for SASL tests …).
        extra_listeners: ``NAME://127.0.0.1:PORT`` entries added to ``listeners``.
        jvm_options: more options for the broker's JVM (:data:`TEST_JVM_OPTIONS` for a test session's).
    """

    def __init__(
        self,
        workdir: Path,
        extra_properties: dict[str, str] | None = None,
        extra_listeners: list[str] | None = None,
        jvm_options: Sequence[str] = (),
    ):
        self.workdir = Path(workdir)
        self.port = free_port()
        self.controller_port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.extra_properties = extra_properties or {}
        self.extra_listeners = extra_listeners or []
        self.jvm_options = list(jvm_options)
        self._process: subprocess.Popen | None = None

    def _properties(self) -> str:
        listeners = [f"PLAINTEXT://127.0.0.1:{self.port}", f"CONTROLLER://127.0.0.1:{self.controller_port}"]
        advertised = [f"PLAINTEXT://127.0.0.1:{self.port}", *self.extra_listeners]
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
            "listeners": ",".join(listeners + self.extra_listeners),
            "advertised.listeners": ",".join(advertised),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL",
            "log.dirs": str(self.workdir / "kraft-logs"),
            "num.partitions": "4",
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "log.retention.ms": "-1",  # replayed streams carry old timestamps: keep them
            **self.extra_properties,
        }
        return "".join(f"{key}={value}\n" for key, value in props.items())

    def start(self, timeout: float = 90.0) -> ApacheKafka:
        libs = resolve_jars()
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "server.properties"
        config.write_text(self._properties())
        classpath = f"{libs}/*"
        # what `kafka-storage random-uuid` prints (a random UUID, URL-safe base64 without padding),
        # without starting a JVM for it; like Kafka's Uuid.randomUuid, never one starting with "-"
        # (1 in 64: StorageTool then reads it as an option and the format fails)
        cluster_id = "-"
        while cluster_id.startswith("-"):
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        subprocess.run(
            [
                java(),
                *self.jvm_options,
                "-cp",
                classpath,
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "-t",
                cluster_id,
                "-c",
                str(config),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        with open(self.workdir / "kafka.log", "ab") as log:
            self._process = subprocess.Popen(
                [
                    java(),
                    "-Xms256m",
                    "-Xmx512m",
                    # the collector kafka-server-start.sh runs the broker with: short pauses
                    "-XX:+UseG1GC",
                    "-XX:MaxGCPauseMillis=20",
                    "-XX:InitiatingHeapOccupancyPercent=35",
                    "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
                    *self.jvm_options,
                    "-cp",
                    classpath,
                    "kafka.Kafka",
                    str(config),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        try:
            wait_for_kafka(self.bootstrap, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 20.0) -> None:
        process, self._process = self._process, None
        stop_process(process, timeout)

    def __enter__(self) -> ApacheKafka:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
