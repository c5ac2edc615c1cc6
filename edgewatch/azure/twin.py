"""The module twin: desired properties applied to the running flow, what is in effect reported back.

=============== ==============================================================================
``accept``      ``{"<device id>": <request number>}``: the device's present abnormal state becomes
                its new normal (alarm cleared, drift event ``operator``), once per higher number
``threshold``   label threshold, a number in [0, 1]; ``null`` restores the default
``sendMode``    ``anomalies`` (only anomalous events leave on ``labeled``) or ``all``
``modelVersion`` the warm-start model version: a different one is loaded from
                ``EDGEWATCH_MODEL_DIR`` and, if that is the version asked for, rolled out;
                otherwise the mismatch is reported
``modelUri``    a registry URI (``models:/NAME@champion``, ``models:/NAME/3``) or a model
                directory: pulled, verified (sha256, signature) and rolled out — each device's
                new model learns its recent readings before it takes over; a failed pull or
                load keeps the running version and reports the error
``shadowUri``   a challenger run beside the champion (its labels: the shadow output);
                ``null`` stops it
``promoteShadow`` a request number: the challenger becomes the champion with what it learned
                (no restart), once per higher number
=============== ==============================================================================

What is in effect is reported back (``threshold``, ``sendMode``, ``modelVersion``, ``modelUri``,
``shadowVersion``, ``promotedShadow``, ``detector``, ``status`` ``ok``/``error``, ``error``,
``desiredVersion``). A value that does not validate is
ignored (the previous one stays), logged, and reported in ``error``; it never stops the module.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable
from pathlib import Path

from edgewatch.azure.iothub import IoTHubClient
from edgewatch.azure.messages import SEND_MODES, LabeledEventSink
from edgewatch.config import FlowSettings
from edgewatch.flows.anomaly import LiveControls
from edgewatch.online_models import artifact as artifact_module
from edgewatch.online_models.registry import resolve_detector
from edgewatch.store_forward import call_with_timeout

log = logging.getLogger(__name__)


class TwinControls:
    """Applies desired properties to the flow's :class:`LiveControls` and the IoT Hub sink.

    Not thread-safe by itself: :class:`ModuleTwin` calls it under a lock.

    Args:
        settings: the flow settings (defaults: ``threshold``, ``iothub_send``, ``model_dir``).
        controls: the flow's live controls.
        labeled_sink: the sink whose send mode ``sendMode`` sets (``None``: refused).
        load_artifact: reads a model directory (tests replace it; default: ``artifact.load`` with
            ``settings.model_public_key``).
        resolve_uri: pulls and verifies a ``modelUri``/``shadowUri`` (default: the registry's
            :func:`~edgewatch.registry.resolve.resolve_model`, cached in ``settings.model_cache_dir``).
    """

    def __init__(
        self,
        settings: FlowSettings,
        controls: LiveControls,
        labeled_sink: LabeledEventSink | None,
        load_artifact: Callable[[Path], artifact_module.ModelArtifact] | None = None,
        resolve_uri: Callable[[str], artifact_module.ModelArtifact] | None = None,
    ):
        self._settings = settings
        self._controls = controls
        self._sink = labeled_sink
        # a rolled-out model is checked like --model: its sha256, and its signature when a key is set
        self._load_artifact = load_artifact or (lambda path: artifact_module.load(path, settings.model_public_key))
        self._resolve_uri = resolve_uri or self._resolve_registry
        self.model_uri: str | None = str(settings.model_dir) if settings.model_dir is not None else None
        self.promoted_shadow = 0  # the last promotion request applied
        metadata = _model_metadata(settings.model_dir)
        self.model_version: str | None = metadata.get("version")
        self.detector = metadata.get("detector") or settings.detector
        self._twin_threshold: float | None = None
        self.errors: dict[str, str] = {}
        self.desired_version: int | None = None
        self.accepted: dict[str, int] = {}  # device → the last acceptance request applied
        self._controls.threshold = self.threshold

    @property
    def threshold(self) -> float:
        """The threshold in effect: the twin's, else the settings', else the detector's."""
        if self._twin_threshold is not None:
            return self._twin_threshold
        if self._settings.threshold is not None:
            return self._settings.threshold
        return resolve_detector(self.detector).threshold

    @property
    def send_mode(self) -> str | None:
        return self._sink.send if self._sink is not None else None

    def apply(self, desired: dict, complete: bool) -> dict | None:
        """Apply a full desired-properties document (``complete``) or a patch.

        Returns the reported-properties patch, or ``None`` for a document older than what was
        applied (``$version``; a complete document of the same version is applied again).
        Properties missing from a complete document, and ``null`` ones in a patch, go back to
        their defaults (``modelVersion``: the model stays).
        """
        version, applied = desired.get("$version"), self.desired_version
        # patches come on several SDK threads, and one may beat the initial GET: older news is skipped
        older = isinstance(version, int) and applied is not None and (version < applied or version == applied)
        if older and not (complete and version == applied):
            log.info("twin: ignoring desired properties $version %d (already at %d)", version, applied)
            return None
        handlers = {
            "threshold": self._set_threshold,
            "sendMode": self._set_send_mode,
            "modelVersion": self._set_model,
            "accept": self._set_accept,
            "modelUri": self._set_model_uri,
            "shadowUri": self._set_shadow_uri,
            "promoteShadow": self._set_promote_shadow,
        }
        for name, handler in handlers.items():
            if name not in desired and not complete:
                continue
            try:
                handler(desired.get(name))
            except ValueError as exc:
                self.errors[name] = str(exc)
                log.warning("twin: desired %s=%s ignored: %s", name, json.dumps(desired.get(name)), exc)
            else:
                self.errors.pop(name, None)
        if isinstance(version, int):
            self.desired_version = version
        return self.reported()

    def reported(self) -> dict:
        """What is in effect, as reported properties."""
        return {
            "threshold": self.threshold,
            "sendMode": self.send_mode,
            "modelVersion": self.model_version,
            "detector": self.detector,
            "status": "error" if self.errors else "ok",
            "error": "; ".join(f"{name}: {why}" for name, why in sorted(self.errors.items())) or None,
            "desiredVersion": self.desired_version,
            "accepted": dict(self.accepted) or None,
            "modelUri": self.model_uri,
            "shadowVersion": self._controls.challenger.version if self._controls.challenger else None,
            "promotedShadow": self.promoted_shadow or None,
        }

    def remember_accepted(self, reported: dict | None) -> None:
        """Seed the acceptances already applied (the twin's reported ``accepted``), so a restart or a
        full resync does not apply an old request again."""
        for device, request in ((reported or {}).get("accepted") or {}).items():
            if isinstance(request, int) and not isinstance(request, bool):
                self.accepted[device] = max(request, self.accepted.get(device, 0))
        promoted = (reported or {}).get("promotedShadow")
        if isinstance(promoted, int) and not isinstance(promoted, bool):
            self.promoted_shadow = max(promoted, self.promoted_shadow)

    def _resolve_registry(self, uri: str) -> artifact_module.ModelArtifact:
        from edgewatch.registry.resolve import resolve_model

        settings = self._settings
        return resolve_model(uri, settings.model_cache_dir, settings.tracking_uri, settings.model_public_key).artifact

    def _pull(self, value: object) -> artifact_module.ModelArtifact:
        if not isinstance(value, str) or not value:
            raise ValueError(f"must be a models:/ URI or a model directory, got {json.dumps(value)}")
        try:
            fitted = self._resolve_uri(value)
        except (OSError, ValueError) as exc:  # ArtifactError and RegistryError are ValueErrors
            raise ValueError(f"pulling {value} failed: {exc} (still running {self.model_version!r})") from None
        return fitted

    def _set_model_uri(self, value: object) -> None:
        """``modelUri``: pull, verify and roll out (each device warmed on its recent readings)."""
        if value is None or value == self.model_uri:
            return
        fitted = self._pull(value)
        if fitted.version != self.model_version:
            self._controls.use_artifact(fitted)
        self.model_uri, self.model_version, self.detector = str(value), fitted.version, fitted.spec.name
        self._controls.threshold = self.threshold
        log.info("twin: model %s (%s) from %s rolled out", fitted.version, fitted.spec.name, value)

    def _set_shadow_uri(self, value: object) -> None:
        """``shadowUri``: run a challenger beside the champion; ``null`` stops it."""
        challenger = self._controls.challenger
        if value is None:
            if challenger is not None:
                self._controls.shadow(None)
            return
        fitted = self._pull(value)
        if challenger is None or challenger.version != fitted.version:
            self._controls.shadow(fitted)
            log.info("twin: challenger %s (%s) runs in the shadow", fitted.version, fitted.spec.name)

    def _set_promote_shadow(self, value: object) -> None:
        """``promoteShadow: <request number>``: the challenger becomes the champion, once per higher number."""
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be a request number, got {json.dumps(value)}")
        if value <= self.promoted_shadow:
            return
        promoted = self._controls.promote_shadow()  # ValueError when no challenger runs
        self.promoted_shadow = value
        self.model_version, self.detector, self.model_uri = promoted.version, promoted.spec.name, None
        self._controls.threshold = self.threshold
        log.info("twin: challenger %s promoted to champion (request %d)", promoted.version, value)

    def _set_accept(self, value: object) -> None:
        """``accept: {"<device id>": <request number>}``: make each device's present abnormal state its
        new normal, once per request number (a desired property is state, not a command: a number
        higher than the last one applied is a new request)."""
        if value is None:
            return
        if not isinstance(value, dict) or not all(
            isinstance(n, int) and not isinstance(n, bool) for n in value.values()
        ):
            raise ValueError(f'must be {{"<device id>": <request number>}}, got {json.dumps(value)[:80]}')
        for device, request in value.items():
            if request > self.accepted.get(device, 0):
                self._controls.accept(device)
                self.accepted[device] = request
                log.info("twin: accepting %s's present state as its new normal (request %d)", device, request)

    def _set_threshold(self, value: object) -> None:
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"must be a number in [0, 1], got {json.dumps(value)}")
            if not 0 <= value <= 1:
                raise ValueError(f"must be in [0, 1], got {value}")
            value = float(value)
        self._twin_threshold = value
        self._controls.threshold = self.threshold

    def _set_send_mode(self, value: object) -> None:
        if self._sink is None:
            if value is not None:
                raise ValueError("no IoT Hub output to set it on")
            return
        mode = self._settings.iothub_send if value is None else value
        if mode not in SEND_MODES:
            raise ValueError(f"must be one of {', '.join(SEND_MODES)}, got {json.dumps(value)}")
        self._sink.send = mode

    def _set_model(self, value: object) -> None:
        if value is None or value == self.model_version:
            return
        if not isinstance(value, str) or not value:
            raise ValueError(f"must be a version string, got {json.dumps(value)}")
        model_dir = self._settings.model_dir
        if model_dir is None:
            raise ValueError(f"{value!r} asked for, but no model directory (EDGEWATCH_MODEL_DIR) to load it from")
        try:
            fitted = self._load_artifact(Path(model_dir))
        except (OSError, artifact_module.ArtifactError) as exc:
            raise ValueError(f"{value!r} asked for; loading {model_dir} failed: {exc}") from None
        if fitted.version != value:
            raise ValueError(
                f"{value!r} asked for, but {model_dir} holds {fitted.version!r}: deploy that model first "
                f"(still running {self.model_version!r})"
            )
        self._controls.use_artifact(fitted)
        self.model_version, self.detector = fitted.version, fitted.spec.name
        self._controls.threshold = self.threshold
        log.info("twin: every device restarts from model %s (%s)", fitted.version, fitted.spec.name)


def _model_metadata(model_dir: Path | None) -> dict:
    """``model.json`` of a warm-start directory (version, detector), or ``{}``."""
    if model_dir is None:
        return {}
    try:
        return json.loads((Path(model_dir) / artifact_module.METADATA_FILE).read_text())
    except (OSError, ValueError):
        return {}


class ModuleTwin:
    """The module twin: desired properties at start, on every patch and after a reconnect;
    what is in effect goes back as reported properties.

    Args:
        client: the module client.
        controls: applies the desired properties.
        timeout: longest wait for one twin request (get or report).
    """

    def __init__(self, client: IoTHubClient, controls: TwinControls, timeout: float = 30.0):
        self._client = client
        self.controls = controls
        self._timeout = timeout
        self._lock = threading.Lock()
        self._disconnected = False

    def start(self) -> bool:
        """Subscribe to patches, then read the whole twin; False if the twin could not be read
        (the flow starts with the settings' values and reads it again after a reconnect)."""
        set_handler(self._client, "on_twin_desired_properties_patch_received", self.on_patch, self._timeout)
        set_handler(self._client, "on_connection_state_change", self.on_connection_state_change, self._timeout)
        return self.resync()

    def resync(self) -> bool:
        """Read the full twin and apply its desired properties."""
        try:
            twin = call_with_timeout(self._client.get_twin, self._timeout)
        except Exception as exc:
            log.warning(
                "twin: could not read the module twin (%s: %s); keeping what is in effect", type(exc).__name__, exc
            )
            return False
        self.controls.remember_accepted(twin.get("reported"))
        self._apply(twin.get("desired") or {}, complete=True)
        return True

    def on_patch(self, patch: dict) -> None:
        """The SDK's desired-properties patch handler."""
        self._apply(patch or {}, complete=False)

    def on_connection_state_change(self) -> None:
        """After a reconnect, read the twin again: patches sent while disconnected are not replayed."""
        if not self._client.connected:
            self._disconnected = True
        elif self._disconnected:
            self._disconnected = False
            threading.Thread(target=self.resync, name="edgewatch-twin-resync", daemon=True).start()

    def _apply(self, desired: dict, complete: bool) -> None:
        with self._lock:  # the SDK may call handlers on several threads; apply and report in order
            try:
                reported = self.controls.apply(desired, complete)
            except Exception:  # a bug here must not stop the module: say so and keep going
                log.exception("twin: applying desired properties failed")
                return
            if reported is not None:
                self.report(reported)

    def report(self, reported: dict) -> None:
        try:
            call_with_timeout(self._client.patch_twin_reported_properties, self._timeout, reported)
        except Exception as exc:
            log.warning("twin: could not report %s (%s: %s)", reported, type(exc).__name__, exc)
        else:
            log.info("twin: reported %s", json.dumps(reported))


def set_handler(client: IoTHubClient, name: str, handler: Callable | None, timeout: float) -> None:
    """Set (or with ``None`` remove) an SDK handler; setting one subscribes, so it is bounded."""
    call_with_timeout(setattr, timeout, client, name, handler)
