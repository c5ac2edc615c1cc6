"""A simulated fleet through a shard's logic, with a rollout or a shadow at a chosen tick (the
rollout test and ``bench/rollout_warm.py``)."""

from edgewatch.flows.anomaly import ModelBankLogic, ShadowResult
from edgewatch.online_models.bank import new_bank
from edgewatch.online_models.registry import BUILTIN
from edgewatch.schema import RawMessage, SourceRef, parse_message
from edgewatch.simulator import Fleet
from edgewatch.state.recent import RecentReadings

DEVICES = 12
SPEC = BUILTIN["relational-novelty"]


def fleet_ticks(ticks, seed=5):
    """Readings of ``ticks`` ticks of a fleet, and each one's fault kind ("" healthy)."""
    fleet = Fleet(devices=DEVICES, seed=seed, fault_rate=0.002)
    readings, faults = [], []
    for i, r in enumerate(fleet.records(DEVICES * ticks)):
        readings.append(parse_message(RawMessage(r.key, r.value, r.headers, *SourceRef("t", 0, i, r.timestamp_ms))))
        faults.append(r.fault)
    return readings, faults


def run(stream, logic, start, stop, switch_at=None, switch=None, batch=DEVICES * 10):
    """Label ticks ``start`` … ``stop`` through ``logic``; ``switch()`` before tick ``switch_at``."""
    events, shadow = [], []
    for tick in range(start, stop, batch // DEVICES):
        if tick == switch_at:
            switch()
        results, _ = logic.on_batch([stream[tick * DEVICES : (tick + batch // DEVICES) * DEVICES]])
        for result in results:
            (shadow if isinstance(result, ShadowResult) else events).extend(result.events)
    return events, shadow


def logic_for(fitted, controls, warm=256):
    rebuild = lambda new: new_bank(new.spec, artifact=new)  # noqa: E731
    return ModelBankLogic(new_bank(fitted.spec, artifact=fitted), controls, rebuild, recent=RecentReadings(warm))


def false_alarms(events, faults, first_tick, ticks):
    """Anomalous labels of healthy readings in ``ticks`` ticks from ``first_tick``."""
    lo, hi = first_tick * DEVICES, (first_tick + ticks) * DEVICES
    return sum(e.is_anomaly and not faults[e.reading.raw.offset] for e in events if lo <= e.reading.raw.offset < hi)
