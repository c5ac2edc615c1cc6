"""Per fault episode of a simulated fleet: found by a cold start, by a warm start, and why not.

    python bench/fault_episodes.py [--devices 40] [--seed 1] [--set rearm_on_return=true ...]

Runs the fleet of ``faults.score_fleet`` (same options: faults, legitimate changes, ambient cycle)
through the flow's bank twice, cold and warm-started on the fault-free history, and prints each fault
episode one of them misses: its kind and ticks, and per start the largest score before debouncing,
the bar the debouncing set for it (``refractory_factor`` x the decayed level) and where that level
came from (the reading that set it: its ground truth, the alarm it belongs to, its explanation, the
legitimate changes before it). Then every false alarm (an alarm run overlapping no fault) of each
start with its explanation. The level is traced from the detection scores as the debouncing keeps it
(``rearm_on_return`` drops it where it ends an episode; the trace does not). ``--set name=value``
(JSON values) changes the default detector's parameters, as bench/ablation.py's variants do.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ablation import build_detector  # noqa: E402
from edgewatch.evaluation import faults  # noqa: E402
from edgewatch.online_models import artifact  # noqa: E402
from edgewatch.online_models.bank import new_bank  # noqa: E402
from edgewatch.online_models.registry import BUILTIN, DEFAULT_DETECTOR, DetectorSpec  # noqa: E402
from edgewatch.simulator.fleet import MALFORMED  # noqa: E402

HISTORY, TICKS = 600, 3000
OPTIONS = {"fault_rate": 0.002, "change_rate": 0.001, "ambient_period": 1800}  # score_fleet's


def labeled(spec, readings, split: int, devices: int, warm: bool) -> dict[str, dict[int, tuple]]:
    """Per device and tick: (score, detection, abnormal, explanation)."""
    fitted = artifact.train(spec, readings[:split], source="simulated history") if warm else None
    bank = new_bank(spec, artifact=fitted)
    stream = readings[split:] if warm else readings
    out: dict[str, dict[int, tuple]] = defaultdict(dict)
    for start in range(0, len(stream), 1000):
        for e in bank.label(stream[start : start + 1000]).events:
            out[e.reading.device_id][e.reading.raw.offset // devices] = (
                e.score, e.detection_score, e.is_anomaly, e.explanation,
            )  # fmt: skip
    return out


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


def episodes(truth: dict[str, dict[int, tuple[str, str]]]) -> list[tuple[str, int, int, str]]:
    """Fault episodes after the history: (device, first tick, last tick, kind)."""
    found = []
    for device, ticks in truth.items():
        current = None
        for t in sorted(ticks):
            kind = ticks[t][0]
            if kind and kind != MALFORMED and t >= HISTORY:
                if current and current[2] == t - 1 and current[3] == kind:
                    current[2] = t
                else:
                    current = [device, t, t, kind]
                    found.append(current)
            else:
                current = None
    return [tuple(e) for e in found]


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], help="name=value (JSON) for the default detector")
    args = parser.parse_args()
    changes = {k: json.loads(v) for k, _, v in (item.partition("=") for item in args.set)}
    base = BUILTIN[DEFAULT_DETECTOR]
    spec = base
    if changes:
        factory = functools.partial(build_detector, DEFAULT_DETECTOR, changes, {})
        spec = DetectorSpec(base.name, factory, base.threshold, base.version)
    novelty = spec.factory().novelty
    decay, factor = 0.5 ** (1.0 / novelty.refractory), novelty.refractory_factor
    devices = args.devices
    records, readings = faults.simulated_messages(devices, TICKS, HISTORY, args.seed, tuple(sorted(OPTIONS.items())))
    truth: dict[str, dict[int, tuple[str, str]]] = defaultdict(dict)
    for offset, record in enumerate(records):
        truth[record.key.decode()][offset // devices] = (record.fault, record.change)
    split = devices * HISTORY
    result = {start: labeled(spec, readings, split, devices, start == "warm") for start in ("cold", "warm")}
    origins = {start: {d: level_origins(t, decay) for d, t in result[start].items()} for start in result}
    found = episodes(truth)

    def hit(start: str, episode) -> bool:
        device, first, last, _ = episode
        return any(result[start][device][t][2] for t in range(first, last + 1))

    missed = {start: sum(not hit(start, e) for e in found) for start in result}
    print(
        f"devices={devices} seed={args.seed} episodes={len(found)} missed cold={missed['cold']} warm={missed['warm']}"
    )
    for episode in found:
        if hit("cold", episode) and hit("warm", episode):
            continue
        device, first, last, kind = episode
        verdicts = " ".join(f"{s}={'hit' if hit(s, episode) else 'MISS'}" for s in result)
        print(f"\n{device} {kind} ticks {first}-{last} {verdicts}")
        for start, by_device in result.items():
            ticks = by_device[device]
            peak = max(range(first, last + 1), key=lambda t: ticks[t][0])
            level, source = origins[start][device][peak]
            line = f"  {start}: largest score {ticks[peak][0]:.3f} at {peak} (detection {ticks[peak][1]:.3f})"
            line += f", debouncing bar {factor * level:.3f}"
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
            if not any(truth[device][t][0] not in ("", MALFORMED) for t in range(a, b + 1))
        ]
        print(f"\n{start} false alarms: {len(false)}")
        for device, a, b in false:
            ticks = by_device[device]
            level, _ = origins[start][device][a]
            before = changes_before(truth[device], a)
            print(
                f"  {device} {a}-{b} score {ticks[a][0]:.3f} bar {factor * level:.3f} explanation "
                f"{short(ticks[a][3])} changes before {before or '-'}"
            )


if __name__ == "__main__":
    main()
