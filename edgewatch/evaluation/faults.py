"""Score labeled events against the simulator's ground truth.

A *fault* is one incident: the consecutive messages of a device that carry the same
non-empty ``edgewatch-fault`` header. Recall counts faults with at least one message
labeled anomalous; precision counts labeled-anomalous messages that belong to a fault.
Malformed payloads are dead letters, not faults.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgewatch.simulator.fleet import MALFORMED


@dataclass
class FaultScore:
    """Ground truth from the sender, verdicts from the labeled topic.

    >>> score = FaultScore()
    >>> for seq, fault in enumerate(["", "spike", "", "stuck", "stuck"]):
    ...     score.sent("m1", seq, fault)
    >>> score.labeled("m1", 1, True)
    >>> score.labeled("m1", 2, True)
    >>> score.faults, score.detected, score.precision
    (2, 1, 0.5)
    """

    faults: int = 0
    flagged: int = 0
    true_positives: int = 0
    _episode_of: dict[tuple[str, int], int] = field(default_factory=dict, repr=False)
    _last: dict[str, tuple[int, str, int]] = field(default_factory=dict, repr=False)
    _detected: set[int] = field(default_factory=set, repr=False)

    def sent(self, device: str, sequence: int, fault: str) -> None:
        """Record a message as the simulator sent it (in each device's order)."""
        if not fault or fault == MALFORMED:
            self._last.pop(device, None)
            return
        previous = self._last.get(device)
        if previous is not None and previous[0] == sequence - 1 and previous[1] == fault:
            episode = previous[2]
        else:
            episode = self.faults
            self.faults += 1
        self._episode_of[(device, sequence)] = episode
        self._last[device] = (sequence, fault, episode)

    def labeled(self, device: str, sequence: int, is_anomaly: bool) -> None:
        """Record the verdict for a message read back from the labeled topic."""
        if not is_anomaly:
            return
        self.flagged += 1
        episode = self._episode_of.get((device, sequence))
        if episode is not None:
            self.true_positives += 1
            self._detected.add(episode)

    @property
    def detected(self) -> int:
        return len(self._detected)

    @property
    def precision(self) -> float:
        return self.true_positives / self.flagged if self.flagged else 1.0

    @property
    def recall(self) -> float:
        return self.detected / self.faults if self.faults else 1.0
