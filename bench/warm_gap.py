"""Warm start versus cold start on fault-free live data, with and without a gap after the history.

    python bench/warm_gap.py [--devices 50] [--ticks 1200] [--gap-spread 4.0] [--variant no-resolution-spread]

The README's recipe in process: ``edgewatch simulate --devices 50 --rate 500 --duration 120
--fault-rate 0`` (1,200 readings per machine, 10 a second) as the history, ``edgewatch train`` on it,
then fault-free live data through the flow's bank, warm-started or cold. Three live streams:

* ``recipe``: the same machines' same readings again, 70 minutes after the history (the recipe's
  ``--seed 1`` twice, the second with a later ``--start-time``);
* ``continuous``: the history's continuation, no gap;
* ``continued after 1 h``: the same continuation, one hour later.

Printed per stream: abnormal readings, alarms raised and devices abnormal on their first live
reading, warm and cold (all fault-free: every one is a false alarm). ``--gap-spread 0`` turns the
restart of the temporal context after a gap off; ``--variant`` scores one of ``bench/ablation.py``'s
variants instead of the default detector.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edgewatch.online_models import artifact  # noqa: E402
from edgewatch.online_models.bank import new_bank  # noqa: E402
from edgewatch.online_models.registry import BUILTIN, DEFAULT_DETECTOR, DetectorSpec  # noqa: E402
from edgewatch.online_models.relational_novelty import RelationalNovelty  # noqa: E402
from edgewatch.schema import RawMessage, Reading, parse_message  # noqa: E402
from edgewatch.simulator import Fleet  # noqa: E402

HISTORY_START = 1_796_154_576.0  # 2026-12-01T19:49:36Z


def fleet(devices: int, ticks: int, start: float) -> list[Reading]:
    machines = Fleet(devices=devices, seed=1, fault_rate=0.0, start_time=start, tick_seconds=devices / 500)
    return [parse_message(RawMessage(r.key, r.value, r.headers, "sim", 0, i, r.timestamp_ms))
            for i, r in enumerate(machines.records(devices * ticks))]  # fmt: skip


def false_alarms(spec: DetectorSpec, history: list[Reading] | None, live: list[Reading]) -> str:
    bank = new_bank(spec, artifact=artifact.train(spec, history) if history is not None else None)
    abnormal = raised = first = 0
    seen: set[str] = set()
    for start in range(0, len(live), 1000):
        result = bank.label(live[start : start + 1000])
        for event in result.events:
            abnormal += event.is_anomaly
            if event.reading.device_id not in seen:
                seen.add(event.reading.device_id)
                first += event.is_anomaly
        raised += sum(alarm.kind == "raised" for alarm in result.alarms)
    return f"abnormal={abnormal} alarms={raised} first_reading={first}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--ticks", type=int, default=1200)
    parser.add_argument("--gap-spread", type=float, default=None, help="RelationalNovelty's gap_spread")
    parser.add_argument("--variant", help="one of bench/ablation.py's variants (default: the default detector)")
    args = parser.parse_args()
    spec = BUILTIN[DEFAULT_DETECTOR]
    if args.variant is not None:
        from bench.ablation import BY_NAME

        if args.gap_spread is not None:
            parser.error("--gap-spread and --variant: one of them")

        if args.variant not in BY_NAME:
            parser.error(f"unknown variant {args.variant}: use {', '.join(BY_NAME)}")
        spec = BY_NAME[args.variant].spec()
    if args.gap_spread is not None:
        spec = dataclasses.replace(spec, factory=lambda: RelationalNovelty(gap_spread=args.gap_spread))
    devices, ticks = args.devices, args.ticks
    history = fleet(devices, ticks, HISTORY_START)
    both = fleet(devices, 2 * ticks, HISTORY_START)
    continuation = both[devices * ticks :]
    streams = {
        "recipe (same readings, 70 min later)": fleet(devices, ticks, HISTORY_START + 4224.0),
        "continuous (no gap)": continuation,
        "continued after 1 h": [dataclasses.replace(r, timestamp=r.timestamp + 3600.0) for r in continuation],
    }
    assert [r.features for r in both[: devices * ticks]] == [r.features for r in history]  # one history for all
    for name, live in streams.items():
        print(f"{name:38s} warm {false_alarms(spec, history, live)} | cold {false_alarms(spec, None, live)}")


if __name__ == "__main__":
    main()
