"""Unit tests of the compact (fixed small state) novelty detector."""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest

from edgewatch.online_models.compact_novelty import CompactNovelty, gaussian_surprise

ALARM = 0.3426  # the threshold that scores best on the NAB standard profile
STEP = 1800.0  # seconds between readings (30 minutes: the 48-reading period is a day)


def seasonal(n: int, seed: int = 0, start: int = 0) -> list[dict[str, float]]:
    """A noisy periodic signal (period 48 readings) around 50."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, 0.3, n)
    return [{"value": 50.0 + 5.0 * math.sin(2 * math.pi * (start + i) / 48) + noise[i]} for i in range(n)]


def times(n: int, start: int = 0, step: float = STEP) -> list[float]:
    return [step * (start + i) for i in range(n)]


def stream(detector: CompactNovelty, rows: list[dict[str, float]], ts: list[float] | None = None) -> np.ndarray:
    ts = [None] * len(rows) if ts is None else ts
    scores = []
    for x, t in zip(rows, ts, strict=True):
        scores.append(detector.score_one(x, t))
        detector.learn_one(x, t)
    return np.array(scores)


def warm(history: int = 600, **kwargs) -> CompactNovelty:
    detector = CompactNovelty(**kwargs)
    detector.fit_history(seasonal(history), times(history))
    return detector


def state_bytes(detector: CompactNovelty) -> int:
    """Bytes of the per-feature arrays (the part that could grow)."""
    total = 0
    for f in detector._features.values():
        total += f.profile.nbytes
        for sc in f.scales:
            total += sc.mem.nbytes + sc.used.nbytes + sc.ring.nbytes
    return total


def test_gaussian_surprise_matches_tail_probability():
    assert gaussian_surprise(-1.0) == 0.0 == gaussian_surprise(0.0)
    assert gaussian_surprise(1.959963984540054) == pytest.approx(-math.log10(0.05), rel=1e-6)
    for z in (0.1, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0, 30.0):
        exact = -math.log10(math.erfc(z / math.sqrt(2.0)))
        assert gaussian_surprise(z) == pytest.approx(exact, abs=1e-6)
    # no underflow far in the tail, and still increasing
    assert gaussian_surprise(60.0) > gaussian_surprise(45.0) > gaussian_surprise(40.0) > 300.0


def test_quiet_stream_stays_below_alarm_and_scores_are_in_unit_interval():
    scores = stream(warm(), seasonal(2000, start=600, seed=1), times(2000, start=600))
    assert np.all((scores >= 0.0) & (scores < 1.0))
    assert np.sum(scores >= ALARM) <= 2  # a couple of alarms in 2000 noisy readings at most


@pytest.mark.parametrize("magnitude", [4.0, -4.0])
def test_detects_an_injected_spike(magnitude):
    rows = seasonal(400, start=600, seed=2)
    rows[300]["value"] += magnitude
    scores = stream(warm(), rows, times(400, start=600))
    assert scores[300] >= ALARM
    assert scores[300] > scores[:300].max()


def test_detects_a_level_shift_quickly():
    rows = seasonal(400, start=600, seed=3)
    for x in rows[250:]:
        x["value"] += 3.0  # within the historical range, but never seen at that phase
    scores = stream(warm(), rows, times(400, start=600))
    assert scores[:250].max() < ALARM
    assert scores[250:262].max() >= ALARM


def test_detects_a_stuck_sensor():
    # white noise: a flat run is not a novel shape here, only an unusual run of repeats
    rng = np.random.default_rng(4)
    rows = [{"value": 50.0 + float(v)} for v in rng.normal(0.0, 1.0, 900)]
    for x in rows[800:830]:
        x["value"] = 50.2
    detector = CompactNovelty()
    detector.fit_history(rows[:600], times(600))
    scores = stream(detector, rows[600:], times(300, start=600))
    assert np.sum(scores[:200] >= ALARM) <= 1
    assert scores[200:206].max() >= ALARM


def weekly(n: int, seed: int = 5) -> tuple[list[dict[str, float]], list[float]]:
    """Half-hourly load: busy on weekdays (9-17h), quiet on weekends, plus noise."""
    rng = np.random.default_rng(seed)
    rows, ts = [], []
    for i in range(n):
        t = 1800.0 * i
        day, hour = int(t // 86400) % 7, (t % 86400) / 3600
        busy = day < 5 and 9 <= hour < 17
        rows.append({"load": (80.0 if busy else 20.0) + float(rng.normal(0.0, 2.0))})
        ts.append(t)
    return rows, ts


def test_weekly_profile_flags_a_holiday_that_shapes_cannot():
    rows, ts = weekly(48 * 7 * 5)
    history = 48 * 7 * 3
    holiday = history + 48 * 7 + 48 * 2  # a weekday of week 5 that stays quiet
    for x in rows[holiday : holiday + 48]:
        x["load"] = 20.0 + (x["load"] - 80.0 if x["load"] > 50.0 else x["load"] - 20.0)
    scores = {}
    for use_time in (True, False):
        detector = CompactNovelty()
        detector.fit_history(rows[:history], ts[:history] if use_time else None)
        scores[use_time] = stream(detector, rows[history:], ts[history:] if use_time else None)
    start = holiday - history + 18  # 9h: when the day should get busy
    assert scores[True][: start - 18].max() < ALARM
    assert scores[True][start : start + 6].max() >= ALARM
    # a quiet stretch is a familiar shape: without timestamps it is not an anomaly
    assert scores[False][start : start + 16].max() < ALARM


def test_deterministic_and_no_look_ahead():
    rows = seasonal(500, start=600, seed=6)
    other = copy.deepcopy(rows)
    for x in other[300:]:
        x["value"] += 10.0
    ts = times(500, start=600)
    a = stream(warm(), rows, ts)
    b = stream(warm(), copy.deepcopy(rows), ts)
    c = stream(warm(), other, ts)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[:300], c[:300])
    assert c[300] >= ALARM > a[300]


def test_score_one_does_not_change_state():
    rows = seasonal(300, start=600, seed=7)
    ts = times(300, start=600)
    plain, probed = warm(), warm()
    expected = stream(plain, rows, ts)
    got = []
    for x, t in zip(rows, ts, strict=True):
        probed.score_one({"value": x["value"] + 7.0}, t + 1.0)  # a different reading first
        probed.score_one({"other": 1.0}, None)  # an unknown feature
        got.append(probed.score_one(x, t))
        probed.score_one(x, t)
        probed.learn_one(x, t)
    np.testing.assert_array_equal(expected, np.array(got))


def test_learn_one_without_score_one_matches():
    rows = seasonal(300, start=600, seed=8)
    ts = times(300, start=600)
    a, b = warm(), warm()
    for x, t in zip(rows, ts, strict=True):
        a.score_one(x, t)
        a.learn_one(x, t)
        b.learn_one(x, t)
    assert pickle.dumps(a._features) == pickle.dumps(b._features)
    assert a._level == b._level


def test_fit_history():
    rows, ts = seasonal(600), times(600)
    detector = CompactNovelty()
    detector.fit_history(rows, ts)
    f = detector._features["value"]
    assert f.fixed and f.n == 600
    assert (f.lo, f.hi) == (min(x["value"] for x in rows), max(x["value"] for x in rows))
    assert detector._level == 0.0  # alarms on history do not debounce the stream
    assert np.sum(~np.isnan(f.profile.astype(float))) == 336  # 600 half-hours visit every bin of the week
    with pytest.raises(ValueError, match="timestamps"):
        CompactNovelty().fit_history(rows, ts[:10])
    # without timestamps the profile stays empty and streaming still works
    untimed = CompactNovelty()
    untimed.fit_history(rows)
    assert np.all(np.isnan(untimed._features["value"].profile.astype(float)))
    scores = stream(untimed, seasonal(100, start=600, seed=9))
    assert np.all((scores >= 0.0) & (scores < 1.0))


def test_pickle_round_trip_mid_stream():
    rows = seasonal(400, start=600, seed=10)
    ts = times(400, start=600)
    detector = warm()
    stream(detector, rows[:200], ts[:200])
    clone = pickle.loads(pickle.dumps(detector))
    np.testing.assert_array_equal(stream(detector, rows[200:], ts[200:]), stream(clone, rows[200:], ts[200:]))


def test_state_is_fixed_and_small():
    detector = warm()
    size = state_bytes(detector)
    stream(detector, seasonal(3000, start=600, seed=11), times(3000, start=600))
    assert state_bytes(detector) == size < 2500


def test_several_features_and_a_late_one():
    rng = np.random.default_rng(12)
    detector = CompactNovelty()
    scores = []
    for i in range(600):
        x = {"a": float(rng.normal(10.0, 1.0)), "b": float(rng.normal(-5.0, 0.1))}
        if i >= 300:
            x["c"] = float(rng.normal(0.0, 1.0))
        if i == 500:
            x["b"] += 5.0
        scores.append(detector.score_one(x, STEP * i))
        detector.learn_one(x, STEP * i)
    scores = np.array(scores)
    assert set(detector._features) == {"a", "b", "c"}
    assert scores[500] >= ALARM
    assert np.sum(scores[200:500] >= ALARM) <= 2


def test_new_extremes_alarm_on_steady_signals_but_not_on_wandering_ones():
    rng = np.random.default_rng(3)
    steady = [{"x": float(v)} for v in rng.normal(0.0, 1.0, 400)]
    steady.append({"x": 4.5})  # beyond everything seen, by more than 5 % of the range
    assert stream(CompactNovelty(), steady)[-1] > 0.5
    # a random walk sets new records all the time: a new extreme is not news there
    walk = np.cumsum(rng.uniform(-0.5, 0.5, 2000))
    scores = stream(CompactNovelty(), [{"x": float(v)} for v in walk])
    records = np.flatnonzero(walk[1:] > np.maximum.accumulate(walk)[:-1] + 0.05 * np.ptp(walk))
    assert scores[200:].max() < 0.3426, records[:5]
