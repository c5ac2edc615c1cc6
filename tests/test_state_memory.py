"""Memory stays bounded: 100,000 devices and 1,000 random feature sets through a bank."""

import json
import subprocess
import sys

FEED = r"""
import json, sys
import numpy as np
from edgewatch.online_models.registry import BUILTIN
from edgewatch.online_models.vector_bank import VectorBank
from edgewatch.schema import RawMessage, Reading, SourceRef
from edgewatch.state.limits import StateLimits

import os

def rss() -> int:  # resident now (not the peak: compiling the kernel on a cold numba cache peaks once, early)
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

max_devices = int(sys.argv[1])
bank = VectorBank(BUILTIN["compact-novelty"], limits=StateLimits(max_devices=max_devices))
raw = RawMessage(b"", b"", [], *SourceRef("t", 0, 0))
bank.warm_up()  # the compiled kernel, as the flow loads it before its first message
peak = rss()
rng = np.random.default_rng(0)
names = [f"sensor-{i}" for i in range(400)]
kinds = [{str(n): 1.0 for n in rng.choice(names, rng.integers(2, 64), replace=False)} for _ in range(1000)]
labeled = dead = 0
for start in range(0, 100_000, 2000):
    batch = [
        Reading(f"device-{i}", float(i), {"temperature": float(i % 17), "pressure": 1.0}
                if i % 100 else dict(kinds[(i // 100) % 1000], **{}), raw)
        for i in range(start, start + 2000)
    ]
    result = bank.label(batch)
    labeled += len(result.events)
    dead += len(result.dead_letters)
    peak = max(peak, rss())
state = sum(block.nbytes for group in bank.groups.values() for block in group.blocks)
print(json.dumps({"labeled": labeled, "dead": dead, "held": len(bank), "groups": len(bank.groups),
                  "state_bytes": state, "peak_rss": peak}))
"""


def feed(max_devices: int) -> dict:
    done = subprocess.run([sys.executable, "-c", FEED, str(max_devices)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_a_hundred_thousand_devices_and_a_thousand_feature_sets_stay_under_450_mb():
    # 99,000 two-feature devices, and 1,000 devices of as many random kinds (2-63 features
    # out of 400 names): at most 256 kinds per shard and 32 features a device are accepted,
    # at most 20,000 devices held (the least recently seen dropped)
    figures = feed(20_000)
    assert figures["labeled"] + figures["dead"] == 100_000
    assert figures["dead"] > 0 and figures["groups"] <= 256
    assert figures["held"] <= 20_000
    assert figures["state_bytes"] < 20_000 * 2 * 2100 + 256 * 4 * 32 * 2100
    # ~175 MB of interpreter, numpy and compiled kernels, ~100 MB of state, and a growing
    # group briefly holds its old and new arrays
    assert figures["peak_rss"] < 450 * 2**20, figures
