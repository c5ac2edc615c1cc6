"""What a model was trained on and with: the lineage logged with every registered version.

Read from the model directory's ``model.json`` (whatever else the directory holds is opaque here)
and from the training data itself (its sha256), plus the code that trained it. Both kinds of
model are described: ``anomaly`` (``edgewatch train``: detector, parameters, devices, time
range) and ``rul`` (``edgewatch train --task rul``: model family, training configuration, runs
to failure, regimes, sensors); the kind is a param and a tag (``edgewatch.kind``).

>>> import json, tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> _ = (folder / "model.json").write_text(json.dumps({"detector": "robust-zscore", "version": "v1",
...     "parameters": {"window": 64}, "training": {"rows": 10, "devices": 2,
...     "first_timestamp": "2026-01-01T00:00:00Z", "last_timestamp": "2026-01-02T00:00:00Z"}}))
>>> found = model_lineage(folder)
>>> found.params["detector"], found.params["param.window"], found.tags["edgewatch.training.devices"]
('robust-zscore', '64', '2')
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from edgewatch import __version__
from edgewatch.registry import TAG, RegistryError

METADATA_FILE = "model.json"
#: the kinds of model edgewatch registers; a model.json without ``kind`` is an anomaly model
KINDS = ("anomaly", "rul")
#: MLflow refuses longer param values
MAX_PARAM_LENGTH = 6000


@dataclass
class Lineage:
    """MLflow params (the detector and its parameters) and tags (data, range, code)."""

    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)


def read_metadata(model_dir: Path) -> dict:
    """A model directory's ``model.json``, or a one-line error."""
    path = Path(model_dir) / METADATA_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RegistryError(
            f"{model_dir} is not a model directory (no {METADATA_FILE}): run `edgewatch train`"
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise RegistryError(f"cannot read {path}: {exc}") from None


def model_kind(metadata: dict) -> str:
    """``anomaly`` or ``rul``: what a ``model.json`` describes (an unknown kind is refused).

    >>> model_kind({"detector": "robust-zscore"}), model_kind({"kind": "rul"})
    ('anomaly', 'rul')
    """
    kind = metadata.get("kind") or "anomaly"
    if kind not in KINDS:
        raise RegistryError(f"{METADATA_FILE} names kind {kind!r}, not one of {', '.join(KINDS)}")
    return kind


def model_lineage(model_dir: Path, data_path: Path | None = None) -> Lineage:
    """The lineage of the model in ``model_dir``, trained on ``data_path`` when given."""
    metadata = read_metadata(model_dir)
    kind = model_kind(metadata)
    if kind == "rul":  # the RUL artifact keeps its training record under "metadata"
        record = metadata.get("metadata") or {}
        params = {"kind": kind, "family": str(record.get("family", "")), "cap": str(metadata.get("cap", ""))}
        parameters = record.get("config") or {}
        training = record.get("training") or {}
    else:
        params = {"kind": kind, "detector": str(metadata.get("detector", "")),
                  "threshold": str(metadata.get("threshold", ""))}  # fmt: skip
        parameters = metadata.get("parameters") or {}
        training = metadata.get("training") or {}
    for name, value in parameters.items():
        params[f"param.{name}"] = _text(value)[:MAX_PARAM_LENGTH]
    tags = {
        f"{TAG}kind": kind,
        f"{TAG}model_version": str(metadata.get("version", "")),
        f"{TAG}model_sha256": str(metadata.get("sha256") or (metadata.get("files") or {}).get("arrays.npz", "")),
        f"{TAG}training.rows": str(training.get("rows", "")),
        f"{TAG}training.devices": str(training.get("devices", "")),
        f"{TAG}training.runs": str(training.get("runs", "")),
        f"{TAG}training.regimes": str(training.get("regimes", "")),
        f"{TAG}training.sensors": ",".join(training.get("sensors") or []),
        f"{TAG}training.first_timestamp": str(training.get("first_timestamp", "")),
        f"{TAG}training.last_timestamp": str(training.get("last_timestamp", "")),
        f"{TAG}training.source": str(training.get("source", "")),
        f"{TAG}code.version": str(metadata.get("edgewatch_version") or record_version(metadata) or __version__),
    }
    commit = code_commit()
    if commit:
        tags[f"{TAG}code.commit"] = commit
    if data_path is not None:
        tags[f"{TAG}training.data_sha256"] = file_sha256(data_path)
        tags[f"{TAG}training.data_file"] = Path(data_path).name
    return Lineage(params, {name: value for name, value in tags.items() if value}, metadata)


def record_version(metadata: dict) -> str | None:
    """The edgewatch version an RUL model's training record names."""
    return (metadata.get("metadata") or {}).get("edgewatch_version")


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """The sha256 of a file, read in chunks (history files can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as data:
        while block := data.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def code_commit() -> str | None:
    """The git commit of the edgewatch checkout that runs (``None`` for an installed wheel)."""
    checkout = Path(__file__).resolve().parents[2]
    if not (checkout / ".git").exists():
        return None
    try:
        answer = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return answer.stdout.strip() or None if answer.returncode == 0 else None


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=repr)
