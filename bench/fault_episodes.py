"""Per fault episode of a simulated fleet: found by a cold start, by a warm start, and why not.

    python bench/fault_episodes.py [--devices 40] [--seed 1] [--set rearm_on_return=false ...]

Runs the fleet of ``faults.score_fleet`` (same options: faults, legitimate changes, ambient cycle)
through the flow's bank twice, cold and warm-started on the fault-free history, and prints each fault
episode one of them misses: its kind and ticks, and per start the largest score before debouncing
and whether the bank debounced it (its detection 0: a score below the bar ``refractory_factor`` x
the decayed level of the device's earlier scores), the bar as traced from the detection scores and
where that level came from (the reading that set it: its ground truth, the alarm it belongs to, its
explanation, the legitimate changes before it). Then every false alarm (an alarm run overlapping no
fault) of each start with its explanation. The trace does not see ``rearm_on_return`` (on by
default) drop the level where an episode ends, so its bar is an upper bound (``bar<=``); the verdict
``debounced`` / ``passed`` is the bank's own. ``--set NAME=VALUE`` (JSON values) changes the default
detector's parameters, as bench/ablation.py's variants do.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ablation import add_set_option, spec_from_sets  # noqa: E402
from edgewatch.evaluation import faults  # noqa: E402
from edgewatch.simulator.fleet import FAULT_KINDS  # noqa: E402

HISTORY, TICKS = 600, 3000


def labeled(spec, devices: int, seed: int, warm: bool) -> tuple[dict[str, dict[int, tuple]], faults.FaultScore]:
    """``score_fleet``'s run of the fleet, and per device and tick: (score, detection, abnormal, explanation)."""
    out: dict[str, dict[int, tuple]] = defaultdict(dict)

    def collect(result) -> None:
        for e in result.events:
            out[e.reading.device_id][e.reading.raw.offset // devices] = (
                e.score, e.detection_score, e.is_anomaly, e.explanation,
            )  # fmt: skip

    score = faults.score_fleet(
        spec, devices=devices, ticks=TICKS, history_ticks=HISTORY, seed=seed, warm=warm, observe=collect
    )
    return out, score


def level_origins(ticks: dict[int, tuple], decay: float) -> dict[int, tuple[float, int | None]]:
    """Per tick: the debouncing level before it (decayed) and the tick whose detection set it."""
    level, source, out = 0.0, None, {}
    for t in sorted(ticks):
        out[t] = (level * decay, source)
        detection = ticks[t][1]
        if detection >= level * decay:
            level, source = detection, t
        else:
            level *= decay
    return out


def runs(ticks: dict[int, tuple]) -> list[tuple[int, int]]:
    """The alarm runs (consecutive abnormal ticks) after the history."""
    out: list[list[int]] = []
    for t in sorted(t for t in ticks if t >= HISTORY and ticks[t][2]):
        if out and out[-1][1] == t - 1:
            out[-1][1] = t
        else:
            out.append([t, t])
    return [(a, b) for a, b in out]


def changes_before(truth: dict[int, tuple[str, str]], tick: int, span: int = 400) -> list[tuple[int, str]]:
    """The legitimate changes that started within ``span`` ticks before ``tick`` (and at it)."""
    return [(t, truth[t][1]) for t in range(max(0, tick - span), tick + 1) if truth[t][1]]


def short(shares: dict | None) -> dict:
    return {name: round(value, 2) for name, value in (shares or {}).items() if value >= 0.05}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=40, help="simulated machines (default 40)")
    parser.add_argument("--seed", type=int, default=1, help="the fleet's random seed (default 1)")
    add_set_option(parser)
    args = parser.parse_args(argv)
    if args.devices < 1:
        parser.error("argument --devices: at least one machine")
    spec = spec_from_sets(parser, args.set)
    novelty = spec.factory().novelty
    decay, factor = 0.5 ** (1.0 / novelty.refractory), novelty.refractory_factor
    devices = args.devices
    options = tuple(sorted(faults.FLEET_DEFAULTS.items()))
    records, _ = faults.simulated_messages(devices, TICKS, HISTORY, args.seed, options)  # (kept: score_fleet reuses it)
    truth: dict[str, dict[int, tuple[str, str]]] = defaultdict(dict)
    for offset, record in enumerate(records):
        truth[record.key.decode()][offset // devices] = (record.fault, record.change)
    started = {start: labeled(spec, devices, args.seed, start == "warm") for start in ("cold", "warm")}
    result = {start: run[0] for start, run in started.items()}
    origins = {start: {d: level_origins(t, decay) for d, t in result[start].items()} for start in result}
    found = sorted(started["cold"][1].episodes, key=lambda e: (e[0], e[2]))  # the fault episodes after the history

    def hit(start: str, episode) -> bool:
        device, _, first, last = episode
        return any(result[start][device][t][2] for t in range(first, last + 1))

    missed = {start: sum(not hit(start, e) for e in found) for start in result}
    print(
        f"devices={devices} seed={args.seed} episodes={len(found)} missed cold={missed['cold']} warm={missed['warm']}"
    )
    for episode in found:
        if hit("cold", episode) and hit("warm", episode):
            continue
        device, kind, first, last = episode
        verdicts = " ".join(f"{s}={'hit' if hit(s, episode) else 'MISS'}" for s in result)
        print(f"\n{device} {kind} ticks {first}-{last} {verdicts}")
        for start, by_device in result.items():
            ticks = by_device[device]
            peak = max(range(first, last + 1), key=lambda t: ticks[t][0])
            level, source = origins[start][device][peak]
            score, detection = ticks[peak][0], ticks[peak][1]
            verdict = "passed" if detection > 0.0 else "debounced" if score > 0.0 else "no score"
            line = f"  {start}: largest score {score:.3f} at {peak} (detection {detection:.3f}: {verdict})"
            line += f", debouncing bar<={factor * level:.3f}"
            if source is not None:
                inside = [r for r in runs(ticks) if r[0] <= source <= r[1]]
                before = changes_before(truth[device], source)
                line += (
                    f"; set at {source} ({peak - source} readings before) by detection {ticks[source][1]:.3f}, "
                    f"fault {truth[device][source][0] or '-'}, alarm {inside[0] if inside else '-'}, "
                    f"explanation {short(ticks[source][3])}, changes before {before or '-'}"
                )
            print(line)
    for start, by_device in result.items():
        false = [
            (device, a, b)
            for device, ticks in by_device.items()
            for a, b in runs(ticks)
            if not any(truth[device][t][0] in FAULT_KINDS for t in range(a, b + 1))
        ]
        print(f"\n{start} false alarms: {len(false)}")
        for device, a, b in false:
            ticks = by_device[device]
            level, _ = origins[start][device][a]
            before = changes_before(truth[device], a)
            print(
                f"  {device} {a}-{b} score {ticks[a][0]:.3f} bar<={factor * level:.3f} explanation "
                f"{short(ticks[a][3])} changes before {before or '-'}"
            )


if __name__ == "__main__":
    main()
