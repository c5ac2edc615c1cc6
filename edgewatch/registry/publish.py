"""Log a fitted model directory as an MLflow model and register it as a new version.

``edgewatch train --register NAME`` calls :func:`register_model`: one MLflow run (experiment
``edgewatch``) with the lineage as params and tags (:mod:`~edgewatch.registry.lineage`), the
evaluation figures as metrics, and the model in the pyfunc flavour whose artifact
``model_dir`` is the ``edgewatch train`` directory as it is (opaque here: the model's own
format and checks). Anomaly and RUL models (``train --task rul``) go the same way; the lineage's
``edgewatch.kind`` tag says which, and picks the pyfunc wrapper. The new version gets the
lineage tags too and the alias ``challenger``: it becomes ``champion`` only through
``edgewatch models promote``.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgewatch import __version__
from edgewatch.registry import CHALLENGER, TAG, RegistryError
from edgewatch.registry.lineage import model_lineage
from edgewatch.registry.pyfunc import ARTIFACT_NAME, model_code

log = logging.getLogger(__name__)

EXPERIMENT = "edgewatch"


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    run_id: str
    model_version: str  # the artifact's own version (model.json)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def client(tracking_uri: str | None):
    """An MLflow client for ``tracking_uri`` (tracking and registry on the same server)."""
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise RegistryError("the registry needs MLflow: pip install 'edgewatch[registry]'") from None
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def register_model(
    model_dir: Path,
    name: str,
    tracking_uri: str | None,
    data_path: Path | None = None,
    metrics: dict[str, float] | None = None,
    alias: str | None = CHALLENGER,
) -> RegisteredVersion:
    """Log ``model_dir`` (an ``edgewatch train`` output) as pyfunc model ``name``'s next version."""
    try:
        import mlflow
    except ImportError:
        raise RegistryError("registering needs MLflow: pip install 'edgewatch[registry]'") from None
    from mlflow.exceptions import MlflowException

    lineage = model_lineage(model_dir, data_path)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    registry = client(tracking_uri)
    try:
        experiment = registry.get_experiment_by_name(EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment else registry.create_experiment(EXPERIMENT)
        with tempfile.TemporaryDirectory() as scratch:
            code = Path(scratch) / "edgewatch_model.py"
            code.write_text(model_code(lineage.tags[f"{TAG}kind"]))
            with mlflow.start_run(experiment_id=experiment_id, run_name=lineage.metadata.get("version")) as run:
                mlflow.log_params(lineage.params)
                mlflow.set_tags(lineage.tags)
                if metrics:
                    mlflow.log_metrics({key: float(value) for key, value in metrics.items()})
                info = mlflow.pyfunc.log_model(
                    name="model",
                    python_model=str(code),
                    artifacts={ARTIFACT_NAME: str(Path(model_dir).resolve())},
                    pip_requirements=[f"edgewatch=={__version__}", f"mlflow=={mlflow.__version__}"],
                    registered_model_name=name,
                )
        version = str(info.registered_model_version)
        for key, value in lineage.tags.items():
            registry.set_model_version_tag(name, version, key, value)
        registry.set_model_version_tag(name, version, f"{TAG}run_id", run.info.run_id)
        if alias:
            registry.set_registered_model_alias(name, alias, version)
    except MlflowException as exc:
        raise RegistryError(f"cannot register {name} at {tracking_uri}: {exc.message}") from None
    log.info("registered %s version %s (run %s)", name, version, run.info.run_id)
    return RegisteredVersion(name, version, run.info.run_id, str(lineage.metadata.get("version", "")))
