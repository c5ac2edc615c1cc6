"""The retraining loop: a candidate from the edge's training data, validated, registered, promoted.

One round (:func:`retrain_once`)::

    training store    readings the champion labeled normal (per device, bounded by age and size)
    split by time     the older part trains, the newest ``holdout`` share validates
    train             the champion's detector, one model per device (as ``edgewatch train``)
    register          the next version, alias ``challenger``, lineage (the training data's sha256)
    validate          replay the holdout through the candidate and the champion as it runs (its
                      artifact continued on the training part: :func:`as_running`); the policy
    shadow            for ``retrain_shadow_seconds``, the flows that follow the registry run it
                      beside the champion; their figures (agreement, alarm rates) against the policy
    promote           when both passed (and ``promote``): champion (the flows that follow the
                      registry promote their shadow live); otherwise it stays challenger

Every step goes to the audit log (and the registry's tags): what triggered it, the figures, the
decision. ``edgewatch retrain --auto`` runs rounds on a schedule and when the last fleet drift
report (:mod:`edgewatch.flows.fleet_drift`) shows drifted features newer than the last round.
A running flow picks the challenger and the new champion up by following the registry
(``--registry-poll-seconds``, :mod:`edgewatch.registry.follow`), or through its module twin
(``shadowUri``, ``modelUri``), or a restart.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from edgewatch.config import RegistrySettings
from edgewatch.connectors.files import read_messages
from edgewatch.online_models import artifact as artifact_module
from edgewatch.registry import TAG, RegistryError
from edgewatch.registry.audit import AuditLog
from edgewatch.registry.training_store import TrainingStore
from edgewatch.schema import Reading, parse_message

log = logging.getLogger(__name__)


def write_recorded(messages, path: Path) -> Path:
    """Messages as a recorded stream (the JSONL ``edgewatch simulate --out`` writes)."""
    import orjson

    with open(path, "wb") as out:
        for message in messages:
            record = {
                "key": (message.key or b"").decode("utf-8", "replace"),
                "headers": {name: value.decode("utf-8", "replace") for name, value in message.headers},
                "timestamp_ms": message.timestamp_ms,
                "value": (message.value or b"").decode("utf-8", "replace"),
            }
            out.write(orjson.dumps(record) + b"\n")
    return path


def retrain_once(
    settings: RegistrySettings,
    name: str,
    store_path: Path,
    work_dir: Path,
    actor: str,
    trigger: str,
    holdout: float = 0.2,
    promote: bool = True,
    min_readings: int = 200,
    poll_seconds: float = 1.0,
) -> dict:
    """One round; returns its outcome (``decision``: promoted | challenger | skipped)."""
    from edgewatch.registry.lifecycle import promote as promote_version
    from edgewatch.registry.lifecycle import record_validation
    from edgewatch.registry.publish import register_model
    from edgewatch.registry.resolve import resolve_model
    from edgewatch.registry.validation import Policy, validate

    audit = AuditLog(settings.audit_log)
    store = TrainingStore(store_path)
    try:
        messages = store.messages()
    finally:
        store.close()
    if len(messages) < min_readings:
        entry = audit.append("retrain-skipped", model=name, actor=actor, trigger=trigger, readings=len(messages),
                             why=f"fewer than {min_readings} readings in the training store")  # fmt: skip
        return {"decision": "skipped", **entry}
    cut = int(len(messages) * (1 - holdout))
    training, held_out = messages[:cut], messages[cut:]
    champion = resolve_model(f"models:/{name}@champion", settings.model_cache_dir, settings.tracking_uri)
    readings = [item for item in map(parse_message, training) if isinstance(item, Reading)]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    round_dir = Path(work_dir) / stamp
    round_dir.mkdir(parents=True, exist_ok=True)
    data = write_recorded(training, round_dir / "training.jsonl")
    holdout_file = write_recorded(held_out, round_dir / "holdout.jsonl")
    candidate = artifact_module.save(
        artifact_module.train(champion.artifact.spec, readings, source=f"training store {store_path}"),
        round_dir / "model",
    )
    audit.append("retrain", model=name, actor=actor, trigger=trigger, candidate=candidate.version,
                 training_readings=len(readings), holdout_readings=len(held_out),
                 champion_version=champion.version)  # fmt: skip
    registered = register_model(round_dir / "model", name, settings.tracking_uri, data_path=data)
    audit.append("register", model=name, version=registered.version, actor=actor, trigger=trigger,
                 data=str(data), model_version=candidate.version)  # fmt: skip
    report = validate(
        candidate,
        as_running(champion.artifact, readings),
        read_messages(holdout_file),
        Policy.from_settings(settings),
        names=(f"models:/{name}/{registered.version}", champion.describe()),
        data=str(holdout_file),
    )
    record_validation(settings.tracking_uri, name, registered.version, report.summary(), audit, actor, champion.version)
    outcome = {"version": registered.version, "candidate": candidate.version, "validation": report.summary(),
               "lines": report.lines()}  # fmt: skip
    if not report.passed:
        return {**outcome, "decision": "challenger"}
    if settings.retrain_shadow_seconds > 0:
        shadow = shadow_trial(settings, name, registered.version, candidate.version, audit, actor, trigger,
                              poll_seconds)  # fmt: skip
        outcome = {**outcome, "shadow": shadow, "lines": [*outcome["lines"], shadow["line"]]}
        if not shadow["passed"]:
            return {**outcome, "decision": "challenger"}
    if not promote:
        return {**outcome, "decision": "challenger"}
    promote_version(settings.tracking_uri, name, registered.version, f"retrain ({trigger}): passed validation",
                    audit, actor)  # fmt: skip
    return {**outcome, "decision": "promoted"}


def as_running(champion: artifact_module.ModelArtifact, since: list[Reading]) -> artifact_module.ModelArtifact:
    """``champion`` as a flow runs it at the end of ``since`` (the readings it labeled normal, from
    the training store): each device's model continued on the device's readings after the end of
    its training history (:func:`~edgewatch.flows.lifecycle.warmed`, as a rollout warms a model).

    The validation gate compares a candidate with this, not with the bare artifact: the running
    champion has learned online since its training, the artifact has not. After a fleet drift the
    artifact alarms on most of the holdout (on the simulator 25 °C hotter: 480 of 536 readings
    flagged, 8 alarms) where the running champion raises next to none, so any candidate trained on
    the drifted readings passed validation by a wide margin, then met the real champion in the
    shadow (see tests/test_retrain.py)."""
    from collections import defaultdict

    from edgewatch.flows.lifecycle import warmed

    by_device: dict[str, list[Reading]] = defaultdict(list)
    for reading in since:
        by_device[reading.device_id].append(reading)
    return warmed(lambda running: running, champion, champion.spec, by_device)


def shadow_trial(
    settings: RegistrySettings,
    name: str,
    version: str,
    model_version: str,
    audit: AuditLog,
    actor: str,
    trigger: str,
    poll_seconds: float = 1.0,
) -> dict:
    """The challenger ``version`` (alias ``challenger`` since it was registered) runs in the shadow
    of the champion for ``retrain_shadow_seconds`` in every flow that follows the registry
    (:mod:`edgewatch.registry.follow`); then the figures a flow wrote (:data:`SHADOW_REPORT` in the
    model cache directory) decide (:func:`shadow_failures`). Audited at the start and at the
    decision, and tagged on the version."""
    from edgewatch.flows.lifecycle import SHADOW_REPORT
    from edgewatch.flows.reports import read_report
    from edgewatch.registry.publish import client

    seconds = settings.retrain_shadow_seconds
    audit.append("shadow-start", model=name, version=version, actor=actor, trigger=trigger, seconds=seconds,
                 model_version=model_version)  # fmt: skip
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(poll_seconds, left))
    report = read_report(settings.model_cache_dir / SHADOW_REPORT) or {}
    figures = report if report.get("challenger") == model_version else {"readings": 0}
    failed = shadow_failures(figures, settings)
    summary = {
        "passed": not failed,
        "failures": failed,
        "seconds": seconds,
        **{key: figures.get(key) for key in ("readings", "agreement", "champion_alarm_rate", "challenger_alarm_rate")},
    }
    try:
        registry = client(settings.tracking_uri)
        registry.set_model_version_tag(name, version, f"{TAG}shadow.status", "passed" if not failed else "failed")
        registry.set_model_version_tag(name, version, f"{TAG}shadow.summary", json.dumps(summary)[:4900])
    except Exception as exc:  # the local audit log keeps the decision when the registry is out of reach
        log.warning("shadow: could not tag %s version %s: %s", name, version, exc)
    audit.append("shadow", model=name, version=version, actor=actor, trigger=trigger,
                 status="passed" if not failed else "failed", figures=summary)  # fmt: skip
    rates = (
        f"alarm rate {_per_1000(figures.get('challenger_alarm_rate'))} vs champion "
        f"{_per_1000(figures.get('champion_alarm_rate'))} /1000, agreement {figures.get('agreement') or 0:.3f}"
    )
    line = f"shadow of version {version}: {figures.get('readings', 0)} readings in {seconds:g} s, {rates}: " + (
        "passed" if not failed else "failed (" + "; ".join(failed) + ")"
    )
    return {**summary, "line": line}


def _per_1000(rate) -> str:
    return f"{rate * 1000:.2f}" if isinstance(rate, int | float) else "-"


def shadow_failures(figures: dict, settings: RegistrySettings) -> list[str]:
    """Why the shadow's figures hold the challenger back (empty: it may be promoted): too few
    readings compared, its alarm rate above the champion's by more than the policy allows (the
    validation gate's ``policy_max_alarm_rate_increase``, plus one alarm in 1,000 readings), or
    too little agreement with the champion.

    >>> from edgewatch.config import RegistrySettings
    >>> shadow_failures({"readings": 5000, "agreement": 0.97, "champion_alarm_rate": 0.01,
    ...                  "challenger_alarm_rate": 0.011}, RegistrySettings())
    []
    """
    readings = figures.get("readings") or 0
    if readings < settings.policy_min_shadow_readings:
        return [f"the shadow compared {readings} readings, fewer than {settings.policy_min_shadow_readings}"
                " (does a flow follow the registry: --registry-poll-seconds?)"]  # fmt: skip
    failed = []
    champion, challenger = figures["champion_alarm_rate"], figures["challenger_alarm_rate"]
    allowed = champion * (1 + settings.policy_max_alarm_rate_increase) + 0.001
    if challenger > allowed:
        failed.append(f"alarm rate {challenger * 1000:.2f}/1000 > {allowed * 1000:.2f} allowed")
    if figures["agreement"] < settings.policy_min_shadow_agreement:
        failed.append(f"agreement {figures['agreement']:.3f} < {settings.policy_min_shadow_agreement:g}")
    return failed


def drift_since(report_path: Path, since: float) -> list[str]:
    """Features whose fleet drift the report says began after ``since`` (epoch s): a drift that
    lasts triggers one round, not one per window (a report without those times: every drifted
    feature, if it was written after ``since``)."""
    from edgewatch.flows.reports import read_report

    try:
        written = report_path.stat().st_mtime
    except OSError:
        return []
    report = read_report(report_path)
    if not report:
        return []
    reported = report.get("drift_reported")
    if isinstance(reported, dict):
        return sorted(f for f, at in reported.items() if isinstance(at, int | float) and at > since)
    return list(report.get("drifted") or []) if written > since else []


def retrain_loop(
    run_round: Callable[[str], dict],
    drift_report: Path,
    every_seconds: float,
    poll_seconds: float = 5.0,
    rounds: int | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> list[dict]:
    """``--auto``: a round every ``every_seconds``, and one as soon as fleet drift is reported;
    ``rounds`` bounds how many (tests; ``None``: until stopped)."""
    outcomes: list[dict] = []
    last = time.time()
    first = True
    while not stop() and (rounds is None or len(outcomes) < rounds):
        drifted = drift_since(drift_report, last)
        if drifted:
            trigger = f"fleet drift: {', '.join(drifted)}"
        elif first or time.time() - last >= every_seconds:
            trigger = "schedule"
        else:
            time.sleep(poll_seconds)
            continue
        first = False
        last = time.time()
        try:
            outcomes.append(run_round(trigger))
        except (RegistryError, artifact_module.ArtifactError, OSError) as exc:  # the loop keeps going
            log.warning("retrain (%s) failed: %s", trigger, exc)
            outcomes.append({"decision": "failed", "trigger": trigger, "error": str(exc)})
    return outcomes
