"""Model lifecycle against an MLflow registry (the registry Azure ML workspaces also speak).

One concern per module:

- :mod:`~edgewatch.registry.lineage`: what a model was trained on (data sha256, time range,
  devices, rows, code version, detector parameters), as MLflow params and tags.
- :mod:`~edgewatch.registry.pyfunc`: the pyfunc flavour, ``mlflow.pyfunc.load_model(uri).predict(readings)``
  scores a batch through the flow's own bank (:func:`~edgewatch.online_models.bank.new_bank`).
- :mod:`~edgewatch.registry.publish`: log a fitted model directory (``edgewatch train``) and
  register it as a new version (alias ``challenger``).
- :mod:`~edgewatch.registry.resolve`: ``models:/NAME@alias``, ``models:/NAME/3`` or a directory →
  a verified, cached model directory; an edge that lost its uplink keeps its cached copy.
- :mod:`~edgewatch.registry.validation`: replay a recorded stream through a candidate and a
  baseline; fleet and per-device figures; the policy decides.
- :mod:`~edgewatch.registry.lifecycle`: promote (gated by the last validation), rollback,
  status; every decision recorded as MLflow tags and in :mod:`~edgewatch.registry.audit`'s
  append-only log.
- :mod:`~edgewatch.registry.cli`: ``edgewatch models validate|promote|rollback|status``.

Both kinds of model go through it: anomaly models (``edgewatch train``) and RUL models
(``edgewatch train --task rul``); the kind is recorded in ``model.json`` and as the version tag
``edgewatch.kind``, and :func:`~edgewatch.registry.resolve.resolve_model` refuses a model of
another kind than the caller runs.

The edge runtime only needs :mod:`~edgewatch.registry.resolve`, which uses nothing beyond
``mlflow-skinny`` (extra ``registry-client``); logging and the pyfunc flavour need ``mlflow``
(extra ``registry``). The model itself is read with its kind's loader
(:func:`edgewatch.online_models.artifact.load`, :func:`edgewatch.rul.artifact.load`: their own
checks), never by unpickling the pyfunc wrapper.

Where the rest of the lifecycle plugs in (not built here):

- live rollout: ``resolve_model(uri, cache).artifact`` → ``LiveControls.use_artifact`` (a module
  twin's ``modelUri``); keeping device state needs the bank to replay each device's recent readings
  into the new model (bounded, snapshotted) before it takes over.
- shadow: a second bank per shard fed the same readings; :func:`validation.replay`'s figures
  (alarms as rising edges of the label, ``FaultScore``) are the per-device comparison to count live.
- drift and retraining: ``register_model(..., alias=CHALLENGER)`` then ``validate`` →
  ``record_validation`` → ``promote`` is the loop's decision path; ``AuditLog.append`` takes any
  trigger (``actor="retrain --auto"``) and figures.
"""

from __future__ import annotations

#: aliases of a registered model
CHAMPION = "champion"
CHALLENGER = "challenger"
#: tag prefix of everything edgewatch records on runs, models and versions
TAG = "edgewatch."


class RegistryError(ValueError):
    """A registry operation cannot be done; the message says what and what to do."""
