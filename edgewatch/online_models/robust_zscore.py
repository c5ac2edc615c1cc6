"""Robust forecast-residual z-scores with a stuck-sensor check, per feature."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
from river.base import AnomalyDetector

LOG10_FLOOR = 1e-300
UNLIKELY_RUN_DECADES = 2.0


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

    # The same detector over arrays: one row per device, one column per feature. A VectorBank
    # gathers the rows of the devices that have a reading in a step, calls score_learn_arrays,
    # and scatters the rows back. Every operation mirrors learn_one/score_one above, in the same
    # order, so both paths give the same scores.
    # (counts are float64 too: exact integers, and one block to gather per step)
    ARRAY_STATE: ClassVar[dict[str, tuple]] = {
        "n": (np.float64, 0.0),
        "level": (np.float64, 0.0),
        "trend": (np.float64, 0.0),
        "scale": (np.float64, 0.0),
        "pending": (np.float64, math.nan),
        "confirmations": (np.float64, 0.0),
        "last": (np.float64, 0.0),
        "run": (np.float64, 0.0),
        "p_repeat": (np.float64, 0.0),
    }

    def score_learn_arrays(self, s: dict[str, np.ndarray], x: np.ndarray, t: np.ndarray | None = None) -> np.ndarray:
        """Score then learn one reading per row of ``x`` (devices × features); updates ``s`` in place."""
        n = s["n"]
        level, trend, pending = s["level"], s["trend"], s["pending"]
        warm = n > self.min_samples
        has_pending = pending == pending
        error_old = x - (level + trend)
        error_new = x - (pending + trend)
        closer = has_pending & (np.abs(error_new) < np.abs(error_old))

        # score_one
        z = np.where(warm, np.abs(np.where(closer, error_new, error_old)) / self._sigma_arrays(s), 0.0)
        repeated = x == s["last"]
        repeat_surprise = np.where(warm & repeated, self._repeat_surprise_arrays(s, s["run"] + 1), 0.0)
        largest_z = z.max(axis=1)
        tail = np.fromiter((tail_surprise(v) for v in largest_z.tolist()), np.float64, len(largest_z))
        scores = np.minimum(1.0, np.maximum(repeat_surprise.max(axis=1), tail) / self.surprise_scale)

        # learn_one: new channels take the value as their level and learn nothing else
        new = n == 0
        # a candidate level: rejected (a spike), adopted (a level shift) or still waiting
        rejected = has_pending & ~closer
        adopted = closer & (s["confirmations"] + 1 >= self.confirm_shift)
        waiting = closer & ~adopted
        level = np.where(adopted, pending, level)
        error = np.where(adopted, error_new, error_old)
        pending = np.where(rejected | adopted, math.nan, pending)
        predicted = level + trend
        abs_error = np.abs(error)
        sigma = self._sigma_arrays({"scale": s["scale"], "level": level})
        outlier = warm & (abs_error > self.outlier_z * sigma) & ~waiting
        normal = ~outlier & ~waiting & ~new
        updated_level = np.where(outlier, predicted, predicted + self.level_alpha * error)
        s["level"] = np.where(new, x, np.where(waiting, s["level"] + trend, updated_level))
        s["trend"] = np.where(normal, trend + self.trend_beta * self.level_alpha * error, np.where(new, 0.0, trend))
        s["pending"] = np.where(outlier | waiting, x, np.where(new, math.nan, pending))
        s["confirmations"] = np.where(waiting, s["confirmations"] + 1, np.where(outlier, 0, s["confirmations"]))
        clipped = self.outlier_z * self._sigma_arrays({"scale": s["scale"], "level": predicted})
        abs_error = np.where(outlier, clipped, abs_error)
        n_safe = np.maximum(n, 1)
        rate = np.where(warm, self.scale_alpha, 1.0 / n_safe)
        learned_scale = s["scale"] + rate * (abs_error - s["scale"])
        s["scale"] = np.where(new, 0.0, np.where(waiting, s["scale"], learned_scale))

        run = np.where(repeated, s["run"] + 1, 0)
        unlikely = warm & (self._repeat_surprise_arrays(s, run) > UNLIKELY_RUN_DECADES)
        learn_repeat = ~(repeated & unlikely) & ~new
        p_repeat = s["p_repeat"]
        step = np.maximum(self.repeat_alpha, 1.0 / n_safe) * (repeated - p_repeat)
        s["p_repeat"] = np.where(new, 0.0, np.where(learn_repeat, p_repeat + step, p_repeat))
        s["run"] = np.where(new, 0, run)
        s["last"] = x
        s["n"] = n + 1
        return scores

    def _sigma_arrays(self, s) -> np.ndarray:
        return np.maximum(s["scale"] * 1.2533141373155, 1e-9 * np.maximum(1.0, np.abs(s["level"])))

    def _repeat_surprise_arrays(self, s, repeats) -> np.ndarray:
        return -repeats * np.log10(np.maximum(s["p_repeat"], self.repeat_floor))
