"""``edgewatch models``: validate, promote, roll back and show registered models.

Registry settings (``--tracking-uri``, ``--audit-log``, the ``--policy-*`` limits) are generated
from :class:`edgewatch.config.RegistrySettings`, like every other command's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from edgewatch.cli_options import settings_command
from edgewatch.config import RegistrySettings
from edgewatch.registry import RegistryError

models_app = typer.Typer(help="Registered models (MLflow): validate, promote, roll back, status.", no_args_is_help=True)

Actor = Annotated[str | None, typer.Option(help="who decides (default: user@host)", show_default=False)]


def _audit(settings: RegistrySettings):
    from edgewatch.registry.audit import AuditLog

    return AuditLog(settings.audit_log)


def _actor(actor: str | None) -> str:
    from edgewatch.registry.audit import default_actor

    return actor or default_actor()


@models_app.command("validate")
@settings_command(RegistrySettings)
def validate(
    settings: RegistrySettings,
    candidate: Annotated[str, typer.Option(help="models:/NAME/N, models:/NAME@ALIAS or a model directory")],
    baseline: Annotated[str, typer.Option(help="the model to beat, e.g. models:/NAME@champion")],
    data: Annotated[Path, typer.Option(help="recorded stream: .jsonl (simulate --out, with ground truth), .csv")],
    report: Annotated[
        Path | None, typer.Option(help="write the full report (per-device figures) as JSON here", show_default=False)
    ] = None,
    actor: Actor = None,
) -> None:
    """Replay a recorded stream through candidate and baseline; exit 1 when the candidate is worse than the policy."""
    from edgewatch.connectors.files import read_messages
    from edgewatch.online_models.artifact import ArtifactError
    from edgewatch.registry.lifecycle import record_validation
    from edgewatch.registry.resolve import resolve_model
    from edgewatch.registry.validation import Policy
    from edgewatch.registry.validation import validate as run_validation

    if not data.is_file():
        raise typer.BadParameter(f"--data {data} does not exist or is not a file")
    policy = Policy.from_settings(settings)
    try:
        resolved = [
            resolve_model(uri, settings.model_cache_dir, settings.tracking_uri) for uri in (candidate, baseline)
        ]
        outcome = run_validation(
            resolved[0].artifact,
            resolved[1].artifact,
            read_messages(data),
            policy,
            names=(resolved[0].describe(), resolved[1].describe()),
            data=str(data),
        )
    except (RegistryError, ArtifactError, ValueError, OSError) as exc:
        raise typer.BadParameter(str(exc)) from None
    for line in outcome.lines():
        typer.echo(line)
    if report is not None:
        report.write_text(json.dumps(outcome.to_dict(), indent=2) + "\n")
    if resolved[0].version is not None:  # a registered candidate: the verdict goes on that version
        try:
            record_validation(
                settings.tracking_uri,
                resolved[0].name,
                resolved[0].version,
                outcome.summary(),
                _audit(settings),
                _actor(actor),
                resolved[1].version if resolved[1].name == resolved[0].name else None,
            )
        except RegistryError as exc:
            raise typer.BadParameter(f"validation done but not recorded: {exc}") from None
    if not outcome.passed:
        raise typer.Exit(1)


@models_app.command("promote")
@settings_command(RegistrySettings, only=["tracking_uri", "audit_log"])
def promote(
    settings: RegistrySettings,
    name: Annotated[str, typer.Argument(help="registered model")],
    version: Annotated[str, typer.Argument(help="version to make champion")],
    reason: Annotated[str, typer.Option(help="why (recorded)")],
    force: Annotated[bool, typer.Option("--force", help="promote even if its validation failed or is missing")] = False,
    actor: Actor = None,
) -> None:
    """Make VERSION the champion (refused if its last validation failed, unless --force); recorded."""
    from edgewatch.registry.lifecycle import promote as run_promote

    try:
        entry = run_promote(settings.tracking_uri, name, version, reason, _audit(settings), _actor(actor), force)
    except RegistryError as exc:
        raise typer.BadParameter(str(exc)) from None
    forced = " (forced)" if entry["forced"] else ""
    typer.echo(f"models: {name} champion = version {version}{forced}, was {entry['previous'] or 'none'}")


@models_app.command("rollback")
@settings_command(RegistrySettings, only=["tracking_uri", "audit_log"])
def rollback(
    settings: RegistrySettings,
    name: Annotated[str, typer.Argument(help="registered model")],
    reason: Annotated[str, typer.Option(help="why (recorded)")] = "rollback",
    actor: Actor = None,
) -> None:
    """Return the champion alias to the previous champion; recorded."""
    from edgewatch.registry.lifecycle import rollback as run_rollback

    try:
        entry = run_rollback(settings.tracking_uri, name, reason, _audit(settings), _actor(actor))
    except RegistryError as exc:
        raise typer.BadParameter(str(exc)) from None
    typer.echo(f"models: {name} champion = version {entry['version']}, was {entry['previous']}")


@models_app.command("status")
@settings_command(RegistrySettings, only=["tracking_uri", "model_cache_dir"])
def status(
    settings: RegistrySettings,
    name: Annotated[str, typer.Argument(help="registered model")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Versions, aliases, champion history and the last validation of each version; the fleet drift
    a flow using this cache directory measured last."""
    from edgewatch.flows.fleet_drift import FLEET_DRIFT_REPORT
    from edgewatch.flows.reports import read_report
    from edgewatch.registry.lifecycle import status as run_status

    try:
        found = run_status(settings.tracking_uri, name)
    except RegistryError as exc:
        raise typer.BadParameter(str(exc)) from None
    found["fleet_drift"] = drift = read_report(settings.model_cache_dir / FLEET_DRIFT_REPORT)
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    aliases = ", ".join(f"{alias}={version}" for alias, version in sorted(found["aliases"].items())) or "none"
    typer.echo(f"{name}: aliases {aliases}; champion history {' → '.join(found['champion_history']) or 'none'}")
    for row in found["versions"]:
        validation = row["validation"] or "not validated"
        figures = row["validation_figures"] or {}
        if figures:
            cand = figures.get("candidate_fleet", {})
            validation += f" (alarm rate {cand.get('alarm_rate', 0):.2f}/1000, recall {cand.get('recall')})"
        tags = f" [{', '.join(row['aliases'])}]" if row["aliases"] else ""
        typer.echo(
            f"  version {row['version']}{tags}: {row['model_version']} created {row['created']}, "
            f"{row['training_rows']} rows; validation: {validation}"
        )
    if drift:
        limits = drift.get("thresholds") or {}
        figures = ", ".join(
            f"{feature} {value}" + (f" (threshold {limits[feature]})" if feature in limits else "")
            for feature, value in drift.get("psi", {}).items()
        )
        drifted = ", ".join(drift.get("drifted") or []) or "none"
        typer.echo(
            f"fleet drift of {drift.get('model_version')} (window of {drift.get('readings')} readings to "
            f"{drift.get('window_end')}): PSI {figures}; drifted: {drifted}"
        )


def register_trained(
    settings: RegistrySettings,
    model_dir: Path,
    name: str,
    data: Path,
    metrics: Path | None,
    measured: dict[str, float] | None = None,
) -> None:
    """``edgewatch train --register NAME``: log and register what train just wrote (anomaly or RUL
    model), with the figures of ``--metrics`` and those train ``measured``; audited."""
    from edgewatch.registry.publish import register_model

    figures = dict(measured or {}) or None
    if metrics is not None:
        try:
            given = {key: float(value) for key, value in json.loads(metrics.read_text()).items()}
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise typer.BadParameter(f"--metrics {metrics}: expected a JSON object of numbers ({exc})") from None
        figures = {**(figures or {}), **given}
    try:
        registered = register_model(model_dir, name, settings.tracking_uri, data, figures)
    except RegistryError as exc:
        raise typer.BadParameter(str(exc)) from None
    _audit(settings).append(
        "register", model=name, version=registered.version, actor=_actor(None), run_id=registered.run_id,
        model_version=registered.model_version, data=str(data), metrics=figures,
    )  # fmt: skip
    typer.echo(f"train: registered {registered.uri} (alias challenger, run {registered.run_id})")


@settings_command(RegistrySettings)
def retrain(
    settings: RegistrySettings,
    name: Annotated[str, typer.Argument(help="registered model whose champion is retrained")],
    store: Annotated[Path, typer.Option(help="the training store the flow keeps (--training-store)")],
    work_dir: Annotated[Path, typer.Option(help="where each round's data and model are written")] = Path(
        "edgewatch-retrain"
    ),
    holdout: Annotated[float, typer.Option(min=0.05, max=0.9, help="newest share of the store that validates")] = 0.2,
    promote: Annotated[bool, typer.Option(help="promote a candidate that passes validation")] = True,
    auto: Annotated[bool, typer.Option("--auto", help="keep going: on a schedule and when fleet drift is reported")] = (
        False
    ),
    every: Annotated[float, typer.Option(min=1, help="with --auto: seconds between scheduled rounds")] = 86_400.0,
    rounds: Annotated[int | None, typer.Option(min=1, help="with --auto: stop after this many", show_default=False)] = (
        None
    ),
    actor: Actor = None,
) -> None:
    """Train a candidate from the edge's training store, validate it against the champion, register it as
    challenger, run it in the shadow for --retrain-shadow-seconds (flows that follow the registry) and promote
    it when it passes; every step audited. Exit 1 when it did not pass."""
    from edgewatch.flows.fleet_drift import FLEET_DRIFT_REPORT
    from edgewatch.online_models.artifact import ArtifactError
    from edgewatch.registry.retrain import retrain_loop, retrain_once

    if not store.is_file():
        raise typer.BadParameter(f"--store {store} does not exist (run the flow with --training-store)")
    who = _actor(actor)

    def round_(trigger: str) -> dict:
        outcome = retrain_once(settings, name, store, work_dir, who, trigger, holdout, promote)
        for line in outcome.get("lines", []):
            typer.echo(line)
        version = outcome.get("version")
        typer.echo(f"retrain ({trigger}): {outcome['decision']}" + (f" version {version}" if version else ""))
        return outcome

    try:
        if auto:
            outcomes = retrain_loop(round_, settings.model_cache_dir / FLEET_DRIFT_REPORT, every, rounds=rounds)
        else:
            outcomes = [round_("operator")]
    except (RegistryError, ArtifactError, ValueError, OSError) as exc:
        raise typer.BadParameter(str(exc)) from None
    if (
        outcomes
        and outcomes[-1]["decision"] not in ("promoted", "skipped")
        and not (
            outcomes[-1]["decision"] == "challenger"
            and not promote
            and outcomes[-1]["validation"]["passed"]
            and outcomes[-1].get("shadow", {}).get("passed", True)
        )
    ):
        raise typer.Exit(1)
