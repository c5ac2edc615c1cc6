"""Simulator fleets a detector change was not tuned on: other seeds and a smaller fleet, cold and warm.

    python bench/heldout_sim.py [--variants default,no-relation-cube-root] [--fleets 3:40,4:40,5:40,0:16]
    python bench/heldout_sim.py --set smooth_extremes=32 --set history_effective=false

Each fleet is ``seed:devices`` (3000 ticks after 600 fault-free ones, as ``bench/ablation.py``); each
variant is one of ``bench/ablation.py``'s, or ``--set NAME=VALUE`` (repeatable) the default detector
with those parameters changed. Prints per fleet and start, from ``faults.score_fleet``: the episode
precision P, recall R, ``active_after_change`` (aac; ``aac_change``: those whose alarm overlaps no
fault, the change's own), the false alarms (episodes overlapping no fault) and ``fpr``, messages
labeled anomalous outside faults per 1,000 normal messages.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ablation import BY_NAME, add_set_option, fleets_option, spec_from_sets  # noqa: E402
from edgewatch.evaluation.faults import score_fleet  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="default", help="comma-separated bench/ablation.py variants")
    parser.add_argument(
        "--fleets",
        default="3:40,4:40,5:40,0:16,1:16,2:16",
        type=fleets_option,
        metavar="SEED:DEVICES,...",
        help="the simulated fleets, comma-separated (default %(default)s)",
    )
    parser.add_argument(
        "--ticks", type=int, default=3000, help="ticks per device, the 600 fault-free ones included (default 3000)"
    )
    add_set_option(parser)
    args = parser.parse_args(argv)
    unknown = [name for name in args.variants.split(",") if name not in BY_NAME]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}: use {', '.join(BY_NAME)}")
    if args.set:
        specs = {",".join(f"{name}={value}" for name, value in args.set): spec_from_sets(parser, args.set)}
    else:
        specs = {name: BY_NAME[name].spec() for name in args.variants.split(",")}
    for name, spec in specs.items():
        for seed, devices in args.fleets:
            for warm in (False, True):
                score = score_fleet(spec, devices=devices, ticks=args.ticks, seed=seed, warm=warm)
                print(f"{name} seed={seed} devices={devices} {'warm' if warm else 'cold'} "
                      f"P={score.episode_precision:.3f} R={score.recall:.3f} aac={score.active_after_change} "
                      f"aac_change={score.change_alarms_after_change} "
                      f"faults={score.faults} alarms={score.alarms} false={score.false_alarms} "
                      f"fpr={score.false_alarm_rate:.2f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
