"""Promote, roll back, and show a registered model; every decision recorded twice.

- **promote** ``NAME VERSION``: the version becomes ``champion``. Refused when its last
  validation failed, or when it was not validated against the version that is champion now,
  unless forced. The previous champion is kept in the model's champion history (rollback target).
- **rollback** ``NAME``: ``champion`` returns to the previous champion of the history.
- **status** ``NAME``: versions, aliases, the last validation of each version, the history.

Who (``actor``), why (``reason``), when, whether forced and the validation figures go to the
registry (tags on the version and on the model) and to the local append-only
:class:`~edgewatch.registry.audit.AuditLog`.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime

from edgewatch.registry import CHALLENGER, CHAMPION, TAG, RegistryError
from edgewatch.registry.audit import AuditLog
from edgewatch.registry.publish import client

HISTORY_TAG = f"{TAG}champion_history"
VALIDATION_STATUS = f"{TAG}validation.status"
VALIDATION_SUMMARY = f"{TAG}validation.summary"
VALIDATION_TIME = f"{TAG}validation.time"
VALIDATION_BASELINE = f"{TAG}validation.baseline_version"
HISTORY_LIMIT = 50  # versions remembered (an MLflow tag value is bounded)


def record_validation(
    tracking_uri: str | None,
    name: str,
    version: str,
    summary: dict,
    audit: AuditLog,
    actor: str,
    baseline_version: str | None = None,
) -> dict:
    """Store a validation's verdict and fleet figures on the candidate version and in the audit log.

    ``baseline_version``: the version of the same registered model it was compared with (promotion
    asks that it still be the champion)."""
    registry = client(tracking_uri)
    status = "passed" if summary["passed"] else "failed"
    with _registry_errors(name):
        registry.set_model_version_tag(name, version, VALIDATION_STATUS, status)
        registry.set_model_version_tag(name, version, VALIDATION_TIME, datetime.now(UTC).isoformat())
        registry.set_model_version_tag(name, version, VALIDATION_SUMMARY, json.dumps(summary)[:4900])
        registry.set_model_version_tag(name, version, VALIDATION_BASELINE, baseline_version or "")
    return audit.append(
        "validate", model=name, version=version, baseline_version=baseline_version, actor=actor, status=status,
        figures=summary,
    )  # fmt: skip


def promote(
    tracking_uri: str | None,
    name: str,
    version: str,
    reason: str,
    audit: AuditLog,
    actor: str,
    force: bool = False,
) -> dict:
    """Make ``version`` the champion (see the module's rules); the audit entry."""
    registry = client(tracking_uri)
    with _registry_errors(name):
        candidate = registry.get_model_version(name, version)
        model = registry.get_registered_model(name)
    aliases = dict(model.aliases or {})
    previous = aliases.get(CHAMPION)
    if previous == str(version):
        raise RegistryError(f"{name} version {version} is already the champion")
    status = candidate.tags.get(VALIDATION_STATUS)
    refusal = None
    if status == "failed":
        refusal = f"{name} version {version} failed its last validation"
    elif status is None and previous is not None:
        refusal = f"{name} version {version} was never validated against the champion (version {previous})"
    elif previous is not None and candidate.tags.get(VALIDATION_BASELINE) != previous:
        compared = candidate.tags.get(VALIDATION_BASELINE) or "another model"
        refusal = (
            f"{name} version {version} was validated against {compared}, but the champion is now version {previous}"
        )
    if refusal and not force:
        audit.append("promote-refused", model=name, version=version, actor=actor, reason=reason, why=refusal)
        raise RegistryError(f"{refusal}: run `edgewatch models validate`, or promote with --force")
    history = _history(model.tags)
    if previous is not None and (not history or history[-1] != previous):
        history.append(previous)
    history.append(str(version))
    now = datetime.now(UTC).isoformat()
    with _registry_errors(name):
        registry.set_registered_model_alias(name, CHAMPION, str(version))
        if aliases.get(CHALLENGER) == str(version):
            registry.delete_registered_model_alias(name, CHALLENGER)
        registry.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[-HISTORY_LIMIT:]))
        for key, value in {
            "promoted_at": now,
            "promoted_by": actor,
            "promotion_reason": reason,
            "promotion_forced": str(bool(force and refusal)).lower(),
        }.items():
            registry.set_model_version_tag(name, str(version), f"{TAG}{key}", value)
    return audit.append(
        "promote",
        model=name,
        version=str(version),
        previous=previous,
        actor=actor,
        reason=reason,
        forced=bool(force and refusal),
        override=refusal if force else None,
        validation=status,
        figures=_summary(candidate.tags),
    )


def rollback(tracking_uri: str | None, name: str, reason: str, audit: AuditLog, actor: str) -> dict:
    """``champion`` back to the previous champion; the audit entry."""
    registry = client(tracking_uri)
    with _registry_errors(name):
        model = registry.get_registered_model(name)
    current = (model.aliases or {}).get(CHAMPION)
    history = _history(model.tags)
    if current is None:
        raise RegistryError(f"{name} has no champion to roll back")
    while history and history[-1] == current:
        history.pop()
    if not history:
        raise RegistryError(f"{name} has no previous champion to return to (champion is version {current})")
    target = history[-1]
    with _registry_errors(name):
        registry.set_registered_model_alias(name, CHAMPION, target)
        registry.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[-HISTORY_LIMIT:]))
        registry.set_model_version_tag(name, current, f"{TAG}rolled_back_at", datetime.now(UTC).isoformat())
        registry.set_model_version_tag(name, current, f"{TAG}rolled_back_by", actor)
        registry.set_model_version_tag(name, current, f"{TAG}rollback_reason", reason)
    return audit.append("rollback", model=name, version=target, previous=current, actor=actor, reason=reason)


def status(tracking_uri: str | None, name: str) -> dict:
    """Versions (newest first) with their aliases, lineage and last validation; the champion history."""
    registry = client(tracking_uri)
    with _registry_errors(name):
        model = registry.get_registered_model(name)
        versions = registry.search_model_versions(f"name='{name}'")
    aliases_of: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        aliases_of.setdefault(str(version), []).append(alias)
    rows = []
    for found in sorted(versions, key=lambda v: int(v.version), reverse=True):
        tags = found.tags or {}
        rows.append(
            {
                "version": str(found.version),
                "aliases": sorted(aliases_of.get(str(found.version), [])),
                "created": datetime.fromtimestamp(found.creation_timestamp / 1000, UTC).isoformat(),
                "model_version": tags.get(f"{TAG}model_version"),
                "training_rows": tags.get(f"{TAG}training.rows"),
                "data_sha256": tags.get(f"{TAG}training.data_sha256"),
                "validation": tags.get(VALIDATION_STATUS),
                "validated_at": tags.get(VALIDATION_TIME),
                "validation_figures": _summary(tags),
                "promoted_by": tags.get(f"{TAG}promoted_by"),
                "promotion_reason": tags.get(f"{TAG}promotion_reason"),
            }
        )
    return {
        "name": name,
        "aliases": dict(model.aliases or {}),
        "champion_history": _history(model.tags),
        "versions": rows,
    }


def _history(tags) -> list[str]:
    try:
        return [str(v) for v in json.loads((tags or {}).get(HISTORY_TAG, "[]"))]
    except (TypeError, ValueError):
        return []


def _summary(tags) -> dict | None:
    try:
        return json.loads((tags or {})[VALIDATION_SUMMARY])
    except (KeyError, TypeError, ValueError):
        return None


@contextlib.contextmanager
def _registry_errors(name: str):
    """MLflow's refusals (unknown model or version, server down) as one-line RegistryErrors."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        raise RegistryError(f"{name}: {exc.message.splitlines()[0][:300]}") from None
