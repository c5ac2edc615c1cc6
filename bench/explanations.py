"""Do explanations name the sensor that went wrong? Attribution accuracy on the simulator, SKAB's distribution.

    python bench/explanations.py [--set NAME=VALUE ...] [--fleets 0:40,1:40,2:40,3:16,4:16] [--no-skab]
                                 [--swap-sensors]

Simulator (``faults.score_attribution`` over ``faults.score_fleet``'s fleets: 3000 ticks after 600
fault-free ones, cold and warm): every fault kind corrupts known sensors (``simulator.fleet.FAULT_SENSORS``:
the temperature sensor for spike, dip, stuck and drift; a failure is the machine's, temperature or
pressure). For each detected fault episode whose alarm was raised inside it, the top feature of the
explanation is checked against them: ``raise`` is the raising AlarmEvent's explanation (the raising
reading's shares), ``alarm`` the cleared AlarmEvent's (the alarm's peak's shares; alarms still open at the
end are left out). Episodes first labeled abnormal inside an alarm raised before them are counted apart
(``held``). Printed per fleet and start, then per fault kind over all fleets: correct/counted and the share.

SKAB (``edgewatch evaluate skab``'s run; valve1 faults act on the flow and valve, no per-feature ground
truth): how often each feature is named first at an alarm's raise inside a labeled fault, at a raise
outside one, and over every abnormal row inside a fault.

``--swap-sensors``: the same fleets with the machine's temperature and pressure readings exchanged in every
reading (the sensor faults then corrupt the sensor named ``machine.pressure``, third in the bank's column
order instead of fourth): explanations must not favour a name or a position.

``--set`` changes the default detector's parameters (JSON values), as bench/ablation.py's variants do.
Two processes; about 4 minutes on two idle cores. Data (SKAB) from ``EDGEWATCH_DATA_DIR``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ablation import add_set_option, fleets_option, spec_from_sets, spec_with  # noqa: E402
from edgewatch.evaluation.faults import score_attribution, top_feature  # noqa: E402
from edgewatch.simulator.fleet import FAULT_KINDS, FAULT_SENSORS  # noqa: E402

TICKS, HISTORY = 3000, 600


SWAPPED = {"machine.temperature": "machine.pressure", "machine.pressure": "machine.temperature"}


def swap_sensors() -> None:
    """In this (worker) process: the simulated readings with temperature and pressure exchanged, and the
    faults' ground truth with them."""
    from edgewatch.evaluation import faults

    if getattr(faults.simulated_messages, "swapped", False):  # (a worker scores several fleets)
        return
    simulated = faults.simulated_messages

    @functools.lru_cache(maxsize=1)
    def swapped(*args):
        records, readings = simulated(*args)
        exchanged = [
            dataclasses.replace(r, features={SWAPPED.get(k, k): v for k, v in r.features.items()}) for r in readings
        ]
        return records, exchanged

    swapped.swapped = True
    faults.simulated_messages = swapped
    faults.FAULT_SENSORS = {kind: tuple(SWAPPED.get(s, s) for s in sensors) for kind, sensors in FAULT_SENSORS.items()}


def fleet_attribution(case: tuple[int, int, bool, dict, bool]) -> dict:
    seed, devices, warm, changes, swap = case
    if swap:
        swap_sensors()
    tally = score_attribution(spec_with(changes), devices=devices, ticks=TICKS, history_ticks=HISTORY, seed=seed,
                              warm=warm)  # fmt: skip
    return {"seed": seed, "devices": devices, "warm": warm, "tally": {k: dict(v) for k, v in tally.items()}}


def ratio(ok: int, n: int) -> str:
    return f"{ok}/{n}={ok / n:.2f}" if n else "-"


def print_simulator(results: list[dict]) -> None:
    overall: dict[str, Counter] = defaultdict(Counter)
    for result in results:
        start = "warm" if result["warm"] else "cold"
        tally = result["tally"]
        raise_ok = sum(c.get("raise_ok", 0) for c in tally.values())
        raised = sum(c.get("raise", 0) for c in tally.values())
        alarm_ok = sum(c.get("alarm_ok", 0) for c in tally.values())
        alarmed = sum(c.get("alarm", 0) for c in tally.values())
        held = sum(c.get("held", 0) for c in tally.values())
        print(f"seed={result['seed']} devices={result['devices']} {start}: raise {ratio(raise_ok, raised)} "
              f"alarm {ratio(alarm_ok, alarmed)} held={held}", flush=True)  # fmt: skip
        for kind, counts in tally.items():
            overall[(kind, start)].update(counts)
    print("per fault kind (all fleets): correct top feature at the raise / at the alarm event")
    for kind in FAULT_KINDS:
        for start in ("cold", "warm"):
            c = overall[(kind, start)]
            named = ", ".join(f"{k[6:]} {v}" for k, v in sorted(c.items()) if k.startswith("named:"))
            print(f"  {kind:8s} {start}: raise {ratio(c['raise_ok'], c['raise'])} "
                  f"alarm {ratio(c['alarm_ok'], c['alarm'])} held={c['held']} missed={c['missed']} "
                  f"faults={c['faults']}  named at raise: {named}")  # fmt: skip
    for start in ("cold", "warm"):
        sums = Counter()
        for kind in FAULT_KINDS:
            sums.update(overall[(kind, start)])
        print(f"  all      {start}: raise {ratio(sums['raise_ok'], sums['raise'])} "
              f"alarm {ratio(sums['alarm_ok'], sums['alarm'])}")  # fmt: skip


def print_skab(changes: dict) -> None:
    from edgewatch.config import data_dir
    from edgewatch.evaluation import skab

    files = skab.load(data_dir() / "skab")
    run = skab.evaluate(files, spec_with(changes))
    inside_raise, outside_raise, inside_rows = Counter(), Counter(), Counter()
    for f, predicted, explanations in zip(run.files, run.predictions, run.explanations, strict=True):
        truth = f.anomaly[f.test].astype(bool)
        raises = np.flatnonzero(predicted & ~np.concatenate([[False], predicted[:-1]]))
        for j in raises.tolist():
            (inside_raise if truth[j] else outside_raise)[top_feature(explanations.get(j))] += 1
        for j in np.flatnonzero(predicted & truth).tolist():
            inside_rows[top_feature(explanations.get(j))] += 1

    def shares(counter: Counter) -> str:
        n = sum(counter.values())
        return ", ".join(f"{name} {count / n:.2f}" for name, count in counter.most_common()) + f" (n={n})"

    print(run.line())
    print(f"skab named first at a raise inside a fault:  {shares(inside_raise)}")
    print(f"skab named first at a raise outside a fault: {shares(outside_raise)}")
    print(f"skab named first on abnormal rows in faults: {shares(inside_rows)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_set_option(parser)
    parser.add_argument("--fleets", default="0:40,1:40,2:40,3:16,4:16", type=fleets_option, metavar="SEED:DEVICES,...",
                        help="the simulated fleets, comma-separated (default 0:40,1:40,2:40,3:16,4:16)")  # fmt: skip
    parser.add_argument("--no-skab", action="store_true", help="the simulator only")
    parser.add_argument("--swap-sensors", action="store_true", help="temperature and pressure readings exchanged")
    args = parser.parse_args(argv)
    spec_from_sets(parser, args.set)  # a value the detector refuses: a usage error here, not in a worker
    changes = dict(args.set)
    swap = args.swap_sensors
    cases = [(seed, devices, warm, changes, swap) for seed, devices in args.fleets for warm in (False, True)]
    with ProcessPoolExecutor(2) as pool:
        print_simulator(list(pool.map(fleet_attribution, cases)))
    if not args.no_skab:
        print_skab(changes)


if __name__ == "__main__":
    main()
