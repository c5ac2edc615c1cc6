"""Fuzz: generated hostile messages through parse → bank → serialize, as the flow runs them.

Over 12,000 generated messages (random bytes, deep nesting, huge and odd numbers, odd times,
odd encodings, duplicate keys, huge values, spoofed headers) in batches: nothing raises,
every message ends labeled or dead-lettered (exactly one of them), every dead letter has a
reason and fits the broker's record limit, every labeled event is valid JSON. Two runs of
the same generator (``tests/fuzzing.py``, shared with the Kafka flow fuzz test): Hypothesis
strategies (a failure shrinks to a small example) and, for the bulk, batches seeded by
Hypothesis (cheaper per message; a failure names its seed). Deterministic: the same inputs
on every run.
"""

from __future__ import annotations

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgewatch.online_models.bank import new_bank
from edgewatch.online_models.registry import BUILTIN
from edgewatch.schema import (
    DEAD_LETTER_MAX_BYTES,
    DeadLetter,
    RawMessage,
    _record_size,
    dead_letter_record,
    labeled_event_json,
    parse_batch,
)
from tests.support.fuzzing import hostile_message, seeded_messages

SEEDED_BATCHES, SEEDED_BATCH_SIZE = 400, 25  # 10,000 messages
BANK = new_bank(BUILTIN["compact-novelty"])  # one bank for the whole run: state carries over as in the flow
SEEN = {"messages": 0, "labeled": 0, "dead": 0}


def check_dead_letter(dead: DeadLetter) -> None:
    assert isinstance(dead.reason, str) and dead.reason.strip(), dead
    key, value, headers = dead_letter_record(dead)
    assert _record_size(key, value, headers) <= DEAD_LETTER_MAX_BYTES
    names = [name for name, _ in headers]
    assert names.count("edgewatch.error.reason") == 1  # a spoofed one is renamed, never kept in front
    assert dict(headers)["edgewatch.error.reason"].strip()


FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


@settings(FUZZ, max_examples=500)
@given(st.lists(hostile_message(), min_size=1, max_size=8))
def test_hostile_batches_never_raise_and_every_message_is_accounted_for(batch):
    run_batch(batch)


@settings(FUZZ, max_examples=SEEDED_BATCHES)
@given(st.integers(0, 2**32 - 1))
def test_seeded_hostile_batches_never_raise_and_every_message_is_accounted_for(seed):
    run_batch(seeded_messages(seed, SEEDED_BATCH_SIZE))


def run_batch(batch) -> None:
    """parse → bank → serialize, as the flow does, checking that every message is accounted for."""
    raws = [
        RawMessage(key, value, headers, "telemetry", 0, offset, ts)
        for offset, (key, value, headers, ts) in enumerate(batch)
    ]
    readings, dead = parse_batch(raws)
    events, detect_dead, _, _ = BANK.label(readings)
    assert len(readings) + len(dead) == len(raws)
    assert len(events) + len(detect_dead) == len(readings)
    for letter in dead + detect_dead:
        check_dead_letter(letter)
    for event in events:
        body = orjson.loads(labeled_event_json(event))
        assert body["device_id"] == event.reading.device_id and body["timestamp"] is not None
    SEEN["messages"] += len(raws)
    SEEN["labeled"] += len(events)
    SEEN["dead"] += len(dead) + len(detect_dead)


def test_the_fuzz_run_covered_both_outcomes():
    """Runs after the fuzz tests (file order): enough messages, and neither outcome is vacuous."""
    if SEEN["messages"] == 0:  # run alone
        test_hostile_batches_never_raise_and_every_message_is_accounted_for()
        test_seeded_hostile_batches_never_raise_and_every_message_is_accounted_for()
    assert SEEN["messages"] >= 10_000 + 500
    assert SEEN["labeled"] >= 500 and SEEN["dead"] >= 1000, SEEN
    assert SEEN["messages"] == SEEN["labeled"] + SEEN["dead"]
    print(f"fuzz parse → bank → serialize: {SEEN}")  # the figures, with pytest -s
