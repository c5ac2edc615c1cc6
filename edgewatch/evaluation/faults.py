"""Score labeled events against the simulator's ground truth.

A *fault* is one incident: the consecutive messages of a device that carry the same
non-empty ``edgewatch-fault`` header. An *alarm* is one run of consecutive messages of a
device labeled anomalous (the detector's alarm state). Per episode: recall counts faults
that overlap an alarm, precision counts alarms that overlap a fault. Per message:
``message_precision`` counts labeled-anomalous messages that belong to a fault.
Legitimate operating changes (``edgewatch-change``) are normal: messages labeled anomalous
within :data:`AFTER_CHANGE` messages after a change starts (outside faults) are counted, and
whether the device is still in alarm :data:`SETTLED_AFTER` messages after it.
Malformed payloads are dead letters, not faults.
"""

from __future__ import annotations

import functools
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from edgewatch.simulator.fleet import FAULT_SENSORS, MALFORMED

AFTER_CHANGE = 300  # messages of the device after a change starts
SETTLED_AFTER = 120  # messages (2 minutes at one reading a second)
#: The simulated fleet's faults, legitimate changes and ambient cycle (``Fleet`` arguments) unless told.
FLEET_DEFAULTS = {"fault_rate": 0.002, "change_rate": 0.001, "ambient_period": 1800}


@dataclass
class FaultScore:
    """Ground truth from the sender, verdicts from the labeled topic.

    >>> score = FaultScore()
    >>> for seq, fault in enumerate(["", "spike", "", "stuck", "stuck", ""]):
    ...     score.sent("m1", seq, fault)
    >>> for seq in (1, 2):
    ...     score.labeled("m1", seq, True)
    >>> score.faults, score.detected, score.precision, score.alarms, score.episode_precision
    (2, 1, 0.5, 1, 1.0)
    >>> score.episodes
    [('m1', 'spike', 1, 1), ('m1', 'stuck', 3, 4)]
    >>> score.false_alarms, score.normal, round(score.false_alarm_rate, 1)  # seq 2: flagged, normal
    (0, 3, 333.3)
    """

    faults: int = 0
    normal: int = 0
    flagged: int = 0
    true_positives: int = 0
    changes: int = 0
    _episode_of: dict[tuple[str, int], int] = field(default_factory=dict, repr=False)
    _last: dict[str, tuple[int, str, int]] = field(default_factory=dict, repr=False)
    _episodes: list[tuple[str, str, int, int]] = field(default_factory=list, repr=False)
    _detected: set[int] = field(default_factory=set, repr=False)
    _flagged: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set), repr=False)
    _changes: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list), repr=False)

    def sent(self, device: str, sequence: int, fault: str, change: str = "") -> None:
        """Record a message as the simulator sent it (in each device's order)."""
        if change:
            self.changes += 1
            self._changes[device].append(sequence)
        if not fault or fault == MALFORMED:
            self.normal += fault != MALFORMED
            self._last.pop(device, None)
            return
        previous = self._last.get(device)
        if previous is not None and previous[0] == sequence - 1 and previous[1] == fault:
            episode = previous[2]
            self._episodes[episode] = (*self._episodes[episode][:3], sequence)
        else:
            episode = self.faults
            self.faults += 1
            self._episodes.append((device, fault, sequence, sequence))
        self._episode_of[(device, sequence)] = episode
        self._last[device] = (sequence, fault, episode)

    def labeled(self, device: str, sequence: int, is_anomaly: bool) -> None:
        """Record the verdict for a message read back from the labeled topic."""
        if not is_anomaly:
            return
        self.flagged += 1
        self._flagged[device].add(sequence)
        episode = self._episode_of.get((device, sequence))
        if episode is not None:
            self.true_positives += 1
            self._detected.add(episode)

    def _alarm_runs(self) -> list[tuple[str, int, int]]:
        runs = []
        for device, sequences in self._flagged.items():
            ordered = sorted(sequences)
            start = previous = ordered[0]
            for sequence in [*ordered[1:], None]:
                if sequence is not None and sequence == previous + 1:
                    previous = sequence
                    continue
                runs.append((device, start, previous))
                if sequence is not None:
                    start = previous = sequence
        return runs

    @property
    def episodes(self) -> list[tuple[str, str, int, int]]:
        """The faults in the order they started: (device, kind, first sequence, last sequence)."""
        return list(self._episodes)

    @property
    def detected(self) -> int:
        return len(self._detected)

    @property
    def precision(self) -> float:
        """Per message: labeled-anomalous messages that belong to a fault."""
        return self.true_positives / self.flagged if self.flagged else 1.0

    message_precision = precision

    @property
    def recall(self) -> float:
        """Per episode: faults with at least one message labeled anomalous."""
        return self.detected / self.faults if self.faults else 1.0

    @property
    def alarms(self) -> int:
        """Alarm episodes: runs of consecutive anomalous messages of a device."""
        return len(self._alarm_runs())

    def _false_runs(self) -> list[tuple[str, int, int]]:
        return [
            (device, start, end)
            for device, start, end in self._alarm_runs()
            if not any((device, s) in self._episode_of for s in range(start, end + 1))
        ]

    @property
    def episode_precision(self) -> float:
        """Per episode: alarms that overlap a fault."""
        alarms = self.alarms
        return 1.0 - len(self._false_runs()) / alarms if alarms else 1.0

    @property
    def false_alarms(self) -> int:
        """Alarm episodes that overlap no fault."""
        return len(self._false_runs())

    @property
    def false_alarm_rate(self) -> float:
        """Messages labeled anomalous outside faults, per 1,000 normal messages."""
        return 1000.0 * (self.flagged - self.true_positives) / self.normal if self.normal else 0.0

    @property
    def alarmed_after_change(self) -> int:
        """Messages labeled anomalous, outside faults, within AFTER_CHANGE messages after a change."""
        count = 0
        for device, starts in self._changes.items():
            flagged = self._flagged.get(device, set())
            window = {s for start in starts for s in range(start, start + AFTER_CHANGE)}
            count += sum(1 for s in flagged & window if (device, s) not in self._episode_of)
        return count

    @property
    def active_after_change(self) -> int:
        """Changes after which the device is still labeled anomalous SETTLED_AFTER messages later."""
        return sum(
            (start + SETTLED_AFTER) in self._flagged.get(device, ())
            and (device, start + SETTLED_AFTER) not in self._episode_of
            for device, starts in self._changes.items()
            for start in starts
        )

    @property
    def change_alarms_after_change(self) -> int:
        """``active_after_change`` without fault alarms: changes after which the device is still labeled
        anomalous SETTLED_AFTER messages later by an alarm that overlaps no fault (a fault that began
        after the change and whose alarm is clearing then is not the change's)."""
        false_runs = defaultdict(list)
        for device, start, end in self._false_runs():
            false_runs[device].append((start, end))
        return sum(
            any(start <= settled <= end for start, end in false_runs.get(device, ()))
            for device, starts in self._changes.items()
            for settled in (s + SETTLED_AFTER for s in starts)
        )

    def line(self) -> str:
        return (
            f"faults={self.faults} detected={self.detected} recall={self.recall:.3f} alarms={self.alarms} "
            f"precision={self.episode_precision:.3f} changes={self.changes} "
            f"alarmed_after_change={self.alarmed_after_change} active_after_change={self.active_after_change}"
        )


@functools.lru_cache(maxsize=1)
def simulated_messages(devices: int, ticks: int, history_ticks: int, seed: int, options: tuple) -> tuple[list, list]:
    """The fleet's records and their parsed readings (``options``: the Fleet's other arguments as
    sorted items). The last fleet is kept: an ablation scores many detectors on the same one;
    callers must not change them."""
    from edgewatch.schema import RawMessage, parse_message
    from edgewatch.simulator.fleet import Fleet

    fleet = Fleet(devices=devices, seed=seed, warmup_ticks=history_ticks, **dict(options))
    records = list(fleet.records(devices * ticks))
    readings = []
    for offset, record in enumerate(records):
        raw = RawMessage(record.key, record.value, record.headers, "sim", 0, offset, record.timestamp_ms)
        readings.append(parse_message(raw))
    return records, readings


def score_fleet(
    spec,
    devices: int = 50,
    ticks: int = 3000,
    history_ticks: int = 600,
    seed: int = 0,
    warm: bool = False,
    progress: Callable[[int], None] = lambda rows: None,
    observe: Callable[[object], None] | None = None,
    **fleet_options,
) -> FaultScore:
    """A simulated fleet with faults and legitimate operating changes through the flow's bank.

    The first ``history_ticks`` ticks are fault-free (the fleet's warm-up); ``warm`` fits each
    machine's detector on them (``edgewatch train``), else the bank starts cold and streams them
    too. Only the ticks after them are scored, the same messages either way. ``observe`` is given
    each batch's ``BankResult`` (its alarm events and explanations: ``bench/explanations.py``)."""
    from edgewatch.online_models import artifact
    from edgewatch.online_models.bank import new_bank

    options = {**FLEET_DEFAULTS, **fleet_options}
    records, readings = simulated_messages(devices, ticks, history_ticks, seed, tuple(sorted(options.items())))
    split = devices * history_ticks
    fitted = artifact.train(spec, readings[:split], source="simulated history") if warm else None
    bank = new_bank(spec, artifact=fitted)
    score = FaultScore()
    for offset, record in enumerate(records[split:], start=split):
        score.sent(record.key.decode(), offset // devices, record.fault, record.change)
    stream = readings if not warm else readings[split:]
    for start in range(0, len(stream), 1000):
        result = bank.label(stream[start : start + 1000])
        if observe is not None:
            observe(result)
        for event in result.events:
            offset = event.reading.raw.offset
            if offset >= split:
                score.labeled(event.reading.device_id, offset // devices, event.is_anomaly)
        progress(len(result.events))
    return score


def top_feature(shares: dict[str, float] | None) -> str | None:
    """The feature an explanation names first (None without one)."""
    return max(shares, key=shares.get) if shares else None


def score_attribution(spec, devices: int = 50, **fleet_arguments) -> dict[str, Counter]:
    """Do alarms name the sensor the fault corrupted (``simulator.fleet.FAULT_SENSORS``)? The fleet of
    :func:`score_fleet` (``fleet_arguments``: its other arguments, ``ticks``, ``seed``, ``warm``...); per
    fault kind a Counter: ``faults``, ``missed``, ``held`` (first labeled abnormal inside an alarm raised
    before the episode), ``raise`` (alarms raised inside a detected episode) and ``raise_ok`` (the raising
    AlarmEvent's top feature is one of the faulted sensors), ``alarm`` and ``alarm_ok`` (the same for the
    cleared AlarmEvent: the alarm's peak's explanation; alarms still open at the end left out), and
    ``named:<feature>`` (the top feature at the raise).

    Four machines, a fault every 100 readings or so and no operating change: every fault raises its own
    alarm, and each names a sensor the fault corrupted (the temperature, or the pressure for a failure):

    >>> from edgewatch.online_models.registry import BUILTIN, DEFAULT_DETECTOR
    >>> counts = score_attribution(BUILTIN[DEFAULT_DETECTOR], devices=4, ticks=400, history_ticks=200,
    ...                            fault_rate=0.01, change_rate=0.0)
    >>> for kind, c in sorted(counts.items()):
    ...     named = [k.removeprefix("named:") for k in c if k.startswith("named:")]
    ...     print(kind, f"faults={c['faults']} raised={c['raise']} named right={c['raise_ok']}", *named)
    dip faults=1 raised=1 named right=1 machine.temperature
    drift faults=1 raised=1 named right=1 machine.temperature
    failure faults=1 raised=1 named right=1 machine.pressure
    stuck faults=3 raised=3 named right=3 machine.temperature
    """
    abnormal: dict[str, set[int]] = defaultdict(set)
    alarms: dict[str, list[list]] = defaultdict(list)  # device -> [[raise tick, raise shares, clear shares]]

    def observe(result) -> None:
        for event in result.events:
            if event.is_anomaly:
                abnormal[event.reading.device_id].add(event.reading.raw.offset // devices)
        for alarm in result.alarms:
            if alarm.kind == "raised":
                alarms[alarm.device_id].append([alarm.raw.offset // devices, alarm.explanation, None])
            elif alarms[alarm.device_id]:
                alarms[alarm.device_id][-1][2] = alarm.explanation

    score = score_fleet(spec, devices=devices, observe=observe, **fleet_arguments)
    tally: dict[str, Counter] = defaultdict(Counter)
    for device, kind, first, last in score.episodes:
        counts = tally[kind]
        counts["faults"] += 1
        hits = [tick for tick in abnormal[device] if first <= tick <= last]
        if not hits:
            counts["missed"] += 1
            continue
        raised = [alarm for alarm in alarms[device] if alarm[0] <= min(hits)]
        if not raised or raised[-1][0] < first:
            counts["held"] += 1
            continue
        _, at_raise, at_clear = raised[-1]
        counts["raise"] += 1
        counts["raise_ok"] += top_feature(at_raise) in FAULT_SENSORS[kind]
        counts[f"named:{top_feature(at_raise)}"] += 1
        if at_clear is not None:
            counts["alarm"] += 1
            counts["alarm_ok"] += top_feature(at_clear) in FAULT_SENSORS[kind]
    return dict(tally)
