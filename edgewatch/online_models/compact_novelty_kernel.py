"""compact-novelty for a whole bank of devices, compiled with numba.

The state of every device of a shard lives in a few arrays (see ``FEATURE_FIELDS``);
:func:`score_learn` takes a batch of readings in arrival order and, for each, scores and
learns it in the row of its device — the same arithmetic, in the same order, as
:class:`~edgewatch.online_models.compact_novelty.CompactNovelty` does with its objects,
so both give the same scores (the tests compare them). Compiled code makes the cost per
reading a few hundred nanoseconds whatever the number of devices, where numpy calls
over the devices of a step cost microseconds each when there are few devices.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from edgewatch.online_models.halfprecision import double_to_half, half_to_double

# per-feature float64 fields, in their column order in the bank's scalar block
FEATURE_FIELDS = (
    "n", "lo", "hi", "fixed", "seen_min", "seen_max", "last", "run", "max_run", "p_repeat", "max_step",
    "records", "record_n", "resid", "has_resid", "profile_n", "profile_mu", "profile_var",
)  # fmt: skip
# per-feature and per-scale float64 fields, after them (scale 0's, then scale 1's, ...)
SCALE_FIELDS = ("acc_sum", "acc_max", "acc_min", "acc_n", "blocks", "mem_n", "g_n", "g_mu", "g_var")

(N, LO, HI, FIXED, SEEN_MIN, SEEN_MAX, LAST, RUN, MAX_RUN, P_REPEAT, MAX_STEP, RECORDS, RECORD_N, RESID,
 HAS_RESID, PROFILE_N, PROFILE_MU, PROFILE_VAR) = range(len(FEATURE_FIELDS))  # fmt: skip
ACC_SUM, ACC_MAX, ACC_MIN, ACC_N, BLOCKS, MEM_N, G_N, G_MU, G_VAR = range(len(SCALE_FIELDS))
_ERFC = np.array(
    [-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806,
     0.27886807, -1.13520398, 1.48851587, -0.82215223, 0.17087277]
)  # fmt: skip


@njit(cache=True, inline="always")
def _scale_index(k: int, field: int) -> int:
    return len(FEATURE_FIELDS) + k * len(SCALE_FIELDS) + field


@njit(cache=True)
def gaussian_surprise(z: float) -> float:
    """``-log10 P(|Z| >= z)`` by Numerical Recipes' erfc (as compact_novelty.gaussian_surprise)."""
    if z <= 0.0:
        return 0.0
    x = z / math.sqrt(2.0)
    t = 1.0 / (1.0 + 0.5 * x)
    poly = _ERFC[9]
    for i in range(8, -1, -1):
        poly = _ERFC[i] + t * poly
    return -(math.log(t) - x * x + poly) / math.log(10.0)


@njit(cache=True, inline="always")
def _gauss_z(d: float, n: float, mu: float, var: float, min_n: int) -> float:
    if n < min_n or var <= 0.0:
        return -np.inf
    return (d - mu) / math.sqrt(var)


@njit(cache=True, inline="always")
def _gauss_update(s, r: int, j: int, f: int, d: float) -> None:
    n = s[r, j, f] + 1.0
    s[r, j, f] = n
    a = 1.0 / n
    delta = d - s[r, j + 1, f]
    s[r, j + 1, f] += a * delta
    s[r, j + 2, f] = (1.0 - a) * (s[r, j + 2, f] + a * delta * delta)


@njit(cache=True)
def score_learn(
    s, profile, ring, mem, used, level, rows, x, t, has_time, sizes, extreme, int_params, float_params
):  # pragma: no cover - compiled
    """Score then learn each reading ``x[i]`` in the state row ``rows[i]``; returns the scores.

    ``s`` (devices, fields, features) float64, ``profile`` (devices, features, bins) uint16
    half-precision bits, ``ring`` (devices, scales, features, 2w) float64, ``mem``
    (devices, scales, features, memory, w) float32, ``used`` (devices, scales, features,
    memory) int32, ``level`` (devices,) float64.
    """
    w, memory, warmup = int_params[0], int_params[1], int_params[2]
    min_blocks, min_profile, extreme_warmup = int_params[3], int_params[4], int_params[5]
    period, bin_width, profile_rate, residual_rate = float_params[0], float_params[1], float_params[2], float_params[3]
    extreme_tolerance, record_rate, jump_factor = float_params[4], float_params[5], float_params[6]
    step_growth, extreme_surprise, repeat_alpha = float_params[7], float_params[8], float_params[9]
    repeat_floor, surprise_scale, refractory_factor = float_params[10], float_params[11], float_params[12]
    decay, profile_clip = float_params[13], float_params[14]
    readings, features = x.shape
    scales = len(sizes)
    scores = np.empty(readings)
    zs = np.empty(features)
    ys = np.empty((features, scales))
    ds = np.empty((features, scales))
    js = np.empty((features, scales), np.int64)
    completes = np.empty((features, scales), np.bool_)
    resids = np.empty(features)
    visited = np.empty(features, np.bool_)
    means = np.empty(features)
    query = np.empty(w)
    old = np.empty(w, np.float32)
    bonferroni = math.log10(max(1, features))
    for i in range(readings):
        r = rows[i]
        b = int((t[i] % period) // bin_width) if has_time else -1
        surprise = 0.0
        zmax = -np.inf
        # ---- evaluate (CompactNovelty._evaluate)
        for f in range(features):
            value = x[i, f]
            if s[r, N, f] == 0.0:  # a feature's first reading
                s[r, LO, f] = s[r, HI, f] = s[r, SEEN_MIN, f] = s[r, SEEN_MAX, f] = s[r, LAST, f] = value
            n = s[r, N, f]
            span = s[r, HI, f] - s[r, LO, f]
            z = (value - s[r, LO, f]) / span if span > 0 else value - s[r, LO, f]
            zs[f] = z
            for k in range(scales):
                js[f, k] = -1
                if s[r, _scale_index(k, ACC_N), f] + 1 < sizes[k]:
                    completes[f, k] = False
                    continue
                completes[f, k] = True
                mean = (s[r, _scale_index(k, ACC_SUM), f] + z) / sizes[k]
                if extreme[k]:
                    hi = max(s[r, _scale_index(k, ACC_MAX), f], z)
                    lo = min(s[r, _scale_index(k, ACC_MIN), f], z)
                    y = hi if hi - mean >= mean - lo else lo
                else:
                    y = mean
                ys[f, k] = y
                ds[f, k] = np.nan
                mem_n = int(s[r, _scale_index(k, MEM_N), f])
                if mem_n == 0 or s[r, _scale_index(k, BLOCKS), f] + 1 < w:
                    continue
                for q in range(w - 1):
                    query[q] = ring[r, k, f, w + 1 + q]
                query[w - 1] = y
                best = np.inf
                nearest = 0
                for m in range(mem_n):
                    d2 = 0.0
                    for q in range(w):
                        diff = np.float64(mem[r, k, f, m, q]) - query[q]
                        d2 += diff * diff
                    if d2 < best:
                        best = d2
                        nearest = m
                ds[f, k] = math.sqrt(best / w)
                js[f, k] = nearest
                if n >= warmup:
                    zk = _gauss_z(
                        ds[f, k],
                        s[r, _scale_index(k, G_N), f],
                        s[r, _scale_index(k, G_MU), f],
                        s[r, _scale_index(k, G_VAR), f],
                        min_blocks,
                    )
                    zmax = max(zmax, zk)
            visited[f] = False
            if b >= 0:
                m = half_to_double(profile[r, f, b])
                means[f] = m
                if m == m:
                    visited[f] = True
                    rr = z - m
                    if s[r, HAS_RESID, f] > 0:
                        resid = (1.0 - residual_rate) * s[r, RESID, f] + residual_rate * rr
                    else:
                        resid = rr
                    resids[f] = resid
                    zp = _gauss_z(
                        abs(resid), s[r, PROFILE_N, f], s[r, PROFILE_MU, f], s[r, PROFILE_VAR, f], min_profile
                    )
                    zmax = max(zmax, zp)
            # checks (CompactNovelty._checks)
            u = 0.0
            if n >= extreme_warmup:
                seen_span = s[r, SEEN_MAX, f] - s[r, SEEN_MIN, f]
                excess = max(value - s[r, SEEN_MAX, f], s[r, SEEN_MIN, f] - value)
                rare = s[r, RECORDS, f] <= record_rate * s[r, RECORD_N, f]
                if seen_span > 0 and excess > extreme_tolerance * seen_span and rare:
                    u = extreme_surprise
            if n >= warmup:
                if abs(value - s[r, LAST, f]) > jump_factor * s[r, MAX_STEP, f]:
                    u = extreme_surprise
                if value == s[r, LAST, f] and s[r, RUN, f] + 1 > s[r, MAX_RUN, f]:
                    u = max(u, -(s[r, RUN, f] + 1) * math.log10(max(s[r, P_REPEAT, f], repeat_floor)))
            surprise = max(surprise, u)
        # ---- score (CompactNovelty._score)
        total = max(surprise, gaussian_surprise(zmax) - bonferroni)
        score = total / (total + surprise_scale)
        if score <= refractory_factor * level[r] * decay:
            score = 0.0
        scores[i] = score
        # ---- learn (CompactNovelty._learn_plans and _learn_scale)
        for f in range(features):
            value = x[i, f]
            z = zs[f]
            for k in range(scales):
                if not completes[f, k]:
                    s[r, _scale_index(k, ACC_SUM), f] += z
                    s[r, _scale_index(k, ACC_MAX), f] = max(s[r, _scale_index(k, ACC_MAX), f], z)
                    s[r, _scale_index(k, ACC_MIN), f] = min(s[r, _scale_index(k, ACC_MIN), f], z)
                    s[r, _scale_index(k, ACC_N), f] += 1
                    continue
                s[r, _scale_index(k, ACC_SUM), f] = 0.0
                s[r, _scale_index(k, ACC_MAX), f] = -np.inf
                s[r, _scale_index(k, ACC_MIN), f] = np.inf
                s[r, _scale_index(k, ACC_N), f] = 0.0
                for q in range(2 * w - 1):
                    ring[r, k, f, q] = ring[r, k, f, q + 1]
                ring[r, k, f, 2 * w - 1] = ys[f, k]
                blocks = s[r, _scale_index(k, BLOCKS), f] + 1
                s[r, _scale_index(k, BLOCKS), f] = blocks
                j = js[f, k]
                if j >= 0:
                    used[r, k, f, j] = np.int32(blocks)
                    if blocks >= 2 * w + min_blocks:
                        _gauss_update(s, r, _scale_index(k, G_N), f, ds[f, k])
                if blocks < 2 * w:
                    continue
                # store the shingle that ended w blocks ago; an exact copy only refreshes its exemplar
                for q in range(w):
                    old[q] = np.float32(ring[r, k, f, q])
                mem_n = int(s[r, _scale_index(k, MEM_N), f])
                if mem_n > 0:
                    best32 = np.float32(np.inf)
                    nearest = 0
                    for m in range(mem_n):
                        d2 = np.float32(0.0)
                        for q in range(w):
                            diff = mem[r, k, f, m, q] - old[q]
                            d2 += diff * diff
                        if d2 < best32:
                            best32 = d2
                            nearest = m
                    same = True
                    for q in range(w):
                        if mem[r, k, f, nearest, q] != old[q]:
                            same = False
                            break
                    if same:
                        used[r, k, f, nearest] = np.int32(blocks)
                        continue
                if mem_n < memory:
                    slot = mem_n
                else:
                    slot = 0
                    for m in range(1, memory):
                        if used[r, k, f, m] < used[r, k, f, slot]:
                            slot = m
                s[r, _scale_index(k, MEM_N), f] = max(mem_n, slot + 1)
                for q in range(w):
                    mem[r, k, f, slot, q] = old[q]
                used[r, k, f, slot] = np.int32(blocks)
            if b >= 0:
                m = means[f]
                clipped = min(max(z, -profile_clip), profile_clip)
                profile[r, f, b] = double_to_half(clipped if m != m else m + profile_rate * (clipped - m))
                if visited[f]:
                    s[r, RESID, f] = resids[f]
                    s[r, HAS_RESID, f] = 1.0
                    _gauss_update(s, r, PROFILE_N, f, abs(resids[f]))
            n = s[r, N, f]
            if n >= warmup:
                seen_span = s[r, SEEN_MAX, f] - s[r, SEEN_MIN, f]
                excess = max(value - s[r, SEEN_MAX, f], s[r, SEEN_MIN, f] - value)
                if seen_span > 0 and excess > extreme_tolerance * seen_span:
                    s[r, RECORDS, f] += 1
                s[r, RECORD_N, f] += 1
            repeated = value == s[r, LAST, f]
            if n > 0:
                if not repeated:
                    s[r, MAX_RUN, f] = max(s[r, MAX_RUN, f], s[r, RUN, f])
                s[r, RUN, f] = s[r, RUN, f] + 1 if repeated else 0.0
                s[r, P_REPEAT, f] += max(repeat_alpha, 1.0 / n) * ((1.0 if repeated else 0.0) - s[r, P_REPEAT, f])
                step = abs(value - s[r, LAST, f])
                if n >= warmup:
                    step = min(step, (1.0 + step_growth) * s[r, MAX_STEP, f])
                s[r, MAX_STEP, f] = max(s[r, MAX_STEP, f], step)
            s[r, LAST, f] = value
            s[r, SEEN_MAX, f] = max(s[r, SEEN_MAX, f], value)
            s[r, SEEN_MIN, f] = min(s[r, SEEN_MIN, f], value)
            s[r, N, f] = n + 1
            if n + 1 <= warmup and s[r, FIXED, f] == 0.0:
                s[r, LO, f] = s[r, SEEN_MIN, f]
                s[r, HI, f] = s[r, SEEN_MAX, f]
        level[r] = max(level[r] * decay, score)
    return scores
