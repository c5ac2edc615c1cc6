"""Fleet drift monitoring: false drift on a stationary fleet, time to detect a drifting one.

    python bench/fleet_drift.py [--devices 40] [--hours 48] [--seeds 0 1 2] [--window 10000]

A simulated fleet (one reading a minute per machine, faults at the simulator's default rate,
warmed up before the training history starts) trains the reference on ``--history-hours``;
then ``--hours`` more of the same fleet stream through the flow's own fleet-drift code
(:func:`~edgewatch.flows.fleet_drift.bin_counts` per poll, :class:`FleetDriftLogic` over the
windows). Polls are taken as Kafka hands them out: up to ``--poll`` messages of one of 4
partitions at a time, the partition drawn at random (so a window's mix of machines varies).

* stationary: the same fleet, no change: drift events per hour (anything above 0 is noise);
* drifting: from the middle of the run on, every machine's temperature sensor reads
  ``--drift-step`` °C more at once and ``--drift-per-hour`` °C more each hour (a creeping
  calibration drift of the fleet): the minutes from its start to the first event on
  ``machine.temperature`` (``--confirm 1 --uncalibrated``: the policy threshold alone, every window).

It ends with one line per seed and a summary::

    fleet_drift: windows=N stationary_events_per_hour=X drifting_minutes_to_detection=Y
"""

from __future__ import annotations

import argparse
import sys
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edgewatch.flows.fleet_drift import FleetDriftLogic, bin_counts  # noqa: E402
from edgewatch.online_models.reference import reference_histograms  # noqa: E402
from edgewatch.schema import RawMessage, Reading, SourceRef, parse_message  # noqa: E402
from edgewatch.simulator import Fleet  # noqa: E402

TICK_SECONDS = 60.0


def stream(devices: int, ticks: int, seed: int) -> list[Reading]:
    fleet = Fleet(devices=devices, seed=seed, tick_seconds=TICK_SECONDS, warmup_ticks=200, ambient_period=1440)
    readings = []
    for i, r in enumerate(fleet.records(devices * ticks)):
        item = parse_message(RawMessage(r.key, r.value, r.headers, *SourceRef("t", 0, i, r.timestamp_ms)))
        if isinstance(item, Reading):
            readings.append(item)
    return readings


def polls(readings: list[Reading], size: int, seed: int):
    """Readings as Kafka polls: ``size`` of one partition at a time, the partition drawn at random."""
    queues = [[] for _ in range(4)]
    for reading in readings:
        queues[zlib.crc32(reading.device_id.encode()) % 4].append(reading)
    rng, positions = np.random.default_rng(seed), [0, 0, 0, 0]
    while any(p < len(q) for p, q in zip(positions, queues, strict=True)):
        open_ = [i for i in range(4) if positions[i] < len(queues[i])]
        i = open_[rng.integers(len(open_))]
        yield queues[i][positions[i] : positions[i] + size]
        positions[i] += size


def monitor(model, readings, args, seed):
    logic = FleetDriftLogic(lambda version: model.metadata["reference"], args.window, args.psi, None, args.confirm)
    events, states = [], []  # states: (source time, features drifting) after each poll
    for batch in polls(readings, args.poll, seed):
        counts = bin_counts(batch, model)
        if counts is not None:
            found, _ = logic.on_batch([counts])
            events.extend(e for item in found for e in item)
            states.append((counts[3], set(logic.drifting)))
    return events, states, logic


def drifted(readings: list[Reading], start: float, per_hour: float, step: float) -> list[Reading]:
    out = []
    for r in readings:
        if r.timestamp >= start:
            features = dict(r.features)
            features["machine.temperature"] += step + per_hour * (r.timestamp - start) / 3600
            r = Reading(r.device_id, r.timestamp, features, r.raw)
        out.append(r)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=40)
    parser.add_argument("--history-hours", type=float, default=48)
    parser.add_argument("--hours", type=float, default=48)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--window", type=int, default=10_000)
    parser.add_argument("--psi", type=float, default=0.25)
    parser.add_argument("--poll", type=int, default=500)
    parser.add_argument("--confirm", type=int, default=2, help="windows above in a row (1: no hysteresis)")
    parser.add_argument("--uncalibrated", action="store_true", help="ablation: the policy threshold only")
    parser.add_argument("--drift-per-hour", type=float, default=1.0)
    parser.add_argument("--drift-step", type=float, default=0.0, help="°C added at once when the drift starts")
    args = parser.parse_args()
    history_ticks = int(args.history_hours * 3600 / TICK_SECONDS)
    live_ticks = int(args.hours * 3600 / TICK_SECONDS)
    rates, delays, windows = [], [], 0
    for seed in args.seeds:
        readings = stream(args.devices, 200 + history_ticks + live_ticks, seed)
        history = readings[200 * args.devices : (200 + history_ticks) * args.devices]
        live = readings[(200 + history_ticks) * args.devices :]
        reference = reference_histograms(history)
        if args.uncalibrated:
            reference = {name: {**ref, "window_psi": {}} for name, ref in reference.items()}
        model = SimpleNamespace(version="reference", metadata={"reference": reference})
        stationary, _, logic = monitor(model, live, args, seed)
        hours = (live[-1].timestamp - live[0].timestamp) / 3600
        rates.append(len(stationary) / hours)
        windows += logic.windows
        start = live[len(live) // 2].timestamp
        _, states, _ = monitor(model, drifted(live, start, args.drift_per_hour, args.drift_step), args, seed)
        # detected: the first window after the start that leaves the temperature drifting
        hot = [at for at, drifting in states if at >= start and "machine.temperature" in drifting]
        delay = (hot[0] - start) / 60 if hot else float("inf")
        delays.append(delay)
        print(f"seed {seed}: stationary {len(stationary)} events in {hours:.0f} h ({rates[-1]:.2f}/h, "
              f"{sorted({e.feature for e in stationary})}); drifting: detected after {delay:.0f} min")  # fmt: skip
    print(f"fleet_drift: windows={windows} stationary_events_per_hour={np.mean(rates):.3f} "
          f"drifting_minutes_to_detection={np.median(delays):.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
