"""Warm start: detectors batch-fitted on history, saved as data (JSON + arrays), optionally signed.

``edgewatch train`` fits one detector per device found in the history (``fit_history``, the
detector's own batch fit) and writes a model directory:

* ``model.json``: detector, parameters, version, training range, row count, the devices
  and their features, and the sha256 of every other file (the manifest);
* ``arrays.npz``: each device's fitted state as numpy arrays (``export_arrays`` of the
  detector), devices with the same features stacked; read with ``allow_pickle=False``;
* ``model.sig`` (with ``--sign-key``): an ed25519 signature of ``model.json``'s bytes.

``edgewatch run --model MODEL_DIR`` (and ``serve``) starts every device from its own fitted
model (``import_arrays`` of a fresh detector), and devices the history did not have from the
default one (the device with the most history). ``edgewatch evaluate nab`` uses :func:`train`
on each file's probation rows, in memory.

Loading runs no code from the directory: no pickle, arrays checked against the detector's
field table (dtype and shape), and only built-in detector names (a ``package.module:factory``
name would import a module). The sha256 in ``model.json`` catches corruption, not a forged
directory; a signature does: with ``model_public_key`` set, :func:`load` refuses a model whose
signature is missing or does not verify, before reading anything else. Detectors without
``export_arrays``/``import_arrays`` (plug-ins) are not saved: a model directory that silently
held fresh detectors would be a warm start in name only.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import json
import zipfile
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from river.base import AnomalyDetector

from edgewatch import __version__
from edgewatch.online_models.compact_novelty_kernel import LATER_FIELDS
from edgewatch.online_models.reference import reference_histograms
from edgewatch.online_models.registry import BUILTIN, DetectorSpec
from edgewatch.schema import Reading, format_timestamp

FORMAT = 2
METADATA_FILE = "model.json"
ARRAYS_FILE = "arrays.npz"
SIGNATURE_FILE = "model.sig"
LEGACY_MODEL_FILE = "model.pkl"  # format 1: a pickle, never loaded


class ArtifactError(ValueError):
    """The model directory is missing, incomplete, altered, unsigned or not data edgewatch can load."""


@dataclass
class ModelArtifact:
    """Fitted detectors of a fleet: one per device seen in the history, and a default.

    ``features`` names each device's features (the columns of its saved arrays)."""

    spec: DetectorSpec
    models: Mapping[str, AnomalyDetector]
    default_device: str
    version: str
    metadata: dict = field(default_factory=dict)
    features: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def model_for(self, device_id: str) -> AnomalyDetector:
        """A fresh copy of the device's fitted detector (or of the default one)."""
        return copy.deepcopy(self.models.get(device_id, self.models[self.default_device]))


def fit_detector(spec: DetectorSpec, readings: list[Reading]) -> AnomalyDetector:
    """One device's detector, batch-fitted on its history (``fit_history``, or ``learn_one`` in order)."""
    return continue_fit(spec.factory(), readings)


def continue_fit(model: AnomalyDetector, readings: list[Reading]) -> AnomalyDetector:
    """``model`` after learning ``readings`` as fault-free history (a new one, or one already fitted)."""
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
    features = {device: tuple(sorted({n for r in rows for n in r.features})) for device, rows in by_device.items()}
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
        # each feature's histogram over the fleet's history: what fleet drift is measured against
        "reference": reference_histograms([r for readings in by_device.values() for r in readings]),
    }
    return ModelArtifact(spec, models, default_device, "", metadata, features)


def save(artifact: ModelArtifact, model_dir: Path, sign_key: Path | None = None) -> ModelArtifact:
    """Write ``model.json`` and ``arrays.npz`` (and ``model.sig`` when ``sign_key``, an ed25519
    private key in PEM, is given); the version names the detector, time and checksum."""
    detector = artifact.spec.factory()
    if not (hasattr(detector, "export_arrays") and hasattr(detector, "import_arrays")):
        raise ArtifactError(
            f"{artifact.spec.name} cannot be saved as data (it has no export_arrays/import_arrays): "
            f"train one of {', '.join(sorted(BUILTIN))} or use it without --model"
        )
    signer = _private_key(sign_key) if sign_key is not None else None
    by_features: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for device in artifact.models:
        by_features[artifact.features[device]].append(device)
    arrays: dict[str, np.ndarray] = {}
    groups = []
    for index, (features, devices) in enumerate(by_features.items()):
        rows = [artifact.models[device].export_arrays(features) for device in devices]
        for name in rows[0]:
            arrays[f"g{index}.{name}"] = np.stack([row[name] for row in rows])
        groups.append({"features": list(features), "devices": devices})
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    blob = buffer.getvalue()
    digest = hashlib.sha256(blob).hexdigest()
    created = datetime.now(UTC)
    version = f"{artifact.spec.name}-{created:%Y%m%dT%H%M%SZ}-{digest[:8]}"
    metadata = {
        **artifact.metadata,
        "format": FORMAT,
        "version": version,
        "created": created.isoformat(),
        "files": {ARRAYS_FILE: digest},
        "default_device": artifact.default_device,
        "groups": groups,
    }
    manifest = (json.dumps(metadata, indent=2) + "\n").encode()
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    for stale in (LEGACY_MODEL_FILE, SIGNATURE_FILE):
        (model_dir / stale).unlink(missing_ok=True)
    (model_dir / ARRAYS_FILE).write_bytes(blob)
    (model_dir / METADATA_FILE).write_bytes(manifest)
    if signer is not None:
        (model_dir / SIGNATURE_FILE).write_text(base64.b64encode(signer.sign(manifest)).decode() + "\n")
    return ModelArtifact(artifact.spec, artifact.models, artifact.default_device, version, metadata, artifact.features)


def load(model_dir: Path, public_key: str | Path | None = None) -> ModelArtifact:
    """Read a model directory as data, refusing it unless it is complete, matches its sha256
    and, with ``public_key`` (PEM text or a PEM file), carries a valid signature by that key."""
    model_dir = Path(model_dir)
    metadata = read_manifest(model_dir, public_key)
    if metadata.get("format") != FORMAT:
        hint = " (a pickled model from an older edgewatch: retrain it)" if metadata.get("format") == 1 else ""
        raise ArtifactError(f"unsupported artifact format {metadata.get('format')!r} (expected {FORMAT}){hint}")
    spec = _builtin_spec(metadata.get("detector"))
    blob = _checked_file(model_dir, metadata, ARRAYS_FILE)
    expected = _parameters(spec.factory())
    if _with_later_defaults(metadata.get("parameters"), expected) != expected:
        raise ArtifactError(
            f"{model_dir} was trained with other {spec.name} parameters than this edgewatch builds: retrain it"
        )
    models = _ArrayModels(spec, blob, metadata.get("groups"), model_dir)
    default_device = metadata.get("default_device")
    if default_device not in models:
        raise ArtifactError(f"{model_dir / METADATA_FILE}: default_device {default_device!r} has no model")
    version = metadata.get("version")
    if not isinstance(version, str):
        raise ArtifactError(f"{model_dir / METADATA_FILE}: no version")
    return ModelArtifact(spec, models, default_device, version, metadata, dict(models.features))


def read_manifest(model_dir: Path, public_key: str | Path | None = None) -> dict:
    """The ``model.json`` of ``model_dir`` as a JSON object, its signature checked first with
    ``public_key`` (every model kind's loader starts here)."""
    try:
        manifest = (model_dir / METADATA_FILE).read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{model_dir} is not a model directory: {model_dir / METADATA_FILE} is missing") from None
    except OSError as exc:
        raise ArtifactError(f"cannot read {model_dir / METADATA_FILE}: {exc.strerror or exc}") from None
    if public_key is not None:
        verify_signature(model_dir, manifest, public_key)
    try:
        metadata = json.loads(manifest)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{model_dir / METADATA_FILE} is not valid JSON: {exc}") from None
    if not isinstance(metadata, dict):
        raise ArtifactError(f"{model_dir / METADATA_FILE} is not a JSON object")
    return metadata


def sign(model_dir: Path, private_key: Path) -> None:
    """Sign an existing model directory's ``model.json`` with an ed25519 private key (PEM file)."""
    manifest = (Path(model_dir) / METADATA_FILE).read_bytes()
    signature = _private_key(private_key).sign(manifest)
    (Path(model_dir) / SIGNATURE_FILE).write_text(base64.b64encode(signature).decode() + "\n")


def verify_signature(model_dir: Path, manifest: bytes, public_key: str | Path) -> None:
    """Refuse ``manifest`` (the bytes of ``model.json``) unless ``model.sig`` signs it with ``public_key``."""
    from cryptography.exceptions import InvalidSignature

    key = _public_key(public_key)
    try:
        signature = base64.b64decode((Path(model_dir) / SIGNATURE_FILE).read_bytes().strip(), validate=True)
    except FileNotFoundError:
        raise ArtifactError(
            f"{model_dir} is not signed ({SIGNATURE_FILE} is missing) and model_public_key is set: refusing it"
        ) from None
    except ValueError:
        raise ArtifactError(f"{model_dir / SIGNATURE_FILE} is not a base64 signature: refusing the model") from None
    try:
        key.verify(signature, manifest)
    except InvalidSignature:
        raise ArtifactError(
            f"the signature of {model_dir} does not verify with model_public_key: refusing a modified or foreign model"
        ) from None


def _public_key(value: str | Path):
    """An ed25519 public key from PEM text or a PEM file's path."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    pem = _pem(value, "model_public_key")
    try:
        key = load_pem_public_key(pem)
    except ValueError as exc:
        raise ArtifactError(f"model_public_key is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ArtifactError("model_public_key must be an ed25519 public key")
    return key


def _private_key(path: Path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    pem = _pem(path, "the signing key")
    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ArtifactError(f"the signing key is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ArtifactError("the signing key must be an ed25519 private key (openssl genpkey -algorithm ed25519)")
    return key


def _pem(value: str | Path, what: str) -> bytes:
    text = str(value)
    if text.lstrip().startswith("-----BEGIN"):
        return text.encode()
    try:
        return Path(text).read_bytes()
    except OSError as exc:
        raise ArtifactError(f"cannot read {what} {text}: {exc.strerror or exc}") from None


def _builtin_spec(name: object) -> DetectorSpec:
    if not isinstance(name, str) or name not in BUILTIN:
        raise ArtifactError(
            f"model.json names detector {name!r}: only built-in detectors ({', '.join(sorted(BUILTIN))}) "
            "load from a model directory (another name would import code)"
        )
    return BUILTIN[name]


def _checked_file(model_dir: Path, metadata: dict, name: str) -> bytes:
    files = metadata.get("files")
    recorded = files.get(name) if isinstance(files, dict) else None
    try:
        blob = (model_dir / name).read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{model_dir} is not a model directory: {model_dir / name} is missing") from None
    digest = hashlib.sha256(blob).hexdigest()
    if digest != recorded:
        raise ArtifactError(
            f"{model_dir / name} does not match its sha256 (recorded {recorded}, found {digest}): "
            "refusing a modified or corrupted model"
        )
    return blob


class _ArrayModels(Mapping):
    """Device → detector, each built on access from its row of the saved arrays (``import_arrays``).

    The arrays are validated once, here: names, dtypes and shapes must be exactly those the
    detector's own field table gives, so nothing in the file decides what is built."""

    def __init__(self, spec: DetectorSpec, blob: bytes, groups: object, model_dir: Path):
        self._spec = spec
        self._where: dict[str, tuple[int, int]] = {}  # device -> (group, row)
        self._groups: list[tuple[tuple[str, ...], dict[str, np.ndarray]]] = []
        self.features: dict[str, tuple[str, ...]] = {}
        if not isinstance(groups, list):
            raise ArtifactError(f"{model_dir / METADATA_FILE}: no device groups")
        template = spec.factory()
        path = model_dir / ARRAYS_FILE
        try:
            archive = zipfile.ZipFile(io.BytesIO(blob))
        except zipfile.BadZipFile as exc:
            raise ArtifactError(f"{path} is not a numpy archive of plain arrays: {exc}") from None
        with archive:
            members = set(archive.namelist())
            for index, group in enumerate(groups):
                features, devices = self._group_names(group, model_dir)
                fields = {}
                later = getattr(template, "LATER_FIELDS", frozenset())
                for name, like in template.export_arrays(features).items():
                    member = f"g{index}.{name}.npy"
                    if member not in members and (name in later or _added_later(name)):  # saved before it existed
                        fields[name] = np.repeat(np.asarray(like)[None], len(devices), axis=0)
                        continue
                    if member not in members:
                        raise ArtifactError(f"{path}: {member} is missing")
                    members.discard(member)
                    fields[name] = _read_array(archive, member, like.dtype, (len(devices), *like.shape), path)
                self._groups.append((features, fields))
                for row, device in enumerate(devices):
                    if device in self._where:
                        raise ArtifactError(f"{model_dir / METADATA_FILE}: device {device!r} appears twice")
                    self._where[device] = (index, row)
                    self.features[device] = features
        if members:
            raise ArtifactError(f"{path}: unexpected arrays {sorted(members)[:3]}")

    @staticmethod
    def _group_names(group: object, model_dir: Path) -> tuple[tuple[str, ...], list[str]]:
        features = group.get("features") if isinstance(group, dict) else None
        devices = group.get("devices") if isinstance(group, dict) else None
        if not (
            isinstance(features, list)
            and isinstance(devices, list)
            and devices
            and all(isinstance(name, str) for name in features + devices)
        ):
            raise ArtifactError(f"{model_dir / METADATA_FILE}: a device group needs lists of feature and device names")
        return tuple(features), devices

    def __getitem__(self, device: str) -> AnomalyDetector:
        group, row = self._where[device]
        features, fields = self._groups[group]
        model = self._spec.factory()
        model.import_arrays(features, {name: array[row] for name, array in fields.items()})
        return model

    def __contains__(self, device: object) -> bool:
        return device in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def _read_array(archive: zipfile.ZipFile, member: str, dtype: np.dtype, shape: tuple, path: Path) -> np.ndarray:
    """One ``.npy`` member, its header checked against the dtype and shape the detector expects
    before any data is read (no object arrays: no pickle; no size the model does not need)."""
    from numpy.lib import format as npy

    try:
        with archive.open(member) as stream:
            major, _ = npy.read_magic(stream)
            header = npy.read_array_header_1_0 if major == 1 else npy.read_array_header_2_0
            found_shape, fortran, found_dtype = header(stream)
            if found_dtype != dtype or tuple(found_shape) != shape or fortran:
                raise ArtifactError(f"{path}: {member} must be {dtype} {shape}, found {found_dtype} {found_shape}")
            data = stream.read(int(np.prod(shape)) * dtype.itemsize + 1)
    except ArtifactError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ArtifactError(f"{path} is not a numpy archive of plain arrays: {member}: {exc}") from None
    if len(data) != int(np.prod(shape)) * dtype.itemsize:
        raise ArtifactError(f"{path}: {member} holds {len(data)} bytes, not the {dtype} {shape} its header says")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _added_later(field: str) -> bool:
    """Whether a state field was added after models were saved (``s0_g_max`` is ``g_max`` of scale 0)."""
    return field in LATER_FIELDS or field.partition("_")[2] in LATER_FIELDS


def _with_later_defaults(stored, expected):
    """``stored`` parameters with the ones added since (absent from it) at today's defaults: a
    switch added later whose default keeps the old behaviour does not invalidate older models."""
    if isinstance(stored, dict) and isinstance(expected, dict):
        return {**expected, **{key: _with_later_defaults(value, expected.get(key)) for key, value in stored.items()}}
    if isinstance(stored, list) and isinstance(expected, list) and len(stored) == len(expected):
        return [_with_later_defaults(value, default) for value, default in zip(stored, expected, strict=True)]
    return stored


def _parameters(model: AnomalyDetector) -> dict:
    try:
        params = model._get_params()
    except AttributeError:
        return {}
    return json.loads(json.dumps(params, default=repr))
