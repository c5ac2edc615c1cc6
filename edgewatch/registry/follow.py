"""A running flow follows its registered model's aliases: the registry drives shadow, promotion, rollback.

With ``--model models:/NAME@champion`` and ``--registry-poll-seconds N``, every N seconds the flow
reads NAME's aliases (one registry call) and applies what changed through its
:class:`~edgewatch.flows.anomaly.LiveControls`, with no restart:

=================================== ==========================================================
``challenger`` set to a new version  it runs in the shadow of the champion (``shadow``)
``champion`` moved to the version    it takes over with what it learned beside the champion
in the shadow                        (``promote_shadow``)
``champion`` moved to another one    it rolls out, each device warmed on its recent readings
                                     (``use_artifact``): a rollback, a promotion without shadow
``challenger`` removed               the shadow stops
=================================== ==========================================================

So ``edgewatch retrain`` (and ``edgewatch models promote|rollback``) reach every device that
follows the registry, and the timed shadow step of a retraining round sees the challenger's
labels. Every model is pulled and verified as for ``--model`` (cached for offline); a registry
out of reach or a model that fails its check leaves the running models as they are (a log line
says why) and is tried again at the next poll.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from edgewatch.online_models.artifact import ArtifactError
from edgewatch.registry import CHALLENGER, CHAMPION, RegistryError

log = logging.getLogger(__name__)


class RegistryFollower:
    """Applies NAME's alias changes to ``controls`` (:meth:`check` once; :meth:`start` polls).

    ``champion``: the registry version running when it starts (what ``--model`` resolved)."""

    def __init__(
        self,
        controls,
        name: str,
        champion: str | None,
        cache_dir: Path,
        tracking_uri: str | None = None,
        public_key: str | None = None,
        every: float = 30.0,
    ):
        self.controls, self.name, self.champion = controls, name, champion
        self.cache_dir, self.tracking_uri, self.public_key, self.every = cache_dir, tracking_uri, public_key, every
        self.shadow: str | None = None  # the registry version running in the shadow
        self.applied: list[tuple[str, str]] = []  # (what, version), in order: the flow's lifecycle as followed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> None:
        """One poll: read the aliases, apply what changed."""
        from edgewatch.registry.resolve import alias_versions

        aliases = alias_versions(self.name, self.tracking_uri)
        champion, challenger = aliases.get(CHAMPION), aliases.get(CHALLENGER)
        if champion is not None and champion != self.champion:
            if champion == self.shadow and self.controls.challenger is not None:
                self.controls.promote_shadow()
                self.applied.append(("promote-shadow", champion))
                self.shadow = None
            else:
                self.controls.use_artifact(self._pull(champion))
                self.applied.append(("rollout", champion))
            self.champion = champion
            log.info("registry: %s champion is version %s, running", self.name, champion)
        if challenger is not None and challenger not in (self.champion, self.shadow):
            self.controls.shadow(self._pull(challenger))
            self.shadow = challenger
            self.applied.append(("shadow", challenger))
            log.info("registry: %s challenger version %s runs in the shadow", self.name, challenger)
        elif challenger is None and self.shadow is not None:
            self.controls.shadow(None)
            self.applied.append(("shadow-stop", self.shadow))
            self.shadow = None

    def _pull(self, version: str):
        from edgewatch.registry.resolve import resolve_model

        uri = f"models:/{self.name}/{version}"
        return resolve_model(uri, self.cache_dir, self.tracking_uri, self.public_key).artifact

    def start(self) -> RegistryFollower:
        self._thread = threading.Thread(target=self._run, name="edgewatch-registry", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.check()
            except (RegistryError, ArtifactError, OSError, ValueError) as exc:  # the running models stay
                log.warning("registry: following %s: %s; the running models stay", self.name, exc)
