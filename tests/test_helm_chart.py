"""The Helm chart k8s/helm/edgewatch, rendered offline for several value sets.

Each set is linted with Helm's own linter (PyPI ``helm-python-sdk``, strict, Kubernetes 1.30),
rendered, and every object is validated against the Kubernetes 1.30 OpenAPI schemas (PyPI
``kubernetes-validate``, strict: unknown fields fail). Then the wiring is checked with the
programs that will read it: Bytewax's own ``bytewax.run`` argument parser derives each pod's
process id and peers, edgewatch's settings parse the rendered ``EDGEWATCH_*`` variables,
the init container's script creates the recovery partition the flow then accepts, and the
simulator's arguments run ``edgewatch simulate``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest

from edgewatch.connectors.broker import free_port
from tests.support.kafka import consume, consume_all, position_of, produce
from tests.support.processes import PythonProcess
from tests.support.scripts import load_script

helm = pytest.importorskip("helm_python", reason="needs helm-python-sdk (dev extra)")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="needs kubernetes-validate (dev extra)")

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "k8s" / "helm" / "edgewatch"
KUBERNETES = "1.30"
NAMESPACE = "edge"


renderer = load_script(ROOT / "k8s" / "render_manifests.py")

VALUE_SETS = {
    "defaults": {},
    "edge-minimal": {"cluster": {"processes": 1, "workersPerProcess": 1}, "settings": {"shards": 1}},
    "cluster-sasl-pvc-model-simulator": {
        "cluster": {"processes": 3, "workersPerProcess": 2},
        "settings": {
            "bootstrap": "kafka-0.kafka:9093,kafka-1.kafka:9093",
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "shards": 12,
            "threshold": 0.45,
            "batch_size": 1000000,
            "start_from": "latest",
            "detector": "robust-zscore",
        },
        "kafkaSecret": {"name": "kafka-credentials"},
        "kafkaCa": {"secretName": "kafka-ca", "key": "ca.pem"},
        "model": {"source": "pvc", "existingClaim": "edgewatch-models", "subPath": "compact-novelty/v3"},
        "simulator": {"enabled": True, "devices": 20, "rate": 50},
        "podAnnotations": {"team": "reliability"},
        "nodeSelector": {"kubernetes.io/arch": "arm64"},
        "tolerations": [{"key": "edge", "operator": "Exists", "effect": "NoSchedule"}],
        "grafanaDashboard": {"enabled": True},
    },
    "eventhubs-image-model-no-recovery-no-metrics": {
        "settings": {"bootstrap": "ns.servicebus.windows.net:9093", "in_topic": "telemetry-hub"},
        "kafkaSecret": {"name": "eventhubs", "eventhubsConnectionStringKey": "connection-string"},
        "topics": {"create": False},
        "model": {"source": "image", "image": {"repository": "registry.local/edgewatch-model", "tag": "v7"}},
        "recovery": {"enabled": False},
        "metrics": {"enabled": False},
        "serviceAccount": {"create": False},
    },
}


def render(values: dict, release: str = "edgewatch") -> dict[tuple[str, str], dict]:
    """``(kind, name)`` → object, rendered as ``helm template`` would (schema-checked)."""
    rendered = renderer.render(values, release=release, namespace=NAMESPACE)
    return {(obj["kind"], obj["metadata"]["name"]): obj for _, obj in renderer.objects(rendered)}


def of_kind(objects: dict, kind: str) -> list[dict]:
    return [obj for (k, _), obj in objects.items() if k == kind]


def container(objects: dict, name: str = "flow", kind: str = "StatefulSet") -> dict:
    (workload,) = of_kind(objects, kind)
    return next(c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def literal_env(spec: dict) -> dict[str, str]:
    return {item["name"]: item["value"] for item in spec.get("env", []) if "value" in item}


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def value_set(request) -> tuple[str, dict, dict]:
    values = VALUE_SETS[request.param]
    return request.param, values, render(values)


def test_helm_lint_is_clean(value_set):
    name, values, _ = value_set
    report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{KUBERNETES}.0", namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 = warning, 3 = error
    assert report["total_charts_linted"] == 1
    assert not report["errors"] and not problems, f"{name}: {json.dumps(report, indent=1)}"


def test_every_object_validates_against_kubernetes_openapi(value_set):
    name, _, objects = value_set
    assert objects, f"{name} rendered nothing"
    for (kind, object_name), obj in objects.items():
        try:
            kubernetes_validate.validate(obj, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path)
            pytest.fail(f"{name}: {kind}/{object_name} invalid at {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(f"{name}: {exc.message}")


def test_workloads_run_non_root_on_a_read_only_root(value_set):
    _, _, objects = value_set
    for workload in of_kind(objects, "StatefulSet") + of_kind(objects, "Deployment"):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 10001
        assert pod["automountServiceAccountToken"] is False
        for spec in pod.get("initContainers", []) + pod["containers"]:
            security = spec["securityContext"]
            assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
            assert security["capabilities"]["drop"] == ["ALL"]
            assert "/tmp" in {mount["mountPath"] for mount in spec["volumeMounts"]} or spec["name"] == "model"
            assert spec["resources"]["limits"]["memory"] and spec["resources"]["requests"]["cpu"]
        flow_mounts = {m["mountPath"] for c in pod["containers"] if c["name"] == "flow" for m in c["volumeMounts"]}
        assert not flow_mounts or "/var/lib/edgewatch" in flow_mounts  # HOME in the image


def parse_bytewax_run(monkeypatch, spec: dict, pod_name: str):
    """What ``python -m bytewax.run`` makes of the container's command, args and env in pod ``pod_name``."""
    from bytewax import run as bytewax_run

    assert spec["command"] == ["python", "-m", "bytewax.run"]
    for name in [n for n in os.environ if n.startswith("BYTEWAX_")]:
        monkeypatch.delenv(name)
    for item in spec["env"]:
        if item["name"].startswith("BYTEWAX_"):
            value = (
                pod_name if item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name" else None
            )
            monkeypatch.setenv(item["name"], item.get("value", value))
    monkeypatch.setattr(sys, "argv", ["bytewax.run", *spec["args"]])
    return bytewax_run._parse_args()


@pytest.mark.parametrize(("processes", "workers"), [(1, 2), (3, 2)])
def test_each_pod_is_the_bytewax_process_of_its_ordinal(monkeypatch, processes, workers):
    values = {"cluster": {"processes": processes, "workersPerProcess": workers}, "settings": {"shards": 8}}
    objects = render(values, release="plant-a")
    (statefulset,) = of_kind(objects, "StatefulSet")
    (service,) = of_kind(objects, "Service")
    name, headless = statefulset["metadata"]["name"], service["metadata"]["name"]
    assert statefulset["spec"]["replicas"] == processes and statefulset["spec"]["serviceName"] == headless
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == statefulset["spec"]["selector"]["matchLabels"]
    assert statefulset["spec"]["podManagementPolicy"] == "Parallel"
    expected_peers = [f"{name}-{n}.{headless}.{NAMESPACE}.svc.cluster.local:9999" for n in range(processes)]
    for ordinal in range(processes):
        args = parse_bytewax_run(monkeypatch, container(objects), f"{name}-{ordinal}")
        assert args.process_id == ordinal
        assert args.addresses == ";".join(expected_peers)
        assert int(args.workers_per_process) == workers
        assert args.import_str == "edgewatch.flows.anomaly:flow"
        assert args.recovery_directory == Path("/var/lib/edgewatch/recovery")
        assert args.snapshot_interval == timedelta(seconds=5) and args.backup_interval == timedelta(0)
    env = literal_env(container(objects))
    assert env["EDGEWATCH_RECOVERY_DIR"] == str(args.recovery_directory)
    bytewax_port = next(p for p in container(objects)["ports"] if p["name"] == "bytewax")["containerPort"]
    assert all(peer.endswith(f":{bytewax_port}") for peer in expected_peers)


def test_recovery_volume_is_a_claim_template_on_k3s_local_path():
    objects = render({})
    (statefulset,) = of_kind(objects, "StatefulSet")
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["storageClassName"] == "local-path" and claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    mounts = {m["name"]: m["mountPath"] for m in container(objects)["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == literal_env(container(objects))["EDGEWATCH_RECOVERY_DIR"]


def run_prepare_script(objects: dict, pod_name: str, recovery_dir: Path) -> subprocess.CompletedProcess:
    """The init container's script, run here: `python` is this interpreter, the peer name localhost."""
    (statefulset,) = of_kind(objects, "StatefulSet")
    (prepare,) = [c for c in statefulset["spec"]["template"]["spec"]["initContainers"] if c["name"] == "prepare"]
    env = {**os.environ, **literal_env(prepare), "POD_NAME": pod_name, "RECOVERY_DIR": str(recovery_dir)}
    env["PEERS_DOMAIN"] = "localhost"
    env["POD_NAME"] = pod_name
    script = prepare["args"][0].replace('"$POD_NAME.$PEERS_DOMAIN"', '"$PEERS_DOMAIN"')
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return subprocess.run([*prepare["command"], script], env=env, capture_output=True, text=True, timeout=60)


def test_init_container_gives_each_process_its_own_partition_that_the_flow_accepts(tmp_path):
    from edgewatch.app import init_recovery_dir
    from edgewatch.config import FlowSettings

    objects = render({"cluster": {"processes": 3, "workersPerProcess": 2}, "settings": {"shards": 6}})
    for ordinal in range(3):
        volume = tmp_path / f"recovery-edgewatch-{ordinal}"
        volume.mkdir()
        for _ in range(2):  # a restarted pod keeps its partition
            result = run_prepare_script(objects, f"edgewatch-{ordinal}", volume)
            assert result.returncode == 0, result.stderr
        assert sorted(p.name for p in volume.iterdir()) == [f"part-{ordinal}.sqlite3"]
        init_recovery_dir(
            volume, FlowSettings(shards=6).shard_count
        )  # what the flow does at start: no second partition
        assert sorted(p.name for p in volume.glob("part-*.sqlite3")) == [f"part-{ordinal}.sqlite3"]


def test_settings_become_edgewatch_variables_that_edgewatch_parses(monkeypatch):
    from edgewatch.config import FlowSettings

    values = VALUE_SETS["cluster-sasl-pvc-model-simulator"]
    env = literal_env(container(render(values)))
    for name in [n for n in os.environ if n.startswith("EDGEWATCH_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("EDGEWATCH_"):
            monkeypatch.setenv(name, value)
    settings = FlowSettings(sasl_username="u", sasl_password="p")
    for name, value in values["settings"].items():
        assert getattr(settings, name) == value, name
    assert env["EDGEWATCH_BATCH_SIZE"] == "1000000"  # not 1e+06
    assert str(settings.model_dir) == "/var/lib/edgewatch/model"
    assert settings.ssl_ca_location == "/etc/edgewatch/kafka-ca/ca.pem"


def test_values_mirror_every_flow_setting():
    """A new setting in edgewatch/config.py must get a `settings` value, or be one the chart sets itself."""
    from edgewatch.config import FlowSettings

    schema = json.loads((CHART / "values.schema.json").read_text())
    chart_values = set(schema["properties"]["settings"]["properties"])
    chart_managed = {
        "recovery_dir",
        "model_dir",
        "sasl_username",
        "sasl_password",
        "eventhubs_connection_string",
        "ssl_ca_location",
        "iothub_connection_string",
        "eventhubs_sink_connection_string",
        "iothub_ca_cert",
        "buffer_dir",
        "model_cache_dir",
        # the pod runs `python -m bytewax.run`: workers come from cluster.workersPerProcess,
        # metrics from Bytewax's dataflow API (metrics.port), topics from the Kafka side
        "workers",
        "metrics_port",
        "metrics_host",
        "partitions",
        "create_topics",
        "status_seconds",
        "idle_warning_seconds",
    }
    assert chart_values | chart_managed == set(FlowSettings.model_fields)
    assert not chart_values & chart_managed
    with helm.Chart.load(str(CHART)) as chart:
        assert set(chart.values["settings"]) == chart_values


def test_credentials_come_only_from_the_existing_secret():
    objects = render(VALUE_SETS["cluster-sasl-pvc-model-simulator"])
    for spec in (container(objects), container(objects, "simulator", "Deployment")):
        refs = {
            e["name"]: e["valueFrom"]["secretKeyRef"]
            for e in spec["env"]
            if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]
        }
        assert refs == {
            "EDGEWATCH_SASL_USERNAME": {"name": "kafka-credentials", "key": "username"},
            "EDGEWATCH_SASL_PASSWORD": {"name": "kafka-credentials", "key": "password"},
        }
    hub = container(render(VALUE_SETS["eventhubs-image-model-no-recovery-no-metrics"]))
    (ref,) = [e for e in hub["env"] if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]]
    assert ref["name"] == "EDGEWATCH_EVENTHUBS_CONNECTION_STRING"
    assert ref["valueFrom"]["secretKeyRef"] == {"name": "eventhubs", "key": "connection-string"}


def test_model_from_a_claim_or_an_image_is_mounted_read_only_where_edgewatch_looks():
    pvc = render(VALUE_SETS["cluster-sasl-pvc-model-simulator"])
    flow = container(pvc)
    (mount,) = [m for m in flow["volumeMounts"] if m["name"] == "model"]
    assert mount["readOnly"] and mount["subPath"] == "compact-novelty/v3"
    assert mount["mountPath"] == literal_env(flow)["EDGEWATCH_MODEL_DIR"]
    (statefulset,) = of_kind(pvc, "StatefulSet")
    (volume,) = [v for v in statefulset["spec"]["template"]["spec"]["volumes"] if v["name"] == "model"]
    assert volume["persistentVolumeClaim"] == {"claimName": "edgewatch-models", "readOnly": True}

    image = render(VALUE_SETS["eventhubs-image-model-no-recovery-no-metrics"])
    (statefulset,) = of_kind(image, "StatefulSet")
    (copier,) = [c for c in statefulset["spec"]["template"]["spec"]["initContainers"] if c["name"] == "model"]
    assert copier["image"] == "registry.local/edgewatch-model:v7"
    target = literal_env(container(image))["EDGEWATCH_MODEL_DIR"]
    assert copier["command"][-1] == f"cp -R /model/. {target}/"
    assert {m["mountPath"] for m in copier["volumeMounts"]} == {target}


def test_prometheus_annotations_point_at_the_bytewax_api_port():
    objects = render({"metrics": {"port": 9464}})
    (statefulset,) = of_kind(objects, "StatefulSet")
    annotations = statefulset["spec"]["template"]["metadata"]["annotations"]
    flow = container(objects)
    metrics_port = next(p for p in flow["ports"] if p["name"] == "metrics")["containerPort"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "9464",
        "prometheus.io/path": "/metrics",
    }
    assert metrics_port == 9464 and literal_env(flow)["BYTEWAX_DATAFLOW_API_PORT"] == "9464"
    assert literal_env(flow)["BYTEWAX_DATAFLOW_API_ENABLED"] == "true"
    assert flow["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}

    quiet = render(VALUE_SETS["eventhubs-image-model-no-recovery-no-metrics"])
    (statefulset,) = of_kind(quiet, "StatefulSet")
    assert "annotations" not in statefulset["spec"]["template"]["metadata"]
    assert (
        "livenessProbe" not in container(quiet)
        and literal_env(container(quiet))["BYTEWAX_DATAFLOW_API_ENABLED"] == "false"
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"cluster": {"processes": 3, "workersPerProcess": 4}, "settings": {"shards": 8}}, "must be at least"),
        ({"settings": {"shards": 0}}, "minimum"),
        ({"settings": {"in_topc": "typo"}}, "additional properties 'in_topc' not allowed"),
        ({"settings": {"snapshot_seconds": 2.5}}, "snapshot_seconds"),
        ({"model": {"source": "pvc"}}, "model.existingClaim"),
        ({"kafkaSecret": {"name": "creds"}}, "settings.sasl_mechanism"),
    ],
)
def test_unworkable_values_are_refused_before_install(values, message):
    with pytest.raises(helm.HelmError, match=message):
        render(values)


def test_simulator_arguments_run_edgewatch_simulate(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from edgewatch.cli import app

    simulator = container(render({"simulator": {"enabled": True}}), "simulator", "Deployment")
    assert simulator["args"][0] == "simulate" and "command" not in simulator  # the image's entrypoint
    out = tmp_path / "fleet.jsonl"
    result = CliRunner().invoke(app, [*simulator["args"], "--duration", "0.2", "--out", str(out)])  # record, not send
    assert result.exit_code == 0, result.output
    assert out.read_text().count("\n") == 20  # 100 events/s for 0.2 s


def test_default_image_is_this_version():
    import edgewatch

    with helm.Chart.load(str(CHART)) as chart:
        assert chart.metadata["appVersion"] == edgewatch.__version__
    assert container(render({}))["image"] == f"edgewatch:{edgewatch.__version__}"


def test_plain_manifests_match_a_fresh_render_of_the_defaults():
    committed = (ROOT / "k8s" / "manifests" / "edgewatch.yaml").read_text()
    assert committed == renderer.manifests_text(), "k8s/manifests is stale: run `python k8s/render_manifests.py`"
    defaults = render({}, release=renderer.RELEASE)
    assert {kind for kind, _ in defaults} == {"ServiceAccount", "Service", "StatefulSet"}


def init_container(objects: dict, name: str) -> dict:
    (statefulset,) = of_kind(objects, "StatefulSet")
    return next(c for c in statefulset["spec"]["template"]["spec"]["initContainers"] if c["name"] == name)


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("BYTEWAX_", "EDGEWATCH_", "HEALTHCHECK_"))}


class LoopbackPod:
    """One pod of the rendered StatefulSet as a local process: its command, args and env, with the
    peers, the API port and the recovery volume moved to this machine."""

    def __init__(self, objects: dict, ordinal: int, peers: list[int], api_port: int, volume: Path, log: Path):
        flow = container(objects)
        (statefulset,) = of_kind(objects, "StatefulSet")
        recovery = literal_env(flow)["EDGEWATCH_RECOVERY_DIR"]
        self.env = {**clean_env(), **literal_env(flow)}
        self.env.update(
            BYTEWAX_POD_NAME=f"{statefulset['metadata']['name']}-{ordinal}",
            BYTEWAX_ADDRESSES=";".join(f"127.0.0.1:{port}" for port in peers),
            BYTEWAX_DATAFLOW_API_PORT=str(api_port),
            BYTEWAX_DATAFLOW_API_CACHE_PATH=str(log.parent),
            EDGEWATCH_RECOVERY_DIR=str(volume),
        )
        args = [str(volume) if a == recovery else a for a in flow["args"]]
        self.process = PythonProcess("bytewax.run", args, log, env=self.env, cwd=log.parent)
        self.api_port = api_port

    def start(self) -> LoopbackPod:
        self.process.start()
        return self

    def stop(self) -> None:
        self.process.stop(30)

    def received(self) -> float:
        """edgewatch_messages_received_total from this pod's /metrics (what Prometheus scrapes)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        match = re.search(r"^edgewatch_messages_received_total (\S+)$", text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0


def test_rendered_cluster_labels_every_message_and_resumes_from_its_partitions(kafka_bootstrap, topic_names, tmp_path):
    """Two pods of the chart as two local Bytewax processes on the test broker, restarted once."""
    from confluent_kafka.admin import AdminClient

    from edgewatch.simulator import Fleet

    topics = {name: topic_names(name) for name in ("telemetry", "labeled", "deadletter")}
    values = {
        "cluster": {"processes": 2, "workersPerProcess": 1},
        "settings": {"bootstrap": kafka_bootstrap, "shards": 4, "snapshot_seconds": 1}
        | {"in_topic": topics["telemetry"], "out_topic": topics["labeled"], "dlq_topic": topics["deadletter"]},
        "topics": {"partitions": 2},
    }
    objects = render(values)
    create = init_container(objects, "topics")
    assert create["command"][0] == "python"  # the image's interpreter; here, this one
    result = subprocess.run(
        [sys.executable, *create["command"][1:]],
        env={**clean_env(), **literal_env(create)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    existing = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics
    assert all(len(existing[topic].partitions) == 2 for topic in topics.values())

    volumes = [tmp_path / f"recovery-{ordinal}" for ordinal in range(2)]
    for ordinal, volume in enumerate(volumes):
        volume.mkdir()
        assert run_prepare_script(objects, f"edgewatch-{ordinal}", volume).returncode == 0
    fleet = Fleet(devices=6, seed=3, fault_rate=0.0)
    batches = [[(r.key, r.value, r.headers) for r in fleet.records(240)] for _ in range(2)]
    sent = produce(kafka_bootstrap, topics["telemetry"], batches[0])
    answers = [topics["labeled"], topics["deadletter"]]
    for run in range(2):  # the second run restarts both pods on their recovery volumes
        peers, api_ports = [free_port() for _ in range(2)], [free_port() for _ in range(2)]
        pods = [
            LoopbackPod(objects, n, peers, api_ports[n], volumes[n], tmp_path / f"pod-{n}.log").start()
            for n in range(2)
        ]
        try:
            if run == 1:
                sent += produce(kafka_bootstrap, topics["telemetry"], batches[1])
            out = consume(
                kafka_bootstrap,
                answers,
                until=lambda found, want=set(sent): want <= {position_of(m) for m in found},
                settle=0,
            )
            assert {position_of(m) for m in out} == set(sent), pods[0].process.tail()
            if run == 0:
                assert sum(pod.received() for pod in pods) == len(sent)  # the pods' /metrics count it all
        finally:
            for pod in pods:
                pod.stop()
        if run == 0:  # exactly once without a restart: all the stopped pods wrote
            assert len(consume_all(kafka_bootstrap, answers)) == len(sent)
    for ordinal, volume in enumerate(volumes):  # each pod kept only its own partition
        assert {p.name.split(".")[0] for p in volume.glob("part-*")} == {f"part-{ordinal}"}
        assert (volume / "edgewatch-shards").read_text() == "4"
