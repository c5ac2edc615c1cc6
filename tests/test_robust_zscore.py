import math
import pickle

import numpy as np

from edgewatch.online_models.robust_zscore import RobustZScore


def stream(detector, values, name="x"):
    scores = []
    for value in values:
        x = {name: float(value)}
        scores.append(detector.score_one(x))
        detector.learn_one(x)
    return np.array(scores)


def noisy_ramp(n=400, seed=0):
    rng = np.random.default_rng(seed)
    return 20 + np.cumsum(rng.uniform(-0.25, 1.25, n))


def test_scores_are_in_unit_interval_and_zero_while_warming_up():
    scores = stream(RobustZScore(min_samples=20), noisy_ramp())
    assert np.all((scores >= 0) & (scores <= 1))
    assert np.all(scores[:21] == 0)


def test_spike_is_flagged_and_the_reading_after_it_is_not():
    values = noisy_ramp()
    values[300] += 20
    scores = stream(RobustZScore(), values)
    assert scores[300] >= 0.9
    assert scores[301] < 0.3
    assert scores[100:300].max() < 0.5


def test_two_tick_spike_does_not_become_the_new_level():
    values = noisy_ramp()
    values[300:302] += 20
    scores = stream(RobustZScore(), values)
    assert scores[300] >= 0.9
    assert scores[302:320].max() < 0.5


def test_level_shift_is_flagged_once_then_adopted():
    values = noisy_ramp()
    values[300:] -= 60
    scores = stream(RobustZScore(), values)
    assert scores[300] >= 0.9
    assert scores[303:].max() < 0.5


def test_stuck_sensor_is_flagged_within_three_readings():
    values = noisy_ramp()
    values[300:320] = values[299]
    scores = stream(RobustZScore(), values)
    assert scores[300:303].max() >= 0.5


def test_repeating_integer_feature_is_normal():
    rng = np.random.default_rng(1)
    scores = stream(RobustZScore(), rng.integers(24, 27, 2000))
    assert scores[100:].max() < 0.5


def test_no_look_ahead_and_deterministic():
    values = noisy_ramp()
    base = stream(RobustZScore(), values)
    changed = values.copy()
    changed[250:] = 0.0
    assert np.array_equal(stream(RobustZScore(), changed)[:250], base[:250])
    assert np.array_equal(stream(RobustZScore(), values), base)


def test_state_survives_pickle():
    detector = RobustZScore()
    stream(detector, noisy_ramp(300))
    clone = pickle.loads(pickle.dumps(detector))
    x = {"x": 500.0}
    assert clone.score_one(x) == detector.score_one(x)
    assert not math.isnan(clone.score_one(x))
