"""Compact novelty: a weekly profile, two small shingle memories and sanity checks, in ~2 KB per feature."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import ClassVar

import numpy as np
from river.base import AnomalyDetector

_LN10 = math.log(10.0)
_SQRT2 = math.sqrt(2.0)
# Numerical Recipes' erfc: erfc(x) = t exp(-x^2 + P(t)), t = 1 / (1 + x / 2), relative error < 1.2e-7
_ERFC_COEFFS = (
    -1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806,
    0.27886807, -1.13520398, 1.48851587, -0.82215223, 0.17087277,
)  # fmt: skip
_PROFILE_CLIP = 1.0e4  # normalized values kept in the float16 profile


def gaussian_surprise_array(z: np.ndarray) -> np.ndarray:
    """:func:`gaussian_surprise` of every element (the same arithmetic, in numpy)."""
    positive = z > 0.0
    x = np.where(positive, z, 1.0) / _SQRT2
    t = 1.0 / (1.0 + 0.5 * x)
    poly = np.full_like(t, _ERFC_COEFFS[9])
    for c in _ERFC_COEFFS[8::-1]:
        poly = c + t * poly
    return np.where(positive, -(np.log(t) - x * x + poly) / _LN10, 0.0)


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


class _Gauss:
    """Running mean and variance of a raw novelty, all values weighted equally."""

    __slots__ = ("mu", "n", "var")

    def __init__(self):
        self.n, self.mu, self.var = 0, 0.0, 0.0

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
        d2 = np.einsum("ij,ij->i", diff, diff)
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
        if t is None:
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
                diff = sc.mem[: sc.mem_n] - old
                k = int(np.argmin(np.einsum("ij,ij->i", diff, diff)))
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
    # The same detector over arrays, for VectorBank: one row per device, one column per
    # feature (fields shaped (devices, features, *shape)), plus the per-device debouncing
    # level. score_learn_arrays scores and learns one reading of each row, mirroring
    # _evaluate, _score and _learn_plans above operation for operation (streaming only:
    # fit_history runs on the objects, and export_arrays hands its result to a bank).

    def _array_fields(self) -> dict[str, tuple]:
        w, memory = self.window, self.memory
        fields = {
            name: (np.float64, initial)
            for name, initial in (
                ("n", 0.0), ("lo", 0.0), ("hi", 0.0), ("fixed", 0.0), ("seen_min", 0.0), ("seen_max", 0.0),
                ("last", 0.0), ("run", 0.0), ("max_run", 0.0), ("p_repeat", 0.0), ("max_step", 0.0),
                ("records", 0.0), ("record_n", 0.0), ("resid", 0.0), ("has_resid", 0.0),
                ("profile_n", 0.0), ("profile_mu", 0.0), ("profile_var", 0.0),
            )
        }  # fmt: skip
        fields["profile"] = (np.float16, math.nan, (self._bins,))
        for k in range(len(self.scales)):
            for name, initial in (
                ("acc_sum", 0.0), ("acc_max", -math.inf), ("acc_min", math.inf), ("acc_n", 0.0), ("blocks", 0.0),
                ("mem_n", 0.0), ("g_n", 0.0), ("g_mu", 0.0), ("g_var", 0.0),
            ):  # fmt: skip
                fields[f"s{k}_{name}"] = (np.float64, initial)
            fields[f"s{k}_ring"] = (np.float64, 0.0, (2 * w,))
            fields[f"s{k}_mem"] = (np.float32, 0.0, (memory, w))
            fields[f"s{k}_used"] = (np.int32, 0, (memory,))
        return fields

    @property
    def ARRAY_STATE(self) -> dict[str, tuple]:
        return self._array_fields()

    ARRAY_DEVICE_STATE: ClassVar[dict[str, tuple]] = {"level": (np.float64, 0.0)}

    @staticmethod
    def _gauss_z(d, n, mu, var, min_n) -> np.ndarray:
        ok = (n >= min_n) & (var > 0.0)
        return np.where(ok, (d - mu) / np.sqrt(np.where(ok, var, 1.0)), -np.inf)

    @staticmethod
    def _gauss_update(s, prefix: str, d, mask) -> None:
        n = s[prefix + "n"] + 1.0
        a = 1.0 / n
        delta = np.where(mask, d, s[prefix + "mu"]) - s[prefix + "mu"]  # 0 where not learning (d may be NaN)
        s[prefix + "mu"] = np.where(mask, s[prefix + "mu"] + a * delta, s[prefix + "mu"])
        s[prefix + "var"] = np.where(mask, (1.0 - a) * (s[prefix + "var"] + a * delta * delta), s[prefix + "var"])
        s[prefix + "n"] = np.where(mask, n, s[prefix + "n"])

    def score_learn_arrays(self, s: dict[str, np.ndarray], x: np.ndarray, t: np.ndarray | None = None) -> np.ndarray:
        """Score then learn one reading per row of ``x`` (devices × features); updates ``s`` in place."""
        w = self.window
        rows = np.arange(x.shape[0])[:, None]
        cols = np.arange(x.shape[1])[None, :]
        new = s["n"] == 0.0
        for name in ("lo", "hi", "seen_min", "seen_max", "last"):  # a feature's first reading
            s[name] = np.where(new, x, s[name])
        n = s["n"]
        span = s["hi"] - s["lo"]
        z = np.where(span > 0, (x - s["lo"]) / np.where(span > 0, span, 1.0), x - s["lo"])
        zmax = np.full(x.shape, -np.inf)

        steps = []
        for k, (size, summary) in enumerate(zip(self.scales, self.summaries, strict=True)):
            p = f"s{k}_"
            completes = s[p + "acc_n"] + 1 >= size
            mean = (s[p + "acc_sum"] + z) / size
            hi, lo = np.maximum(s[p + "acc_max"], z), np.minimum(s[p + "acc_min"], z)
            y = np.where(hi - mean >= mean - lo, hi, lo) if summary == "extreme" else mean
            mem_n = s[p + "mem_n"]
            valid = completes & (mem_n > 0) & (s[p + "blocks"] + 1 >= w)
            query = np.concatenate([s[p + "ring"][..., w + 1 :], y[..., None]], axis=-1)
            diff = s[p + "mem"] - query[..., None, :]
            d2 = np.einsum("...ij,...ij->...i", diff, diff)
            d2 = np.where(np.arange(self.memory) < mem_n[..., None], d2, np.inf)
            j = np.argmin(d2, axis=-1)
            d = np.sqrt(np.take_along_axis(d2, j[..., None], axis=-1)[..., 0] / w)
            j = np.where(valid, j, -1)
            zk = self._gauss_z(d, s[p + "g_n"], s[p + "g_mu"], s[p + "g_var"], self.min_blocks)
            zmax = np.where(valid & (n >= self.warmup), np.maximum(zmax, zk), zmax)
            steps.append((completes, y, d, j))

        if t is not None:
            bins = ((t % self.period) // self.bin_width).astype(np.int64)
            profile_mean = s["profile"][rows, cols, bins[:, None]].astype(np.float64)
            visited = profile_mean == profile_mean
            r = z - profile_mean
            resid = np.where(s["has_resid"] > 0, (1.0 - self.residual_rate) * s["resid"] + self.residual_rate * r, r)
            zp = self._gauss_z(np.abs(resid), s["profile_n"], s["profile_mu"], s["profile_var"], self.min_profile)
            zmax = np.where(visited, np.maximum(zmax, zp), zmax)

        # checks
        u = np.zeros(x.shape)
        seen_span = s["seen_max"] - s["seen_min"]
        excess = np.maximum(x - s["seen_max"], s["seen_min"] - x)
        rare = s["records"] <= self.record_rate * s["record_n"]
        extreme = (n >= self.extreme_warmup) & (seen_span > 0) & (excess > self.extreme_tolerance * seen_span) & rare
        u = np.where(extreme, self.extreme_surprise, u)
        warm = n >= self.warmup
        jump = warm & (np.abs(x - s["last"]) > self.jump_factor * s["max_step"])
        u = np.where(jump, self.extreme_surprise, u)
        repeated = x == s["last"]
        record_run = warm & repeated & (s["run"] + 1 > s["max_run"])
        run_surprise = -(s["run"] + 1) * np.log10(np.maximum(s["p_repeat"], self.repeat_floor))
        u = np.where(record_run, np.maximum(u, run_surprise), u)

        surprise = np.maximum(u.max(axis=1), gaussian_surprise_array(zmax.max(axis=1)) - math.log10(x.shape[1]))
        scores = surprise / (surprise + self.surprise_scale)
        scores = np.where(scores <= self.refractory_factor * s["level"] * self._decay, 0.0, scores)

        # learn: shingle memories
        for k, (completes, y, d, j) in enumerate(steps):
            self._learn_scale_arrays(s, f"s{k}_", z, completes, y, d, j)
        # learn: weekly profile
        if t is not None:
            clipped = np.clip(z, -_PROFILE_CLIP, _PROFILE_CLIP)
            learned = np.where(visited, profile_mean + self.profile_rate * (clipped - profile_mean), clipped)
            s["profile"][rows, cols, bins[:, None]] = learned
            s["resid"] = np.where(visited, resid, s["resid"])
            s["has_resid"] = np.where(visited, 1.0, s["has_resid"])
            self._gauss_update(s, "profile_", np.abs(resid), visited)
        # learn: records, repeats, steps, range
        s["records"] = s["records"] + (warm & (seen_span > 0) & (excess > self.extreme_tolerance * seen_span))
        s["record_n"] = s["record_n"] + warm
        old = n > 0
        s["max_run"] = np.where(old & ~repeated, np.maximum(s["max_run"], s["run"]), s["max_run"])
        s["run"] = np.where(old, np.where(repeated, s["run"] + 1, 0.0), s["run"])
        rate = np.maximum(self.repeat_alpha, 1.0 / np.where(old, n, 1.0))
        s["p_repeat"] = np.where(old, s["p_repeat"] + rate * (repeated - s["p_repeat"]), s["p_repeat"])
        step = np.abs(x - s["last"])
        step = np.where(warm, np.minimum(step, (1.0 + self.step_growth) * s["max_step"]), step)
        s["max_step"] = np.where(old, np.maximum(s["max_step"], step), s["max_step"])
        s["last"] = x
        s["seen_max"] = np.maximum(s["seen_max"], x)
        s["seen_min"] = np.minimum(s["seen_min"], x)
        s["n"] = n + 1
        ranging = (s["n"] <= self.warmup) & (s["fixed"] == 0)
        s["lo"] = np.where(ranging, s["seen_min"], s["lo"])
        s["hi"] = np.where(ranging, s["seen_max"], s["hi"])
        s["level"] = np.maximum(s["level"] * self._decay, scores)
        return scores

    def _learn_scale_arrays(self, s, p: str, z, completes, y, d, j) -> None:
        w, memory = self.window, self.memory
        s[p + "acc_sum"] = np.where(completes, 0.0, s[p + "acc_sum"] + z)
        s[p + "acc_max"] = np.where(completes, -np.inf, np.maximum(s[p + "acc_max"], z))
        s[p + "acc_min"] = np.where(completes, np.inf, np.minimum(s[p + "acc_min"], z))
        s[p + "acc_n"] = np.where(completes, 0.0, s[p + "acc_n"] + 1)
        if not completes.any():
            return
        ring = s[p + "ring"]
        s[p + "ring"] = np.where(completes[..., None], np.concatenate([ring[..., 1:], y[..., None]], axis=-1), ring)
        blocks = np.where(completes, s[p + "blocks"] + 1, s[p + "blocks"])
        s[p + "blocks"] = blocks
        matched = completes & (j >= 0)
        used = s[p + "used"]
        lane, feat = np.nonzero(matched)
        used[lane, feat, j[lane, feat]] = blocks[lane, feat]
        self._gauss_update(s, p + "g_", d, matched & (blocks >= 2 * w + self.min_blocks))
        # store the shingle that ended w blocks ago; an exact copy only refreshes its exemplar
        storing = completes & (blocks >= 2 * w)
        if not storing.any():
            return
        mem, mem_n = s[p + "mem"], s[p + "mem_n"]
        old = s[p + "ring"][..., :w].astype(np.float32)
        diff = mem - old[..., None, :]
        d2 = np.einsum("...ij,...ij->...i", diff, diff)
        d2 = np.where(np.arange(memory) < mem_n[..., None], d2, np.inf)
        nearest = np.argmin(d2, axis=-1)
        copy_of = (mem_n > 0) & np.all(np.take_along_axis(mem, nearest[..., None, None], axis=-2)[..., 0, :] == old, -1)
        refresh = storing & copy_of
        lane, feat = np.nonzero(refresh)
        used[lane, feat, nearest[lane, feat]] = blocks[lane, feat]
        store = storing & ~copy_of
        slot = np.where(mem_n < memory, mem_n, np.argmin(used, axis=-1)).astype(np.int64)
        lane, feat = np.nonzero(store)
        mem[lane, feat, slot[lane, feat]] = old[lane, feat]
        used[lane, feat, slot[lane, feat]] = blocks[lane, feat]
        s[p + "mem_n"] = np.where(store, np.maximum(mem_n, slot + 1), mem_n)

    def export_arrays(self, features: Sequence[str]) -> dict[str, np.ndarray]:
        """This detector's state as one bank row (``features`` in the bank's column order):
        how a warm-started device enters a VectorBank."""
        fields = self._array_fields()
        out = {}
        for name, (dtype, initial, *shape) in fields.items():
            out[name] = np.full((len(features), *(shape[0] if shape else ())), initial, dtype=dtype)
        for column, name in enumerate(features):
            f = self._features.get(name)
            if f is None:
                continue
            for field in ("n", "lo", "hi", "seen_min", "seen_max", "last", "run", "max_run", "p_repeat", "max_step",
                          "records", "record_n", "resid"):  # fmt: skip
                out[field][column] = getattr(f, field)
            out["fixed"][column] = float(f.fixed)
            out["has_resid"][column] = float(f.has_resid)
            out["profile_n"][column], out["profile_mu"][column], out["profile_var"][column] = (
                f.gauss.n, f.gauss.mu, f.gauss.var,
            )  # fmt: skip
            out["profile"][column] = f.profile
            for k, sc in enumerate(f.scales):
                p = f"s{k}_"
                for field in ("acc_sum", "acc_max", "acc_min", "acc_n", "blocks", "mem_n", "ring", "mem", "used"):
                    out[p + field][column] = getattr(sc, field)
                out[p + "g_n"][column], out[p + "g_mu"][column], out[p + "g_var"][column] = (
                    sc.gauss.n, sc.gauss.mu, sc.gauss.var,
                )  # fmt: skip
        out["level"] = np.float64(self._level)
        return out
