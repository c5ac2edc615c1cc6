"""The Azure ML entry script, served by the real Azure ML inference server (azureml-inference-server-http).

Most tests drive the server's own Flask app in-process (the app gunicorn runs in Azure ML,
``azureml_inference_server_http.server.entry:app``, built by ``create_app.create()``); one
starts :func:`edgewatch.serving.serve` as a process on loopback, as ``edgewatch serve`` does.
"""

from __future__ import annotations

import builtins
import json
import logging
import math
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("azureml_inference_server_http", reason="needs azureml-inference-server-http (dev extra)")

from edgewatch.connectors.broker import free_port
from edgewatch.online_models import artifact as artifact_module
from edgewatch.online_models.bank import new_bank
from edgewatch.online_models.registry import resolve_detector
from edgewatch.schema import RawMessage, Reading
from edgewatch.serving import SCORE_SCRIPT, server_environment
from tests.support.processes import EdgewatchProcess
from tests.support.scripts import load_script

DETECTOR = "robust-zscore"
START = 1_780_000_000.0  # 2026-05-28, epoch seconds


def pump_body(device: str, step: int, rpm: float | None = None) -> dict:
    """A generic reading of a pump whose rpm follows a slow wave."""
    value = 1450.0 + 20.0 * math.sin(step / 10.0) if rpm is None else rpm
    return {"deviceId": device, "timestamp": START + step, "values": {"rpm": value, "temp": 60.0 + (step % 7) * 0.1}}


def as_reading(body: dict, index: int = 0) -> Reading:
    raw = RawMessage(None, json.dumps(body).encode(), [], "history", 0, index)
    return Reading(body["deviceId"], float(body["timestamp"]), {k: float(v) for k, v in body["values"].items()}, raw)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A trained artifact of three pumps (what `edgewatch train` writes)."""
    history = [as_reading(pump_body(f"pump-{d}", step), step) for step in range(300) for d in range(3)]
    path = tmp_path_factory.mktemp("registered") / "model"
    saved = artifact_module.save(artifact_module.train(resolve_detector(DETECTOR), history, source="test"), path)
    assert saved.version.startswith(DETECTOR)
    return path


@pytest.fixture(scope="module")
def server_module():
    """The inference server's app factory, imported once with our entry script configured.

    The server configures itself at import (entry script, logging) and redirects ``print``
    to its logger whenever it builds an app: the fixture gives both back afterwards.
    """
    saved_env = {name: os.environ.get(name) for name in server_environment()}
    os.environ.update(server_environment())
    loggers = {
        name: lg.disabled for name, lg in logging.Logger.manager.loggerDict.items() if isinstance(lg, logging.Logger)
    }
    saved_print = builtins.print
    from azureml_inference_server_http.server import create_app

    yield create_app
    builtins.print = saved_print
    for name, disabled in loggers.items():
        logging.getLogger(name).disabled = disabled
    for name, value in saved_env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def make_client(server_module, monkeypatch):
    """Build the server's Flask app (runs the entry script's init()) for a model dir; return its test client."""
    saved_print = builtins.print

    def make(model_root: Path | None):
        monkeypatch.delenv("EDGEWATCH_MODEL_DIR", raising=False)
        monkeypatch.delenv("EDGEWATCH_THRESHOLD", raising=False)
        if model_root is None:
            monkeypatch.delenv("AZUREML_MODEL_DIR", raising=False)
        else:
            monkeypatch.setenv("AZUREML_MODEL_DIR", str(model_root))
        try:
            app = server_module.create()
        finally:
            builtins.print = saved_print
        return app.test_client()

    return make


def post(client, body, raw: bytes | None = None):
    data = raw if raw is not None else json.dumps(body)
    return client.post("/score", data=data, headers={"Content-Type": "application/json"})


def test_health_probe_answers(make_client, model_dir):
    response = make_client(model_dir).get("/")
    assert response.status_code == 200 and response.get_data(as_text=True) == "Healthy"


def test_scores_equal_the_flow_banks_and_state_is_kept_between_calls(make_client, model_dir):
    client = make_client(model_dir)
    bodies = [pump_body(f"pump-{d}", 300 + step) for step in range(40) for d in (0, 1, 7)]  # pump-7 is new
    bodies.append(pump_body("pump-0", 340, rpm=2900.0))  # a spike on a known pump
    first, second = post(client, bodies[:50]), post(client, bodies[50:])  # split across two requests
    assert first.status_code == second.status_code == 200
    results = first.get_json()["results"] + second.get_json()["results"]

    loaded = artifact_module.load(model_dir)
    expected, dead, _, _ = new_bank(loaded.spec, None, loaded).label([as_reading(b, i) for i, b in enumerate(bodies)])
    assert not dead
    assert [r["score"] for r in results] == pytest.approx([e.score for e in expected], abs=1e-12)
    assert [r["is_anomaly"] for r in results] == [e.is_anomaly for e in expected]
    assert [r["device_id"] for r in results] == [b["deviceId"] for b in bodies]
    assert results[-1]["is_anomaly"] and results[-1]["score"] > max(r["score"] for r in results[:-1])
    model = first.get_json()["model"]
    assert model == {"name": DETECTOR, "version": loaded.version, "threshold": loaded.spec.threshold}


def test_a_reading_in_an_alarm_gets_its_own_score_and_the_features_that_drove_it(make_client):
    """The issue's new user: a 900 °C reading right after an alarm scored 0.0 (the debounced score)."""
    client = make_client(None)  # every device from a fresh default detector (relational-novelty)
    normal = [pump_body("pump-9", step) for step in range(400)]
    assert not any(r["is_anomaly"] for r in post(client, normal).get_json()["results"])
    raised, hotter = (
        post(client, [pump_body("pump-9", 400 + i, rpm=rpm)]).get_json() for i, rpm in ((0, 2900.0), (1, 9000.0))
    )
    threshold = raised["model"]["threshold"]
    for answer in (raised, hotter):
        (result,) = answer["results"]
        assert result["is_anomaly"] and result["score"] >= threshold
        assert max(result["explanation"], key=result["explanation"].get) == "rpm"
        assert sum(result["explanation"].values()) == pytest.approx(1.0, abs=1e-3)
    assert "explanation" not in post(client, [pump_body("pump-8", 0)]).get_json()["results"][0]


def test_model_one_folder_down_as_azure_ml_mounts_it(make_client, model_dir):
    client = make_client(model_dir.parent)  # AZUREML_MODEL_DIR/<registered folder>/model.json
    response = post(client, pump_body("pump-1", 301))
    assert response.status_code == 200
    assert response.get_json()["model"]["version"] == artifact_module.load(model_dir).version


def test_simulated_temperature_sensor_body_with_device_id(make_client, model_dir):
    body = {
        "deviceId": "machine-9",
        "machine": {"temperature": 21.3, "pressure": 1.02},
        "ambient": {"temperature": 20.8, "humidity": 25},
        "timeCreated": "2026-11-23T01:05:00.1234567Z",
    }
    response = post(make_client(None), body)  # no model: fresh detectors
    assert response.status_code == 200, response.get_data(as_text=True)
    (result,) = response.get_json()["results"]
    assert result["device_id"] == "machine-9" and result["timestamp"] == "2026-11-23T01:05:00.123456Z"
    assert 0.0 <= result["score"] <= 1.0 and result["is_anomaly"] in (True, False)


def test_json_without_a_content_type_is_scored(make_client, model_dir):
    """curl -d and urllib send a form Content-Type by default: the body is JSON all the same."""
    client = make_client(model_dir)
    for headers in ({}, {"Content-Type": "application/x-www-form-urlencoded"}, {"Content-Type": "text/plain"}):
        response = client.post("/score", data=json.dumps(pump_body("pump-1", 300)).encode(), headers=headers)
        assert response.status_code == 200, (headers, response.get_data(as_text=True))
        assert response.get_json()["results"][0]["device_id"] == "pump-1"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"deviceId": "p", "values": {"rpm": 1}', "body is not JSON"),
        (b"[]", "empty list"),
        (b'"hello"', "1 of 1 readings cannot be scored"),
        (b'{"values": {"rpm": 1}}', "1 of 1 readings cannot be scored"),
        (b"\xff\xfe", "body is not UTF-8: invalid byte at position 0"),
    ],
)
def test_bad_bodies_are_400_with_a_reason(make_client, model_dir, raw, message):
    response = post(make_client(model_dir), None, raw=raw)
    assert response.status_code == 400
    body = response.get_json()
    text = body["error"]["message"] if "error" in body else body["message"]
    assert message in text


def test_a_bad_reading_refuses_the_whole_request_and_teaches_nothing(make_client, model_dir):
    client = make_client(model_dir)
    good = [pump_body("pump-2", 300 + step) for step in range(5)]
    bad = [*good[:2], {"deviceId": "pump-2", "timestamp": START, "values": {"rpm": "fast"}}, *good[2:]]
    response = post(client, bad)
    assert response.status_code == 400
    assert response.get_json()["error"]["readings"] == [
        {"index": 2, "error": "values.rpm must be a number, got string"}
    ]

    after = post(client, good).get_json()["results"]  # as if the bad request never came
    fresh = post(make_client(model_dir), good).get_json()["results"]
    assert [r["score"] for r in after] == [r["score"] for r in fresh]


def test_tampered_model_stops_the_server_at_init(make_client, model_dir, tmp_path):
    tampered = tmp_path / "model"
    tampered.mkdir()
    (tampered / "model.json").write_bytes((model_dir / "model.json").read_bytes())
    blob = (model_dir / "arrays.npz").read_bytes()
    (tampered / "arrays.npz").write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(SystemExit) as stopped:
        make_client(tampered)
    assert stopped.value.code == 3  # what gunicorn treats as a boot error


def wait_healthy(url: str, server: EdgewatchProcess, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"server exited with {server.poll()}:\n{server.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):  # a worker still booting
            time.sleep(0.2)
    raise AssertionError(f"{url} not healthy after {seconds} s")


def test_serve_runs_the_inference_server_on_loopback(model_dir, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZUREML_", "AML_", "EDGEWATCH_"))}
    server = EdgewatchProcess(["serve", "--model", model_dir, "--port", port], tmp_path / "serve.log", env=env)
    with server:
        wait_healthy(f"http://127.0.0.1:{port}/", server, seconds=60)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/score",
            data=json.dumps([pump_body("pump-0", 300), pump_body("pump-0", 301)]).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = json.load(response)
        assert [r["device_id"] for r in body["results"]] == ["pump-0", "pump-0"]
        assert body["model"]["version"] == artifact_module.load(model_dir).version
    assert SCORE_SCRIPT.name in server.output()


AZUREML_DIR = Path(__file__).resolve().parents[1] / "k8s" / "azureml"


def conda_pins() -> dict[str, str]:
    import yaml

    conda = yaml.safe_load((AZUREML_DIR / "conda.yaml").read_text())
    (pip,) = [item["pip"] for item in conda["dependencies"] if isinstance(item, dict)]
    assert "python=3.11" in conda["dependencies"]
    return dict(requirement.split("==") for requirement in pip)


def test_azure_ml_environment_pins_edgewatch_and_the_server_consistently():
    from importlib.metadata import requires, version

    from packaging.requirements import Requirement

    render_conda = load_script(AZUREML_DIR / "render_conda.py")
    committed = (AZUREML_DIR / "conda.yaml").read_text()
    assert committed == render_conda.conda_text(), "conda.yaml is stale: run `python k8s/azureml/render_conda.py`"

    pins = conda_pins()
    assert pins.pop("azureml-inference-server-http") == version("azureml-inference-server-http")
    for text in requires("azureml-inference-server-http"):  # the server's own requirements hold
        requirement = Requirement(text)
        if requirement.marker is None and requirement.name in pins:
            assert pins[requirement.name] in requirement.specifier, f"{requirement} vs {pins[requirement.name]}"


def test_azure_ml_deployment_points_at_this_entry_script():
    import yaml

    deployment = yaml.safe_load((AZUREML_DIR / "deployment.yml").read_text())
    code = (AZUREML_DIR / deployment["code_configuration"]["code"]).resolve()
    assert (code / deployment["code_configuration"]["scoring_script"]).resolve() == SCORE_SCRIPT
    assert (AZUREML_DIR / deployment["environment"]["conda_file"]).is_file()
    assert deployment["environment_variables"]["WORKER_COUNT"] == "1"  # one model bank per endpoint instance
    endpoint = yaml.safe_load((AZUREML_DIR / "endpoint.yml").read_text())
    assert deployment["endpoint_name"] == endpoint["name"]
