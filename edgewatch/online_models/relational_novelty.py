"""Relational novelty: the default detector. Compact novelty per feature, the relations between a
device's sensors, and the device's alarm state, in one compiled kernel over state rows."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import ClassVar, NamedTuple

import numpy as np
from river.base import AnomalyDetector

from edgewatch.online_models import compact_novelty_kernel as kernel
from edgewatch.online_models.compact_novelty import CompactNovelty
from edgewatch.online_models.state_layout import StateLayout

#: the NAB-calibrated threshold of the scores (the same for every dataset and the flow)
THRESHOLD = 0.3426


class Detection(NamedTuple):
    """What the kernel says about a batch: per reading its score, its event bits
    (:data:`~edgewatch.online_models.compact_novelty_kernel.ABNORMAL`, ``RAISED`` …), feature
    shares (abnormal readings and alarm events), alarm start/peak, drift levels before/after,
    and its detection score (the score debounced: 0 where the reading adds nothing to the
    evidence the device showed just before)."""

    scores: np.ndarray
    events: np.ndarray
    shares: np.ndarray
    alarm_info: np.ndarray
    drift_levels: np.ndarray
    detections: np.ndarray


def _scalar_offset(layout: StateLayout, names: tuple[str, ...]) -> int:
    """Where the consecutive fields ``names`` start in the per-feature scalar block (the one holding
    ``FEATURE_FIELDS``): the kernel is told where its fields are, whatever CompactNovelty adds before them."""
    block = next(
        [field for field, _ in fields] for fields in layout.blocks.values() if fields[0][0] == kernel.FEATURE_FIELDS[0]
    )
    start = block.index(names[0])
    if tuple(block[start : start + len(names)]) != names:
        raise ValueError(f"fields {names} are not consecutive in the scalar block")
    return start


def effective_samples(values: np.ndarray) -> float:
    """The independent samples ``values`` (a series) are worth: their count over the integrated
    autocorrelation time ``1 + 2 sum rho_k``, summed up to the first lag whose autocorrelation is not
    positive (Geyer's initial positive sequence, its simplest form); between 1 and ``len(values)``.

    >>> rng = np.random.default_rng(0)
    >>> round(effective_samples(rng.normal(size=400)))  # independent: about all of them
    400
    >>> walk = np.convolve(rng.normal(size=405), np.ones(6), "valid")  # each shares 5 draws with the next
    >>> 40 < effective_samples(walk) < 120
    True
    """
    n = len(values)
    x = np.asarray(values, np.float64) - np.mean(values)
    c0 = float(x @ x)
    if n < 3 or c0 <= 0.0:
        return float(n)
    tau = 1.0
    for lag in range(1, n - 1):
        rho = float(x[:-lag] @ x[lag:]) / c0
        if rho <= 0.0:
            break
        tau += 2.0 * rho
    return float(min(max(n / tau, 1.0), n))


def predictive_inflation(n_eff: float, z_alarm: float) -> float:
    """The factor on a Gaussian calibration's standard deviation (mean and spread estimated from ``n_eff``
    independent values) that makes a new value's Gaussian z reach ``z_alarm`` exactly where its Student-t
    predictive (``n_eff - 1`` degrees of freedom, scale ``sqrt(1 + 1 / n_eff)``) is as improbable: the
    fitted Gaussian's alarm moved out to the t's, where the decision is made.

    >>> [round(predictive_inflation(n, 4.52), 2) for n in (8.0, 20.0, 50.0, 1000.0)]
    [2.9, 1.4, 1.13, 1.01]
    """
    nu = max(n_eff - 1.0, 1.0)
    lo, hi = 0.0, z_alarm
    while kernel._t_to_z(hi * hi, nu) < z_alarm:
        lo, hi = hi, 2.0 * hi
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if kernel._t_to_z(mid * mid, nu) < z_alarm:
            lo = mid
        else:
            hi = mid
    return hi * float(np.sqrt(1.0 + 1.0 / max(n_eff, 1.0))) / z_alarm


class RelationalNovelty(AnomalyDetector):
    """Per-device novelty with sensor relations, an alarm state and protected learning.

    Each reading is scored by two kinds of evidence, combined into one calibrated surprise
    (decades of improbability; score ``u / (u + surprise_scale)``, see :class:`CompactNovelty`):

    * **per feature** the channels of :class:`CompactNovelty` (weekly profile, short shapes at
      two scales, new extremes, jumps, stuck values);
    * **sensor relations** (devices with two features or more): an EW mean and covariance of
      the readings (rate ``relation_rate``, equal weights at first); each feature's
      standardized regression residual given the others (from the precision matrix of the
      correlations, ``ridge`` added), smoothed (``relation_smoothing``); their RMS is calibrated
      against its own running mean and variance (a Gaussian tail), after ``min_relation``
      readings. A fault that breaks how the sensors move together shows here even when no
      sensor leaves its range; an operating point moving along the device's normal behaviour
      does not.

    **Alarm state.** A score at or above ``threshold`` (debounced as in CompactNovelty) raises
    the device's alarm; every reading is then abnormal until ``clear_after`` consecutive
    readings score below the threshold (cleared), or the new state is accepted as the new
    normal: after ``accept_readings`` consecutive abnormal readings that keep the learned
    relations (relation surprise below ``relation_tolerance`` decades; a single-feature device
    has none to break) — a *consistent shift* — or ``accept_after`` seconds after it was raised
    (*timeout*), or when an operator accepts it (:meth:`accept`). Acceptance re-bases the
    novelty channels on the new level and, after a timeout, learns the relations anew.

    **Protected learning.** Abnormal readings teach nothing: a fault that lasts is never
    learned as normal. Normal readings (the one that clears an alarm included) are learned. A
    protected feature's blocks still complete; each is compared with the last normal context and
    dropped, so the alarm clears when the readings are normal again.

    **Empirically bounded calibration.** The Gaussian calibration of the profile and shape channels
    extrapolates a tail; values already seen as normal bound it (``empirical_bound``).

    **Extremes along the relations.** A new extreme of a feature the others explain (R² at
    least ``explained``) that they also predict (its residual below ``relation_tolerance``
    decades) is an operating point not visited yet (a setpoint, the ambient cycle), not a fault.

    This object is a view of one state row of the kernel a :class:`VectorBank` runs for a
    whole fleet (``score_one`` runs it on a copy of the row, ``learn_one`` keeps the result):
    one implementation.

    Args:
        threshold: score that raises an alarm.
        clear_after: consecutive readings below the threshold that clear it.
        accept_readings: consecutive abnormal readings that keep the relations before the new
            state is accepted.
        accept_after: seconds after which any alarm's state is accepted as the new normal.
        relation_rate: smallest EW rate of the relations' mean and covariance.
        relation_smoothing: EW rate of the smoothed residuals.
        relation_tolerance: relation surprise (decades) below which a reading keeps the relations.
        min_relation: readings before the relations score (their calibration then needs as many
            residuals as the profile channel's, ``novelty.min_profile``).
        ridge: added to the correlations' diagonal before inverting.
        fast_rate: EW rate of the current level (what an acceptance moves the normal to).
        explained: smallest fraction of a feature's variance its relations to the others must
            explain for a change of that feature to count as a new operating point.
        along_relations: a shift keeps the relations when its Mahalanobis length (in the
            correlations) is at most this times its Euclidean length (in standard deviations),
            even when far along a relation each reading's residual is surprising (0: off).
        explain_along: the shape and profile novelty of a feature the others explain
            (``explained``) whose shift their shifts predict (the unpredicted part at most this
            fraction of it) is a move along the relations, not evidence of a fault; while the whole
            shift runs along the relations (``along_relations``) so are the relations' residuals.
            Jumps, stuck values and unexplained features still count (0: off).
        extreme_steps: on a device with several features (relations to check), a new extreme
            counts only beyond this many of the feature's largest normal steps past its seen range
            (a slow cycle wandering on sets records a step at a time); a single feature has only
            its range.
        hold_related: in alarm, the relations' mean of a feature correlated with an implicated
            one (squared correlation at least ``explained``) stays with theirs (else it follows its
            readings while theirs is frozen, and the relation drifts apart until a normal device
            looks broken); the other features keep following their readings.
        relation_warmup: the relations learn their first ``min_relation`` readings even in alarm
            (a cold start's early alarm would otherwise keep them from ever being ready, and only
            time out).
        level_rate: EW rate of each feature's level channel (devices with relations): the level's
            deviation from the relations' mean, against the null variance of an EW mean of the normal
            readings' autocorrelated deviations and judged with their effective sample size (a slow
            signal has seen few independent levels), enters the score as a per-feature channel: a
            small sustained shift of a noisy feature shows, a slow drift does not (0: off). It counts while
            the recent readings (the ``fast_rate`` level) depart too: an alarm ends when they are back to
            normal, not when the slow level has forgotten.
        level_hold: the recent readings count as back only when they also differ from the slow level by
            more than chance (off: a noisy fault's chance dip back to normal can clear its alarm, and the
            fault is then learned; on, measured: SKAB and the simulator lose a little precision).
        level_steps: the level channel judges departures that came as a step (the recent readings left
            the slow level by more than chance), remembered while either level departs: a ramp slow
            enough that both levels move together is a drift, not a fault.
        gap_spread: the temporal context (last value and jump reference, run of repeats, shingles,
            smoothed residuals) holds only while the stream is continuous. Each device learns its
            sampling interval (EW mean and mean absolute deviation of the log time between
            readings, rate ``interval_rate``, warm-started on the history); a reading more than twice
            the normal interval's upper end (mean + ``gap_spread`` deviations) after the last one
            (a restart, an outage, live data after the history it was trained on) is judged without
            the readings before the gap: the context starts anew, the distribution state (ranges,
            memories, profile, relations, calibration, alarm) stays (0: off).
        interval_rate: smallest EW rate of the sampling interval's estimate.
        relation_cube_root: the relations' statistic calibrated is the cube root of the residuals'
            weighted mean square (Wilson-Hilferty: nearly Gaussian), not its square root: a mean square
            of a few Gaussian residuals is chi-square-like, skewed, and a Gaussian tail fitted to its
            square root underrates how often it is large (off: the square root, as before).
        shape_effective: a shape channel's standard score is judged as Student's t with as many degrees of
            freedom as independent shingles calibrated it (calibration distances / ``window``: consecutive
            shingles share all but one block), not as a Gaussian z: a variance estimated from a few
            shingles (a warm start's, a slow feature's long blocks) makes no z of 6 a sure fault.
        residual_clip: a reading's relation residual enters the smoothed residual at most at the
            standard score that alone would raise an alarm (the threshold's surprise): a robust
            (Huber-like) smoothing, so one spike's residual does not hold an alarm for the smoothing's
            memory after the spike is over, while a sustained break still saturates far above normal
            (off: unclipped, as before). Whether the relations hold (a consistent shift) is judged on
            the unclipped residual: clipped, a noisy break looks smaller than it is.
        clear_on_return: in alarm, a cause feature whose recent readings (the ``fast_rate`` level) are back
            at its normal level, as the level channel judges a level (autocorrelation, effective sample size;
            no surprise of ``relation_tolerance`` decades), holds the alarm only by evidence that is not a
            level: spikes and spread (extreme shapes), jumps, stuck values, new extremes, its share of a
            relation break. What its level channels (the level, the profile's smoothed residual, block
            means) still show is the memory of the fault's readings, or a level their independent-readings
            calibration overrates on a slow signal: the alarm clears when the device is back, not when that
            memory has faded (off: every channel holds, as before).
        resolution_spread: the profile channel judges a residual with the spread its calibration learned
            plus what the readings' rounding to the feature's resolution (``resolution``: the smallest
            nonzero step between two of its readings, learned by every feature) alone gives the smoothed
            residual (step² / 12 per reading, through the smoothing): a feature that reports whole
            numbers moves by a whole unit whatever the truth, and a calibration learned from a short
            history (a warm start) is too tight to judge such a move.
        shape_resolution: on a device with several features, a shingle no farther (RMS) from a known one
            than this many of the feature's resolution is that shape at a quantized sensor's next level
            (an integer humidity following the ambient cycle): no finer shape can show (0: off). On float
            sensors the resolution is tiny and it never acts.
        residual_cusum: the design shift (long-run standard deviations) of a two-sided CUSUM on each
            feature's standardized regression residual given the others (devices with relations whose relations
            are ready; 0: off). The residual is standardized by the long-run deviation of the normal residuals
            (learned like the calibrations: not from readings already surprising): their mean square
            times the larger of the lag-1 (AR(1)) factor and the factor measured at the recent level's
            scale (batch-means, taken one standard error higher: it rests on few independent levels),
            so a slow cycle the lag-1 correlation misses does not drive the sums. The reference value
            is half the shift plus the normal mean's standard error, and a sum is worth its stationary
            null tail in decades (one scale with every channel, one threshold): several small consistent
            deviations add up where no reading alone is surprising. Sums are capped a ``clear_after``'s
            worth of readings above the alarm's level and count only while the recent residuals depart
            too (so, unlike the level channels' memory, they still hold a returned feature under
            ``clear_on_return``): an alarm ends with its fault. Measured at 2 against off: SKAB F1 0.78 → 0.82,
            MAR 31.0 → 25.4, FAR 9.5 unchanged, changepoint score 37.1 → 35.8 (valve1/5's fault raised
            earlier, late in its first changepoint window rather than early in the second), the simulator's
            recall and alarms after legitimate changes unchanged, a false alarm or two more on some fleets
            (docs/architecture.md).
        cusum_steps: the EW rate of the residual's slow level: the residual CUSUM counts a departure only if
            it came as a step (its recent level left the slow one by more than chance within
            ``1 / cusum_steps`` readings of the onset; remembered while either level departs): a residual
            that drifts slowly (a slow cycle the relations' mean lags behind) is not summed into a fault,
            as ``level_steps`` judges levels (0: off, every departure is summed).
        history_fill: the fraction of a warm start's history (:meth:`fit_history`) that only fills the
            shape memories and the profile before the channels' calibrations start learning (the rest
            calibrates them). 0: every channel calibrates over the whole history as a cold start over the
            same readings would, each once its own warm-up is over (the shapes after ``2 window +
            min_blocks`` blocks, the profile and relations after their first readings): the history's
            slower parts (a machine heating up, the first readings of a profile bin, distances to a memory
            still filling) then widen the calibrations and raise the empirical bounds as they widen a cold
            start's. Calibrated on the settled second half only, a warm start judged the live stream
            with spreads a cold start never had (tighter), alarmed on changes the cold start took as
            normal, and its larger scores held the debouncing above the next fault's. Kept at 0.5 (measured,
            docs/architecture.md): with 0 the simulator's warm fleets have half the false alarms and the cold
            start's recall, but NAB standard 75.22 -> 71.92 and SKAB FAR 9.52 -> 12.75, changepoint -4.
        history_effective: a warm start's calibrations (the shape and profile channels' and the relations'
            Gaussians, :meth:`fit_history`) count the history's calibration values in effective independent
            samples (``n`` over their integrated autocorrelation time: consecutive shingles share all but
            one block, a smoothed residual carries the last ones) and widen each by the Student-t
            predictive of that many samples over the one of the count it is credited with, matched at the
            alarm's threshold: only the history's overcount is corrected (the threshold is set on
            calibrations scored at their counts, cold or warm). One settled session's values are few
            independent draws of what a new session shows; the stream's own values then dilute the widening
            as they are learned. On by default, with ``step_cusum`` and ``step_level`` (measured:
            docs/architecture.md, "Warm start" and "Defaults chosen together").
        profile_along: the profile novelty of a feature the others explain (R² at least ``explained``) whose
            reading they predict (its regression residual no surprise of ``relation_tolerance`` decades) is
            the device moving along its relations, not evidence of a fault: the extremes check's rule
            (``extremes_along_relations``) for the profile channel. The profile's smoothed residual is a
            departure from the bin's recent mean (a slope on a ramp): a setpoint ramp that crosses the
            relations' mean has no shift for ``explain_along`` to excuse, and a warm start's profile,
            calibrated on a settled history, saw it at 47 decades. Measured (on): NAB identical (one
            feature: nothing explains it), SKAB identical, the simulator's cold fleets identical (seeds
            0-4), warm false alarms 3, 5, 4, 1, 2 -> 1, 3, 3, 0, 0 (seeds 0-4), recall unchanged.
        unfollowed_steps: a shift that breaks the relations is also a consistent shift when the features that
            departed (their recent level off their normal one, or moving with those that are) are at least two,
            move along their relations among themselves (``along_relations``, judged on their own correlations),
            and none of the alarm's cause features departed or shows anything alarming by itself: a setpoint
            moved the controlled features together and an exogenous one (the ambient temperature) did not
            follow a relation learned from slow co-movement (two slow signals chance-correlated over few
            independent levels). On acceptance the departed features' relations to the others are learned anew
            (their cross-covariances restart), those among each group kept. A fault that moves one sensor off its
            partners has one departed feature, or departs across their relations, and stays abnormal. Measured
            (on, the default): the simulator's seed-2 alarms still active 2 minutes after a setpoint 3 → 1 cold,
            1 → 0 warm (held-out seed 4 5/4 → 1/0, 16-device seed 6 1/1 → 0/0), SKAB unchanged, NAB untouched
            (single features); a few more short alarms (precision seed 2 0.977 → 0.971 cold, 0.966 warm).
        centered_spread: under ``clear_on_return``, while the device's relations hold (relation surprise below
            ``relation_tolerance``), a returned cause feature's extreme shapes are judged on each shingle
            relative to its own mean, against the memories so centered (the same calibration: a centered
            distance is never larger): its spread and spikes, wherever they sit. Protected learning keeps a
            cause's shape memory from learning new levels; an exogenous slow cycle (the ambient temperature)
            moving on to levels a cold start never saw otherwise holds its alarm to the end. On (measured with
            ``level_warmup``, the residual CUSUM on): alarms still active 2 minutes after a legitimate change 0
            on every simulator fleet (seed-2 cold 1 → 0, held-out 16-device seed 5 cold 4 → 0), SKAB FAR 9.50 →
            6.53 and F1 0.82 → 0.83, but MAR 25.42 → 25.73 and changepoint 35.82 → 35.72 (docs/architecture.md).
        level_warmup: the level channel learns its first ``novelty.min_profile`` readings after the relations are
            ready even in alarm, as ``relation_warmup`` lets the relations: a cold start's alarm raised before it
            is ready otherwise keeps ``clear_on_return`` from ever judging the device back, and only times out.
            On: measured with ``centered_spread`` (alone it changes nothing measured), a held-out 16-device seed-5
            cold fleet's ambient alarm held from its first minutes to the end clears (act 4 → 0, precision 0.972 →
            0.974); SKAB unchanged (its devices are warm-started: the channel is ready).
        level_from_mean: the level channel's EW level starts at the relations' mean (its best estimate when the
            channel starts), not at the reading then: a level started at one reading carries that reading's whole
            variance for its first ~1/``level_rate`` readings (a quantized feature's is a whole step off), and the
            level's measured variance (its null) learns that transient as wander. Only a channel that starts
            (a new device, a warm start) changes. Off by default (measured, no gain): SKAB MAR 25.42 -> 25.36,
            changepoint 35.82 -> 35.73, FAR equal; NAB identical; simulator precision/recall identical.
        level_scales: the level channel's fast-level null and fast-vs-slow gap (``level_steps``) judged with
            each scale's own persistence: the readings' short-range (AR(1)) factor at each level's rate, plus
            the slow level's variance beyond it (a slow wander) as variance the fast level shares whole, and
            that cancels from the gap. Without it both take the slow level's variance ratio as a factor, which
            for a feature whose slow level wanders overstates the fast level's null by about the ratio of the
            rates (SKAB valve1/1 flow: 2.7x in variance). Off by default (measured, mixed): SKAB MAR
            25.42 -> 25.36, FAR 9.50 -> 9.92, changepoint 35.82 -> 35.62; with ``level_from_mean`` MAR 24.87
            (even 24.30 -> 23.33, odd 26.51 -> 26.35), FAR 9.98 (even 13.13 -> 14.08), changepoint 35.51;
            NAB identical (one feature: no level channel); simulator seed 0 precision .995 -> .990 (cold and
            warm), seeds 1-4 identical. Neither moves valve1/1 or valve1/2 (docs/architecture.md).
        rearm_on_return: what the debouncing means once there is an alarm state: it holds back repeated raises of
            one episode (a score must exceed ``refractory_factor`` times the largest earlier one, decayed with a
            half-life of ``refractory`` readings), not the next episode. Once a cleared (or accepted) alarm's cause
            features are all back at their normal level (as ``clear_on_return`` judges them) and every channel has
            judged the device unsurprising (its score before debouncing below the threshold) for as long as the
            slowest channel takes to speak again (``max(clear_after, largest shape block)`` readings in a row), the
            episode is over: the debouncing level is dropped and the next raise is judged as on a device that never
            alarmed. Devices without relations (no level channel to judge a return: NAB's single series) keep the
            debouncing as before. Diagnosed on the simulator: every fault a warm start missed and a cold start found
            was a spike, dip, stuck value or failure 30-90 readings after another fault of the same sensor had
            cleared, debounced by that alarm's peak, which a warm start's tighter calibration makes higher (0.89-0.98
            against the cold start's 0.75, the jump check's fixed surprise that the next fault also scores). On by
            default (measured, off -> on): simulator recall warm = cold on every fleet (seed 1 0.972/0.978 ->
            0.994/0.994, seed 2 0.977/0.994 -> 1.0/1.0, seed 4 warm 0.970 -> 1.0), precision unchanged; NAB
            identical; SKAB FAR 6.53 -> 6.81, MAR 25.73 -> 25.30, changepoint 35.72 -> 36.07 (docs/architecture.md).
        relation_chi_square: the relations' weighted mean square itself calibrated, as the scaled chi-square
            ``g χ²_h`` whose mean and variance match those it showed on the device's normal readings
            (Satterthwaite; Box 1954), by its upper tail; overrides ``relation_cube_root`` (a Gaussian fitted to
            a root of it). Off by default (measured, neutral: docs/architecture.md, "Calibration of the relations
            and the channels").
        profile_chi_square: the profile channel's smoothed residual judged by its square against the scaled
            chi-square ``g χ²_h`` whose mean and variance match those of the squares learned (Satterthwaite: a
            heavy-tailed residual gets fewer degrees of freedom, a heavier tail), not by a Gaussian fitted to its
            absolute value (which, for a Gaussian residual, puts a 3.8-sigma residual at 6 decades instead of 4).
            Off by default (measured: docs/architecture.md, "Calibration of the relations and the channels").
        move_attribution: explanations give the relations' evidence to the likeliest culprit rather than to
            every feature whose residual departs: a relation break shows in the residuals of all the features it
            ties (a sensor drifting off its partner makes the partner's residual depart as much), so the break of
            the features the relations tie (R² >= ``explained``) is pooled and shared by each one's residual part
            times its current reading's move off its own fast level (squared, floored at its resolution and at
            1e-3 of its largest normal step: a stuck sensor keeps its hypothesis) times 10^(its own channels'
            surprise), in logs (``kernel._attribute_relations``); a feature they do not tie keeps its own
            evidence. Explanations only: scores, alarms and learning are the same either way. On: simulator fault
            episodes whose alarm names the faulted sensor first (``bench/explanations.py``, seeds 0-4) at the
            raise 0.90 -> 0.99 cold, 0.91 -> 0.99 warm (drifts 0.51 -> 0.96), in the alarm event 0.91 -> 1.00
            cold, 0.93 -> 1.00 warm (docs/architecture.md).
        unfollowed_core: how ``unfollowed_steps`` picks the step: its departed features, while they do not run
            along their relations, lose their smallest departure (in standard deviations), down to two; the step
            is judged on what moved most. A feature normal by itself that departs a little on its own (an
            exogenous slow signal: the ambient cycle moving humidity while a setpoint moves the machine) otherwise
            vetoes the step whenever its level flickers past the tolerance, and a chance relation between the
            ambient and the machine holds the alarm until ``accept_after``. The cause must still show nothing
            alarming by itself and the step keeps at least two features running along their relations: one sensor
            leaving its partners, or two departing across their relation, stay abnormal. On by default
            (measured, off -> on): held-out simulator fleets (40 devices seeds 6-8, 24 devices seeds 9-10, cold and
            warm) identical but seed 7 cold: a 1,089-reading false alarm after a setpoint (machine-0030) becomes 30
            readings, alarms still active 2 minutes after a change 5 -> 4 (the 4 left, on every fleet, are fault
            alarms clearing after their fault: see docs/architecture.md); SKAB and NAB identical.
        step_cusum: whether a step of a feature's relation residual is also judged against the level it left
            (held while the step lasts) and the residual's short-run noise (``kernel._step_surprise``), beside the
            residual CUSUM's judgement against the relations' mean and its long-run deviation. A feature whose level
            wanders between sessions (SKAB's flow: its normal test rows sit half a deviation off the training
            mean) has a long-run deviation several times its readings' own, and a sustained one- or two-deviation
            shift (a valve half-closed) never passes the residual CUSUM's reference value; as a step it does,
            within tens of readings. Needs ``residual_cusum`` and ``cusum_steps`` (its clip, its null tail and
            the slow level's rate). Only features the others do not predict (R² < ``explained``: for the others a step
            breaks their relations); a move of one resolution (a whole-number sensor) is no evidence; a departure
            beyond the alarm's standard score is left to the other channels and the level it settles at is the
            next anchor. On by default with ``step_level`` (measured alone on the regression residual, off -> on:
            SKAB F1 0.83 -> 0.86, FAR 6.81 -> 10.00, MAR 25.30 -> 17.28, changepoint 36.07 -> 36.54 (valve1/1 and
            valve1/2 found; valve1/14 and 15 held after their faults); NAB identical; simulator recall unchanged,
            precision >= 0.957, false alarms +1 to +4 on 10 of 26 fleet runs: docs/architecture.md).
        step_level: with ``step_cusum``, a feature the others do not predict judged by its own standardized
            deviation and the level channel's moments instead of its regression residual (which carries the
            others' moves through chance coefficients). On by default (measured, with step_cusum, against both
            off): simulator identical on all 26 fleet runs, NAB identical, SKAB F1 0.84, FAR 9.03, MAR 21.22,
            changepoint 35.51; with ``history_effective`` too: SKAB 0.86 / 5.03 / 21.33 / 38.63
            (docs/architecture.md).
        smooth_extremes: how an extreme-summary shape scale reduces a block (0, default: the extreme farthest from
            the block's mean). With a power ``p`` > 0 the block value is ``mean + (a^p - b^p) / (a^(p-1) + b^(p-1))``
            (``a``, ``b``: the upper and lower extremes' departures from the mean): continuous where the two
            departures are about equal, where the farthest-extreme rule flips from one extreme to the other (on
            a quantized feature the value is put on its grid of levels, its ``resolution``). So, with the rule,
            on a clean oscillation whose phase drifts across the blocks (a sine of a period incommensurate with
            the block) one block now and then gives a shingle ~40 % of the range from every one in the (recency)
            memory: an alarm, then held because the protected feature's frozen context no longer continues the
            signal (noise-free two-sensor sine: 740 of 1,500 readings abnormal; p = 32: 10). Off by default
            (measured: docs/architecture.md).
        novelty: the per-feature channels' parameters.
        relation_score: whether the relations' surprise enters the score and the explanations (off,
            they still judge consistent shifts and new extremes).
        hold_alarm: whether an alarm is held until it clears or is accepted (off: every reading is
            judged alone, abnormal when it scores at or above the threshold).
        protected_learning: whether abnormal readings are kept from teaching the model (off: every reading does).
        extremes_along_relations: whether a new extreme the relations predict is excused.
        empirical_bound: whether a calibrated channel's surprise is bounded by the values it learned:
            a novelty no larger than the largest normal one (from the history, or learned without
            surprise) is worth at most ``log10(n + 1)`` decades after ``n`` learned values — the tail
            probability any distribution gives it (exchangeability) — however far in the fitted
            Gaussian's tail: spikes a device shows normally do not alarm, however heavy their tail.

    The five switches are on by default; turning one off measures what its part adds
    (``bench/ablation.py``).

    Examples:
        >>> import math
        >>> from edgewatch.online_models.relational_novelty import RelationalNovelty
        >>> def reading(i, fault=False):
        ...     temp = 60.0 + 10.0 * math.sin(i / 40.0) + 0.1 * math.sin(i * 7.3)
        ...     return {"temp": temp, "pressure": 0.1 * temp + (1.5 if fault else 0.0) + 0.01 * math.cos(i * 5.1)}
        >>> detector = RelationalNovelty()
        >>> detector.fit_history([reading(i) for i in range(600)])
        >>> flags = []
        >>> for i in range(600, 900):
        ...     x = reading(i, fault=700 <= i < 800)
        ...     score = detector.score_one(x)
        ...     detector.learn_one(x)
        ...     flags.append(detector.abnormal)
        >>> sum(flags[:100]), sum(flags[100:200]), sum(flags[240:])  # before, during, a while after the fault
        (0, 100, 0)
    """

    ARRAY_DEVICE_STATE: ClassVar[dict[str, tuple]] = {name: (np.float64, 0.0) for name in kernel.DEVICE_FIELDS}
    #: state fields older models and snapshots lack (they load with the fields' initial values)
    LATER_FIELDS: ClassVar[frozenset] = kernel.LATER_DEVICE_FIELDS | {
        "drift",
        kernel.RESOLUTION_FIELD,
        *kernel.CUSUM_FIELDS,
    }
    #: parameters added since models were first saved whose default changes what saved fields mean: a
    #: model saved without one starts those fields anew (the relations' calibration of the square root
    #: of their statistic does not hold for its cube root: it recalibrates online, ``artifact.load``)
    RESTARTED_WITHOUT: ClassVar[dict[str, tuple[str, ...]]] = {"relation_cube_root": ("rg_n", "rg_mu", "rg_var")}

    def __init__(
        self,
        threshold: float = THRESHOLD,
        clear_after: int = 5,
        accept_readings: int = 30,
        accept_after: float = 3600.0,
        relation_rate: float = 0.002,
        relation_smoothing: float = 0.2,
        relation_tolerance: float = 2.0,
        min_relation: int = 200,
        ridge: float = 1e-7,
        fast_rate: float = 0.2,
        explained: float = 0.3,
        along_relations: float = 1.0,
        explain_along: float = 0.5,
        extreme_steps: float = 1.0,
        hold_related: bool = True,
        relation_warmup: bool = True,
        level_rate: float = 0.05,
        level_hold: bool = False,
        level_steps: bool = True,
        gap_spread: float = 4.0,
        interval_rate: float = 0.01,
        relation_cube_root: bool = True,
        shape_effective: bool = False,
        residual_clip: bool = True,
        clear_on_return: bool = True,
        resolution_spread: bool = True,
        shape_resolution: float = 1.0,
        residual_cusum: float = 2.0,
        cusum_steps: float = 0.05,
        history_fill: float = 0.5,
        history_effective: bool = True,
        profile_along: bool = True,
        unfollowed_steps: bool = True,
        centered_spread: bool = True,
        level_warmup: bool = True,
        level_from_mean: bool = False,
        level_scales: bool = False,
        rearm_on_return: bool = True,
        relation_chi_square: bool = False,
        profile_chi_square: bool = False,
        move_attribution: bool = True,
        unfollowed_core: bool = True,
        step_cusum: bool = True,
        step_level: bool = True,
        smooth_extremes: float = 0.0,
        novelty: CompactNovelty | None = None,
        relation_score: bool = True,
        hold_alarm: bool = True,
        protected_learning: bool = True,
        extremes_along_relations: bool = True,
        empirical_bound: bool = True,
    ):
        self.threshold = threshold
        self.clear_after = clear_after
        self.accept_readings = accept_readings
        self.accept_after = accept_after
        self.relation_rate = relation_rate
        self.relation_smoothing = relation_smoothing
        self.relation_tolerance = relation_tolerance
        self.min_relation = min_relation
        self.ridge = ridge
        self.fast_rate = fast_rate
        self.explained = explained
        self.along_relations = along_relations
        self.explain_along = explain_along
        self.extreme_steps = extreme_steps
        self.hold_related = hold_related
        self.relation_warmup = relation_warmup
        self.level_rate = level_rate
        self.level_hold = level_hold
        self.level_steps = level_steps
        self.gap_spread = gap_spread
        self.interval_rate = interval_rate
        self.relation_cube_root = relation_cube_root
        self.shape_effective = shape_effective
        self.residual_clip = residual_clip
        self.clear_on_return = clear_on_return
        self.resolution_spread = resolution_spread
        self.shape_resolution = shape_resolution
        self.residual_cusum = residual_cusum
        self.cusum_steps = cusum_steps
        self.history_fill = history_fill
        self.history_effective = history_effective
        self.profile_along = profile_along
        self.unfollowed_steps = unfollowed_steps
        self.centered_spread = centered_spread
        self.level_warmup = level_warmup
        self.level_from_mean = level_from_mean
        self.level_scales = level_scales
        self.rearm_on_return = rearm_on_return
        self.relation_chi_square = relation_chi_square
        self.profile_chi_square = profile_chi_square
        self.move_attribution = move_attribution
        self.unfollowed_core = unfollowed_core
        self.step_cusum = step_cusum
        self.step_level = step_level
        self.smooth_extremes = smooth_extremes
        self.novelty = CompactNovelty() if novelty is None else novelty
        self.relation_score = relation_score
        self.hold_alarm = hold_alarm
        self.protected_learning = protected_learning
        self.extremes_along_relations = extremes_along_relations
        self.empirical_bound = empirical_bound
        self._layout = StateLayout(self.ARRAY_STATE, self.ARRAY_DEVICE_STATE)
        self._cusum_at = _scalar_offset(self._layout, kernel.CUSUM_FIELDS)
        self._rows: dict[tuple[str, ...], list[np.ndarray]] = {}
        self._cache: tuple | None = None
        self.last: Detection | None = None  # the kernel's verdict on the last learned reading

    @classmethod
    def _unit_test_params(cls):
        yield {}

    # ------------------------------------------------------------------ the kernel over rows

    @property
    def ARRAY_STATE(self) -> dict[str, tuple]:
        fields = self.novelty._array_fields()
        fields["rel"] = (np.float64, 0.0, (len(kernel.RELATION_FIELDS),))
        fields["cov"] = (np.float64, 0.0, ("features",))
        fields["prec"] = (np.float64, 0.0, ("features",))
        fields["drift"] = (np.float64, 0.0, (len(kernel.LEVEL_FIELDS),))
        for name in kernel.CUSUM_FIELDS:  # scalars: they end the scalar block (the kernel finds them there)
            fields[name] = (np.float64, 0.0)
        return fields

    def _alarm_params(self, threshold: float | None) -> np.ndarray:
        """The kernel's alarm parameters, by name in ``kernel.ALARM_PARAMS``' order (the switches last)."""
        given = {"enabled": 1.0, "threshold": self.threshold if threshold is None else threshold}
        return np.array(
            [given[name] if name in given else float(getattr(self, name)) for name in kernel.ALARM_PARAMS],
            dtype=np.float64,
        )

    def score_learn_rows(
        self,
        blocks: dict[str, np.ndarray],
        rows: np.ndarray,
        x: np.ndarray,
        t: np.ndarray,
        threshold: float | None = None,
        mode: int = kernel.STREAM,
        has_time: bool = True,
    ) -> Detection:
        """Score, alarm and learn ``x[i]`` (features in the bank's column order) in state row ``rows[i]``."""
        n, features = x.shape
        out = Detection(np.empty(n), np.zeros(n, np.int64), np.zeros((n, features)), np.zeros((n, 2)),
                        np.zeros((n, 2, features)), np.empty(0))  # fmt: skip
        nov = self.novelty
        has_time = has_time and nov.profile  # the source time feeds only the weekly profile
        detections = kernel.detect(
            blocks["n"], blocks["profile"][:, 0].view(np.uint16), blocks["s0_ring"], blocks["s0_mem"],
            blocks["s0_used"], blocks["level"], blocks["rel"][:, 0], blocks["cov"],
            blocks["drift"][:, self._layout.position("drift")], rows, x, t, has_time,
            np.array(nov.scales, dtype=np.int64), np.array([summary == "extreme" for summary in nov.summaries]),
            np.array([nov.window, nov.memory, nov.warmup, nov.min_blocks, nov.min_profile, nov.extreme_warmup],
                     dtype=np.int64),
            nov._float_params(), self._alarm_params(threshold), mode, out.events, out.shares, out.alarm_info,
            out.drift_levels, out.scores, self._cusum_at,
        )  # fmt: skip
        return out._replace(detections=detections)

    def accept_row(self, blocks: dict[str, np.ndarray], row: int, features: int) -> np.ndarray | None:
        """An operator accepts the state of device ``row`` as its new normal (relations learned anew);
        returns the levels before/after, or None when the device is not in alarm."""
        if blocks["level"][row, kernel.ALARM] == 0.0:
            return None
        levels = np.zeros((1, 2, features))
        kernel.accept(
            blocks["n"],
            blocks["rel"][:, 0],
            blocks["cov"],
            blocks["level"],
            row,
            features,
            True,
            levels,
            0,
            self._cusum_at,
        )
        blocks["drift"][row, self._layout.position("drift"), :, kernel.LV_RES] = 0.0  # the unclipped residuals too
        return levels[0]

    # ------------------------------------------------------------------ River view of one row

    def _row(self, features: tuple[str, ...]) -> list[np.ndarray]:
        row = self._rows.get(features)
        if row is None:
            row = self._rows[features] = self._layout.allocate(1, len(features))
        return row

    def _run(self, row: list[np.ndarray], x: dict, t: float | None, mode: int = kernel.STREAM) -> Detection:
        features = tuple(sorted(x))
        values = np.array([[float(x[name]) for name in features]])
        return self.score_learn_rows(
            self._layout.by_field(row), np.zeros(1, np.int64), values, np.array([0.0 if t is None else float(t)]),
            mode=mode, has_time=t is not None,
        )  # fmt: skip

    def score_one(self, x: dict, t: float | None = None) -> float:
        row = [block.copy() for block in self._row(tuple(sorted(x)))]
        detection = self._run(row, x, t)
        self._cache = (dict(x), t, row, detection)
        return float(detection.scores[0])

    def learn_one(self, x: dict, t: float | None = None) -> None:
        features = tuple(sorted(x))
        cache, self._cache = self._cache, None
        if cache is not None and cache[0] == x and cache[1] == t:
            self._rows[features], self.last = cache[2], cache[3]
        else:
            self.last = self._run(self._row(features), x, t)

    @property
    def abnormal(self) -> bool:
        """Whether the last learned reading was abnormal (the device was in alarm)."""
        return self.last is not None and bool(self.last.events[0] & kernel.ABNORMAL)

    def accept(self) -> bool:
        """An operator accepts the current state as the new normal (every feature set of this device)."""
        accepted = False
        for features, row in self._rows.items():
            accepted |= self.accept_row(self._layout.by_field(row), 0, len(features)) is not None
        return accepted

    def fit_history(self, rows: Iterable[dict], timestamps: Iterable[float] | None = None) -> None:
        """Warm start on a block of fault-free history: each feature's range (normalization), the
        memories and profile (all of it), the calibration of every channel (after the first
        ``history_fill`` of it) and the relations (all of it). No alarms, no debouncing carried over."""
        if not 0.0 <= self.history_fill < 1.0:
            raise ValueError(f"history_fill must be in [0, 1), got {self.history_fill}")
        rows = list(rows)
        times = [None] * len(rows) if timestamps is None else [float(t) for t in timestamps]
        if len(times) != len(rows):
            raise ValueError(f"{len(rows)} rows but {len(times)} timestamps")
        by_features: dict[tuple[str, ...], list[int]] = {}
        for index, row in enumerate(rows):
            by_features.setdefault(tuple(sorted(row)), []).append(index)
        for features, indices in by_features.items():
            state = self._row(features)
            blocks = self._layout.by_field(state)
            values = np.array([[float(rows[i][name]) for name in features] for i in indices])
            stamps = np.array([0.0 if times[i] is None else times[i] for i in indices])
            scalars = blocks["n"][0]
            fixed = scalars[kernel.FEATURE_FIELDS.index("fixed")] > 0
            lo, hi = kernel.FEATURE_FIELDS.index("lo"), kernel.FEATURE_FIELDS.index("hi")
            new_lo, new_hi = values.min(axis=0), values.max(axis=0)
            scalars[lo] = np.where(fixed, np.minimum(scalars[lo], new_lo), new_lo)
            scalars[hi] = np.where(fixed, np.maximum(scalars[hi], new_hi), new_hi)
            scalars[kernel.FEATURE_FIELDS.index("fixed")] = 1.0
            half = int(len(indices) * self.history_fill)
            timed = times[indices[0]] is not None
            if half:
                self.score_learn_rows(
                    blocks, np.zeros(half, np.int64), values[:half], stamps[:half], mode=kernel.HISTORY_FILL,
                    has_time=timed,
                )  # fmt: skip
            if half < len(values) and self.history_effective:
                self._calibrate_effective(blocks, values[half:], stamps[half:], timed)
            elif half < len(values):
                self.score_learn_rows(
                    blocks, np.zeros(len(values) - half, np.int64), values[half:], stamps[half:],
                    mode=kernel.HISTORY_CALIBRATE, has_time=timed,
                )  # fmt: skip
            device = blocks["level"][0]
            device[:] = np.where(np.arange(len(device)) >= kernel.REL_N, device, 0.0)  # no alarm, no debouncing
            blocks["rel"][0, 0, :, kernel.FAST] = blocks["rel"][0, 0, :, kernel.MU]
        self._cache = None

    def _calibrations(self, blocks: dict[str, np.ndarray]) -> list[tuple[np.ndarray, int, int]]:
        """The Gaussian calibrations ``history_effective`` widens, each as (its block's row 0, the index of
        its count — mean and variance follow —, the count it needs to score): the shape channels' per
        scale and the profile's (per feature, unless their values are judged otherwise: ``shape_effective``,
        ``profile_chi_square``), and the relations' (``relation_chi_square``: not a Gaussian)."""
        scalars, device, nov = blocks["n"][0], blocks["level"][0], self.novelty
        out = []
        if not self.shape_effective:
            out += [(scalars, kernel._scale_index(k, kernel.G_N), nov.min_blocks) for k in range(len(nov.scales))]
        if not self.profile_chi_square:
            out.append((scalars, kernel.PROFILE_N, nov.min_profile))
        if not self.relation_chi_square:
            out.append((device, kernel.RG_N, nov.min_profile))
        return out

    def _calibrate_effective(self, blocks: dict[str, np.ndarray], x: np.ndarray, t: np.ndarray, timed: bool) -> None:
        """The history's calibrating part, one reading at a time, keeping each calibration's values (a value
        is what moved its running mean: ``n mu_n - (n - 1) mu_{n-1}``), then each calibration's variance
        widened by the Student-t predictive of its values' effective sample size over the one of its count
        (``history_effective``)."""
        calibrations = self._calibrations(blocks)
        learned: list[list[list[float]]] = [[[] for _ in np.atleast_1d(block[j])] for block, j, _ in calibrations]
        rows = np.zeros(1, np.int64)
        for i in range(len(x)):
            before = [(np.array(block[j], ndmin=1), np.array(block[j + 1], ndmin=1)) for block, j, _ in calibrations]
            self.score_learn_rows(blocks, rows, x[i : i + 1], t[i : i + 1], mode=kernel.HISTORY_CALIBRATE,
                                  has_time=timed)  # fmt: skip
            for (block, j, _), (n0, mu0), values in zip(calibrations, before, learned, strict=True):
                n1, mu1 = np.array(block[j], ndmin=1), np.array(block[j + 1], ndmin=1)
                for f in np.flatnonzero(n1 > n0):
                    values[f].append(n1[f] * mu1[f] - n0[f] * mu0[f])
        nov = self.novelty
        z_alarm = kernel._z_of_surprise(self.threshold * nov.surprise_scale / max(1.0 - self.threshold, 1e-9))
        for (block, j, least), values in zip(calibrations, learned, strict=True):
            for f, series in enumerate(values):
                if len(series) >= 2:
                    # The kernel already scores a Gaussian on ``count`` values as exact (the cold start
                    # does too, and the threshold is set for it): only the history's overcount is
                    # corrected, the t predictive at its effective samples over the one at the count it is
                    # credited with (never judged on fewer than the count a channel needs to score at
                    # all: a calibration on fewer values is as thin as a cold start's, not widened).
                    count = max(float(np.atleast_1d(block[j])[f]), float(least))
                    n_eff = min(max(effective_samples(np.asarray(series)), float(least)), count)
                    widen = (predictive_inflation(n_eff, z_alarm) / predictive_inflation(count, z_alarm)) ** 2
                    if block.ndim == 2:
                        block[j + 2, f] *= widen
                    else:
                        block[j + 2] *= widen

    def export_arrays(self, features: Sequence[str]) -> dict[str, np.ndarray]:
        """The state row for ``features`` (in the bank's column order): how a warm-started device
        enters a VectorBank."""
        features = tuple(features)
        if tuple(sorted(features)) != features or features not in self._rows:
            state = self._layout.allocate(1, len(features))
            return self._layout.read_row(state, 0)
        return self._layout.read_row(self._rows[features], 0)

    def import_arrays(self, features: Sequence[str], arrays: dict[str, np.ndarray]) -> None:
        """Set the state row for ``features`` from what :meth:`export_arrays` returned: how a model
        saved as arrays (no pickle) is loaded."""
        features = tuple(features)
        if tuple(sorted(features)) != features:
            raise ValueError(f"features must be in the bank's (sorted) order, got {features}")
        state = self._layout.allocate(1, len(features))
        self._layout.write_row(state, 0, arrays)
        self._rows[features] = state
        self._cache = None

    def state_bytes(self) -> int:
        return sum(block.nbytes for row in self._rows.values() for block in row)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cache"] = None
        return state
