"""Changes whose 2-minute mark falls in a fault alarm's clearing tail: a floor of ``active_after_change``.

    python bench/change_fault_tails.py [--fleets 6:40,7:40,9:24 ...]

``faults.FaultScore.active_after_change`` counts the legitimate changes after which the device is
labeled anomalous ``SETTLED_AFTER`` readings later, outside any fault's labeled readings. An alarm a
fault raised clears only after ``clear_after`` quiet readings, so it outlasts the fault's last labeled
reading by at least ``clear_after - 1`` readings; a change whose 2-minute mark falls there is counted
whatever the detector does, once it finds that fault. This counts those changes from the simulator
alone (no detector), per fleet of ``score_fleet`` (same options, history and ticks).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ablation import fleets_option  # noqa: E402
from edgewatch.evaluation.faults import FLEET_DEFAULTS, SETTLED_AFTER  # noqa: E402
from edgewatch.online_models.relational_novelty import RelationalNovelty  # noqa: E402
from edgewatch.simulator.fleet import MALFORMED, Fleet  # noqa: E402


def tail_changes(devices: int, seed: int, ticks: int = 3000, history_ticks: int = 600) -> tuple[int, int]:
    """(changes, changes whose SETTLED_AFTER-th reading is within the clearing tail after a fault episode)."""
    tail = RelationalNovelty().clear_after - 1
    fleet = Fleet(devices=devices, seed=seed, warmup_ticks=history_ticks, **FLEET_DEFAULTS)
    faulty, changes = defaultdict(set), defaultdict(list)
    for offset, record in enumerate(fleet.records(devices * ticks)):
        tick = offset // devices
        if tick < history_ticks:
            continue
        if record.fault and record.fault != MALFORMED:
            faulty[record.key].add(tick)
        if record.change:
            changes[record.key].append(tick)
    counted = 0
    for device, starts in changes.items():
        for start in starts:
            mark = start + SETTLED_AFTER
            if mark not in faulty[device] and any(mark - k in faulty[device] for k in range(1, tail + 1)):
                counted += 1
    return sum(map(len, changes.values())), counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleets", type=fleets_option, metavar="SEED:DEVICES,...",
                        default="0:40,1:40,2:40,3:16,4:16,5:16,6:16,6:40,7:40,8:40,9:24,10:24",
                        help="the simulated fleets, comma-separated (as bench/heldout_sim.py's)")  # fmt: skip
    args = parser.parse_args()
    for seed, devices in args.fleets:
        changes, counted = tail_changes(devices, seed)
        print(f"devices={devices} seed={seed} changes={changes} in_fault_alarm_tail={counted}", flush=True)


if __name__ == "__main__":
    main()
