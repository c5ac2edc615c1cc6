"""Compact novelty: a weekly profile, two small shingle memories and sanity checks, in ~2 KB per feature."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import ClassVar

import numpy as np
from river.base import AnomalyDetector

from edgewatch.online_models import compact_novelty_kernel as kernel

_LN10 = math.log(10.0)
_SQRT2 = math.sqrt(2.0)
# Numerical Recipes' erfc: erfc(x) = t exp(-x^2 + P(t)), t = 1 / (1 + x / 2), relative error < 1.2e-7
_ERFC_COEFFS = (
    -1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806,
    0.27886807, -1.13520398, 1.48851587, -0.82215223, 0.17087277,
)  # fmt: skip
_PROFILE_CLIP = 1.0e4  # normalized values kept in the float16 profile


def gaussian_surprise(z: float) -> float:
    """``-log10 P(|Z| >= z)`` for a standard Gaussian ``Z`` (0 for ``z <= 0``).

    Computed as ``-log10 erfc(z / sqrt(2))`` from Numerical Recipes' approximation of
    ``log erfc``, which needs only ``exp``-free arithmetic and one ``log`` (vectorizes in
    numpy without scipy) and has a relative error below 1.2e-7 in the probability.
    """
    if z <= 0.0:
        return 0.0
    x = z / _SQRT2
    t = 1.0 / (1.0 + 0.5 * x)
    poly = _ERFC_COEFFS[9]
    for c in _ERFC_COEFFS[8::-1]:
        poly = c + t * poly
    return -(math.log(t) - x * x + poly) / _LN10


def _row_sums_of_squares(diff: np.ndarray) -> np.ndarray:
    """Sum of squares of each row, column after column: the order the compiled bank adds in."""
    total = diff[:, 0] * diff[:, 0]
    for q in range(1, diff.shape[1]):
        total = total + diff[:, q] * diff[:, q]
    return total


class _Gauss:
    """Running mean and variance of a raw novelty, all values weighted equally."""

    __slots__ = ("max", "mu", "n", "var")

    def __init__(self):
        self.n, self.mu, self.var = 0, 0.0, 0.0
        self.max = 0.0  # the largest value (what the relational detector's empirical bound needs)

    def zscore(self, d: float, min_n: int) -> float:
        """Standard score of ``d`` (-inf until ``min_n`` values and a positive variance)."""
        if self.n < min_n or self.var <= 0.0:
            return -math.inf
        return (d - self.mu) / math.sqrt(self.var)

    def update(self, d: float) -> None:
        self.n += 1
        a = 1.0 / self.n
        delta = d - self.mu
        self.mu += a * delta
        self.var = (1.0 - a) * (self.var + a * delta * delta)
        self.max = max(self.max, d)


class _Scale:
    """Blocks of ``size`` readings, shingles of ``w`` block values, an LRU memory of shingles."""

    __slots__ = (
        "acc_max", "acc_min", "acc_n", "acc_sum", "blocks", "extreme", "gauss", "mem", "mem_n", "ring", "size", "used",
    )  # fmt: skip

    def __init__(self, size: int, w: int, memory: int, extreme: bool):
        self.size = size
        self.extreme = extreme
        self.acc_sum, self.acc_max, self.acc_min, self.acc_n = 0.0, -math.inf, math.inf, 0
        self.ring = np.zeros(2 * w)  # the last 2w block values, oldest first
        self.blocks = 0
        self.mem = np.zeros((memory, w), dtype=np.float32)
        self.used = np.zeros(memory, dtype=np.int32)  # block count when last stored or matched
        self.mem_n = 0
        self.gauss = _Gauss()

    def block_value(self, z: float) -> float | None:
        """The value of the block ``z`` completes (its mean, or its extreme farthest from its mean), or None."""
        if self.acc_n + 1 < self.size:
            return None
        mean = (self.acc_sum + z) / self.size
        if not self.extreme:
            return mean
        hi, lo = max(self.acc_max, z), min(self.acc_min, z)
        return hi if hi - mean >= mean - lo else lo

    def nearest(self, y: float, w: int) -> tuple[float, int]:
        """RMS distance from the shingle ending with block value ``y`` to its nearest exemplar."""
        if self.mem_n == 0 or self.blocks + 1 < w:
            return math.nan, -1
        query = np.empty(w)
        query[: w - 1] = self.ring[w + 1 :]
        query[w - 1] = y
        diff = self.mem[: self.mem_n] - query  # float32 exemplars, float64 arithmetic
        d2 = _row_sums_of_squares(diff)
        j = int(np.argmin(d2))
        return math.sqrt(float(d2[j]) / w), j


class _Feature:
    __slots__ = (
        "fixed", "gauss", "has_resid", "hi", "last", "lo", "max_run", "max_step", "n", "p_repeat", "profile",
        "record_n", "records", "resid", "run", "scales", "seen_max", "seen_min",
    )  # fmt: skip

    def __init__(self, x: float, scales: list[_Scale], bins: int):
        self.n = 0
        self.lo = self.hi = x
        self.fixed = False  # normalization range fixed by fit_history
        self.seen_min = self.seen_max = x
        self.last = x
        self.run = 0
        self.max_run = 0  # longest completed run of repeats
        self.p_repeat = 0.0
        self.max_step = 0.0  # largest step |x - previous x|, jumps clipped
        self.scales = scales
        self.profile = np.full(bins, np.nan, dtype=np.float16)  # EW mean per time-of-week bin
        self.resid = 0.0  # EW-smoothed residual from the profile
        self.has_resid = False
        self.gauss = _Gauss()  # of |resid|
        self.records = 0  # readings (after warmup) that set a new extreme beyond the tolerance
        self.record_n = 0  # readings after warmup


class CompactNovelty(AnomalyDetector):
    """Online novelty from a weekly profile, short shapes and sanity checks, in a fixed small state.

    Every feature is min-max normalized with the range of its history (see
    :meth:`fit_history`; without history, the range of its first ``warmup`` readings)
    and watched by three kinds of channels, each turned into a *surprise* in decades:

    * **Weekly profile** (when timestamps ``t`` are given): the week is cut into bins
      of ``bin_width`` seconds (336 half-hours by default); each bin keeps an EW mean
      of the normalized value (rate ``profile_rate``, stored as float16). The residual
      from the current bin's mean is smoothed (rate ``residual_rate``); its magnitude is
      calibrated against its own running mean and variance as a Gaussian tail surprise
      ``-log10 P(|Z| >= z)`` (the idea of HTM's anomaly likelihood), after
      ``min_profile`` residuals. A bin is used once visited, so the channel compares
      with the same time last week. For a high-rate stream it degrades gracefully into
      a short-term level residual.
    * **Shingles** at each block size in ``scales``: blocks of readings are reduced to
      one value (see ``summaries``), and the last ``window`` block values form
      a shingle, compared with a memory of ``memory`` earlier, non-overlapping shingles
      (float32; the least recently stored or matched one is replaced, an exact copy only
      refreshes its exemplar). The RMS distance to the nearest exemplar is calibrated as
      above after ``min_blocks`` blocks.
    * **Checks**: a reading beyond the range seen so far by more than
      ``extreme_tolerance`` of that range (after ``extreme_warmup`` readings, and only
      while such records have been rare, see ``record_rate``), or a step
      larger than ``jump_factor`` times the largest normal step, is worth
      ``extreme_surprise``; a run of exactly repeated readings longer than any before is
      worth ``run * -log10(p_repeat)``.

    The score is ``u / (u + surprise_scale)`` for the largest surprise ``u`` over the
    features and channels, in [0, 1); with several features, the calibrated channels'
    surprise is lowered by ``log10(features)`` (Bonferroni: more features, more chances
    of a high by chance). Alarms are debounced per detector: a score must
    exceed ``refractory_factor`` times the largest earlier reported score, decayed with a
    half-life of ``refractory`` readings, otherwise 0 is reported.

    State per feature (defaults), fixed in size: 2 x 16 x 6 float32 exemplars (768 B),
    2 x 16 int32 ages (128 B), 2 x 12 float64 recent block values (192 B), 336 float16
    profile bins (672 B) and 34 scalars (272 B): about 2.0 KB; per detector one
    debouncing level. Per reading: at most 2 x 2 x 96 multiply-adds (a scale whose block
    completes searches its 16 x 6 exemplars twice: for the query and for the copy check
    of the shingle it stores), on average about 120, plus a few dozen scalar operations.
    Arithmetic is float64; float32/float16 only store.

    Args:
        scales: block sizes (readings per block) of the shingle channels.
        summaries: how each scale reduces a block to one value: ``"extreme"`` (the block's
            extreme farthest from its mean: short spikes stay visible) or ``"mean"``
            (stable for long blocks).
        window: block values per shingle.
        memory: exemplar shingles kept per scale.
        warmup: readings before the first score (and whose range normalizes a feature
            that has no history).
        min_blocks: calibration blocks a scale needs before it scores.
        period: seconds of the profile's cycle (a week).
        bin_width: seconds per profile bin.
        profile_rate: EW rate of a bin's mean.
        residual_rate: EW rate of the smoothed residual.
        min_profile: calibration residuals the profile channel needs before it scores.
        extreme_tolerance: fraction of the seen range a new extreme must exceed.
        extreme_warmup: readings before new extremes are flagged.
        record_rate: new extremes are flagged only while at most this fraction of the
            readings since ``warmup`` set one (a wandering signal sets records all the time).
        jump_factor: a step larger than ``jump_factor`` times the largest normal step
            is a jump.
        step_growth: after warmup (and outside history), one step raises the largest
            normal step by at most this fraction (slow drifts and accelerating climbs
            do not ratchet it up).
        extreme_surprise: surprise (decades) of a new extreme or a jump.
        repeat_alpha: smallest EW rate of the probability that a reading repeats the last.
        repeat_floor: smallest repeat probability assumed.
        surprise_scale: surprise that maps to score 0.5.
        refractory: half-life (readings) of the debouncing level.
        refractory_factor: how much a score must exceed the debouncing level.
        profile: whether the weekly profile channel runs (on by default; off measures what it
            adds, ``bench/ablation.py``).

    Examples:
        >>> import math
        >>> from edgewatch.online_models.compact_novelty import CompactNovelty
        >>> def reading(i):
        ...     return {"temp": 20.0 + math.sin(i / 5.0) + 0.05 * (i % 3)}
        >>> detector = CompactNovelty()
        >>> detector.fit_history([reading(i) for i in range(400)], [300.0 * i for i in range(400)])
        >>> scores = []
        >>> for i in range(400, 600):
        ...     x = reading(i)
        ...     if i == 500:
        ...         x["temp"] += 3.0
        ...     scores.append(detector.score_one(x, 300.0 * i))
        ...     detector.learn_one(x, 300.0 * i)
        >>> max(scores[:100]) < 0.3 < scores[100]
        True
        >>> 0.0 <= min(scores) and max(scores) < 1.0
        True
    """

    def __init__(
        self,
        scales: Sequence[int] = (4, 16),
        summaries: Sequence[str] = ("extreme", "mean"),
        window: int = 6,
        memory: int = 16,
        warmup: int = 20,
        min_blocks: int = 8,
        period: float = 604800.0,
        bin_width: float = 1800.0,
        profile_rate: float = 0.3,
        residual_rate: float = 0.2,
        min_profile: int = 50,
        extreme_tolerance: float = 0.05,
        extreme_warmup: int = 100,
        record_rate: float = 0.02,
        jump_factor: float = 2.0,
        step_growth: float = 0.02,
        extreme_surprise: float = 30.0,
        repeat_alpha: float = 0.005,
        repeat_floor: float = 0.001,
        surprise_scale: float = 10.0,
        refractory: float = 80.0,
        refractory_factor: float = 1.4,
        profile: bool = True,
    ):
        self.scales = tuple(scales)
        self.summaries = tuple(summaries)
        if len(self.summaries) != len(self.scales) or not set(self.summaries) <= {"extreme", "mean"}:
            raise ValueError(f"summaries must be 'extreme' or 'mean', one per scale: {summaries!r}")
        self.window = window
        self.memory = memory
        self.warmup = warmup
        self.min_blocks = min_blocks
        self.period = period
        self.bin_width = bin_width
        self.profile_rate = profile_rate
        self.residual_rate = residual_rate
        self.min_profile = min_profile
        self.extreme_tolerance = extreme_tolerance
        self.extreme_warmup = extreme_warmup
        self.record_rate = record_rate
        self.jump_factor = jump_factor
        self.step_growth = step_growth
        self.extreme_surprise = extreme_surprise
        self.repeat_alpha = repeat_alpha
        self.repeat_floor = repeat_floor
        self.surprise_scale = surprise_scale
        self.refractory = refractory
        self.refractory_factor = refractory_factor
        self.profile = profile
        self._bins = max(1, math.ceil(period / bin_width))
        self._features: dict[str, _Feature] = {}
        self._level = 0.0  # debouncing level
        self._decay = 0.5 ** (1.0 / refractory) if refractory > 0 else 0.0
        self._cache: tuple | None = None
        self._populating = False  # fit_history's first half: memories only, no calibration
        self._history = False  # in fit_history: every step is normal

    # ------------------------------------------------------------------ helpers

    def _new_feature(self, x: float) -> _Feature:
        scales = [
            _Scale(s, self.window, self.memory, summary == "extreme")
            for s, summary in zip(self.scales, self.summaries, strict=True)
        ]
        return _Feature(x, scales, self._bins)

    @staticmethod
    def _normalize(f: _Feature, x: float) -> float:
        span = f.hi - f.lo
        return (x - f.lo) / span if span > 0 else x - f.lo

    def _bin(self, t: float | None) -> int:
        if t is None or not self.profile:
            return -1
        return int((float(t) % self.period) // self.bin_width)

    def _checks(self, f: _Feature, x: float) -> float:
        """Surprise of a new extreme, a jump or a record run of repeats."""
        u = 0.0
        if f.n >= self.extreme_warmup:
            span = f.seen_max - f.seen_min
            excess = max(x - f.seen_max, f.seen_min - x)
            # only where new extremes have been rare: a wandering signal sets records all the time
            rare = f.records <= self.record_rate * f.record_n
            if span > 0 and excess > self.extreme_tolerance * span and rare:
                u = self.extreme_surprise
        if f.n >= self.warmup:
            if abs(x - f.last) > self.jump_factor * f.max_step:
                u = self.extreme_surprise
            if x == f.last and f.run + 1 > f.max_run:
                u = max(u, -(f.run + 1) * math.log10(max(f.p_repeat, self.repeat_floor)))
        return u

    def _evaluate(self, x: dict, t: float | None) -> tuple[float, list]:
        """Largest surprise over features and channels, and what learning needs (no state change).

        The Gaussian surprise is monotone, so it is taken once, of the largest standard score
        of the calibrated channels."""
        surprise = 0.0
        zmax = -math.inf
        b = self._bin(t)
        plans = []
        for name, value in x.items():
            value = float(value)
            f = self._features.get(name)
            if f is None:
                plans.append((name, value, None))
                continue
            z = self._normalize(f, value)
            steps = []
            for sc in f.scales:
                y = sc.block_value(z)
                if y is None:
                    steps.append(None)
                    continue
                d, j = sc.nearest(y, self.window)
                steps.append((y, d, j))
                if j >= 0 and f.n >= self.warmup:
                    zmax = max(zmax, sc.gauss.zscore(d, self.min_blocks))
            resid = None
            if b >= 0:
                m = float(f.profile[b])
                if m == m:  # bin visited before
                    r = z - m
                    resid = (1.0 - self.residual_rate) * f.resid + self.residual_rate * r if f.has_resid else r
                    zmax = max(zmax, f.gauss.zscore(abs(resid), self.min_profile))
            surprise = max(surprise, self._checks(f, value))
            plans.append((name, value, (z, steps, b, resid)))
        # every feature is one more chance of a high by chance: Bonferroni over the features
        return max(surprise, gaussian_surprise(zmax) - math.log10(max(1, len(x)))), plans

    # ------------------------------------------------------------------ learning

    def _learn_scale(self, sc: _Scale, z: float, step) -> None:
        if step is None:
            sc.acc_sum += z
            sc.acc_max = max(sc.acc_max, z)
            sc.acc_min = min(sc.acc_min, z)
            sc.acc_n += 1
            return
        y, d, j = step
        w = self.window
        sc.acc_sum, sc.acc_max, sc.acc_min, sc.acc_n = 0.0, -math.inf, math.inf, 0
        sc.ring[:-1] = sc.ring[1:]
        sc.ring[-1] = y
        sc.blocks += 1
        if j >= 0:
            sc.used[j] = sc.blocks
            if sc.blocks >= 2 * w + self.min_blocks and not self._populating:
                sc.gauss.update(d)
        if sc.blocks >= 2 * w:
            # store the shingle that ended w blocks ago (it does not overlap the next queries);
            # an exact copy of an exemplar only refreshes that exemplar
            old = sc.ring[:w].astype(np.float32)
            if sc.mem_n:
                k = int(np.argmin(_row_sums_of_squares(sc.mem[: sc.mem_n] - old)))
                if np.array_equal(sc.mem[k], old):
                    sc.used[k] = sc.blocks
                    return
            k = sc.mem_n if sc.mem_n < len(sc.mem) else int(np.argmin(sc.used))
            sc.mem_n = max(sc.mem_n, k + 1)
            sc.mem[k] = old
            sc.used[k] = sc.blocks

    def _learn_plans(self, plans: list, t: float | None) -> None:
        for name, value, plan in plans:
            f = self._features.get(name)
            if f is None:
                f = self._features[name] = self._new_feature(value)
            if plan is None:  # first reading of a feature: evaluate it against the new state
                plan = self._evaluate({name: value}, t)[1][0][2]
            z, steps, b, resid = plan
            for sc, step in zip(f.scales, steps, strict=True):
                self._learn_scale(sc, z, step)
            if b >= 0:
                m = float(f.profile[b])
                zc = min(max(z, -_PROFILE_CLIP), _PROFILE_CLIP)
                f.profile[b] = zc if m != m else m + self.profile_rate * (zc - m)
                if resid is not None:
                    f.resid, f.has_resid = resid, True
                    if not self._populating:
                        f.gauss.update(abs(resid))
            if f.n >= self.warmup:
                span = f.seen_max - f.seen_min
                excess = max(value - f.seen_max, f.seen_min - value)
                f.records += span > 0 and excess > self.extreme_tolerance * span
                f.record_n += 1
            repeated = value == f.last
            if f.n > 0:
                if not repeated:
                    f.max_run = max(f.max_run, f.run)
                f.run = f.run + 1 if repeated else 0
                f.p_repeat += max(self.repeat_alpha, 1.0 / f.n) * (repeated - f.p_repeat)
                step = abs(value - f.last)
                if f.n >= self.warmup and not self._history:  # a jump raises the record a little
                    step = min(step, (1.0 + self.step_growth) * f.max_step)
                f.max_step = max(f.max_step, step)
            f.last = value
            f.seen_max = max(f.seen_max, value)
            f.seen_min = min(f.seen_min, value)
            f.n += 1
            if f.n <= self.warmup and not f.fixed:
                f.lo, f.hi = f.seen_min, f.seen_max

    def _score(self, x: dict, t: float | None) -> tuple[float, list]:
        surprise, plans = self._evaluate(x, t)
        score = surprise / (surprise + self.surprise_scale)
        if score <= self.refractory_factor * self._level * self._decay:
            score = 0.0
        return score, plans

    def learn_one(self, x: dict, t: float | None = None) -> None:
        cache = self._cache
        if cache is not None and cache[0] == x and cache[1] == t:
            score, plans = cache[2], cache[3]
        else:
            score, plans = self._score(x, t)
        self._cache = None
        self._learn_plans(plans, t)
        self._level = max(self._level * self._decay, score)

    def score_one(self, x: dict, t: float | None = None) -> float:
        score, plans = self._score(x, t)
        self._cache = (dict(x), t, score, plans)
        return score

    def fit_history(self, rows: Iterable[dict], timestamps: Iterable[float] | None = None) -> None:
        """Warm start on a block of history, taken as normal, before streaming.

        The same as learning the rows one by one (with their ``timestamps``, if given),
        except that each feature is normalized with the range of the whole history, the
        first half of the history only fills the memories and the profile (calibration
        starts on the second half, once there is something to compare with), every step
        of the history counts as a normal step, and no debouncing carries over.
        """
        rows = list(rows)
        times = [None] * len(rows) if timestamps is None else [float(t) for t in timestamps]
        if len(times) != len(rows):
            raise ValueError(f"{len(rows)} rows but {len(times)} timestamps")
        for row in rows:
            for name, value in row.items():
                value = float(value)
                f = self._features.get(name)
                if f is None:
                    f = self._features[name] = self._new_feature(value)
                f.lo, f.hi = min(f.lo, value), max(f.hi, value)
                f.fixed = True
        self._history = True
        for i, (row, t) in enumerate(zip(rows, times, strict=True)):
            self._populating = i < len(rows) // 2
            self.learn_one(row, t)
        self._populating = self._history = False
        self._level = 0.0  # alarms on history are not alarms

    # ------------------------------------------------------------------ arrays
    #
    # The same detector for a whole bank of devices (VectorBank): the state of every device
    # lives in arrays shaped (devices, ..., features, ...), and a compiled kernel
    # (compact_novelty_kernel.score_learn) scores and learns readings in arrival order, with
    # the arithmetic of _evaluate, _score and _learn_plans above. fit_history runs on the
    # objects; export_arrays hands a fitted detector's state to a bank row.

    def _array_fields(self) -> dict[str, tuple]:
        w, memory = self.window, self.memory
        fields = {name: (np.float64, 0.0) for name in kernel.FEATURE_FIELDS}
        for k in range(len(self.scales)):
            for name in kernel.SCALE_FIELDS:
                initial = {"acc_max": -math.inf, "acc_min": math.inf}.get(name, 0.0)
                fields[f"s{k}_{name}"] = (np.float64, initial)
        # the smallest nonzero step a feature has shown (its measurement resolution): tracked by the
        # relational detector's kernel (``resolution_spread``), last in the scalars' block (added later)
        fields[kernel.RESOLUTION_FIELD] = (np.float64, 0.0)
        fields["profile"] = (np.float16, math.nan, (self._bins,))
        for k in range(len(self.scales)):
            fields[f"s{k}_ring"] = (np.float64, 0.0, (2 * w,))
            fields[f"s{k}_mem"] = (np.float32, 0.0, (memory, w))
            fields[f"s{k}_used"] = (np.int32, 0, (memory,))
        return fields

    @property
    def ARRAY_STATE(self) -> dict[str, tuple]:  # the bank's field table, as for the other detectors
        return self._array_fields()

    ARRAY_DEVICE_STATE: ClassVar[dict[str, tuple]] = {"level": (np.float64, 0.0)}

    def score_learn_rows(self, blocks: dict[str, np.ndarray], rows: np.ndarray, x: np.ndarray, t: np.ndarray):
        """Score then learn ``x[i]`` (features in the bank's column order) in state row ``rows[i]``.

        ``blocks`` holds the bank's arrays by field: the float64 scalars block (devices, fields,
        features) under ``"n"``, and ``"profile"``, ``"s0_ring"``, ``"s0_mem"``, ``"s0_used"``,
        ``"level"`` (their blocks)."""
        return kernel.score_learn(
            blocks["n"],
            blocks["profile"][:, 0].view(np.uint16),
            blocks["s0_ring"],
            blocks["s0_mem"],
            blocks["s0_used"],
            blocks["level"],
            rows,
            x,
            t,
            self.profile,
            np.array(self.scales, dtype=np.int64),
            np.array([summary == "extreme" for summary in self.summaries]),
            np.array(
                [self.window, self.memory, self.warmup, self.min_blocks, self.min_profile, self.extreme_warmup],
                dtype=np.int64,
            ),
            self._float_params(),
        )

    def _float_params(self) -> np.ndarray:
        return np.array(
            [self.period, self.bin_width, self.profile_rate, self.residual_rate, self.extreme_tolerance,
             self.record_rate, self.jump_factor, self.step_growth, self.extreme_surprise, self.repeat_alpha,
             self.repeat_floor, self.surprise_scale, self.refractory_factor, self._decay, _PROFILE_CLIP],
            dtype=np.float64,
        )  # fmt: skip

    def export_arrays(self, features: Sequence[str]) -> dict[str, np.ndarray]:
        """This detector's state as one bank row (``features`` in the bank's column order):
        how a warm-started device enters a VectorBank."""
        out = {}
        for name, (dtype, initial, *shape) in self._array_fields().items():
            out[name] = np.full((len(features), *(shape[0] if shape else ())), initial, dtype=dtype)
        for column, name in enumerate(features):
            f = self._features.get(name)
            if f is None:
                continue
            for field in kernel.FEATURE_FIELDS:
                if field.startswith("profile_"):
                    out[field][column] = getattr(f.gauss, field.removeprefix("profile_"))
                else:
                    out[field][column] = float(getattr(f, field))
            out["profile"][column] = f.profile
            for k, sc in enumerate(f.scales):
                for field in kernel.SCALE_FIELDS:
                    source = sc.gauss if field.startswith("g_") else sc
                    out[f"s{k}_{field}"][column] = float(getattr(source, field.removeprefix("g_")))
                for field in ("ring", "mem", "used"):
                    out[f"s{k}_{field}"][column] = getattr(sc, field)
        out["level"] = np.float64(self._level)
        return out

    # fields that are counts or flags on the objects (float64 in the arrays)
    _INT_FIELDS: ClassVar[frozenset] = frozenset({"n", "run", "max_run", "records", "record_n", "acc_n", "blocks",
                                                  "mem_n"})  # fmt: skip
    _BOOL_FIELDS: ClassVar[frozenset] = frozenset({"fixed", "has_resid"})

    def import_arrays(self, features: Sequence[str], arrays: dict[str, np.ndarray]) -> None:
        """Set this detector's state from one bank row (what :meth:`export_arrays` returns, in
        the order of ``features``): how a model saved as arrays is loaded, without pickle."""

        def value(field: str, stored) -> int | float | bool:
            name = field.removeprefix("profile_").removeprefix("g_")
            if field in ("profile_n", "g_n") or name in self._INT_FIELDS:
                return int(stored)
            return bool(stored) if name in self._BOOL_FIELDS else float(stored)

        self._features = {}
        for column, name in enumerate(features):
            f = self._new_feature(0.0)
            for field in kernel.FEATURE_FIELDS:
                target = f.gauss if field.startswith("profile_") else f
                setattr(target, field.removeprefix("profile_"), value(field, arrays[field][column]))
            f.profile = np.array(arrays["profile"][column], dtype=np.float16)
            for k, sc in enumerate(f.scales):
                for field in kernel.SCALE_FIELDS:
                    target = sc.gauss if field.startswith("g_") else sc
                    setattr(target, field.removeprefix("g_"), value(field, arrays[f"s{k}_{field}"][column]))
                sc.ring = np.array(arrays[f"s{k}_ring"][column], dtype=np.float64)
                sc.mem = np.array(arrays[f"s{k}_mem"][column], dtype=np.float32)
                sc.used = np.array(arrays[f"s{k}_used"][column], dtype=np.int32)
            self._features[name] = f
        self._level = float(arrays["level"])
        self._cache = None
