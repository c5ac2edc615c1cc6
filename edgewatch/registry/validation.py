"""The validation gate: replay a recorded stream through a candidate and a baseline model.

Both models label the same readings, in the file's order, through the flow's own bank
(:func:`~edgewatch.online_models.bank.new_bank`: each device warm-starts from its fitted model,
then scores and learns), so the figures are those the fleet would see. Per device and for the
fleet:

- ``alarms``: alarms raised, i.e. a device's label turning from normal to anomalous (the
  label is the device's alarm state); ``alarm_rate``: alarms per 1,000 readings;
- ``precision`` (flagged readings inside a labeled fault) and ``recall`` (faults with at least one
  flagged reading), where the stream carries ground truth (the simulator's ``edgewatch-fault``
  header, :class:`~edgewatch.evaluation.faults.FaultScore`).

The policy (settings ``policy_*``) compares the fleet figures: the candidate fails when its
alarm rate exceeds the baseline's by more than the allowed fraction, or its recall or precision
falls below the baseline's by more than the allowed drop.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from edgewatch.evaluation.faults import FaultScore
from edgewatch.online_models.artifact import ModelArtifact
from edgewatch.online_models.bank import new_bank
from edgewatch.schema import RawMessage, Reading, parse_message
from edgewatch.simulator.fleet import FAULT_HEADER

BATCH = 2000  # readings per bank call, as the flow's polls


@dataclass
class Figures:
    """What one model did on the stream (the fleet, or one device)."""

    readings: int = 0
    flagged: int = 0
    alarms: int = 0
    devices: int = 1
    faults: int | None = None
    detected: int | None = None
    precision: float | None = None
    recall: float | None = None

    @property
    def alarm_rate(self) -> float:
        """Alarms per 1,000 readings."""
        return 1000.0 * self.alarms / self.readings if self.readings else 0.0

    @property
    def alarms_per_device(self) -> float:
        return self.alarms / self.devices if self.devices else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "alarm_rate": self.alarm_rate, "alarms_per_device": self.alarms_per_device}


@dataclass(frozen=True)
class Policy:
    """How much worse than the baseline a candidate may be (settings ``policy_*``)."""

    max_alarm_rate_increase: float
    max_recall_drop: float
    max_precision_drop: float

    @classmethod
    def from_settings(cls, settings) -> Policy:
        """The policy of a :class:`~edgewatch.config.RegistrySettings`."""
        return cls(settings.policy_max_alarm_rate_increase, settings.policy_max_recall_drop,
                   settings.policy_max_precision_drop)  # fmt: skip

    def failures(self, candidate: Figures, baseline: Figures) -> list[str]:
        """Why the candidate fails (empty: it passes)."""
        failed = []
        allowed = baseline.alarm_rate * (1 + self.max_alarm_rate_increase)
        if candidate.alarm_rate > allowed + 1e-9:
            failed.append(
                f"alarm rate {candidate.alarm_rate:.2f}/1000 readings > {allowed:.2f} "
                f"(baseline {baseline.alarm_rate:.2f} + {self.max_alarm_rate_increase:.0%})"
            )
        if candidate.recall is not None and baseline.recall is not None:
            if candidate.recall < baseline.recall - self.max_recall_drop - 1e-9:
                failed.append(
                    f"recall {candidate.recall:.3f} < baseline {baseline.recall:.3f} - {self.max_recall_drop:g}"
                )
            if candidate.precision < baseline.precision - self.max_precision_drop - 1e-9:
                failed.append(
                    f"precision {candidate.precision:.3f} < baseline {baseline.precision:.3f} "
                    f"- {self.max_precision_drop:g}"
                )
        return failed


@dataclass
class Replay:
    """One model's figures on a stream: the fleet's and each device's."""

    fleet: Figures
    devices: dict[str, Figures] = field(default_factory=dict)


@dataclass
class Recorded:
    """A recorded stream, parsed once for both models: readings and each device's ground truth."""

    readings: list[Reading]
    dead_letters: int
    truth: dict[str, list[tuple[int, str]]]  # device → (sequence, fault) in order
    sequence_of: dict[int, tuple[str, int]]  # id(reading.raw) → (device, sequence)

    @property
    def has_truth(self) -> bool:
        return bool(self.truth)


def read_recorded(messages: Iterable[RawMessage]) -> Recorded:
    """Parse a recorded stream as the flow does; keep the ground-truth header of each message."""
    readings, dead = [], 0
    truth: dict[str, list[tuple[int, str]]] = defaultdict(list)
    sequence_of: dict[int, tuple[str, int]] = {}
    counters: dict[str, int] = defaultdict(int)
    for raw in messages:
        device = raw.key.decode("utf-8", "replace") if raw.key else ""
        sequence = counters[device]
        counters[device] += 1
        fault = next((value.decode() for name, value in raw.headers if name == FAULT_HEADER), None)
        if fault is not None:
            truth[device].append((sequence, fault))
        parsed = parse_message(raw)
        if isinstance(parsed, Reading):
            readings.append(parsed)
            sequence_of[id(raw)] = (device, sequence)
        else:
            dead += 1
    return Recorded(readings, dead, dict(truth), sequence_of)


def replay(fitted: ModelArtifact, recorded: Recorded, threshold: float | None = None) -> Replay:
    """Label the recorded readings with ``fitted`` (a fresh bank, as a fresh flow) and count."""
    bank = new_bank(fitted.spec, threshold, fitted)
    fleet_score = _fault_score(recorded.truth) if recorded.has_truth else None
    device_scores = {device: _fault_score({device: marks}) for device, marks in recorded.truth.items()}
    devices: dict[str, Figures] = {}
    alarm_state: dict[str, bool] = {}
    for start in range(0, len(recorded.readings), BATCH):
        for event in bank.label(recorded.readings[start : start + BATCH]).events:
            device = event.reading.device_id
            figures = devices.get(device) or devices.setdefault(device, Figures())
            figures.readings += 1
            if event.is_anomaly:
                figures.flagged += 1
                if not alarm_state.get(device):
                    figures.alarms += 1
            alarm_state[device] = bool(event.is_anomaly)
            if fleet_score is not None:
                truth_device, sequence = recorded.sequence_of[id(event.reading.raw)]
                fleet_score.labeled(truth_device, sequence, bool(event.is_anomaly))
                if truth_device in device_scores:
                    device_scores[truth_device].labeled(truth_device, sequence, bool(event.is_anomaly))
    for device, figures in devices.items():
        if device in device_scores:
            _set_truth(figures, device_scores[device])
    fleet = Figures(
        readings=sum(f.readings for f in devices.values()),
        flagged=sum(f.flagged for f in devices.values()),
        alarms=sum(f.alarms for f in devices.values()),
        devices=len(devices),
    )
    if fleet_score is not None:
        _set_truth(fleet, fleet_score)
    return Replay(fleet, devices)


@dataclass
class ValidationReport:
    """The gate's answer: both models' figures, and the policy's verdict."""

    candidate: str
    baseline: str
    data: str
    readings: int
    dead_letters: int
    candidate_replay: Replay
    baseline_replay: Replay
    failures: list[str]

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary(self) -> dict:
        """The fleet figures and the verdict (what is recorded as tags and in the audit log)."""
        return {
            "passed": self.passed,
            "candidate": self.candidate,
            "baseline": self.baseline,
            "data": self.data,
            "readings": self.readings,
            "candidate_fleet": self.candidate_replay.fleet.to_dict(),
            "baseline_fleet": self.baseline_replay.fleet.to_dict(),
            "failures": self.failures,
        }

    def to_dict(self) -> dict:
        devices = sorted(set(self.candidate_replay.devices) | set(self.baseline_replay.devices))
        return {
            **self.summary(),
            "dead_letters": self.dead_letters,
            "devices": {
                device: {
                    "candidate": self.candidate_replay.devices.get(device, Figures()).to_dict(),
                    "baseline": self.baseline_replay.devices.get(device, Figures()).to_dict(),
                }
                for device in devices
            },
        }

    def lines(self, worst: int = 5) -> list[str]:
        """A human summary: fleet figures side by side, the devices where the candidate alarms most
        more than the baseline, and the verdict."""
        cand, base = self.candidate_replay.fleet, self.baseline_replay.fleet
        out = [f"data {self.data}: {self.readings} readings, {self.dead_letters} dead letters, {cand.devices} devices"]
        for label, figures in (("candidate", cand), ("baseline", base)):
            truth = (
                f", precision {figures.precision:.3f}, recall {figures.recall:.3f} "
                f"({figures.detected}/{figures.faults} faults)"
                if figures.recall is not None
                else ", no ground truth"
            )
            out.append(
                f"{label:9} alarms {figures.alarms} ({figures.alarm_rate:.2f}/1000 readings, "
                f"{figures.alarms_per_device:.2f}/device), flagged {figures.flagged}{truth}"
            )
        more = sorted(
            (
                (figures.alarms - self.baseline_replay.devices.get(device, Figures()).alarms, device)
                for device, figures in self.candidate_replay.devices.items()
            ),
            reverse=True,
        )
        worse = [f"{device} +{delta}" for delta, device in more[:worst] if delta > 0]
        if worse:
            out.append(f"devices with more alarms than the baseline: {', '.join(worse)}")
        out.append("PASSED" if self.passed else "FAILED: " + "; ".join(self.failures))
        return out


def validate(
    candidate: ModelArtifact,
    baseline: ModelArtifact,
    messages: Iterable[RawMessage],
    policy: Policy,
    names: tuple[str, str] = ("candidate", "baseline"),
    data: str = "",
    threshold: float | None = None,
) -> ValidationReport:
    """Replay ``messages`` through both models and apply ``policy``."""
    recorded = read_recorded(messages)
    candidate_replay = replay(candidate, recorded, threshold)
    baseline_replay = replay(baseline, recorded, threshold)
    return ValidationReport(
        names[0],
        names[1],
        data,
        len(recorded.readings),
        recorded.dead_letters,
        candidate_replay,
        baseline_replay,
        policy.failures(candidate_replay.fleet, baseline_replay.fleet),
    )


def _fault_score(truth: dict[str, list[tuple[int, str]]]) -> FaultScore:
    score = FaultScore()
    for device, marks in truth.items():
        for sequence, fault in marks:
            score.sent(device, sequence, fault)
    return score


def _set_truth(figures: Figures, score: FaultScore) -> None:
    figures.faults, figures.detected = score.faults, score.detected
    figures.precision, figures.recall = score.precision, score.recall
