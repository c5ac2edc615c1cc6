"""``models:/NAME@alias``, ``models:/NAME/3`` or a directory → a verified model, cached for offline.

What ``edgewatch run --model`` (and ``models validate``) call. A registry URI is resolved to a
version, the version's model directory is downloaded once into ``cache_dir/NAME/VERSION`` and
verified by its kind's own loader — :func:`edgewatch.online_models.artifact.load` for anomaly
models, :func:`edgewatch.rul.artifact.load` for RUL models, both checking sha256 and, with a
public key, the signature (a copy that fails is refused, never run). The caller says which kind
it runs (``edgewatch run``: ``anomaly``, ``edgewatch run-rul``: ``rul``): a model of the other
kind is refused by the version's ``edgewatch.kind`` tag before anything is downloaded, and by
its ``model.json`` for a directory or a cached copy. When the registry cannot be reached, the cached copy of that
version (for an alias: the version it last pointed at) is used, and a log line says so: an edge
device that lost its uplink restarts on the model it was running.

Only ``mlflow-skinny`` APIs are used (extra ``registry-client``). The HTTP retries are bounded
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES``/``_TIMEOUT``/``_BACKOFF_FACTOR`` default to 2 / 10 s / 1
here instead of MLflow's minutes), so a start without uplink falls back in seconds.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from edgewatch.online_models import artifact as artifact_module
from edgewatch.registry import TAG, RegistryError
from edgewatch.registry.lineage import METADATA_FILE, model_kind

log = logging.getLogger(__name__)

URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))/?$")
ALIASES_FILE = "aliases.json"
#: errors that mean the registry answered: no fallback to a cached copy
ANSWERED = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "PERMISSION_DENIED", "UNAUTHENTICATED"}
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}


#: what to run a model of each kind with, for the one-line refusal of the other kind
RUNS_WITH = {"anomaly": "`edgewatch run --model`", "rul": "`edgewatch run-rul --model`"}


def load_artifact(model_dir: Path, public_key: str | None = None, kind: str = "anomaly"):
    """The model in ``model_dir``, read and verified by its kind's loader, after checking it is of
    ``kind`` (an :class:`~edgewatch.online_models.artifact.ArtifactError` says why not)."""
    found = _kind_of(Path(model_dir))
    if found is not None and found != kind:
        raise artifact_module.ArtifactError(
            f"{model_dir} holds {_a(found)} model, not {_a(kind)} model: run it with {RUNS_WITH[found]}"
        )
    if kind == "rul":
        from edgewatch.rul import artifact as rul_artifact

        return rul_artifact.load(Path(model_dir), public_key)
    return artifact_module.load(Path(model_dir), public_key)


def _kind_of(model_dir: Path) -> str | None:
    """The kind ``model.json`` names (``None``: unreadable, the loader says why)."""
    try:
        metadata = json.loads((model_dir / METADATA_FILE).read_bytes())
        return model_kind(metadata) if isinstance(metadata, dict) else None
    except (OSError, ValueError):  # RegistryError (unknown kind) is a ValueError too
        return None


def _a(kind: str) -> str:
    return "an RUL" if kind == "rul" else f"an {kind}"


@dataclass(frozen=True)
class ResolvedModel:
    """A verified model: where it lies, what it is, and whether the registry was reached."""

    uri: str
    path: Path
    artifact: object  # ModelArtifact (anomaly) or RulModel (rul)
    name: str | None = None
    version: str | None = None  # the registry's version number
    from_cache: bool = False

    def describe(self) -> str:
        if self.version is None:
            return f"{self.path} ({self.artifact.version})"
        cached = ", cached copy" if self.from_cache else ""
        return f"{self.uri} = {self.name} version {self.version} ({self.artifact.version}{cached})"


def parse_uri(uri: str) -> tuple[str, str | None, str | None] | None:
    """``(name, alias, version)`` of a ``models:/`` URI; ``None`` for anything else (a directory).

    >>> parse_uri("models:/pumps@champion"), parse_uri("models:/pumps/3"), parse_uri("model-dir")
    (('pumps', 'champion', None), ('pumps', None, '3'), None)
    """
    if not uri.startswith("models:/"):
        return None
    match = URI.match(uri)
    if match is None:
        raise RegistryError(f"{uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    return match["name"], match["alias"], match["version"]


def resolve_model(
    uri: str | Path,
    cache_dir: Path,
    tracking_uri: str | None = None,
    public_key: str | None = None,
    kind: str = "anomaly",
) -> ResolvedModel:
    """The verified ``kind`` model ``uri`` names (a ``models:/`` URI or a model directory); with
    ``public_key``, only a model signed by it (checked on every load, the cached copy included)."""
    uri = str(uri)
    parsed = parse_uri(uri)
    if parsed is None:
        return ResolvedModel(uri, Path(uri), load_artifact(Path(uri), public_key, kind))
    name, alias, version = parsed
    cache = Path(cache_dir) / name
    try:
        version = _registry_version(name, alias, version, tracking_uri, kind)
    except _Unreachable as exc:
        return _cached(uri, cache, name, alias, version, exc, public_key, kind)
    if alias is not None:
        _remember_alias(cache, alias, version)
    local = cache / version
    if local.is_dir():
        try:
            return ResolvedModel(uri, local, load_artifact(local, public_key, kind), name, version)
        except artifact_module.ArtifactError as exc:
            log.warning("cached %s version %s fails its check (%s): downloading it again", name, version, exc)
    try:
        _download(name, version, tracking_uri, local, public_key, kind)
    except _Unreachable as exc:
        return _cached(uri, cache, name, alias, version, exc, public_key, kind)
    log.info("model %s version %s downloaded to %s", name, version, local)
    return ResolvedModel(uri, local, load_artifact(local, public_key, kind), name, version)


class _Unreachable(Exception):
    """The registry did not answer (network, timeout, server error)."""


def _mlflow_client(tracking_uri: str | None):
    for variable, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(variable, value)
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise RegistryError(
            "a models:/ URI needs the registry client: pip install 'edgewatch[registry-client]' (mlflow-skinny)"
        ) from None
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _call(what: str, function, *args, **kwargs):
    """Run a registry call; an answer that refuses becomes a :class:`RegistryError`, silence `_Unreachable`."""
    from mlflow.exceptions import MlflowException

    try:
        return function(*args, **kwargs)
    except MlflowException as exc:
        if exc.error_code in ANSWERED:
            raise RegistryError(f"{what}: {exc.message}") from None
        raise _Unreachable(exc.message.splitlines()[0][:300]) from None
    except OSError as exc:  # requests' connection errors are OSErrors
        raise _Unreachable(str(exc)[:300]) from None


def _registry_version(
    name: str, alias: str | None, version: str | None, tracking_uri: str | None, kind: str = "anomaly"
) -> str:
    registry = _mlflow_client(tracking_uri)
    if alias is not None:
        found = _call(f"models:/{name}@{alias}", registry.get_model_version_by_alias, name, alias)
    else:
        found = _call(f"models:/{name}/{version}", registry.get_model_version, name, version)
    registered = (found.tags or {}).get(f"{TAG}kind")  # versions registered before kinds existed: no tag
    if registered is not None and registered != kind:
        raise RegistryError(
            f"models:/{name}/{found.version} is {_a(registered)} model, not {_a(kind)} model: "
            f"run it with {RUNS_WITH.get(registered, 'the command of its kind')}"
        )
    return str(found.version)


def alias_versions(name: str, tracking_uri: str | None = None) -> dict[str, str]:
    """The registered model's aliases and the versions they point at (one registry call);
    :class:`RegistryError` when the registry refuses or cannot be reached."""
    registry = _mlflow_client(tracking_uri)
    try:
        model = _call(f"models:/{name}", registry.get_registered_model, name)
    except _Unreachable as exc:
        raise RegistryError(f"the registry is unreachable ({exc})") from None
    return {alias: str(version) for alias, version in (model.aliases or {}).items()}


def _download(
    name: str, version: str, tracking_uri: str | None, local: Path, public_key: str | None, kind: str = "anomaly"
) -> None:
    """Download the version's model, keep its edgewatch directory (the one with model.json) as ``local``."""
    from mlflow.artifacts import download_artifacts

    registry = _mlflow_client(tracking_uri)
    source = _call(f"models:/{name}/{version}", registry.get_model_version_download_uri, name, version)
    local.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=local.parent, prefix=".download-") as scratch:
        downloaded = Path(
            _call(source, download_artifacts, artifact_uri=source, dst_path=scratch, tracking_uri=tracking_uri)
        )
        found = sorted(downloaded.rglob(METADATA_FILE))
        if len(found) != 1:
            raise RegistryError(f"models:/{name}/{version} holds {len(found)} {METADATA_FILE} files, expected one")
        load_artifact(found[0].parent, public_key, kind)  # verify before it enters the cache
        if local.exists():
            shutil.rmtree(local)
        os.replace(found[0].parent, local)


def _cached(
    uri: str,
    cache: Path,
    name: str,
    alias: str | None,
    version: str | None,
    why: Exception,
    public_key: str | None,
    kind: str = "anomaly",
) -> ResolvedModel:
    if alias is not None:
        version = _read_aliases(cache).get(alias, {}).get("version")
    local = cache / version if version else None
    if local is None or not local.is_dir():
        raise RegistryError(f"{uri}: the registry is unreachable ({why}) and no cached copy exists") from None
    fitted = load_artifact(local, public_key, kind)
    log.warning("registry unreachable (%s): using the cached copy of %s version %s in %s", why, name, version, local)
    return ResolvedModel(uri, local, fitted, name, version, from_cache=True)


def _read_aliases(cache: Path) -> dict:
    try:
        return json.loads((cache / ALIASES_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _remember_alias(cache: Path, alias: str, version: str) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    aliases = _read_aliases(cache)
    aliases[alias] = {"version": version, "resolved": datetime.now(UTC).isoformat()}
    scratch = cache / f".{ALIASES_FILE}.tmp"
    scratch.write_text(json.dumps(aliases, indent=2) + "\n")
    os.replace(scratch, cache / ALIASES_FILE)
