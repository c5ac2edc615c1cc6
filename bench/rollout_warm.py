"""How many recent readings a rollout should teach each device's new model (``rollout_warm_readings``).

    python bench/rollout_warm.py [--seeds 5 7 2] [--warm 0 32 48 64 128 256]

The shape of ``tests/test_lifecycle_rollout.py``: 12 simulated machines (faults at 0.002), v1
trained on the first 1,500 ticks runs from tick 1,500; at tick 2,500 v2 (trained on 2,000
ticks, on all machines or half of them) rolls out, each device's new model first learning its
last ``--warm`` readings. Printed: false alarms (anomalous labels of healthy readings) over the
next 1,000 readings per device and, in brackets, the first 100; ``none``: no rollout at all.
A warm-up is good when both stay at or below ``none``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edgewatch.flows.anomaly import LiveControls  # noqa: E402
from edgewatch.online_models import artifact  # noqa: E402
from tests.support.rollout import DEVICES, SPEC, false_alarms, fleet_ticks, logic_for, run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[5, 7, 2])
    parser.add_argument("--warm", type=int, nargs="+", default=[0, 32, 48, 64, 128, 256])
    args = parser.parse_args()
    for seed in args.seeds:
        readings, faults = fleet_ticks(4500, seed)
        for trained in (DEVICES, DEVICES // 2):
            known = {f"machine-{i:04d}" for i in range(trained)}
            fitted = []
            for ticks, version in ((1500, "v1"), (2000, "v2")):
                model = artifact.train(SPEC, [r for r in readings[: ticks * DEVICES] if r.device_id in known])
                model.version = version
                fitted.append(model)
            v1, v2 = fitted
            kept, _ = run(readings, logic_for(v1, LiveControls()), 1500, 3500)
            line = [f"none {false_alarms(kept, faults, 2500, 1000)} ({false_alarms(kept, faults, 2500, 100)})"]
            for warm in args.warm:
                controls = LiveControls()
                events, _ = run(readings, logic_for(v1, controls, warm), 1500, 3500, 2500,
                                lambda controls=controls, v2=v2: controls.use_artifact(v2))  # fmt: skip
                after = [e for e in events if e.reading.raw.offset >= 2500 * DEVICES]
                line.append(
                    f"{warm}: {false_alarms(after, faults, 2500, 1000)} ({false_alarms(after, faults, 2500, 100)})"
                )
            print(f"rollout_warm: seed={seed} trained={trained}/{DEVICES} " + ", ".join(line), flush=True)


if __name__ == "__main__":
    main()
