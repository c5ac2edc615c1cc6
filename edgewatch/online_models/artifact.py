"""Warm start: detectors batch-fitted on history, saved as a versioned, checksummed artifact.

``edgewatch train`` fits one detector per device found in the history (``fit_history``, the
detector's own batch fit) and writes ``MODEL_DIR/model.pkl`` with ``MODEL_DIR/model.json``:
detector, parameters, version, training range, row count, devices and the sha256 of the
model bytes. ``edgewatch run --model MODEL_DIR`` starts every device from its own fitted
model, and devices the history did not have from the default one (the device with the most
history). ``edgewatch evaluate nab`` uses the same function on each file's probation rows.

The model file is a pickle: load artifacts only from a source you trust. The sha256 check
catches corruption and edits after training, not a forged artifact.
"""

from __future__ import annotations

import copy
import hashlib
import json
import pickle
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from river.base import AnomalyDetector

from edgewatch import __version__
from edgewatch.online_models.registry import DetectorSpec, resolve_detector
from edgewatch.schema import Reading, format_timestamp

FORMAT = 1
MODEL_FILE = "model.pkl"
METADATA_FILE = "model.json"


class ArtifactError(ValueError):
    """The model directory is missing, incomplete or does not match its checksum."""


@dataclass
class ModelArtifact:
    """Fitted detectors of a fleet: one per device seen in the history, and a default."""

    spec: DetectorSpec
    models: dict[str, AnomalyDetector]
    default_device: str
    version: str
    metadata: dict = field(default_factory=dict)

    def model_for(self, device_id: str) -> AnomalyDetector:
        """A fresh copy of the device's fitted detector (or of the default one)."""
        return copy.deepcopy(self.models.get(device_id, self.models[self.default_device]))


def fit_detector(spec: DetectorSpec, readings: list[Reading]) -> AnomalyDetector:
    """One device's detector, batch-fitted on its history (``fit_history``, or ``learn_one`` in order)."""
    model = spec.factory()
    if hasattr(model, "fit_history"):
        model.fit_history([r.features for r in readings], [r.timestamp for r in readings])
    else:
        for reading in readings:
            model.learn_one(reading.features)
    return model


def train(spec: DetectorSpec, history: Iterable[Reading], source: str = "") -> ModelArtifact:
    """Fit one detector per device of ``history`` (readings in time order per device)."""
    by_device: dict[str, list[Reading]] = defaultdict(list)
    for reading in history:
        by_device[reading.device_id].append(reading)
    if not by_device:
        raise ArtifactError("no valid readings in the history")
    models = {device: fit_detector(spec, readings) for device, readings in by_device.items()}
    default_device = max(by_device, key=lambda device: len(by_device[device]))
    times = [r.timestamp for readings in by_device.values() for r in readings]
    metadata = {
        "format": FORMAT,
        "detector": spec.name,
        "parameters": _parameters(models[default_device]),
        "threshold": spec.threshold,
        "edgewatch_version": __version__,
        "training": {
            "source": source,
            "rows": len(times),
            "devices": len(by_device),
            "default_device": default_device,
            "first_timestamp": format_timestamp(min(times)),
            "last_timestamp": format_timestamp(max(times)),
        },
    }
    return ModelArtifact(spec, models, default_device, "", metadata)


def save(artifact: ModelArtifact, model_dir: Path) -> ModelArtifact:
    """Write ``model.pkl`` and ``model.json``; the version names the detector, time and checksum."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    blob = pickle.dumps(
        {"models": artifact.models, "default_device": artifact.default_device}, protocol=pickle.HIGHEST_PROTOCOL
    )
    digest = hashlib.sha256(blob).hexdigest()
    created = datetime.now(UTC)
    version = f"{artifact.spec.name}-{created:%Y%m%dT%H%M%SZ}-{digest[:8]}"
    metadata = {**artifact.metadata, "version": version, "created": created.isoformat(), "sha256": digest}
    (model_dir / MODEL_FILE).write_bytes(blob)
    (model_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return ModelArtifact(artifact.spec, artifact.models, artifact.default_device, version, metadata)


def load(model_dir: Path) -> ModelArtifact:
    """Read an artifact, refusing it unless the model bytes match the recorded sha256."""
    model_dir = Path(model_dir)
    try:
        metadata = json.loads((model_dir / METADATA_FILE).read_text())
        blob = (model_dir / MODEL_FILE).read_bytes()
    except FileNotFoundError as exc:
        raise ArtifactError(f"{model_dir} is not a model directory: {exc.filename} is missing") from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{model_dir / METADATA_FILE} is not valid JSON: {exc}") from None
    digest = hashlib.sha256(blob).hexdigest()
    if digest != metadata.get("sha256"):
        raise ArtifactError(
            f"{model_dir / MODEL_FILE} does not match its sha256 (recorded {metadata.get('sha256')}, "
            f"found {digest}): refusing a modified or corrupted model"
        )
    if metadata.get("format") != FORMAT:
        raise ArtifactError(f"unsupported artifact format {metadata.get('format')!r} (expected {FORMAT})")
    content = pickle.loads(blob)
    spec = resolve_detector(metadata["detector"])
    return ModelArtifact(spec, content["models"], content["default_device"], metadata["version"], metadata)


def _parameters(model: AnomalyDetector) -> dict:
    try:
        params = model._get_params()
    except AttributeError:
        return {}
    return json.loads(json.dumps(params, default=repr))
