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
    "records", "record_n", "resid", "has_resid", "profile_n", "profile_mu", "profile_var", "profile_max",
)  # fmt: skip
# per-feature and per-scale float64 fields, after them (scale 0's, then scale 1's, ...)
SCALE_FIELDS = ("acc_sum", "acc_max", "acc_min", "acc_n", "blocks", "mem_n", "g_n", "g_mu", "g_var", "g_max")
#: per-feature float64 field after the scale fields (the last of the scalars' block): the feature's
#: measurement resolution, the smallest nonzero step between two readings it has shown (0: none yet)
RESOLUTION_FIELD = "resolution"
#: fields added after models were saved: a saved model without them loads them at their initial value
LATER_FIELDS = ("profile_max", "g_max", RESOLUTION_FIELD)
#: per-feature fields of the residual CUSUM (``residual_cusum``), at the end of the scalar block after every
#: scale's (RelationalNovelty's state only): the upper and lower cumulative sums, then the moments of the normal
#: readings' residuals that standardize them (count, mean square, lag-1 product, last residual — NaN after a
#: reading not learned —), the residual's recent (fast EW) level and the normal readings' mean square of that
#: level (the residual's persistence measured at the scale the CUSUM judges a departure as recent); then
#: (``cusum_steps``) the residual's slow EW level and whether its current departure came as a step (1; else
#: minus the readings it has lasted); then (``step_cusum``) the anchored step's: the level a step is judged
#: against (the residual's slow level, learned while the step's sums find no departure), that level when
#: they were last empty (NaN: to be set once the readings settle after a departure beyond the alarm's standard
#: score), and its upper and lower sums
CUSUM_FIELDS = (
    "cusum_hi", "cusum_lo", "cusum_n", "cusum_m2", "cusum_c1", "cusum_prev", "cusum_fast", "cusum_d2", "cusum_slow",
    "cusum_step", "cusum_anchor", "cusum_before", "cusum_step_hi", "cusum_step_lo",
)  # fmt: skip
(CU_HI, CU_LO, CU_N, CU_M2, CU_C1, CU_PREV, CU_FAST, CU_D2, CU_SLOW, CU_STEP, CU_ANCHOR, CU_BEFORE, CU_STEP_HI,
 CU_STEP_LO) = range(len(CUSUM_FIELDS))  # fmt: skip
#: Siegmund's correction of a Gaussian CUSUM's boundary for the overshoot of its discrete steps (2 x 0.583)
CUSUM_OVERSHOOT = 1.166
#: (``move_attribution``) the smallest move a hypothesis is weighed by, in the feature's largest normal step
MOVE_FLOOR = 1e-3
#: the largest surprise (decades) a reading scores: a finite reading far beyond any float's tail (1e160) would
#: overflow to inf and give NaN scores and shares; capped, its score is 1.0 and its shares are finite
MAX_SURPRISE = 1e100

(N, LO, HI, FIXED, SEEN_MIN, SEEN_MAX, LAST, RUN, MAX_RUN, P_REPEAT, MAX_STEP, RECORDS, RECORD_N, RESID,
 HAS_RESID, PROFILE_N, PROFILE_MU, PROFILE_VAR, PROFILE_MAX) = range(len(FEATURE_FIELDS))  # fmt: skip
ACC_SUM, ACC_MAX, ACC_MIN, ACC_N, BLOCKS, MEM_N, G_N, G_MU, G_VAR, G_MAX = range(len(SCALE_FIELDS))
# per-device fields of the alarm layer (the ``dev`` block; column 0 is the debouncing level)
DEVICE_FIELDS = (
    "level", "alarm", "start", "peak", "quiet", "consistent", "rel_n", "rg_n", "rg_mu", "rg_var", "last_t", "drifts",
    "gap_n", "gap_mu", "gap_dev",
)  # fmt: skip
(LEVEL, ALARM, START, PEAK, QUIET, CONSISTENT, REL_N, RG_N, RG_MU, RG_VAR, LAST_T, DRIFTS,
 GAP_N, GAP_MU, GAP_DEV) = range(len(DEVICE_FIELDS))  # fmt: skip
#: device fields added after models and snapshots were first saved: an older row has them at 0 (its
#: sampling interval is learned anew)
LATER_DEVICE_FIELDS = frozenset({"gap_n", "gap_mu", "gap_dev"})
# per-feature fields of the sensor relations (the ``rel`` block)
RELATION_FIELDS = ("mu", "fast", "res", "peak_c", "cause", "dev")
MU, FAST, RES, PEAK_C, CAUSE, DEV = range(len(RELATION_FIELDS))
# per-feature fields of the level channel (the ``drift`` block): an EW level of the readings, and the
# moments of the standardized deviations of normal readings that give its null variance and effective
# sample size (count, last deviation — NaN after a reading not learned —, lag-1 product, square, and
# the square of the level's own deviation)
LEVEL_FIELDS = ("lv_ew", "lv_n", "lv_prev", "lv_c1", "lv_m2", "lv_d2", "lv_step", "lv_res")
LV_EW, LV_N, LV_PREV, LV_C1, LV_M2, LV_D2, LV_STEP, LV_RES = range(len(LEVEL_FIELDS))
# the ``cov`` block: (devices, 2, features, features): EW covariance, precision of the correlations
COV, PREC = 0, 1
# what happened at a reading (bits of ``events``)
ABNORMAL, RAISED, CLEARED, DRIFT_SHIFT, DRIFT_TIMEOUT = 1, 2, 4, 8, 16
# run modes
STREAM, HISTORY_FILL, HISTORY_CALIBRATE = 0, 1, 2
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
    # (a z beyond 1e154 overflows x * x: the largest surprise, not inf)
    return min(-(math.log(t) - x * x + poly) / math.log(10.0), MAX_SURPRISE)


@njit(cache=True, inline="always")
def _gauss_z(d: float, n: float, mu: float, var: float, min_n: int) -> float:
    if n < min_n or var <= 0.0:
        return -np.inf
    return (d - mu) / math.sqrt(var)


@njit(cache=True)
def _bisect_surprise(u: float, hi: float, steps: int) -> tuple[float, float]:
    """The bracket ``(lo, hi)`` within ``[0, hi]`` of the standard score whose two-sided Gaussian tail is
    ``u`` decades, after ``steps`` halvings (``gaussian_surprise(lo) < u <= gaussian_surprise(hi)``)."""
    lo = 0.0
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        if gaussian_surprise(mid) < u:
            lo = mid
        else:
            hi = mid
    return lo, hi


@njit(cache=True)
def _z_of_surprise(u: float) -> float:
    """The standard score whose two-sided Gaussian tail is ``u`` decades."""
    return _bisect_surprise(u, 40.0, 60)[1]


@njit(cache=True, inline="always")
def _t_to_z(tt: float, nu: float) -> float:
    """A Student t (its square ``tt``, ``nu`` degrees of freedom) as a normal deviate (Wallace 1959)."""
    return math.sqrt(nu * math.log1p(tt / nu)) * (8.0 * nu + 1.0) / (8.0 * nu + 3.0)


@njit(cache=True)
def chi_square_surprise(x: float, dof: float) -> float:
    """``-log10 P(X >= x)`` for ``X`` chi-square with ``dof`` (any positive real) degrees of freedom: the
    regularized upper incomplete gamma ``Q(dof / 2, x / 2)`` (Numerical Recipes' series below ``dof / 2 + 1``,
    Lentz's continued fraction above it, in logarithms so a far tail keeps its decades)."""
    if x <= 0.0 or dof <= 0.0:
        return 0.0
    a, y = 0.5 * dof, 0.5 * x
    log_front = -y + a * math.log(y) - math.lgamma(a)
    if y < a + 1.0:  # the lower tail's series: Q = 1 - P, not small here
        ap, term = a, 1.0 / a
        total = term
        for _ in range(500):
            ap += 1.0
            term *= y / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        lower = total * math.exp(log_front)
        return -math.log10(max(1.0 - lower, 1e-300))
    tiny = 1e-300
    b = y + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 500):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return -(log_front + math.log(h)) / math.log(10.0)


@njit(cache=True, inline="always")
def _scaled_chi_square_surprise(q: float, n: float, mean: float, var: float, min_n: int) -> float:
    """The surprise (decades) of a mean square ``q`` under the scaled chi-square ``g χ²_h`` whose mean and
    variance are those measured (``n`` values, ``mean``, ``var``): Satterthwaite's ``g = var / (2 mean)``,
    ``h = 2 mean² / var`` (Box 1954: a weighted sum of squared, correlated Gaussians), its upper tail."""
    if n < min_n or var <= 0.0 or mean <= 0.0:
        return 0.0
    return chi_square_surprise(q * 2.0 * mean / var, 2.0 * mean * mean / var)


@njit(cache=True)
def _chi_square_z(q: float, n: float, mean: float, var: float, min_n: int) -> float:
    """The standard score as improbable (two-sided, as :func:`gaussian_surprise` reads it) as a square ``q``
    under the scaled chi-square of the squares measured (:func:`_scaled_chi_square_surprise`); ``-inf``
    before ``min_n`` of them."""
    if n < min_n or var <= 0.0 or mean <= 0.0:
        return -np.inf
    u = _scaled_chi_square_surprise(q, n, mean, var, min_n)
    return _z_of_surprise(u) if u > 0.0 else 0.0


@njit(cache=True)
def _t_as_z(t: float, dof: float) -> float:
    """The Gaussian z as improbable as Student's ``t`` with ``dof`` degrees of freedom (Wallace 1959:
    ``sqrt(dof ln(1 + t²/dof)) (8 dof + 1) / (8 dof + 3)``): a standard score whose mean and variance were
    estimated from ``dof + 1`` independent values, times ``sqrt(1 + 1 / (dof + 1))`` for the new one's."""
    dof = max(dof, 1.0)
    t = t / math.sqrt(1.0 + 1.0 / (dof + 1.0))
    return _t_to_z(t * t, dof)


@njit(cache=True, inline="always")
def _gauss_update(s, r: int, j: int, f: int, d: float) -> None:
    n = s[r, j, f] + 1.0
    s[r, j, f] = n
    a = 1.0 / n
    delta = d - s[r, j + 1, f]
    s[r, j + 1, f] += a * delta
    s[r, j + 2, f] = (1.0 - a) * (s[r, j + 2, f] + a * delta * delta)


@njit(cache=True)
def _bounded_z(z: float, d: float, s, r: int, j: int, f: int) -> float:  # pragma: no cover - compiled
    """``z`` of a novelty ``d`` calibrated by the Gaussian at ``s[r, j:j+4, f]`` (n, mean, variance, largest
    normal value), bounded by what the learned values themselves show (``empirical_bound``): a novelty
    no larger than one of the ``n`` learned has a tail probability of at least ``1 / (n + 1)`` whatever
    the distribution (exchangeability), so it is worth at most ``log10(n + 1)`` decades however far in
    the fitted Gaussian's tail it lies (a heavy tail: spikes the device shows normally). The largest
    normal value is over the history and over learned values their own calibration found unsurprising
    (below the alarm's surprise), so a fault learned unnoticed does not raise it."""
    if z <= 0.0 or d > s[r, j + 3, f]:
        return z
    bound = math.log10(s[r, j, f] + 1.0)
    if gaussian_surprise(z) <= bound:
        return z
    return _bisect_surprise(bound, z, 40)[0]  # the z worth ``bound`` decades (only for bounded readings)


@njit(cache=True, inline="always")
def _relation_stat(ss: float, weights: float, chi_square: bool, cube_root: bool) -> float:
    """The relations' statistic calibrated: their weighted mean square (``chi_square``), its cube root or its
    square root."""
    if weights <= 0.0:
        return 0.0
    q = ss / weights
    if chi_square:
        return q
    return q ** (1.0 / 3.0) if cube_root else math.sqrt(q)


@njit(cache=True, inline="always")
def _relation_surprise(stat: float, dev, r: int, chi_square: bool, min_n: int) -> float:
    """The relations' surprise (decades) of ``stat`` against the device's calibration of it (``RG_*``)."""
    if chi_square:
        return _scaled_chi_square_surprise(stat, dev[r, RG_N], dev[r, RG_MU], dev[r, RG_VAR], min_n)
    return gaussian_surprise(_gauss_z(stat, dev[r, RG_N], dev[r, RG_MU], dev[r, RG_VAR], min_n))


@njit(cache=True, inline="always")
def _relation_variance(cov, rel, r: int, f: int) -> float:
    """Feature ``f``'s variance as the relations learned it, floored (a constant feature: a millionth of
    its mean, so its standardized deviations stay finite)."""
    return max(cov[r, COV, f, f], 1e-12 + (1e-6 * rel[r, f, MU]) ** 2)


@njit(cache=True, inline="always")
def _rounding_variance(step: float, span: float) -> float:
    """The variance a reading carries from its rounding to a resolution ``step`` (uniform error over one
    step: step² / 12), in the units the channels see (the feature normalized by ``span``; raw without
    one). A feature that reports whole numbers moves by at least one unit whatever the truth, so a
    residual no larger than its rounding is no evidence of novelty, however tight its calibration."""
    q = step * step / 12.0
    return q / (span * span) if span > 0.0 else q


@njit(cache=True)
def _shape_z(
    d: float,
    s,
    r: int,
    j: int,
    f: int,
    w: int,
    min_blocks: int,
    effective: bool,
    bounded: bool,
    relations: bool,
    resolution: float,
    span: float,
) -> tuple[float, float]:  # pragma: no cover - compiled
    """A shape channel's calibrated z of a shingle at RMS distance ``d`` from its nearest memory (the
    calibration at ``s[r, j:j+4, f]``), unbounded and as scored: Student's t over the independent shingles
    (``effective``: ``shape_effective``), bounded by the learned values (``bounded``: ``empirical_bound``),
    and, on a device with relations, none within ``resolution`` (the feature's, times ``shape_resolution``)
    of a known shingle: that shape at a quantized sensor's next level (an integer humidity following a cycle)."""
    zk = _gauss_z(d, s[r, j, f], s[r, j + 1, f], s[r, j + 2, f], min_blocks)
    if effective and zk > 0.0:
        zk = _t_as_z(zk, s[r, j, f] / w - 1.0)
    zb = _bounded_z(zk, d, s, r, j, f) if bounded else zk
    if relations and resolution > 0.0 and d * (span if span > 0 else 1.0) <= resolution:
        zb = -np.inf
    return zk, zb


@njit(cache=True)
def _centered_distance(mem, r: int, k: int, f: int, mem_n: int, query, w: int) -> float:  # pragma: no cover
    """The RMS distance from the shingle ``query`` to its nearest memory, each taken relative to its own mean:
    the form of the shingle (spread, spikes) wherever its level sits. Never more than the raw distance."""
    qm = 0.0
    for q in range(w):
        qm += query[q]
    qm /= w
    best = np.inf
    for m in range(mem_n):
        mm = 0.0
        for q in range(w):
            mm += np.float64(mem[r, k, f, m, q])
        mm /= w
        d2 = 0.0
        for q in range(w):
            diff = (np.float64(mem[r, k, f, m, q]) - mm) - (query[q] - qm)
            d2 += diff * diff
        best = min(best, d2)
    return math.sqrt(best / w)


@njit(cache=True, inline="always")
def _device_gauss_update(dev, r: int, j: int, d: float) -> None:
    n = dev[r, j] + 1.0
    dev[r, j] = n
    a = 1.0 / n
    delta = d - dev[r, j + 1]
    dev[r, j + 1] += a * delta
    dev[r, j + 2] = (1.0 - a) * (dev[r, j + 2] + a * delta * delta)


@njit(cache=True)
def score_learn(
    s, profile, ring, mem, used, dev, rows, x, t, has_time, sizes, extreme, int_params, float_params
):  # pragma: no cover - compiled
    """Score then learn each reading ``x[i]`` in the state row ``rows[i]``; returns the scores.

    ``s`` (devices, fields, features) float64, ``profile`` (devices, features, bins) uint16
    half-precision bits, ``ring`` (devices, scales, features, 2w) float64, ``mem``
    (devices, scales, features, memory, w) float32, ``used`` (devices, scales, features,
    memory) int32, ``dev`` (devices, 1) float64: the debouncing level. No alarm layer.
    """
    readings, features = x.shape
    rel = np.zeros((1, features, len(RELATION_FIELDS)))
    lv = np.zeros((1, features, len(LEVEL_FIELDS)))
    cov = np.zeros((1, 2, features, features))
    events = np.zeros(readings, np.int64)
    contrib = np.zeros((1, features))
    info = np.zeros((1, 2))
    levels = np.zeros((1, 2, features))
    return detect(
        s, profile, ring, mem, used, dev, rel, cov, lv, rows, x, t, has_time, sizes, extreme, int_params,
        float_params, np.zeros(len(ALARM_PARAMS)), STREAM, events, contrib, info, levels, np.empty(readings),
    )  # fmt: skip


#: the alarm layer's parameters, in their order in ``alarm_params`` (``enabled`` 0 turns the layer off)
ALARM_PARAMS = (
    "enabled", "threshold", "clear_after", "accept_readings", "accept_after", "relation_rate", "relation_smoothing",
    "relation_tolerance", "min_relation", "ridge", "fast_rate", "explained",
    "along_relations", "explain_along", "extreme_steps", "hold_related",
    "relation_warmup", "gap_spread", "interval_rate", "relation_cube_root", "shape_effective",
    "level_rate", "level_hold", "level_steps", "residual_clip", "clear_on_return", "resolution_spread",
    "shape_resolution", "residual_cusum", "cusum_steps", "profile_along", "unfollowed_steps",
    "centered_spread", "level_warmup", "level_from_mean", "level_scales", "rearm_on_return",
    "relation_chi_square", "profile_chi_square", "move_attribution", "unfollowed_core", "step_cusum",
    "step_level", "smooth_extremes",
)  # fmt: skip
#: switches of the alarm layer's parts (1 on, 0 off; all on by default, off only to measure what each adds:
#: bench/ablation.py), appended to ``alarm_params`` and read by name
ALARM_SWITCHES = ("relation_score", "hold_alarm", "protected_learning", "extremes_along_relations", "empirical_bound")
ALARM_PARAMS += ALARM_SWITCHES
RELATION_SCORE, HOLD_ALARM, PROTECTED_LEARNING, EXTREMES_ALONG_RELATIONS, EMPIRICAL_BOUND = (
    ALARM_PARAMS.index(name) for name in ALARM_SWITCHES
)


@njit(cache=True)
def _invert_correlations(cov, r: int, idx, d: int, ridge: float, m) -> None:  # pragma: no cover - compiled
    """The inverse of (the correlation matrix of ``cov[r, COV]`` over the features ``idx[:d]`` + ``ridge`` I),
    Gauss-Jordan in the scratch ``m`` (at least d, 2d): the inverse is left in ``m[:d, d:2d]``."""
    m[:] = 0.0
    for a in range(d):
        for b in range(d):
            j, k = idx[a], idx[b]
            cj, ck = cov[r, COV, j, j], cov[r, COV, k, k]
            if a == b:
                m[a, b] = 1.0 + ridge
            elif cj > 0.0 and ck > 0.0:
                m[a, b] = cov[r, COV, j, k] / math.sqrt(cj * ck)
        m[a, d + a] = 1.0
    for c in range(d):
        pivot = c
        for j in range(c + 1, d):
            if abs(m[j, c]) > abs(m[pivot, c]):
                pivot = j
        if pivot != c:
            for k in range(2 * d):
                m[c, k], m[pivot, k] = m[pivot, k], m[c, k]
        inv = 1.0 / m[c, c]
        for k in range(2 * d):
            m[c, k] *= inv
        for j in range(d):
            if j != c and m[j, c] != 0.0:
                factor = m[j, c]
                for k in range(2 * d):
                    m[j, k] -= factor * m[c, k]


@njit(cache=True)
def _refresh_precision(cov, r: int, d: int, ridge: float, m) -> None:  # pragma: no cover - compiled
    """``cov[r, PREC]`` = inverse of (the correlation matrix of ``cov[r, COV]`` + ``ridge`` I), Gauss-Jordan
    in the scratch ``m`` (d, 2d)."""
    _invert_correlations(cov, r, np.arange(d), d, ridge, m)
    for j in range(d):
        for k in range(d):
            cov[r, PREC, j, k] = m[j, d + k]


@njit(cache=True)
def _shift_along(rel, cov, r: int, features: int, along: float) -> bool:  # pragma: no cover - compiled
    """Whether the device's shift (current level minus its normal mean, in standard deviations) runs
    along its relations: its Mahalanobis length in the correlations is at most ``along`` times its
    Euclidean length (1: no less probable per unit than if the features were unrelated; a shift across
    a strong relation is 1 / (1 - R²) times longer). Judged on the shift, not on each reading's
    residual: far along a relation, a slightly misestimated slope makes every reading's residual
    significant while the direction of the move stays that of the relation."""
    if along <= 0.0:
        return False
    return _runs_along(rel, cov, r, np.arange(features), features, cov[r, PREC], along)


@njit(cache=True, inline="always")
def _shift_sd(rel, cov, r: int, f: int) -> float:
    """Feature ``f``'s shift: its current (fast) level minus its normal mean, in its standard deviations."""
    return (rel[r, f, FAST] - rel[r, f, MU]) / math.sqrt(max(cov[r, COV, f, f], 1e-12))


@njit(cache=True)
def _runs_along(rel, cov, r: int, idx, count: int, precision, along: float) -> bool:  # pragma: no cover - compiled
    """Whether the shift of the features ``idx[:count]`` (current level minus normal mean, in standard
    deviations) has a Mahalanobis length in ``precision`` (their inverse correlations) of at most ``along``
    times its Euclidean length."""
    euclid = mahalanobis = 0.0
    for a in range(count):
        j = idx[a]
        dj = _shift_sd(rel, cov, r, j)
        euclid += dj * dj
        for b in range(count):
            k = idx[b]
            dk = _shift_sd(rel, cov, r, k)
            mahalanobis += dj * precision[a, b] * dk
    return euclid > 0.0 and mahalanobis <= along * euclid


@njit(cache=True)
def _unfollowed_step(
    rel,
    cov,
    r: int,
    features: int,
    stepped,
    own,
    u_threshold: float,
    along: float,
    ridge: float,
    m,
    core: bool = False,
) -> bool:  # pragma: no cover - compiled
    """Whether the device's state is a shift of some of its features that the alarm's cause did not follow:
    the features that departed (``stepped``: their recent level is off their normal level), at least two,
    none of them a cause of the alarm (``rel[r, f, CAUSE]``), each cause showing nothing alarming by itself
    (``own[f]``, decades: only its relation to the others breaks), and the departure runs along the departed
    features' relations among themselves (its Mahalanobis length in their correlations, ``ridge`` added, at
    most ``along`` times its Euclidean length, as :func:`_shift_along` judges a whole shift).

    A setpoint moves the controlled features together and leaves an exogenous one (the ambient
    temperature) where it was: if a relation learned from slow co-movement (two slow signals, few
    independent levels) ties them, that relation breaks, not the device. A fault that moves one sensor
    off its partners has one departed feature (or departs across their relations) and is not excused.

    ``core`` (``unfollowed_core``): the step is the departed features' largest departures; a departed
    feature that is not a cause and shows nothing alarming by itself, departing by less (an exogenous
    slow signal wandering on its own: the ambient cycle moving humidity while a setpoint moves the
    machine), is no part of it: while the departed features do not run along their relations, the
    smallest departure (in its standard deviations) is dropped from them (``stepped`` false), down to
    two. The step is then judged on what moved most, not vetoed by a small independent wander."""
    count = 0
    for f in range(features):
        if rel[r, f, CAUSE] > 0.0 and (stepped[f] or own[f] >= u_threshold):
            return False
        if stepped[f]:
            count += 1
    if count < 2:
        return False
    idx = np.empty(count, np.int64)
    c = 0
    for f in range(features):
        if stepped[f]:
            idx[c] = f
            c += 1
    while True:
        _invert_correlations(cov, r, idx, count, ridge, m)  # the stepped features' relations among themselves
        if _runs_along(rel, cov, r, idx, count, m[:count, count : 2 * count], along):
            return True
        if not core or count <= 2:
            return False
        smallest, at = np.inf, 0
        for a in range(count):
            j = idx[a]
            shift = abs(_shift_sd(rel, cov, r, j))
            if shift < smallest:
                smallest, at = shift, a
        stepped[idx[at]] = False
        for a in range(at, count - 1):
            idx[a] = idx[a + 1]
        count -= 1


@njit(cache=True)
def _moves_predicted(rel, cov, r: int, features: int, largest: float, moved) -> None:  # pragma: no cover
    """``moved[f]``: feature ``f`` has shifted (current level minus normal mean) and the others' shifts
    predict it: the part of its shift its relations leave unexplained (the regression residual of the
    shift, in its standard deviations) is at most ``largest`` of the shift."""
    for f in range(features):
        pd = 0.0
        for k in range(features):
            pd += cov[r, PREC, f, k] * _shift_sd(rel, cov, r, k)
        shift = _shift_sd(rel, cov, r, f)
        unexplained = pd / max(cov[r, PREC, f, f], 1e-12)
        moved[f] = shift != 0.0 and abs(unexplained) <= largest * abs(shift)


@njit(cache=True)
def _bound_to(cov, r: int, features: int, f: int, implicated, explained: float) -> bool:  # pragma: no cover
    """Whether feature ``f`` is related to an implicated feature: their squared correlation is at least
    ``explained``."""
    for g in range(features):
        if g != f and implicated[g]:
            vf, vg = cov[r, COV, f, f], cov[r, COV, g, g]
            if vf > 0.0 and vg > 0.0 and cov[r, COV, f, g] * cov[r, COV, f, g] >= explained * vf * vg:
                return True
    return False


@njit(cache=True)
def _level_null(lv, r: int, f: int, rate: float, min_n: float) -> tuple[float, float, float]:  # pragma: no cover
    """The level channel's null for feature ``f``: the variance of an EW mean (rate ``rate``) of independent
    normal deviations, the larger of an AR(1) model's and the level's measured variance, and the effective
    sample size ``n_eff`` their ratio gives (0 before ``min_n`` normal readings; see :func:`_level_deviate`)."""
    n, m2 = lv[r, f, LV_N], lv[r, f, LV_M2]
    if n < min_n or m2 <= 0.0:
        return 0.0, 0.0, 0.0
    rho = min(max(lv[r, f, LV_C1] / m2, 0.0), 0.999)
    c = 1.0 - rate
    white = rate / (2.0 - rate) * m2
    var = max(white * (1.0 + rho * c) / (1.0 - rho * c), lv[r, f, LV_D2])
    return white, var, n * white / var


@njit(cache=True)
def _level_scales(lv, r: int, f: int, rate: float, fast_rate: float, white: float, var: float, scales: bool):
    """The fast level's null variance (in units of ``fast_rate / (2 - fast_rate)``, :func:`_fast_tt`'s
    ``inflation``) and the inflation of the gap between the fast and the slow level (``spread``'s).

    Without ``scales``: both the slow level's variance ratio ``var / white`` (its persistence measured at
    the slow level's scale, applied to every scale). With ``scales`` (``level_scales``): that ratio mixes
    two things that act differently at a faster scale: the readings' short-range persistence (the
    AR(1) factor of their lag-1 correlation, at each level's own rate) and a slow wander, the slow level's
    variance beyond it. The wander is variance both levels share whole (not a factor on a faster mean's
    variance, which it would overstate by the ratio of the rates), and it cancels from their gap."""
    m2 = lv[r, f, LV_M2]
    if not scales:
        inflation = m2 * var / white
        return inflation, inflation
    rho = min(max(lv[r, f, LV_C1] / m2, 0.0), 0.999)
    ca, cb = 1.0 - rate, 1.0 - fast_rate
    ar_slow = (1.0 + rho * ca) / (1.0 - rho * ca)
    ar_fast = (1.0 + rho * cb) / (1.0 - rho * cb)
    wander = max(var - white * ar_slow, 0.0)
    return m2 * ar_fast + wander * (2.0 - fast_rate) / fast_rate, m2 * ar_slow


@njit(cache=True, inline="always")
def _fast_tt(now: float, fast_rate: float, inflation: float, n_eff: float) -> float:
    """The squared t of the fast level's deviation ``now``: the variance of an EW mean at ``fast_rate``,
    times the null's ``inflation`` (autocorrelation) and the uncertainty of a mean from ``n_eff`` samples."""
    return now * now / (fast_rate / (2.0 - fast_rate) * inflation * (1.0 + 1.0 / n_eff))


@njit(cache=True)
def _level_deviate(
    lv,
    r: int,
    f: int,
    d: float,
    rate: float,
    now: float,
    fast_rate: float,
    tolerance: float,
    min_n: float,
    hold: bool,
    steps: bool,
    quiet2: float,
    scales: bool,
) -> float:  # pragma: no cover - compiled
    """The level channel of feature ``f``: its EW level's deviation ``d`` (standard deviations of the
    readings) as an equivalent normal deviate, or -inf before ``min_n`` normal readings, or once the
    fast level (rate ``fast_rate``, deviation ``now``) is back to normal (see below).

    Its null variance is the larger of that of an EW mean (rate ``rate``) of an AR(1) series with the
    lag-1 correlation ρ of the normal deviations, rate / (2 - rate) · (1 + ρc) / (1 - ρc) with
    c = 1 - rate, and the level's own measured variance (slower wander than lag 1 shows). Its ratio
    τ to the variance of an EW mean of independent readings says what the readings it was learned
    from are worth: n_eff = n / τ independent ones. The deviation is then a Student t with
    n_eff - 1 degrees of freedom (a prediction from n_eff samples), mapped to a normal deviate
    (Wallace 1959): a slow signal has seen few levels, and its level is judged with the uncertainty
    of a few samples, not of every reading. The slow level gives the power (a long average); the
    fast one says whether the departure is still there: an alarm ends when the readings are back,
    not a level's memory later. ``quiet2``: a squared t below it is surely no surprise of ``tolerance``
    (a t maps to a normal deviate no larger than itself): most readings skip the t mapping."""
    white, var, n_eff = _level_null(lv, r, f, rate, min_n)
    if n_eff < 2.0:
        return -np.inf
    nu = n_eff - 1.0
    # the departure is over, whatever the slow level still remembers, when the fast level is normal
    # (within ``tolerance`` decades; its variance inflated as the slow one's, or by each scale's own persistence with
    # ``scales``: see _level_scales) and, with ``hold``, that is
    # no chance dip: it came back by more than the two levels differ by chance while the level holds still (EW means of
    # the same readings at rates a and b differ by a/(2-a) + b/(2-b) - 2ab/(a+b-ab) in variance)
    a, b = rate, fast_rate
    inflation, gap_inflation = _level_scales(lv, r, f, a, b, white, var, scales)
    back = (d - now) if d > 0.0 else (now - d)
    spread = _ew_gap_variance(a, b) * gap_inflation
    tt_now = _fast_tt(now, b, inflation, n_eff)
    if not hold and tt_now < quiet2:
        lv[r, f, LV_STEP] = 0.0
        return -np.inf
    normal_now = gaussian_surprise(_t_to_z(tt_now, nu))
    if normal_now < tolerance and (
        not hold or (back > 0.0 and gaussian_surprise(_t_to_z(back * back / spread, nu)) >= tolerance)
    ):
        lv[r, f, LV_STEP] = 0.0
        return -np.inf
    z = _t_to_z(d * d / (var * (1.0 + 1.0 / n_eff)), nu)
    if steps:
        # a departure that came as a step: the fast level left the slow one by more than chance (a ramp
        # slow enough that both move together is a drift, not a fault); remembered while either departs
        away = (now - d) if now > 0.0 else (d - now)
        if (
            away > 0.0
            and away * away >= quiet2 * spread
            and gaussian_surprise(_t_to_z(away * away / spread, nu)) >= tolerance
        ):
            lv[r, f, LV_STEP] = 1.0
        elif gaussian_surprise(z) < tolerance:
            lv[r, f, LV_STEP] = 0.0
        if lv[r, f, LV_STEP] == 0.0:
            return -np.inf
    return z


@njit(cache=True)
def _level_returned(
    lv, rel, cov, r: int, f: int, rate: float, fast_rate: float, tolerance: float, min_n: float, scales: bool
) -> bool:  # pragma: no cover - compiled
    """Whether feature ``f``'s recent readings (its fast level, rate ``fast_rate``) are back at its normal
    level (the relations' mean): their deviation is no surprise of ``tolerance`` decades, judged as the
    level channel judges it (the variance of an EW mean of autocorrelated readings, a Student t with the
    effective sample size's degrees of freedom). False before the level channel is ready."""
    if rate <= 0.0:
        return False
    white, var, n_eff = _level_null(lv, r, f, rate, min_n)
    if n_eff < 2.0:
        return False
    sd = math.sqrt(_relation_variance(cov, rel, r, f))
    now = (rel[r, f, FAST] - rel[r, f, MU]) / sd
    tt_now = _fast_tt(now, fast_rate, _level_scales(lv, r, f, rate, fast_rate, white, var, scales)[0], n_eff)
    return gaussian_surprise(_t_to_z(tt_now, n_eff - 1.0)) < tolerance


@njit(cache=True)
def _level_learn(lv, r: int, f: int, u: float, d: float, rate: float) -> None:  # pragma: no cover - compiled
    """Learn a normal reading's standardized deviation ``u`` and its level's ``d`` into the level
    channel's moments (equal weights, then EW at ``rate``)."""
    n = lv[r, f, LV_N] + 1.0
    lv[r, f, LV_N] = n
    a = max(1.0 / n, rate)
    lv[r, f, LV_M2] += a * (u * u - lv[r, f, LV_M2])
    lv[r, f, LV_D2] += a * (d * d - lv[r, f, LV_D2])
    prev = lv[r, f, LV_PREV]
    if n > 1.0 and prev == prev:
        lv[r, f, LV_C1] += a * (u * prev - lv[r, f, LV_C1])
    lv[r, f, LV_PREV] = u


@njit(cache=True, inline="always")
def _capped(u: float) -> float:
    """A surprise at most MAX_SURPRISE: an overflow (inf, or NaN from inf - inf) is the largest one."""
    return u if u <= MAX_SURPRISE else MAX_SURPRISE


@njit(cache=True, inline="always")
def _ew_gap_variance(a: float, b: float) -> float:
    """The variance of the gap between two EW means (rates ``a`` and ``b``) of the same white readings,
    in the readings' variance."""
    return a / (2.0 - a) + b / (2.0 - b) - 2.0 * a * b / (a + b - a * b)


@njit(cache=True, inline="always")
def _persistence(c1: float, m2: float, d2: float, rate: float, n: float) -> tuple[float, float]:
    """A residual's short-run factor (its lag-1 AR factor (1 + rho) / (1 - rho), from the lag-1 product
    ``c1`` and the mean square ``m2``) and its long-run factor: at least the short-run one, and the variance
    ratio measured on an EW level at ``rate`` of its readings (``d2``), taken one standard error higher (it
    comes from only n rate / (2 - rate) independent levels; the lag-1 one from n residuals is far more
    precise)."""
    rho = min(max(c1 / m2, 0.0), 0.999)
    short = (1.0 + rho) / (1.0 - rho)
    measured = d2 / (rate / (2.0 - rate) * m2)
    return short, max(short, measured * (1.0 + math.sqrt(2.0 * (2.0 - rate) / (rate * n))))


@njit(cache=True, inline="always")
def _cusum_tail(top: float, shift: float) -> float:
    """The surprise (decades) of a CUSUM at ``top`` with design shift ``shift``: its stationary null tail."""
    return max(shift * (top + CUSUM_OVERSHOOT) / math.log(10.0) - math.log10(2.0), 0.0)


@njit(cache=True)
def _cusum_surprise(
    s,
    r: int,
    f: int,
    j: int,
    e: float,
    shift: float,
    fast_rate: float,
    tolerance: float,
    min_n: float,
    clip: float,
    cap: float,
    slow_rate: float = 0.0,
) -> float:  # pragma: no cover - compiled
    """The residual CUSUM of feature ``f``: update its two one-sided sums ``s[r, j + CU_HI/CU_LO, f]`` with
    the reading's standardized regression residual ``e`` (given the other features) and return their
    surprise in decades (two-sided); 0 before ``min_n`` normal residuals were learned.

    The residual is standardized by the long-run standard deviation of the normal residuals: their
    mean square times the AR(1) long-run factor (1 + ρ) / (1 - ρ) of their lag-1 correlation ρ, so the
    sums of an autocorrelated residual grow as those of independent ones. Lag-1 correlation misses a
    persistence slower than one step (a slow cycle the relations' mean lags behind): the factor is at
    least the one measured at the scale of the recent level (batch-means style): the normal readings'
    mean square of the residual's EW mean at ``fast_rate`` over what independent residuals would give
    it (b / (2 - b) of their mean square). Standardized so, a persistent component moves a step by at
    most √(b / (2 - b)) (1/3 at b = 0.2) of its long-run deviation, below the reference value: a slow
    wander alone no longer drives the sums, a shift does. A move along the relations
    (an operating point the others predict) leaves the residual small; a feature the others do not
    predict has its own deviation as residual. Each step is clipped at ``clip`` (a spike adds at most
    what alone raises an alarm: a robust CUSUM). The reference value is half the design ``shift`` plus
    the normal mean's own standard error (from n_eff = n / factor independent residuals: a slow
    residual's mean is uncertain, and that error would otherwise drift the sums up under the null).
    A sum s is as improbable as its stationary null tail exp(-shift (s + overshoot)) (a reflected walk
    of drift -shift/2 and unit variance): ``shift (s + 1.166) / ln 10`` decades, less log10(2) for
    two sides. A sum is capped at ``cap`` (readings back to normal bring it below the alarm's level
    within ``clear_after`` readings), and counts only while the recent residuals (EW at ``fast_rate``)
    depart too, by at least ``tolerance`` decades: an alarm ends when the readings are back, not when
    the sums have drained.

    ``slow_rate`` > 0 (``cusum_steps``): the sums count only a departure that came as a step: the recent
    level left the residual's slow level (EW at ``slow_rate``) by at least ``tolerance`` decades of what
    two EW means of the same residuals differ by (their variance a/(2-a) + b/(2-b) - 2ab/(a+b-ab) times
    the long-run variance) within the slow level's memory (1 / ``slow_rate`` readings) of the departure's
    onset, remembered while either level departs (a chance dip of the recent level back to normal does not
    make a lasting fault new again). A residual that wanders slowly
    enough for both levels to move together (a slow cycle the relations' mean lags behind, the deviation
    of a feature the others do not predict) is a drift the sums would otherwise add up, not a fault."""
    n, m2 = s[r, j + CU_N, f], s[r, j + CU_M2, f]
    b = fast_rate
    if n < min_n or m2 <= 0.0:
        s[r, j + CU_HI, f] = s[r, j + CU_LO, f] = 0.0
        return 0.0
    factor = _persistence(s[r, j + CU_C1, f], m2, s[r, j + CU_D2, f], b, n)[1]  # (the long-run one)
    v = min(max(e / math.sqrt(m2 * factor), -clip), clip)
    k = 0.5 * shift + math.sqrt(factor / n)
    hi = min(max(s[r, j + CU_HI, f] + v - k, 0.0), cap)
    lo = min(max(s[r, j + CU_LO, f] - v - k, 0.0), cap)
    s[r, j + CU_HI, f], s[r, j + CU_LO, f] = hi, lo
    top = max(hi, lo)
    fast = abs(s[r, j + CU_FAST, f]) / math.sqrt(b / (2.0 - b) * m2 * factor)
    if gaussian_surprise(fast) < tolerance:
        # the departure is over once the slow level is back too (a chance dip of the recent one is not)
        if slow_rate > 0.0:
            slow = abs(s[r, j + CU_SLOW, f]) / math.sqrt(slow_rate / (2.0 - slow_rate) * m2 * factor)
            if gaussian_surprise(slow) < tolerance:
                s[r, j + CU_STEP, f] = 0.0
        return 0.0
    if slow_rate > 0.0 and s[r, j + CU_STEP, f] <= 0.0:
        # not (yet) a step: -(readings the departure has lasted); a step shows within the slow level's memory
        # (1 / slow_rate readings) of the onset, later the slow level has caught up and a chance gap is noise
        a = slow_rate
        spread = _ew_gap_variance(a, b) * m2 * factor
        away = abs(s[r, j + CU_FAST, f] - s[r, j + CU_SLOW, f]) / math.sqrt(spread)
        if -s[r, j + CU_STEP, f] < 1.0 / a and gaussian_surprise(away) >= tolerance:
            s[r, j + CU_STEP, f] = 1.0
        else:
            s[r, j + CU_STEP, f] -= 1.0
            return 0.0
    if top <= 0.0:
        return 0.0
    return _cusum_tail(top, shift)


@njit(cache=True)
def _step_surprise(
    s,
    r: int,
    f: int,
    j: int,
    e: float,
    fast: float,
    slow: float,
    n: float,
    m2: float,
    c1: float,
    d2: float,
    c: float,
    shift: float,
    fast_rate: float,
    slow_rate: float,
    tolerance: float,
    min_n: float,
    clip: float,
    cap: float,
    quantum: float,
) -> float:  # pragma: no cover - compiled
    """The anchored step CUSUM of feature ``f`` (``step_cusum``): a step of its residual ``e`` judged against
    the level it left and the short-run noise, in decades (two-sided; before the features' Bonferroni).
    ``fast``, ``slow``: the residual's recent and slow levels; ``n``, ``m2``, ``c1``: its moments (count, mean
    square, lag-1 product), ``d2`` the mean square of its EW level at rate ``c``.

    The residual CUSUM judges a departure from the relations' mean with the residual's long-run deviation
    (its persistence measured at the recent level's scale): a feature whose level wanders between sessions
    has a long-run deviation several times its readings' own, and a sustained shift of one or two reading
    deviations (a valve half-closed: SKAB valve1/2's flow) stays below its reference value for good. A step
    is other evidence: it leaves the level the feature had just before, and from that level the readings
    scatter by their short-run deviation (the lag-1 AR factor of the residual's moments).

    Two one-sided sums of the residual minus the level the open excursion started from (the *anchor* when
    the sums were last empty, ``CU_BEFORE``), less one ``quantum`` (a quantized sensor's smallest step in
    residual units: a whole-unit move is no evidence), in short-run deviations (each step clipped at
    ``clip``), with the reference value half the design ``shift`` (the tolerance's deviate in recent-level
    spreads: the smallest departure the channels call one) plus the anchor's standard error (an EW mean at
    ``slow_rate`` of residuals whose persistence is the long-run factor), are worth their stationary null tail
    as the residual CUSUM's, capped at ``cap``. The anchor follows the residual (EW at ``slow_rate``,
    ``cusum_steps``'s) while the sums stay below ``tolerance`` decades; once they reach it, it goes back to the
    excursion's start and holds while the departure lasts (protected learning: a departure never teaches the
    level it is judged against). A slow drift the anchor follows stays below the reference value.

    A reading off that level by the alarm's own standard score (``clip`` short-run deviations) is a departure
    the other channels judge by themselves, its end too (``clear_on_return``): the sums are dropped and the
    anchor is set anew (pending: NaN) once the readings have settled (the recent level no longer departs from
    the slow one by ``tolerance`` decades) — the level a big fault returns to is where the next step starts."""
    b, a = fast_rate, slow_rate
    if n < min_n or m2 <= 0.0:
        s[r, j + CU_STEP_HI, f] = s[r, j + CU_STEP_LO, f] = 0.0
        s[r, j + CU_ANCHOR, f] = s[r, j + CU_BEFORE, f] = fast
        return 0.0
    short, long_run = _persistence(c1, m2, d2, c, n)  # (the level's variance ratio at rate c)
    if abs(e - s[r, j + CU_BEFORE, f]) >= clip * math.sqrt(m2 * short):
        # a reading off the anchor by what alone raises an alarm: a departure the other channels judge by
        # themselves, its end too (``clear_on_return``); the level the readings settle at after it is where the
        # next step starts from (pending: NaN)
        s[r, j + CU_STEP_HI, f] = s[r, j + CU_STEP_LO, f] = 0.0
        s[r, j + CU_BEFORE, f] = np.nan
        return 0.0
    if s[r, j + CU_BEFORE, f] != s[r, j + CU_BEFORE, f]:
        # pending: anchored once the recent level has settled (no longer departs from the slow one)
        spread = _ew_gap_variance(a, b) * m2 * short
        if gaussian_surprise(abs(fast - slow) / math.sqrt(spread)) >= tolerance:
            return 0.0
        s[r, j + CU_ANCHOR, f] = s[r, j + CU_BEFORE, f] = fast
    anchor = s[r, j + CU_ANCHOR, f]
    # judged against the level when the open excursion began: its readings teach the anchor only provisionally
    d = e - s[r, j + CU_BEFORE, f]
    d = max(abs(d) - quantum, 0.0) * (1.0 if d >= 0.0 else -1.0)  # a quantized sensor moves whole steps
    v = min(max(d / math.sqrt(m2 * short), -clip), clip)
    k = 0.5 * shift + math.sqrt(a / (2.0 - a) * long_run / short)
    hi = min(max(s[r, j + CU_STEP_HI, f] + v - k, 0.0), cap)
    lo = min(max(s[r, j + CU_STEP_LO, f] - v - k, 0.0), cap)
    s[r, j + CU_STEP_HI, f], s[r, j + CU_STEP_LO, f] = hi, lo
    top = max(hi, lo)
    u = _cusum_tail(top, shift) if top > 0.0 else 0.0
    if u < tolerance:  # no departure: the anchor follows the readings
        s[r, j + CU_ANCHOR, f] = anchor + a * (e - anchor)
        if top <= 0.0:  # no excursion open: the level a next one leaves
            s[r, j + CU_BEFORE, f] = s[r, j + CU_ANCHOR, f]
    else:  # a departure: its readings (since the sums were last empty) never taught the level it left
        s[r, j + CU_ANCHOR, f] = s[r, j + CU_BEFORE, f]
    return u


@njit(cache=True, inline="always")
def _cusum_follow(s, r: int, f: int, j: int, e: float, fast_rate: float, slow_rate: float = 0.0) -> None:
    """Every reading (a history's too): the residual ``e`` into its recent (fast EW) level and its slow one."""
    s[r, j + CU_FAST, f] += fast_rate * (e - s[r, j + CU_FAST, f])
    s[r, j + CU_SLOW, f] += slow_rate * (e - s[r, j + CU_SLOW, f])


@njit(cache=True)
def _cusum_learn(s, r: int, f: int, j: int, e: float, rate: float) -> None:  # pragma: no cover - compiled
    """Learn a normal reading's residual ``e`` (and the recent level :func:`_cusum_follow` updated with
    it) into the moments that standardize the residual CUSUM (equal weights, then EW at ``rate``)."""
    n = s[r, j + CU_N, f] + 1.0
    s[r, j + CU_N, f] = n
    a = max(1.0 / n, rate)
    s[r, j + CU_M2, f] += a * (e * e - s[r, j + CU_M2, f])
    s[r, j + CU_D2, f] += a * (s[r, j + CU_FAST, f] ** 2 - s[r, j + CU_D2, f])
    prev = s[r, j + CU_PREV, f]
    if n > 1.0 and prev == prev:
        s[r, j + CU_C1, f] += a * (e * prev - s[r, j + CU_C1, f])
    s[r, j + CU_PREV, f] = e


@njit(cache=True)
def accept(
    s, rel, cov, dev, r: int, features: int, reset: bool, levels, out: int, cu: int
) -> None:  # pragma: no cover - compiled
    """Take the device's current state as its new normal: the alarm is cleared and learning resumes
    (the novelty channels learn the new state as they learn any normal reading); the relations
    keep (a consistent shift) or are learned anew (a change that broke them: ``reset``).
    ``levels[out]`` receives the levels before (the relations' mean) and after (the current level).
    ``cu``: where the residual CUSUM's fields start in ``s`` (-1: the state has none)."""
    for f in range(features):
        levels[out, 0, f], levels[out, 1, f] = rel[r, f, MU], rel[r, f, FAST]
        rel[r, f, MU] = rel[r, f, FAST]
        rel[r, f, RES] = rel[r, f, DEV] = 0.0
        if cu >= 0:  # the new normal's level is no departure
            s[r, cu + CU_HI, f] = s[r, cu + CU_LO, f] = s[r, cu + CU_FAST, f] = 0.0
            s[r, cu + CU_SLOW, f] = s[r, cu + CU_STEP, f] = 0.0
            s[r, cu + CU_ANCHOR, f] = s[r, cu + CU_BEFORE, f] = 0.0
            s[r, cu + CU_STEP_HI, f] = s[r, cu + CU_STEP_LO, f] = 0.0
            if reset:  # relations learned anew have residuals of their own
                s[r, cu + CU_N, f] = s[r, cu + CU_M2, f] = s[r, cu + CU_C1, f] = s[r, cu + CU_D2, f] = 0.0
                s[r, cu + CU_PREV, f] = np.nan
    if reset:
        for j in range(features):
            for k in range(features):
                if j != k:
                    cov[r, COV, j, k] = 0.0
        dev[r, REL_N] = 0.0
        dev[r, RG_N] = dev[r, RG_MU] = dev[r, RG_VAR] = 0.0
    dev[r, ALARM] = dev[r, QUIET] = dev[r, CONSISTENT] = 0.0
    dev[r, DRIFTS] += 1.0


@njit(cache=True)
def _after_gap(dev, r: int, t: float, spread: float, rate: float, warmup: int) -> bool:  # pragma: no cover
    """Learn the device's sampling interval and say whether its reading at ``t`` comes after a gap.

    The interval is an EW mean and mean absolute deviation of the log time between readings (rate
    ``rate``, equal weights at first): a scale-free, robust spread. After ``warmup`` intervals, a gap
    is an interval more than twice the normal interval's upper end (mean + ``spread`` deviations): at
    least one whole interval without a reading beyond the normal jitter, so the last reading no
    longer tells where the next one should be (``spread`` 0: never). A gap is learned clipped at
    that limit: one outage does not stretch the interval, a lasting slower rate still moves it."""
    gap = False
    k = dev[r, GAP_N]
    dt = t - dev[r, LAST_T]
    if k > 0.0 and dt > 0.0:
        log_dt = math.log(dt)
        limit = dev[r, GAP_MU] + spread * dev[r, GAP_DEV] + math.log(2.0)
        if k > warmup:
            gap = spread > 0.0 and log_dt > limit
            log_dt = min(log_dt, limit)
        a = max(1.0 / k, rate)
        dev[r, GAP_MU] += a * (log_dt - dev[r, GAP_MU])
        dev[r, GAP_DEV] += a * (abs(log_dt - dev[r, GAP_MU]) - dev[r, GAP_DEV])
    if dt > 0.0 or k == 0.0:
        dev[r, GAP_N] = k + 1.0
        dev[r, LAST_T] = t
    return gap


@njit(cache=True)
def _restart_context(s, rel, r: int, features: int) -> None:  # pragma: no cover - compiled
    """After a gap, what expects a reading near the last ones starts anew: the smoothed profile and
    relation residuals start from 0 (their normal mean), the current level from the normal mean (and
    the first reading is no step: no jump checked, no step learned). The distribution state stays:
    ranges, shape memories, profile, relations, calibration, alarm. A run of repeats goes on (a value
    that repeats across an outage is still a repeat), and so do the shapes (restarting them left them
    blind until refilled, for no measured gain)."""
    for f in range(features):
        s[r, RESID, f] = 0.0
        rel[r, f, RES] = rel[r, f, DEV] = 0.0
        rel[r, f, FAST] = rel[r, f, MU]


@njit(cache=True)
def _attribute_relations(
    shares,
    own,
    cus,
    breaks,
    ss,
    rel_surprise,
    bonferroni,
    x,
    s,
    rel,
    cov,
    r: int,
    features: int,
    log_weights,
    explains,
    explained: float,
    resolution: int,
):
    """Each feature's part of an abnormal reading's explanation (``move_attribution``): its own channels'
    surprise, or its part of the relations' evidence if larger, that evidence given to the likeliest culprits.

    A break of a relation shows in the residual of every feature it ties: a sensor that drifts off its partner
    makes the partner's residual (predicted from the drifted one) depart as much (two features: the same size;
    tightly related ones: nearly), so residuals alone name either. Each feature the relations tie (R² at least
    ``explained``) is a hypothesis "this sensor broke the relations", weighed by three factors: how much of the
    break its residual carries (its part of the relation evidence), how far the current reading is from its own
    fast level (squared, in its largest normal step: how unusual the move is for this sensor's own dynamics —
    the others then moved only with the operating point; floored at its resolution and at ``MOVE_FLOOR`` of a
    step, so a sensor that stopped moving keeps a hypothesis), and its own channels' surprise (10^decades: a
    likelihood ratio; a stuck sensor whose fast level settled on the stuck value is named by its run of
    repeats, not by the partner that moved). The weights are taken in logs (no overflow). The relations'
    evidence of the tied features (the calibrated surprise split by conditional residuals, and the residual
    CUSUM's) is pooled and shared by those weights; a feature the relations do not tie keeps its own evidence
    (its residual is no evidence of a break it is not part of). Only explanations change: the decisions are
    taken on the evidence before this."""
    pooled = 0.0
    best = -np.inf
    for f in range(features):
        log_weights[f] = -np.inf
        if explains[f] < explained:
            continue
        part = max(cus[f] - bonferroni, rel_surprise * breaks[f] / ss if ss > 0.0 else 0.0, 0.0)
        if not part > 0.0:
            continue
        step = s[r, MAX_STEP, f]
        unit = step if step > 0.0 else math.sqrt(_relation_variance(cov, rel, r, f))
        move = abs(x[f] - rel[r, f, FAST]) / unit if unit > 0.0 else 0.0
        floor = max(MOVE_FLOOR, s[r, resolution, f] / unit if unit > 0.0 else 0.0)
        if not move >= floor:  # (also a NaN move)
            move = floor
        pooled += part
        log_weights[f] = math.log10(part) + 2.0 * math.log10(move) + own[f]
        best = max(best, log_weights[f])
    if not (pooled > 0.0 and math.isfinite(pooled) and math.isfinite(best)):
        return
    total = 0.0
    for f in range(features):
        log_weights[f] = 10.0 ** (log_weights[f] - best) if log_weights[f] > -np.inf else 0.0
        total += log_weights[f]
    for f in range(features):
        if explains[f] >= explained:
            shares[f] = max(own[f], pooled * log_weights[f] / total)


@njit(cache=True, inline="always")
def _extreme_summary(hi: float, lo: float, mean: float, power: float) -> float:
    """An extreme block's value: the extreme farthest from the block's mean (the upper one at a tie). With
    ``power`` p > 0 (``smooth_extremes``) the two departures ``a = hi - mean`` and ``b = mean - lo``
    weighted by their (p - 1)-th powers, ``mean + (a^p - b^p) / (a^(p-1) + b^(p-1))``: the farther
    extreme still dominates (a lone spike's block keeps most of its height), but a block whose extremes
    are about equally far (a smooth oscillation whose phase drifts across the blocks) moves continuously
    from one to the other instead of flipping, which makes a shingle of a clean periodic signal a new
    shape. An exact tie (a quantized feature's, its rounding made them equal) keeps the upper extreme."""
    a = hi - mean
    b = mean - lo
    if power <= 0.0 or a == b:
        return hi if a >= b else lo
    # (in ratios t <= 1: no overflow or underflow of the powers)
    if a > b:
        t = b / a
        return mean + a * (1.0 - t**power) / (1.0 + t ** (power - 1.0))
    t = a / b
    return mean - b * (1.0 - t**power) / (1.0 + t ** (power - 1.0))


@njit(cache=True)
def detect(
    s,
    profile,
    ring,
    mem,
    used,
    dev,
    rel,
    cov,
    lv,
    rows,
    x,
    t,
    has_time,
    sizes,
    extreme,
    int_params,
    float_params,
    alarm_params,
    mode,
    events,
    contrib,
    info,
    levels,
    surprises,
    cusum_at: int = -1,
):  # pragma: no cover - compiled
    """Score each reading ``x[i]`` in state row ``rows[i]``, keep the device's alarm state, then
    learn it unless it is abnormal; returns the debounced scores (0 where a reading adds nothing
    to the evidence the device showed just before: the detections) and writes each reading's own
    score, not debounced, to ``surprises``.

    Besides :func:`score_learn`'s arrays: ``dev`` (devices, DEVICE_FIELDS) float64, ``rel``
    (devices, features, RELATION_FIELDS), ``cov`` (devices, 2, features, features). Outputs per
    reading: ``events`` (bits ABNORMAL, RAISED, CLEARED, DRIFT_SHIFT, DRIFT_TIMEOUT), and for
    abnormal readings and alarm events ``contrib`` (readings, features): each feature's share of
    the evidence (the explanation; with ``move_attribution`` the relations' evidence given by
    :func:`_attribute_relations`, after the decisions); ``info`` (readings, 2): the alarm's start
    and peak score at a RAISED/CLEARED reading; ``levels`` (readings, 2, features): levels
    before/after at a DRIFT reading.
    ``mode``: STREAM, or a history (every reading normal, no alarms): HISTORY_FILL (memories
    and profile only, no calibration) then HISTORY_CALIBRATE. ``cusum_at``: where the residual CUSUM's
    fields (``CUSUM_FIELDS``, consecutive) start in the scalar block ``s``, -1 when the state has none
    (the layout's, passed explicitly: CompactNovelty may add fields of its own before them).
    """
    alarms = alarm_params[0] > 0.0
    threshold, clear_after, accept_readings = alarm_params[1], alarm_params[2], alarm_params[3]
    accept_after, relation_rate, smoothing = alarm_params[4], alarm_params[5], alarm_params[6]
    tolerance, min_relation, ridge, fast_rate = alarm_params[7], alarm_params[8], alarm_params[9], alarm_params[10]
    explained, along_relations = alarm_params[11], alarm_params[12]
    explain_along, extreme_steps, hold_related = alarm_params[13], alarm_params[14], alarm_params[15] > 0.0
    relation_warmup = alarm_params[16] > 0.0
    gap_spread, interval_rate = alarm_params[17], alarm_params[18]
    relation_cube_root, shape_effective = alarm_params[19] > 0.0, alarm_params[20] > 0.0
    level_rate, level_hold, level_steps = alarm_params[21], alarm_params[22] > 0.0, alarm_params[23] > 0.0
    clear_on_return = alarm_params[25] > 0.0
    resolution_spread, shape_resolution = alarm_params[26] > 0.0, alarm_params[27]
    cusum_shift, cusum_steps = alarm_params[28], alarm_params[29]
    profile_along = alarm_params[30] > 0.0
    unfollowed_steps = alarm_params[31] > 0.0
    centered_spread = alarm_params[32] > 0.0
    level_warmup = alarm_params[33] > 0.0
    level_from_mean, level_scales = alarm_params[34] > 0.0, alarm_params[35] > 0.0
    rearm_on_return = alarm_params[36] > 0.0
    relation_chi_square, profile_chi_square = alarm_params[37] > 0.0, alarm_params[38] > 0.0
    move_attribution = alarm_params[39] > 0.0
    unfollowed_core = alarm_params[40] > 0.0
    step_level = alarm_params[42] > 0.0
    # (the residual's slow level is cusum_steps'; the feature's own is the level channel's)
    step_cusum = alarm_params[41] > 0.0 and (level_rate > 0.0 if step_level else cusum_steps > 0.0)
    smooth_extremes = alarm_params[43]
    relation_score, hold_alarm = alarm_params[RELATION_SCORE] > 0.0, alarm_params[HOLD_ALARM] > 0.0
    protected_learning = alarm_params[PROTECTED_LEARNING] > 0.0
    extremes_along_relations = alarm_params[EXTREMES_ALONG_RELATIONS] > 0.0
    empirical_bound = alarm_params[EMPIRICAL_BOUND] > 0.0
    populating = mode == HISTORY_FILL
    history = mode != STREAM
    w, memory, warmup = int_params[0], int_params[1], int_params[2]
    min_blocks, min_profile, extreme_warmup = int_params[3], int_params[4], int_params[5]
    period, bin_width, profile_rate, residual_rate = float_params[0], float_params[1], float_params[2], float_params[3]
    extreme_tolerance, record_rate, jump_factor = float_params[4], float_params[5], float_params[6]
    step_growth, extreme_surprise, repeat_alpha = float_params[7], float_params[8], float_params[9]
    repeat_floor, surprise_scale, refractory_factor = float_params[10], float_params[11], float_params[12]
    u_threshold = threshold * surprise_scale / max(1.0 - threshold, 1e-9)  # the surprise that raises an alarm
    # one reading's relation residual enters the smoothed one at most at the size that alone raises an alarm
    z_clip = _z_of_surprise(u_threshold) if alarms and alarm_params[24] > 0.0 else 0.0
    quiet2 = (_z_of_surprise(tolerance) * (1.0 - 1e-9)) ** 2 if level_rate > 0.0 else 0.0
    decay, profile_clip = float_params[13], float_params[14]
    readings, features = x.shape
    scales = len(sizes)
    rearm_after = clear_after  # (rearm_on_return) every channel judges the device back: one block of each scale
    for k in range(scales):
        rearm_after = max(rearm_after, sizes[k])
    resolution = len(FEATURE_FIELDS) + scales * len(SCALE_FIELDS)  # RESOLUTION_FIELD, after the scale fields
    # a smoothed residual (EW rate c) of readings each rounded with variance q varies by at least c / (2 - c) q
    rounding_gain = residual_rate / (2.0 - residual_rate)
    relations = alarms and features >= 2
    spread_centered = centered_spread and clear_on_return and relations
    cu = cusum_at
    cusum = relations and cusum_shift > 0.0 and cu >= 0 and cu + len(CUSUM_FIELDS) <= s.shape[1]
    cus = np.zeros(features)  # each feature's residual CUSUM surprise (decades, before the features' Bonferroni)
    cusum_clip = cusum_cap = step_shift = step_cap = 0.0
    if cusum:
        # a step at most the standard score that alone raises an alarm; a sum at most what readings back to
        # normal (each lowering it by at least shift / 2) bring below the alarm's sum within clear_after
        cusum_clip = _z_of_surprise(u_threshold)
        alarm_sum = (u_threshold + math.log10(max(1, features)) + math.log10(2.0)) * math.log(10.0) / cusum_shift
        cusum_cap = alarm_sum - CUSUM_OVERSHOOT + clear_after * 0.5 * cusum_shift
        if step_cusum:
            # (step_cusum) its design shift: the smallest departure of the recent level the channels call one (the
            # tolerance's deviate in the recent level's spreads, in short-run deviations); capped likewise
            step_shift = _z_of_surprise(tolerance) * math.sqrt(fast_rate / (2.0 - fast_rate))
            step_sum = alarm_sum * cusum_shift / step_shift
            step_cap = step_sum - CUSUM_OVERSHOOT + clear_after * 0.5 * step_shift
    scores = np.empty(readings)
    zfeat = np.empty(features)
    zspread = np.empty(features)  # each feature's largest channel that is not a level (spread, spikes: extreme shapes)
    zspread_c = np.empty(features)  # the same, each shingle relative to its own mean (``centered_spread``)
    zks = np.full((features, len(sizes)), -np.inf)  # each channel's calibrated z (unbounded)
    zps = np.full(features, -np.inf)
    ufeat = np.empty(features)
    us = np.empty(features)
    res = np.empty(features)
    res_raw = np.empty(features)
    implicated = np.zeros(features, np.bool_)
    own = np.zeros(features)  # in alarm, each feature's surprise from its own channels
    evidence = np.zeros(features)  # each feature's surprise, its own and its share of the relations' (decisions)
    shares = np.zeros(features)  # each feature's part of the explanation (``move_attribution``)
    hypotheses = np.zeros(features)  # (_attribute_relations' log-weights)
    stepped = np.zeros(features, np.bool_)  # the features whose departure came as a step (unfollowed_steps)
    moved = np.zeros(features, np.bool_)  # each feature's shift is predicted by the others' (explain_along)
    devs = np.zeros(features)
    scratch = np.zeros((features, 2 * features))
    breaks = np.zeros(features)
    explains = np.zeros(features)  # R² of each feature given the others (0 before the relations score)
    es = np.zeros(features)  # each feature's standardized regression residual
    lu = np.zeros(features)  # each feature's standardized deviation from the relations' mean
    ld = np.zeros(features)  # each feature's level's (EW) standardized deviation
    level_z = np.full(features, -np.inf)  # each feature's level channel (an equivalent normal deviate)
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
        # the last reading and the smoothed residuals are context only while the stream is continuous
        fresh = alarms and _after_gap(dev, r, t[i], gap_spread, interval_rate, warmup)
        if fresh:
            _restart_context(s, rel, r, features)
            for f in range(features):
                lv[r, f, LV_RES] = 0.0
        surprise = 0.0
        zmax = -np.inf
        # this reading's own: a device whose relations are not ready (yet, or again after an acceptance) has
        # no CUSUM evidence, not the last reading's (another device's, or its own before the reset)
        cus[:] = 0.0
        level_z[:] = -np.inf  # (the level channel's likewise)
        # sensor relations: standardized regression residual of each feature given the others
        rel_surprise = rel_surprise_raw = 0.0
        ss = stat = weights = ss_raw = 0.0
        rel_ready = relations and dev[r, REL_N] >= min_relation
        if relations:
            for f in range(features):
                var = _relation_variance(cov, rel, r, f)
                us[f] = (x[i, f] - rel[r, f, MU]) / math.sqrt(var)
                lu[f] = us[f]
                if level_rate > 0.0:
                    if lv[r, f, LV_N] == 0.0:
                        # (level_from_mean) the level starts at the relations' mean, its best estimate so far:
                        # started at one reading, its first deviations carry that reading's whole variance (a
                        # quantized feature's first reading is a whole step off) and the level's measured
                        # variance (its null) learns that transient as wander
                        lv[r, f, LV_EW] = rel[r, f, MU] if level_from_mean else x[i, f]
                    ew = lv[r, f, LV_EW] + level_rate * (x[i, f] - lv[r, f, LV_EW])
                    lv[r, f, LV_EW] = ew
                    ld[f] = (ew - rel[r, f, MU]) / math.sqrt(var)
            for f in range(features):
                e = 0.0
                if rel_ready:
                    for k in range(features):
                        e += cov[r, PREC, f, k] * us[k]
                    e /= math.sqrt(max(cov[r, PREC, f, f], 1e-12))
                ec = min(max(e, -z_clip), z_clip) if z_clip > 0.0 else e
                res[f] = (1.0 - smoothing) * rel[r, f, RES] + smoothing * ec
                # unclipped: whether the relations hold, judged on the break's whole size (a noisy break
                # clipped would look smaller than it is, and be accepted as a consistent shift)
                res_raw[f] = (1.0 - smoothing) * lv[r, f, LV_RES] + smoothing * e if z_clip > 0.0 else res[f]
                devs[f] = (1.0 - smoothing) * rel[r, f, DEV] + smoothing * us[f]
                # relation evidence: the residual of each feature, weighted by how much of its variance
                # the others explain (R²): a feature they do not predict carries a level, not a relation
                weight = max(0.0, 1.0 - 1.0 / max(cov[r, PREC, f, f], 1e-12)) if rel_ready else 0.0
                explains[f], es[f] = weight, e
                breaks[f] = weight * res[f] * res[f]
                ss += breaks[f]
                ss_raw += weight * res_raw[f] * res_raw[f]
                weights += weight
            # their mean square is chi-square-like (with few features: skewed, with a heavier right tail than a
            # Gaussian fitted to it): its cube root, nearly Gaussian (Wilson-Hilferty), is what is calibrated
            # (``relation_chi_square``: the mean square itself, calibrated as the scaled chi-square its measured
            # mean and variance make it)
            stat = _relation_stat(ss, weights, relation_chi_square, relation_cube_root)
            if rel_ready:
                rel_surprise = _relation_surprise(stat, dev, r, relation_chi_square, min_profile)
                rel_surprise_raw = rel_surprise
                if (
                    z_clip > 0.0 and ss_raw != ss and weights > 0.0
                ):  # the same calibration: they differ only on clipped readings
                    stat_raw = _relation_stat(ss_raw, weights, relation_chi_square, relation_cube_root)
                    rel_surprise_raw = _relation_surprise(stat_raw, dev, r, relation_chi_square, min_profile)
        if alarms and not history:
            for f in range(features):
                rel[r, f, FAST] += fast_rate * (x[i, f] - rel[r, f, FAST])
        if level_rate > 0.0 and rel_ready:
            for f in range(features):
                # the recent readings (the fast level; the level itself in a history) must depart too
                var = _relation_variance(cov, rel, r, f)
                now = ld[f] if history else (rel[r, f, FAST] - rel[r, f, MU]) / math.sqrt(var)
                level_z[f] = _level_deviate(
                    lv,
                    r,
                    f,
                    ld[f],
                    level_rate,
                    now,
                    fast_rate,
                    tolerance,
                    min_profile,
                    level_hold,
                    level_steps,
                    quiet2,
                    level_scales,
                )
        # the device moves along its relations (a new operating point): the relations' residuals far
        # along them, and the novelty of each feature the others explain, are that move, not a fault
        along = explain_along > 0.0 and rel_ready and _shift_along(rel, cov, r, features, along_relations)
        if along:
            rel_surprise = 0.0
        # (a history tracks no current level: its readings are normal, none has moved)
        if explain_along > 0.0 and rel_ready and not history:
            _moves_predicted(rel, cov, r, features, explain_along, moved)
        else:
            moved[:] = False
        if cusum and rel_ready:
            for f in range(features):
                # a move the others predict is the device's operating point moving along its relations: no evidence
                e = 0.0 if (moved[f] and explains[f] >= explained) else es[f]
                _cusum_follow(s, r, f, cu, e, fast_rate, cusum_steps)
                # (step_cusum) the slow level a step is judged from when none is open: the feature's own
                # (``step_level``) or its residual's
                at_rest = ld[f] if step_level else s[r, cu + CU_SLOW, f]
                if step_cusum and history:  # (a history's readings are normal: the anchor is their slow level)
                    s[r, cu + CU_ANCHOR, f] = s[r, cu + CU_BEFORE, f] = at_rest
                if not history:
                    cus[f] = _cusum_surprise(
                        s, r, f, cu, e, cusum_shift, fast_rate, tolerance, min_relation, cusum_clip, cusum_cap,
                        cusum_steps,
                    )  # fmt: skip
                    if step_cusum and explains[f] < explained:
                        sd = math.sqrt(_relation_variance(cov, rel, r, f))
                        if step_level:
                            # (``step_level``) a feature the others do not predict carries a level, not a relation:
                            # its own standardized deviation (its regression residual carries the others' moves
                            # through chance coefficients), its recent and slow levels, the level channel's moments
                            u_step = _step_surprise(
                                s, r, f, cu, lu[f], (rel[r, f, FAST] - rel[r, f, MU]) / sd, at_rest,
                                lv[r, f, LV_N], lv[r, f, LV_M2], lv[r, f, LV_C1], lv[r, f, LV_D2], level_rate,
                                step_shift, fast_rate, level_rate, tolerance, min_relation, cusum_clip, step_cap,
                                s[r, resolution, f] / sd,
                            )  # fmt: skip
                        else:  # its regression residual, its recent and slow levels, the residual CUSUM's moments
                            u_step = _step_surprise(
                                s, r, f, cu, e, s[r, cu + CU_FAST, f], at_rest,
                                s[r, cu + CU_N, f], s[r, cu + CU_M2, f], s[r, cu + CU_C1, f], s[r, cu + CU_D2, f],
                                fast_rate, step_shift, fast_rate, cusum_steps, tolerance, min_relation, cusum_clip,
                                step_cap, s[r, resolution, f] * math.sqrt(max(cov[r, PREC, f, f], 1e-12)) / sd,
                            )  # fmt: skip
                        # (one resolution, a quantized sensor's smallest step, in the same units: no evidence)
                        cus[f] = max(cus[f], u_step)
                    elif step_cusum:  # (a feature the others predict: a step breaks its relations) no step open
                        s[r, cu + CU_ANCHOR, f] = s[r, cu + CU_BEFORE, f] = at_rest
                        s[r, cu + CU_STEP_HI, f] = s[r, cu + CU_STEP_LO, f] = 0.0
        # ---- evaluate (CompactNovelty._evaluate)
        in_alarm_now = alarms and not history and hold_alarm and dev[r, ALARM] != 0.0
        for f in range(features):
            value = x[i, f]
            if s[r, N, f] == 0.0:  # a feature's first reading
                if s[r, FIXED, f] == 0.0:  # (fixed: the range of a history)
                    s[r, LO, f] = s[r, HI, f] = value
                s[r, SEEN_MIN, f] = s[r, SEEN_MAX, f] = s[r, LAST, f] = value
            n = s[r, N, f]
            span = s[r, HI, f] - s[r, LO, f]
            z = (value - s[r, LO, f]) / span if span > 0 else value - s[r, LO, f]
            zs[f] = z
            zfeat[f] = zspread[f] = zspread_c[f] = -np.inf
            if not (moved[f] and explains[f] >= explained):  # the level channel (relations' coordinates)
                zmax = max(zmax, level_z[f])
                zfeat[f] = level_z[f]
            zps[f] = -np.inf
            for k in range(scales):
                js[f, k] = -1
                zks[f, k] = -np.inf
                if s[r, _scale_index(k, ACC_N), f] + 1 < sizes[k]:
                    completes[f, k] = False
                    continue
                completes[f, k] = True
                mean = (s[r, _scale_index(k, ACC_SUM), f] + z) / sizes[k]
                if extreme[k]:
                    hi = max(s[r, _scale_index(k, ACC_MAX), f], z)
                    lo = min(s[r, _scale_index(k, ACC_MIN), f], z)
                    y = _extreme_summary(hi, lo, mean, smooth_extremes)
                    if smooth_extremes > 0.0:
                        # (``smooth_extremes``) on a quantized feature's grid of levels (its readings' smallest
                        # step; the normalization starts at one of its readings): near-ties valued between two
                        # extremes would be levels it cannot show, new shapes to its memory
                        grid = s[r, resolution, f] / span if span > 0 else s[r, resolution, f]
                        if grid > 0.0:
                            y = round(y / grid) * grid
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
                    zks[f, k], zb = _shape_z(
                        ds[f, k], s, r, _scale_index(k, G_N), f, w, min_blocks, shape_effective, empirical_bound,
                        relations, shape_resolution * s[r, resolution, f], span,
                    )  # fmt: skip
                    if not (moved[f] and explains[f] >= explained):
                        zmax = max(zmax, zb)
                        zfeat[f] = max(zfeat[f], zb)
                        if extreme[k]:
                            zspread[f] = max(zspread[f], zb)
                            if spread_centered and in_alarm_now and rel[r, f, CAUSE] > 0.0:
                                # the block's spread and spikes wherever they sit (``centered_spread``)
                                dc = _centered_distance(mem, r, k, f, mem_n, query, w)
                                zc = _shape_z(
                                    dc, s, r, _scale_index(k, G_N), f, w, min_blocks, shape_effective,
                                    empirical_bound, relations, shape_resolution * s[r, resolution, f], span,
                                )[1]  # fmt: skip
                                zspread_c[f] = max(zspread_c[f], zc)
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
                    rounding = (
                        rounding_gain * _rounding_variance(s[r, resolution, f], span) if resolution_spread else 0.0
                    )
                    if profile_chi_square:
                        # (``profile_chi_square``) its square against the scaled chi-square of the squares learned,
                        # the rounding's variance (see below) added to their mean
                        zp = _chi_square_z(
                            resid * resid, s[r, PROFILE_N, f], s[r, PROFILE_MU, f] + rounding, s[r, PROFILE_VAR, f],
                            min_profile,
                        )  # fmt: skip
                    else:  # (the rounding of a quantized feature is no evidence: see below)
                        spread = s[r, PROFILE_VAR, f] + rounding
                        zp = _gauss_z(abs(resid), s[r, PROFILE_N, f], s[r, PROFILE_MU, f], spread, min_profile)
                    zps[f] = zp
                    zb = _bounded_z(zp, abs(resid), s, r, PROFILE_N, f) if empirical_bound else zp
                    # (profile_along) a feature the others explain whose reading they predict moves with them:
                    # its departure from its bin's recent mean is the device's, not a fault of its own
                    along_f = (
                        profile_along
                        and rel_ready
                        and explains[f] >= explained
                        and gaussian_surprise(abs(es[f])) < tolerance
                    )
                    if not (moved[f] and explains[f] >= explained) and not along_f:
                        zmax = max(zmax, zb)
                        zfeat[f] = max(zfeat[f], zb)
            # checks (CompactNovelty._checks)
            u = 0.0
            if n >= extreme_warmup:
                seen_span = s[r, SEEN_MAX, f] - s[r, SEEN_MIN, f]
                excess = max(value - s[r, SEEN_MAX, f], s[r, SEEN_MIN, f] - value)
                rare = s[r, RECORDS, f] <= record_rate * s[r, RECORD_N, f]
                # a new extreme the relations predict is an operating point the device has not
                # visited yet (a setpoint, the ambient cycle), not a fault: the others explain this
                # feature (R² >= ``explained``) and predict the reading (its residual is no surprise)
                new_extreme = seen_span > 0 and excess > extreme_tolerance * seen_span and rare
                # on a device with relations to check, a record one normal step beyond the seen range is
                # a feature wandering on (a slow cycle), not a departure: it must exceed ``extreme_steps``
                if relations:
                    new_extreme = new_extreme and excess > extreme_steps * s[r, MAX_STEP, f]
                predicted = moved[f] or gaussian_surprise(abs(es[f])) < tolerance
                along = extremes_along_relations and explains[f] >= explained
                if new_extreme and not (along and predicted):
                    u = extreme_surprise
            if n >= warmup:
                if abs(value - s[r, LAST, f]) > jump_factor * s[r, MAX_STEP, f] and not fresh:
                    u = extreme_surprise
                if value == s[r, LAST, f] and s[r, RUN, f] + 1 > s[r, MAX_RUN, f]:
                    u = max(u, -(s[r, RUN, f] + 1) * math.log10(max(s[r, P_REPEAT, f], repeat_floor)))
            ufeat[f] = u
            surprise = max(surprise, u)
        # ---- score (CompactNovelty._score)
        total = max(surprise, gaussian_surprise(zmax) - bonferroni, rel_surprise if relation_score else 0.0)
        if cusum:
            for f in range(features):
                total = max(total, cus[f] - bonferroni)
        total = _capped(total)  # (an overflow: raw 1.0)
        raw = total / (total + surprise_scale)
        surprises[i] = raw
        score = raw
        if score <= refractory_factor * dev[r, LEVEL] * decay:
            score = 0.0
        scores[i] = score
        # ---- alarm state: raised once, held while abnormal, cleared once; abnormal readings do not teach
        learn = True
        unfollowed = False
        if alarms and not history:
            ev = 0
            in_alarm = dev[r, ALARM] != 0.0 and hold_alarm  # not held: every reading is judged alone
            if in_alarm or score >= threshold:
                # each feature's surprise: its novelty channels and checks, its share of the relation residual
                top = 0.0
                for f in range(features):
                    own[f] = max(ufeat[f], gaussian_surprise(zfeat[f]) - bonferroni, 0.0)
                    own[f] = _capped(own[f])  # (finite shares)
                    # its own channels' (``own``), then its relation residual's: the CUSUM's and its share of
                    # the relation break
                    c = max(own[f], cus[f] - bonferroni)
                    if rel_ready and ss > 0.0 and relation_score:
                        c = max(c, rel_surprise * breaks[f] / ss)
                    evidence[f] = _capped(c)  # (finite shares)
                    top = max(top, c)
            if not in_alarm:
                if score >= threshold:
                    ev = RAISED | ABNORMAL
                    dev[r, ALARM], dev[r, START], dev[r, PEAK] = 1.0, t[i], raw
                    dev[r, QUIET] = dev[r, CONSISTENT] = 0.0
                    # the alarm's cause: the features that dominate the raising reading
                    for f in range(features):
                        rel[r, f, CAUSE] = 1.0 if evidence[f] >= 0.5 * top else 0.0
            else:
                # the alarm lasts while its cause does (the features that raised it); the other features
                # keep learning: a slow drift elsewhere is not this fault
                cause_surprise = 0.0
                for f in range(features):
                    if rel[r, f, CAUSE] > 0.0:
                        c = evidence[f]
                        if clear_on_return and _level_returned(
                            lv, rel, cov, r, f, level_rate, fast_rate, tolerance, min_profile, level_scales
                        ):
                            # its recent readings are back at its normal level: what its level channels (the
                            # level, the profile's smoothed residual, block means) still hold is the memory of
                            # the fault's readings, not evidence that it lasts; spikes, spread, stuck values,
                            # extremes and its share of a relation break still count
                            # while the device's relations hold, its spread and spikes wherever they sit
                            centered = spread_centered and rel_ready and rel_surprise_raw < tolerance
                            spread = zspread_c[f] if centered else zspread[f]
                            c = max(ufeat[f], gaussian_surprise(spread) - bonferroni, 0.0)
                            if cusum:  # the residual CUSUM counts only while its recent residuals depart: no memory
                                c = max(c, cus[f] - bonferroni)
                            if rel_ready and ss > 0.0 and relation_score:
                                c = max(c, rel_surprise * breaks[f] / ss)
                        cause_surprise = max(cause_surprise, c)
                dev[r, QUIET] = 0.0 if cause_surprise >= u_threshold else dev[r, QUIET] + 1.0
                # a new operating point, not a fault: every feature of the alarm's cause is predicted by
                # the others (its relations explain at least ``explained`` of its variance) and the
                # relations hold
                kept = rel_ready and (
                    rel_surprise_raw < u_threshold  # the relations alone would not alarm
                    or _shift_along(rel, cov, r, features, along_relations)
                )
                for f in range(features):
                    if rel[r, f, CAUSE] > 0.0 and cov[r, PREC, f, f] * (1.0 - explained) < 1.0:
                        kept = False
                # ... or a step of features moving along their own relations that the cause, by itself normal,
                # did not follow (``unfollowed_steps``): the relation that ties it to them is not the device's
                if not kept and unfollowed_steps and rel_ready and level_rate > 0.0:
                    for f in range(features):
                        # departed: its recent level is off its normal one, or it moves with those that are
                        stepped[f] = (moved[f] and explains[f] >= explained) or not _level_returned(
                            lv, rel, cov, r, f, level_rate, fast_rate, tolerance, min_profile, level_scales
                        )
                    unfollowed = _unfollowed_step(
                        rel,
                        cov,
                        r,
                        features,
                        stepped,
                        own,
                        u_threshold,
                        along_relations,
                        ridge,
                        scratch,
                        unfollowed_core,
                    )
                kept = kept or unfollowed
                dev[r, CONSISTENT] = dev[r, CONSISTENT] + 1.0 if kept else 0.0
                if dev[r, QUIET] >= clear_after:
                    ev = CLEARED
                elif dev[r, CONSISTENT] >= accept_readings:
                    ev = CLEARED | DRIFT_SHIFT
                elif t[i] - dev[r, START] >= accept_after:
                    ev = CLEARED | DRIFT_TIMEOUT
                else:
                    ev = ABNORMAL
            if ev & ABNORMAL:
                for f in range(features):
                    # protected: a feature of the alarm's cause that is itself surprising now
                    implicated[f] = rel[r, f, CAUSE] > 0.0 and evidence[f] >= tolerance
                shares[:] = evidence
                if move_attribution and rel_ready:
                    _attribute_relations(
                        shares, own, cus, breaks, ss, rel_surprise if relation_score else 0.0, bonferroni, x[i], s,
                        rel, cov, r, features, hypotheses, explains, explained, resolution,
                    )  # fmt: skip
                total_c = 0.0
                for f in range(features):
                    shares[f] = _capped(shares[f])  # (finite shares summing to 1)
                    total_c += shares[f]
                # a held reading without evidence of its own (no feature at the alarm's level) is abnormal for
                # the alarm's cause: its explanation is the alarm's (its peak's shares), not its noise's
                held_only = not (ev & RAISED) and top < u_threshold
                for f in range(features):
                    if held_only:
                        contrib[i, f] = rel[r, f, PEAK_C]
                    else:
                        contrib[i, f] = shares[f] / total_c if total_c > 0.0 else 1.0 / features
                if ev & RAISED or raw > dev[r, PEAK]:
                    dev[r, PEAK] = raw
                    for f in range(features):
                        rel[r, f, PEAK_C] = contrib[i, f]
            elif ev & CLEARED:
                for f in range(features):
                    contrib[i, f] = rel[r, f, PEAK_C]  # the alarm's explanation: its peak's
            if ev & (RAISED | CLEARED):
                info[i, 0], info[i, 1] = dev[r, START], dev[r, PEAK]
            if ev & (DRIFT_SHIFT | DRIFT_TIMEOUT):
                accept(s, rel, cov, dev, r, features, (ev & DRIFT_TIMEOUT) != 0, levels, i, cu)
                if unfollowed and ev & DRIFT_SHIFT:
                    # the stepped features' relations to the features that did not follow are learned anew
                    for j in range(features):
                        for k in range(features):
                            if stepped[j] != stepped[k]:
                                cov[r, COV, j, k] = 0.0
                    _refresh_precision(cov, r, features, ridge, scratch)
            elif ev & CLEARED:
                dev[r, ALARM] = dev[r, QUIET] = dev[r, CONSISTENT] = 0.0
            events[i] = ev
            learn = (ev & ABNORMAL) == 0 or not protected_learning
            dev[r, LAST_T] = t[i]
            if rearm_on_return and dev[r, ALARM] == 0.0 and rel_ready and level_rate > 0.0:
                # (rearm_on_return) the debouncing holds back repeated raises of one episode. The episode is
                # over once the device is back: every feature of the cleared alarm's cause at its normal level,
                # and its readings unsurprising by every channel (the score before any debouncing below the
                # threshold: no level memory, no other feature, that a raise would take up again) for as long
                # as every channel takes to judge them again (``rearm_after``: the longest shape block; a block
                # channel speaks once a block). The next raise is another episode, judged against no debouncing
                # level (as a device that never alarmed). Outside an alarm ``QUIET`` counts those readings.
                back = raw < threshold
                cause = False
                for f in range(features):
                    if rel[r, f, CAUSE] > 0.0:
                        cause = True
                        if back and not _level_returned(
                            lv, rel, cov, r, f, level_rate, fast_rate, tolerance, min_profile, level_scales
                        ):
                            back = False
                dev[r, QUIET] = dev[r, QUIET] + 1.0 if cause and back else 0.0
                if dev[r, QUIET] >= rearm_after:
                    dev[r, LEVEL] = dev[r, QUIET] = 0.0
                    for f in range(features):
                        rel[r, f, CAUSE] = 0.0  # (read only in alarm: a raise sets it anew)
        if relations:
            for f in range(features):
                rel[r, f, RES] = res[f]
                rel[r, f, DEV] = devs[f]
                lv[r, f, LV_RES] = res_raw[f]
        if not learn and alarms:  # in alarm, the features it does not implicate keep their level current
            a = max(1.0 / (dev[r, REL_N] + 1.0), relation_rate)
            for f in range(features):
                # ... unless bound to an implicated one (``hold_related``): it keeps its mean with theirs,
                # or their relation drifts apart while the device is normal again
                if not implicated[f] and not (hold_related and _bound_to(cov, r, features, f, implicated, explained)):
                    rel[r, f, MU] += a * (x[i, f] - rel[r, f, MU])
        # an alarm raised before the relations are ready (a cold start's first readings) does not stop
        # them (``relation_warmup``): else they never become ready, and such an alarm can only time out
        warming = relation_warmup and relations and dev[r, REL_N] < min_relation
        if (learn or warming) and relations:  # ---- learn the relations (EW mean and covariance, equal weights first)
            n_rel = dev[r, REL_N] + 1.0
            dev[r, REL_N] = n_rel
            a = max(1.0 / n_rel, relation_rate)
            for f in range(features):
                us[f] = x[i, f] - rel[r, f, MU]
                rel[r, f, MU] += a * us[f]
            for j in range(features):
                for k in range(features):
                    cov[r, COV, j, k] = (1.0 - a) * (cov[r, COV, j, k] + a * us[j] * us[k])
            if n_rel <= min_relation or int(n_rel) % 8 == 0:
                _refresh_precision(cov, r, features, ridge, scratch)
            if rel_ready and not populating:
                _device_gauss_update(dev, r, RG_N, stat)
            if cusum and rel_ready and not populating:
                for f in range(features):
                    # a residual already surprising (below the alarm) does not widen its own null
                    if cus[f] - bonferroni < tolerance:
                        _cusum_learn(s, r, f, cu, es[f], relation_rate)
                    else:
                        s[r, cu + CU_PREV, f] = np.nan
            if level_rate > 0.0 and rel_ready:  # (before, the deviations are those of a mean still settling)
                for f in range(features):
                    # a level already surprising (below the alarm) does not widen its own null: else a
                    # slowly growing fault teaches the channel to expect it before it is significant
                    if gaussian_surprise(level_z[f]) < tolerance:
                        _level_learn(lv, r, f, lu[f], ld[f], relation_rate)
                    else:
                        lv[r, f, LV_PREV] = np.nan
        elif learn and alarms:
            for f in range(features):
                rel[r, f, MU] += max(1.0 / (s[r, N, f] + 1.0), relation_rate) * (x[i, f] - rel[r, f, MU])
        if relations and not (learn or warming):
            for f in range(features):
                if level_warmup and level_rate > 0.0 and rel_ready and lv[r, f, LV_N] < min_profile:
                    # the level channel's first readings are learned even in alarm (``level_warmup``): an alarm
                    # raised before it is ready keeps it from ever judging that the device is back
                    _level_learn(lv, r, f, lu[f], ld[f], relation_rate)
                    continue
                lv[r, f, LV_PREV] = np.nan  # the lag-1 product pairs consecutive normal readings only
                if cusum:
                    s[r, cu + CU_PREV, f] = np.nan
        # ---- learn (CompactNovelty._learn_plans and _learn_scale); in alarm, only the features
        # the alarm does not implicate
        for f in range(features):
            value = x[i, f]
            z = zs[f]
            # the model (memories, profile, calibration, normal steps and runs) learns normal readings
            # only; the checks' bookkeeping (last value, runs, seen range) follows every reading
            protect = not learn and implicated[f]
            # a protected feature's blocks still fill and complete: each abnormal block is compared
            # with the last normal context, then dropped (it never enters the context nor the
            # memory), so the channel sees when the readings are normal again and the alarm clears
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
            if not protect:
                for k in range(scales):
                    if not completes[f, k]:
                        continue
                    for q in range(2 * w - 1):
                        ring[r, k, f, q] = ring[r, k, f, q + 1]
                    ring[r, k, f, 2 * w - 1] = ys[f, k]
                    blocks = s[r, _scale_index(k, BLOCKS), f] + 1
                    s[r, _scale_index(k, BLOCKS), f] = blocks
                    j = js[f, k]
                    if j >= 0:
                        used[r, k, f, j] = np.int32(blocks)
                        if blocks >= 2 * w + min_blocks and not populating:
                            _gauss_update(s, r, _scale_index(k, G_N), f, ds[f, k])
                            if not alarms or history or gaussian_surprise(zks[f, k]) < u_threshold:
                                s[r, _scale_index(k, G_MAX), f] = max(s[r, _scale_index(k, G_MAX), f], ds[f, k])
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
                        if not populating:
                            learned = resids[f] * resids[f] if profile_chi_square else abs(resids[f])
                            _gauss_update(s, r, PROFILE_N, f, learned)
                            if not alarms or history or gaussian_surprise(zps[f]) < u_threshold:
                                s[r, PROFILE_MAX, f] = max(s[r, PROFILE_MAX, f], abs(resids[f]))
            if protect:  # the jump check compares consecutive readings, whatever they are
                s[r, LAST, f] = value
                continue
            n = s[r, N, f]
            if n >= warmup:
                seen_span = s[r, SEEN_MAX, f] - s[r, SEEN_MIN, f]
                excess = max(value - s[r, SEEN_MAX, f], s[r, SEEN_MIN, f] - value)
                if seen_span > 0 and excess > extreme_tolerance * seen_span:
                    s[r, RECORDS, f] += 1
                s[r, RECORD_N, f] += 1
            repeated = value == s[r, LAST, f]
            if n > 0:
                if not repeated and not protect:
                    s[r, MAX_RUN, f] = max(s[r, MAX_RUN, f], s[r, RUN, f])
                s[r, RUN, f] = s[r, RUN, f] + 1 if repeated else 0.0
                s[r, P_REPEAT, f] += max(repeat_alpha, 1.0 / n) * ((1.0 if repeated else 0.0) - s[r, P_REPEAT, f])
                step = abs(value - s[r, LAST, f])
                if step > 0.0 and not (0.0 < s[r, resolution, f] <= step):
                    s[r, resolution, f] = step  # the smallest nonzero step: the feature's resolution
                if n >= warmup and not history:
                    step = min(step, (1.0 + step_growth) * s[r, MAX_STEP, f])
                if not protect and not fresh:  # a change across a gap is no step
                    s[r, MAX_STEP, f] = max(s[r, MAX_STEP, f], step)
            s[r, LAST, f] = value
            s[r, SEEN_MAX, f] = max(s[r, SEEN_MAX, f], value)
            s[r, SEEN_MIN, f] = min(s[r, SEEN_MIN, f], value)
            s[r, N, f] = n + 1
            if n + 1 <= warmup and s[r, FIXED, f] == 0.0:
                s[r, LO, f] = s[r, SEEN_MIN, f]
                s[r, HI, f] = s[r, SEEN_MAX, f]
        dev[r, LEVEL] = max(dev[r, LEVEL] * decay, score)
    return scores
