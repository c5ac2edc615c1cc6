"""The RUL model on disk: data only (arrays + JSON), versioned, every file checked by sha256.

A model directory holds

* ``arrays.npz`` — the feature spec's and the forests' arrays (``numpy.savez``, read back
  with ``allow_pickle=False``: loading executes nothing);
* ``model.json`` — format, kind, version, scalars, training record, and ``files``: the
  sha256 of every other file.

``load`` refuses a directory whose files are missing or do not match their checksums. The
two functions only move named arrays and a JSON document, so they can merge with the anomaly
models' artifact code (:mod:`edgewatch.online_models.artifact`) later.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from edgewatch.rul.features import FeatureSpec
from edgewatch.rul.model import QUANTILES, RulModel
from edgewatch.rul.trees import Forest

FORMAT = 1
KIND = "rul"
ARRAYS_FILE = "arrays.npz"
METADATA_FILE = "model.json"


class ArtifactError(ValueError):
    """The model directory is missing, incomplete, of another kind or does not match its checksums."""


def write_data_artifact(model_dir: Path, arrays: dict[str, np.ndarray], document: dict, kind: str) -> dict:
    """Write ``arrays`` and ``document`` to ``model_dir``, adding ``version`` (kind, time, checksum),
    ``created`` and ``files`` (the sha256 of each data file); the document as written."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    blob = buffer.getvalue()
    (model_dir / ARRAYS_FILE).write_bytes(blob)
    digest = hashlib.sha256(blob).hexdigest()
    created = datetime.now(UTC)
    document = {
        **document,
        "kind": kind,
        "version": f"{kind}-{created:%Y%m%dT%H%M%SZ}-{digest[:8]}",
        "created": created.isoformat(),
        "files": {ARRAYS_FILE: digest},
    }
    (model_dir / METADATA_FILE).write_text(json.dumps(document, indent=2) + "\n")
    return document


def read_data_artifact(model_dir: Path) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and the document of ``model_dir``, after checking every file's sha256."""
    model_dir = Path(model_dir)
    try:
        document = json.loads((model_dir / METADATA_FILE).read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{model_dir} is not a model directory: {METADATA_FILE} is missing") from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{model_dir / METADATA_FILE} is not valid JSON: {exc}") from None
    files = document.get("files")
    if not isinstance(files, dict) or ARRAYS_FILE not in files:
        raise ArtifactError(f"{model_dir / METADATA_FILE} lists no checksummed {ARRAYS_FILE}")
    blobs = {}
    for name, recorded in files.items():
        try:
            blobs[name] = (model_dir / name).read_bytes()
        except FileNotFoundError:
            raise ArtifactError(f"{model_dir} is incomplete: {name} is missing") from None
        found = hashlib.sha256(blobs[name]).hexdigest()
        if found != recorded:
            raise ArtifactError(
                f"{model_dir / name} does not match its sha256 (recorded {recorded}, found {found}): "
                "refusing a modified or corrupted model"
            )
    try:
        with np.load(io.BytesIO(blobs[ARRAYS_FILE]), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except ValueError as exc:
        raise ArtifactError(f"{model_dir / ARRAYS_FILE} is not a plain array archive: {exc}") from None
    return arrays, document


def save(model: RulModel, model_dir: Path) -> RulModel:
    """Write the model; its version names the kind, the time and the arrays' checksum."""
    arrays = dict(model.spec.arrays())
    for name in QUANTILES:
        arrays.update(model.forests[name].arrays(name))
    document = {
        "format": FORMAT,
        "cap": model.cap,
        "lower_margin": model.lower_margin,
        "upper_margin": model.upper_margin,
        "columns": list(model.columns),
        "spec": model.spec.parameters(),
        "metadata": model.metadata,
    }
    written = write_data_artifact(model_dir, arrays, document, KIND)
    return dataclasses.replace(model, version=written["version"])


def load(model_dir: Path) -> RulModel:
    """Read a model written by :func:`save`, refusing it unless every checksum matches."""
    arrays, document = read_data_artifact(model_dir)
    if document.get("kind") != KIND:
        raise ArtifactError(f"{model_dir} holds a {document.get('kind')!r} model, not an RUL model")
    if document.get("format") != FORMAT:
        raise ArtifactError(f"unsupported RUL artifact format {document.get('format')!r} (expected {FORMAT})")
    try:
        model = RulModel(
            spec=FeatureSpec.from_parts(arrays, document["spec"]),
            forests={name: Forest.from_arrays(arrays, name) for name in QUANTILES},
            cap=float(document["cap"]),
            lower_margin=float(document["lower_margin"]),
            upper_margin=float(document["upper_margin"]),
            columns=tuple(document["columns"]),
            version=str(document["version"]),
            metadata=document.get("metadata", {}),
        )
        model.check()
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{model_dir} is not a valid RUL model: {exc!r}") from None
    return model
