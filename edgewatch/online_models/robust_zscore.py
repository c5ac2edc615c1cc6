"""Robust forecast-residual z-scores with a stuck-sensor check, per feature."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
from numba import njit
from river.base import AnomalyDetector

LOG10_FLOOR = 1e-300
UNLIKELY_RUN_DECADES = 2.0
# the kernel's state columns (VectorBank fields)
_FIELDS = ("n", "level", "trend", "scale", "pending", "confirmations", "last", "run", "p_repeat")
N, LEVEL, TREND, SCALE, PENDING, CONFIRMATIONS, LAST, RUN, P_REPEAT = range(len(_FIELDS))


def tail_surprise(z: float) -> float:
    """``-log10`` of the two-sided Gaussian tail probability of ``z``."""
    if z <= 0.0:
        return 0.0
    return -math.log10(max(math.erfc(z / math.sqrt(2.0)), LOG10_FLOOR))


class _Channel:
    __slots__ = ("confirmations", "last", "level", "n", "p_repeat", "pending", "run", "scale", "trend")

    def __init__(self, x: float):
        self.n = 1
        self.level = x
        self.trend = 0.0
        self.scale = 0.0  # running mean |forecast error|
        self.pending = math.nan  # a candidate new level after an outlier
        self.confirmations = 0  # readings that agreed with the candidate so far
        self.last = x
        self.run = 0
        self.p_repeat = 0.0


class RobustZScore(AnomalyDetector):
    """Per-feature forecast residuals, robust to outliers, plus a stuck-sensor check.

    Every feature gets a Holt (level + trend) forecaster whose level is not pulled by
    outliers: an outlier becomes a *candidate* level, adopted once the next
    ``confirm_shift`` readings agree with it (a level shift) and discarded as soon as one
    does not (a spike); meanwhile each reading is scored against the closer of the two. The forecast error,
    divided by a running mean absolute error, is a z-score; a run of exactly repeated
    values is scored against how often that feature repeats normally. Each check gives
    a surprise in decades (``-log10`` of its tail probability); the score is the largest
    surprise over features and checks divided by ``surprise_scale``, capped at 1.

    Args:
        level_alpha: Holt level smoothing.
        trend_beta: Holt trend smoothing (fraction of the level correction).
        scale_alpha: smoothing of the mean absolute forecast error.
        outlier_z: beyond this z the reading does not move the level.
        confirm_shift: readings that must agree with a candidate level before it is adopted.
        min_samples: readings before the first non-zero score.
        repeat_alpha: smoothing of the repeat probability.
        repeat_floor: smallest repeat probability assumed.
        surprise_scale: surprise (decades) that maps to score 1.

    Examples:
        >>> from edgewatch.online_models.robust_zscore import RobustZScore
        >>> detector = RobustZScore(min_samples=5)
        >>> for t in range(50):
        ...     x = {"temp": 20.0 + 0.5 * t + 0.1 * (-1) ** t}
        ...     _ = detector.score_one(x)
        ...     detector.learn_one(x)
        >>> detector.score_one({"temp": 45.0}) < 0.2
        True
        >>> detector.score_one({"temp": 60.0})
        1.0
    """

    def __init__(
        self,
        level_alpha: float = 0.5,
        trend_beta: float = 0.1,
        scale_alpha: float = 0.05,
        outlier_z: float = 4.0,
        confirm_shift: int = 2,
        min_samples: int = 20,
        repeat_alpha: float = 0.02,
        repeat_floor: float = 0.001,
        surprise_scale: float = 10.0,
    ):
        self.level_alpha = level_alpha
        self.trend_beta = trend_beta
        self.scale_alpha = scale_alpha
        self.outlier_z = outlier_z
        self.confirm_shift = confirm_shift
        self.min_samples = min_samples
        self.repeat_alpha = repeat_alpha
        self.repeat_floor = repeat_floor
        self.surprise_scale = surprise_scale
        self._channels: dict[str, _Channel] = {}

    def _forecast_error(self, ch: _Channel, x: float) -> float:
        """Forecast error of ``x`` under the better of the level and the candidate level."""
        error = x - (ch.level + ch.trend)
        if ch.pending == ch.pending:  # not NaN
            error_new = x - (ch.pending + ch.trend)
            if abs(error_new) < abs(error):
                return error_new
        return error

    def _sigma(self, ch: _Channel) -> float:
        # mean |error| of a Gaussian is sigma * sqrt(2/pi); floor keeps flat signals finite
        return max(ch.scale * 1.2533141373155, 1e-9 * max(1.0, abs(ch.level)))

    def _repeat_surprise(self, ch: _Channel, repeats: int) -> float:
        return -repeats * math.log10(max(ch.p_repeat, self.repeat_floor))

    def learn_one(self, x: dict) -> None:
        for name, value in x.items():
            ch = self._channels.get(name)
            if ch is None:
                self._channels[name] = _Channel(value)
                continue
            self._learn_value(ch, value)
            repeated = value == ch.last
            ch.run = ch.run + 1 if repeated else 0
            # like outliers for the level, a run that was already unlikely (< 1 %) does not teach
            # that runs are normal: a stuck sensor must not make itself look healthy
            unlikely = ch.n > self.min_samples and self._repeat_surprise(ch, ch.run) > UNLIKELY_RUN_DECADES
            if not (repeated and unlikely):
                ch.p_repeat += max(self.repeat_alpha, 1.0 / ch.n) * (repeated - ch.p_repeat)
            ch.last = value
            ch.n += 1

    def _learn_value(self, ch: _Channel, value: float) -> None:
        error = value - (ch.level + ch.trend)
        if ch.pending == ch.pending:  # a candidate level is waiting for confirmation
            error_new = value - (ch.pending + ch.trend)
            if abs(error_new) >= abs(error):
                ch.pending = math.nan  # it was a spike: back to the old level
            elif ch.confirmations + 1 >= self.confirm_shift:
                ch.level, ch.pending, error = ch.pending, math.nan, error_new  # a level shift
            else:
                ch.confirmations += 1
                ch.level += ch.trend
                ch.pending = value
                return
        predicted = ch.level + ch.trend
        abs_error = abs(error)
        warm = ch.n > self.min_samples
        if warm and abs_error > self.outlier_z * self._sigma(ch):
            ch.level = predicted
            ch.pending = value
            ch.confirmations = 0
            abs_error = self.outlier_z * self._sigma(ch)
        else:
            ch.level = predicted + self.level_alpha * error
            ch.trend += self.trend_beta * self.level_alpha * error
        rate = self.scale_alpha if warm else 1.0 / ch.n
        ch.scale += rate * (abs_error - ch.scale)

    def score_one(self, x: dict) -> float:
        largest_z = 0.0
        surprise = 0.0
        for name, value in x.items():
            ch = self._channels.get(name)
            if ch is None or ch.n <= self.min_samples:
                continue
            z = abs(self._forecast_error(ch, value)) / self._sigma(ch)
            if z > largest_z:
                largest_z = z
            if value == ch.last:
                surprise = max(surprise, self._repeat_surprise(ch, ch.run + 1))
        # the tail probability is monotonic in z: one erfc for the largest is enough
        return min(1.0, max(surprise, tail_surprise(largest_z)) / self.surprise_scale)

    # The same detector for a whole bank of devices (VectorBank): one row per device, one
    # column per feature, and a compiled kernel that mirrors learn_one/score_one above
    # operation for operation, reading after reading (counts are float64: exact integers).
    ARRAY_STATE: ClassVar[dict[str, tuple]] = {
        name: (np.float64, math.nan if name == "pending" else 0.0) for name in _FIELDS
    }

    def export_arrays(self, features) -> dict[str, np.ndarray]:
        """This detector's state as one bank row (``features`` in the bank's column order): how a
        warm-started device enters a VectorBank, and how a model is saved as arrays."""
        out = {
            name: np.full(len(features), initial, dtype=dtype) for name, (dtype, initial) in self.ARRAY_STATE.items()
        }
        for column, name in enumerate(features):
            channel = self._channels.get(name)
            if channel is not None:
                for field in _FIELDS:
                    out[field][column] = float(getattr(channel, field))
        return out

    def import_arrays(self, features, arrays: dict[str, np.ndarray]) -> None:
        """Set this detector's state from one bank row (what :meth:`export_arrays` returns)."""
        self._channels = {}
        for column, name in enumerate(features):
            if arrays["n"][column] == 0.0:  # a column the detector never saw
                continue
            channel = self._channels[name] = _Channel(0.0)
            for field in _FIELDS:
                stored = float(arrays[field][column])
                setattr(channel, field, int(stored) if field in ("n", "confirmations", "run") else stored)

    def score_learn_rows(self, blocks: dict[str, np.ndarray], rows: np.ndarray, x: np.ndarray, t=None) -> np.ndarray:
        """Score then learn ``x[i]`` in state row ``rows[i]`` of the bank's ``(devices, fields, features)`` block."""
        return _score_learn(
            blocks["n"],
            rows,
            x,
            np.array(
                [self.level_alpha, self.trend_beta, self.scale_alpha, self.outlier_z, self.confirm_shift,
                 self.min_samples, self.repeat_alpha, self.repeat_floor, self.surprise_scale],
                dtype=np.float64,
            ),
        )  # fmt: skip


@njit(cache=True)
def _tail_surprise(z: float) -> float:
    if z <= 0.0:
        return 0.0
    return -math.log10(max(math.erfc(z / math.sqrt(2.0)), LOG10_FLOOR))


@njit(cache=True, inline="always")
def _sigma(s, r: int, f: int) -> float:
    return max(s[r, SCALE, f] * 1.2533141373155, 1e-9 * max(1.0, abs(s[r, LEVEL, f])))


@njit(cache=True)
def _score_learn(s, rows, x, params):  # pragma: no cover - compiled
    level_alpha, trend_beta, scale_alpha, outlier_z = params[0], params[1], params[2], params[3]
    confirm_shift, min_samples, repeat_alpha = params[4], params[5], params[6]
    repeat_floor, surprise_scale = params[7], params[8]
    readings, features = x.shape
    scores = np.empty(readings)
    for i in range(readings):
        r = rows[i]
        # score_one
        largest_z = 0.0
        surprise = 0.0
        for f in range(features):
            value = x[i, f]
            if s[r, N, f] == 0.0 or s[r, N, f] <= min_samples:
                continue
            error = value - (s[r, LEVEL, f] + s[r, TREND, f])
            pending = s[r, PENDING, f]
            if pending == pending:
                error_new = value - (pending + s[r, TREND, f])
                if abs(error_new) < abs(error):
                    error = error_new
            z = abs(error) / _sigma(s, r, f)
            if z > largest_z:
                largest_z = z
            if value == s[r, LAST, f]:
                repeats = -(s[r, RUN, f] + 1) * math.log10(max(s[r, P_REPEAT, f], repeat_floor))
                surprise = max(surprise, repeats)
        scores[i] = min(1.0, max(surprise, _tail_surprise(largest_z)) / surprise_scale)
        # learn_one
        for f in range(features):
            value = x[i, f]
            n = s[r, N, f]
            if n == 0.0:
                s[r, LEVEL, f], s[r, TREND, f], s[r, SCALE, f] = value, 0.0, 0.0
                s[r, PENDING, f], s[r, CONFIRMATIONS, f] = np.nan, 0.0
                s[r, LAST, f], s[r, RUN, f], s[r, P_REPEAT, f], s[r, N, f] = value, 0.0, 0.0, 1.0
                continue
            _learn_value(s, r, f, value, level_alpha, trend_beta, scale_alpha, outlier_z, confirm_shift, min_samples)
            repeated = value == s[r, LAST, f]
            s[r, RUN, f] = s[r, RUN, f] + 1 if repeated else 0.0
            unlikely = n > min_samples and (
                -s[r, RUN, f] * math.log10(max(s[r, P_REPEAT, f], repeat_floor)) > UNLIKELY_RUN_DECADES
            )
            if not (repeated and unlikely):
                rate = max(repeat_alpha, 1.0 / n)
                s[r, P_REPEAT, f] += rate * ((1.0 if repeated else 0.0) - s[r, P_REPEAT, f])
            s[r, LAST, f] = value
            s[r, N, f] = n + 1
    return scores


@njit(cache=True, inline="always")
def _learn_value(s, r, f, value, level_alpha, trend_beta, scale_alpha, outlier_z, confirm_shift, min_samples):
    error = value - (s[r, LEVEL, f] + s[r, TREND, f])
    pending = s[r, PENDING, f]
    if pending == pending:  # a candidate level is waiting for confirmation
        error_new = value - (pending + s[r, TREND, f])
        if abs(error_new) >= abs(error):
            s[r, PENDING, f] = np.nan
        elif s[r, CONFIRMATIONS, f] + 1 >= confirm_shift:
            s[r, LEVEL, f], s[r, PENDING, f], error = pending, np.nan, error_new
        else:
            s[r, CONFIRMATIONS, f] += 1
            s[r, LEVEL, f] += s[r, TREND, f]
            s[r, PENDING, f] = value
            return
    predicted = s[r, LEVEL, f] + s[r, TREND, f]
    abs_error = abs(error)
    n = s[r, N, f]
    warm = n > min_samples
    if warm and abs_error > outlier_z * _sigma(s, r, f):
        s[r, LEVEL, f] = predicted
        s[r, PENDING, f] = value
        s[r, CONFIRMATIONS, f] = 0.0
        abs_error = outlier_z * _sigma(s, r, f)
    else:
        s[r, LEVEL, f] = predicted + level_alpha * error
        s[r, TREND, f] += trend_beta * level_alpha * error
    rate = scale_alpha if warm else 1.0 / n
    s[r, SCALE, f] += rate * (abs_error - s[r, SCALE, f])
