"""The flow's outputs on a fixed stream, byte for byte, against a golden recorded from the code before
the throughput work (``bench/throughput.py``): optimizing must not change a single output byte.

The golden (``tests/golden/flow_outputs.json``) holds, per output (Kafka records by topic, replay
files), the record count and the sha256 of the records (of each block of 1,000 too, so a failure
says where the first difference is), and the alarm and drift records in full. A change that is
*meant* to change outputs (the detector's math, a schema) records a new golden, and says so in
its commit::

    EDGEWATCH_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/test_flow_golden.py
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from tests.support.golden_stream import flow_outputs

GOLDEN = Path(__file__).parent / "golden" / "flow_outputs.json"
BLOCK = 1000
IN_FULL = ("kafka:alarms", "kafka:drift")


def digest(records: list[bytes]) -> str:
    sha = hashlib.sha256()
    for record in records:
        sha.update(len(record).to_bytes(4, "big") + record)
    return sha.hexdigest()


def summary(outputs: dict[str, list[bytes]]) -> dict:
    return {
        name: {
            "records": len(records),
            "sha256": digest(records),
            "blocks": [digest(records[i : i + BLOCK]) for i in range(0, len(records), BLOCK)],
            **({"in_full": [r.decode() for r in records]} if name in IN_FULL else {}),
        }
        for name, records in sorted(outputs.items())
    }


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    monkeypatch = pytest.MonkeyPatch()
    try:
        yield flow_outputs(monkeypatch, tmp_path_factory.mktemp("golden"))
    finally:
        monkeypatch.undo()


def test_the_stream_exercises_every_output(outputs):
    kinds = {json.loads(json.loads(r)["value"])["event"] for r in outputs["kafka:alarms"]}
    reasons = {json.loads(json.loads(r)["value"])["reason"] for r in outputs["kafka:drift"]}
    assert kinds == {"raised", "cleared"}
    assert {"consistent-shift", "timeout"} <= reasons
    assert outputs["kafka:deadletter"] and outputs["kafka:labeled"]
    assert any(b'"is_anomaly":true' in r for r in outputs["file:labeled"])


def test_outputs_are_byte_identical_to_the_golden(outputs):
    found = summary(outputs)
    if os.environ.get("EDGEWATCH_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(found, indent=1) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert sorted(found) == sorted(golden), "the same outputs"
    for name, expected in golden.items():
        got = found[name]
        assert got["records"] == expected["records"], f"{name}: record count"
        for block, (a, b) in enumerate(zip(got["blocks"], expected["blocks"], strict=True)):
            assert a == b, f"{name}: records {block * BLOCK}..{(block + 1) * BLOCK - 1} differ from the golden"
        assert got.get("in_full") == expected.get("in_full"), name
        assert got["sha256"] == expected["sha256"], name
