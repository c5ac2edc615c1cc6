"""Azure ML entry script: edgewatch's detectors behind ``POST /score``.

The Azure ML inference server (PyPI ``azureml-inference-server-http``) imports this file
(``AZUREML_ENTRY_SCRIPT``), calls :func:`init` once per worker process, then :func:`run` with
the body of every ``POST /score`` request; ``GET /`` is its liveness probe.

:func:`init` loads the model artifact written by ``edgewatch train`` from ``AZUREML_MODEL_DIR``
(Azure ML mounts the registered model there, usually one folder down) or
``EDGEWATCH_MODEL_DIR``; :func:`edgewatch.online_models.artifact.load` refuses it unless its
sha256 matches (and, with ``EDGEWATCH_MODEL_PUBLIC_KEY``, unless its signature verifies).
Without either variable, every device starts from a fresh ``EDGEWATCH_DETECTOR``.
``EDGEWATCH_THRESHOLD`` overrides the label threshold.

A request body is one reading or a list of readings, in the formats of
:mod:`edgewatch.schema`, with the device in a ``deviceId`` field::

    {"deviceId": "pump-7", "timestamp": "2026-11-23T01:05:00Z", "values": {"rpm": 1450.0}}
    {"deviceId": "machine-1", "machine": {"temperature": 21.3, "pressure": 1.02},
     "ambient": {"temperature": 20.8, "humidity": 25}, "timeCreated": "2026-11-23T01:05:00Z"}

Each device keeps its own online model between requests (a model bank per worker process,
as in the flow): it scores, labels, then learns. Readings without a time get the request's.
A body that is not usable is refused whole with a 400 and the reason for each bad reading,
so a bad request never teaches the models anything.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

try:
    import edgewatch  # noqa: F401
except ImportError:  # Azure ML mounts the code folder (this checkout) without installing it
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from edgewatch.online_models.artifact import METADATA_FILE  # marks a model directory
from edgewatch.schema import DeadLetter, LabeledEvent, RawMessage, Reading, format_timestamp, parse_message

log = logging.getLogger(__name__)

#: Most readings one request may carry: bounds the time and memory of one call.
MAX_READINGS_PER_REQUEST = 10_000
#: The pseudo topic named in parse errors, as the flow names its Kafka topic.
SOURCE_NAME = "azureml"

try:  # real HTTP status codes, and the raw body, where the server package offers them
    from azureml_inference_server_http.api.aml_request import rawhttp
    from azureml_inference_server_http.api.aml_response import AMLResponse
except ImportError:  # outside the server (plain imports, doctests): errors stay JSON objects
    AMLResponse = None

    def rawhttp(func):
        return func


class BadRequest(ValueError):
    """The request body cannot be scored; ``problems`` says why, reading by reading."""

    def __init__(self, message: str, problems: list[dict] | None = None):
        super().__init__(message)
        self.problems = problems or []


class Scorer:
    """The model bank of this worker process and what it was built from.

    A plain class, not a dataclass: the inference server loads this file without registering
    it in ``sys.modules``, where ``dataclasses`` looks up string annotations.
    """

    def __init__(self, bank, source: str):
        self.bank = bank  # ModelBank or VectorBank: both label(readings) -> (events, dead letters)
        self.source = source
        self.lock = threading.Lock()  # one bank per process: keep each device's readings in order

    def describe(self) -> dict:
        """The model name, version and threshold every response carries."""
        return {"name": self.bank.spec.name, "version": self.bank.version, "threshold": self.bank.threshold}


_scorer: Scorer | None = None


def find_model_dir(root: Path) -> Path:
    """The folder that holds ``model.json``: ``root`` itself or the one folder under it that does.

    Azure ML mounts a registered folder model as ``AZUREML_MODEL_DIR/<folder name>/``.
    """
    root = Path(root)
    if (root / METADATA_FILE).is_file():
        return root
    found = sorted(
        {path.parent for pattern in ("*/" + METADATA_FILE, "*/*/" + METADATA_FILE) for path in root.glob(pattern)}
    )
    if len(found) == 1:
        return found[0]
    if not found:
        raise FileNotFoundError(f"no {METADATA_FILE} in {root} or the folders under it: is this an edgewatch model?")
    raise FileNotFoundError(f"several models under {root}: {', '.join(str(path) for path in found)}")


def build_scorer(environ: dict[str, str] | None = None) -> Scorer:
    """A model bank from the artifact the environment points at, or a fresh detector without one."""
    from edgewatch.config import FlowSettings
    from edgewatch.online_models import artifact as artifact_module
    from edgewatch.online_models.bank import new_bank
    from edgewatch.online_models.registry import resolve_detector

    environ = os.environ if environ is None else environ
    settings = FlowSettings(_env_file=None)
    threshold = settings.threshold
    model_root = environ.get("AZUREML_MODEL_DIR") or environ.get("EDGEWATCH_MODEL_DIR")
    if model_root:
        model_dir = find_model_dir(Path(model_root))
        # verifies the sha256, and the signature when EDGEWATCH_MODEL_PUBLIC_KEY is set
        artifact = artifact_module.load(model_dir, settings.model_public_key)
        bank = new_bank(artifact.spec, threshold, artifact)
        source = f"artifact {artifact.version} from {model_dir}"
    else:
        bank = new_bank(resolve_detector(settings.detector), threshold)
        source = f"fresh {settings.detector} models (no AZUREML_MODEL_DIR or EDGEWATCH_MODEL_DIR)"
    warm_up = getattr(bank, "warm_up", None)
    if warm_up is not None:  # load the compiled kernel now, not on the first request
        warm_up()
    return Scorer(bank, source)


def init() -> None:
    """Called once per worker process by the inference server: load the model."""
    global _scorer
    _scorer = build_scorer()
    log.info("edgewatch scoring with %s", _scorer.source)


def parse_request(raw_data: str | bytes, received_at: float | None = None) -> list[Reading]:
    """The readings of a request body, or :class:`BadRequest` naming every bad one.

    >>> [r.features for r in parse_request('{"deviceId": "p1", "timestamp": 1767225600, "values": {"rpm": 1}}')]
    [{'rpm': 1.0}]
    >>> parse_request('[{"values": {"rpm": 1}}]')
    Traceback (most recent call last):
    ...
    edgewatch.serving.score.BadRequest: 1 of 1 readings cannot be scored
    """
    if isinstance(raw_data, bytes | bytearray):
        try:
            raw_data = raw_data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequest(f"body is not UTF-8: invalid byte at position {exc.start}") from None
    try:
        body = json.loads(raw_data)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"body is not JSON: {exc}") from None
    items = body if isinstance(body, list) else [body]
    if not items:
        raise BadRequest("empty list: send one reading or a list of readings")
    if len(items) > MAX_READINGS_PER_REQUEST:
        raise BadRequest(f"too many readings: {len(items)} (limit {MAX_READINGS_PER_REQUEST} per request)")
    received_ms = int((time.time() if received_at is None else received_at) * 1000)
    readings, problems = [], []
    for index, item in enumerate(items):
        raw = RawMessage(None, json.dumps(item).encode(), [], SOURCE_NAME, 0, index, received_ms)
        parsed = parse_message(raw)
        if isinstance(parsed, DeadLetter):
            problems.append({"index": index, "error": parsed.reason})
        else:
            readings.append(parsed)
    if problems:
        raise BadRequest(f"{len(problems)} of {len(items)} readings cannot be scored", problems)
    return readings


def event_result(event: LabeledEvent) -> dict:
    """One scored reading as the response lists it (an abnormal one with its explanation)."""
    result = {
        "index": event.reading.raw.offset,
        "device_id": event.reading.device_id,
        "timestamp": format_timestamp(event.reading.timestamp),
        "score": event.score,
        "is_anomaly": bool(event.is_anomaly),
    }
    if event.explanation is not None:
        result["explanation"] = event.explanation
    return result


def score(scorer: Scorer, readings: list[Reading]) -> dict:
    """Score, label and learn ``readings`` in order; the response body."""
    with scorer.lock:
        events, dead, _, _ = scorer.bank.label(readings)
    response = {"model": scorer.describe(), "results": [event_result(event) for event in events]}
    if dead:  # a plugged-in detector raised on these readings: reported, the others stand
        response["errors"] = [{"index": letter.raw.offset, "error": letter.reason} for letter in dead]
    return response


def error_response(status: int, message: str, problems: list[dict] | None = None):
    """A JSON error with a real HTTP status under the server, a plain object elsewhere."""
    body = {"error": {"status": status, "message": message}}
    if problems:
        body["error"]["readings"] = problems
    return AMLResponse(body, status, json_str=True) if AMLResponse is not None else body


@rawhttp
def run(raw_data):
    """Called by the inference server with each ``POST /score`` request (or with its body).

    The raw body is read whatever the request's Content-Type says: a JSON body sent without
    ``Content-Type: application/json`` (curl's and urllib's default is a form type, whose body
    the server would otherwise parse as a form and hand over empty) is scored all the same.
    """
    if hasattr(raw_data, "get_data"):  # the server's request object
        if raw_data.method != "POST":
            return error_response(405, "POST readings to /score (GET / is the health check)")
        raw_data = raw_data.get_data(cache=True, as_text=False, parse_form_data=False)
    if _scorer is None:
        return error_response(503, "the model is not loaded: init() has not run")
    try:
        readings = parse_request(raw_data)
    except BadRequest as exc:
        return error_response(400, str(exc), exc.problems)
    return score(_scorer, readings)
