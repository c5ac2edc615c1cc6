"""The RUL model on disk: data only (arrays + JSON), versioned, every file checked by sha256.

A model directory holds

* ``arrays.npz`` — the feature spec's and the forests' arrays (``numpy.savez``, read back
  with ``allow_pickle=False``: loading executes nothing);
* ``model.json`` — format, kind, version, scalars, training record, and ``files``: the
  sha256 of every other file;
* ``model.sig`` (with ``sign_key``): an ed25519 signature of ``model.json``'s bytes.

The integrity rules are the anomaly models' (:mod:`edgewatch.online_models.artifact`, whose
signing, verification and :class:`ArtifactError` are used here): ``load`` refuses a directory
whose files are missing or do not match their checksums and, with ``public_key``, one whose
signature is missing or does not verify, before reading anything else. Both kinds go through
the same registry (:mod:`edgewatch.registry`); ``kind`` in ``model.json`` keeps them apart.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from edgewatch.online_models.artifact import SIGNATURE_FILE, ArtifactError, read_manifest, sign
from edgewatch.rul.features import FeatureSpec
from edgewatch.rul.model import QUANTILES, RulModel
from edgewatch.rul.trees import Forest

FORMAT = 1
KIND = "rul"
ARRAYS_FILE = "arrays.npz"
METADATA_FILE = "model.json"


__all__ = ["KIND", "ArtifactError", "load", "save"]


def write_data_artifact(
    model_dir: Path, arrays: dict[str, np.ndarray], document: dict, kind: str, version: str | None = None
) -> dict:
    """Write ``arrays`` and ``document`` to ``model_dir``, adding ``version`` (``version``, else kind,
    time and checksum), ``created`` and ``files`` (the sha256 of each data file); the document as written."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / SIGNATURE_FILE).unlink(missing_ok=True)  # a signature of the previous model.json
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    blob = buffer.getvalue()
    (model_dir / ARRAYS_FILE).write_bytes(blob)
    digest = hashlib.sha256(blob).hexdigest()
    created = datetime.now(UTC)
    document = {
        **document,
        "kind": kind,
        "version": version or f"{kind}-{created:%Y%m%dT%H%M%SZ}-{digest[:8]}",
        "created": created.isoformat(),
        "files": {ARRAYS_FILE: digest},
    }
    (model_dir / METADATA_FILE).write_text(json.dumps(document, indent=2) + "\n")
    return document


def read_data_artifact(model_dir: Path, public_key: str | Path | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and the document of ``model_dir``, after checking the signature of ``model.json``
    (with ``public_key``) and every file's sha256."""
    model_dir = Path(model_dir)
    document = read_manifest(model_dir, public_key)
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


def save(model: RulModel, model_dir: Path, sign_key: Path | None = None, keep_version: bool = False) -> RulModel:
    """Write the model (signed with ``sign_key``, an ed25519 private key in PEM, when given); its
    version names the kind, the time and the arrays' checksum (``keep_version``: the model's own)."""
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
    written = write_data_artifact(model_dir, arrays, document, KIND, model.version if keep_version else None)
    if sign_key is not None:
        sign(model_dir, sign_key)
    return dataclasses.replace(model, version=written["version"])


def load(model_dir: Path, public_key: str | Path | None = None) -> RulModel:
    """Read a model written by :func:`save`, refusing it unless every checksum matches and, with
    ``public_key`` (PEM text or file), its signature verifies."""
    arrays, document = read_data_artifact(model_dir, public_key)
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
