"""Tests of the NAB scorer re-implementation (edgewatch.evaluation.nab).

Reference figures come from the NAB results shipped in ``<data_dir>/nab`` (31 of NAB's
58 files): per-file ``<detector>_<profile>_scores.csv`` and per-row anomaly scores.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from edgewatch.evaluation import nab

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("EDGEWATCH_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
NAB_ROOT = DATA_DIR / "nab"
RESULTS = NAB_ROOT / "results"
PROFILES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")
DETECTORS = ("numenta", "null", "random", "windowedGaussian")

needs_data = pytest.mark.skipif(
    not (NAB_ROOT / "labels" / "combined_windows.json").exists(),
    reason=f"NAB data not found at {NAB_ROOT} (set EDGEWATCH_DATA_DIR to the dir holding nab/)",
)

# Normalized scores on the 31 shipped files, thresholds optimized over those files.
# numenta standard / low-FP are the externally given targets (69.5, 62.9); the rest are
# pinned from this implementation once per-file scores were shown to match NAB's files.
EXPECTED_NORMALIZED = {
    ("numenta", "standard"): 69.519,
    ("numenta", "reward_low_FP_rate"): 62.883,
    ("numenta", "reward_low_FN_rate"): 74.019,
    ("null", "standard"): 0.0,
    ("null", "reward_low_FP_rate"): 0.0,
    ("null", "reward_low_FN_rate"): 0.0,
    ("random", "standard"): 17.163,
    ("random", "reward_low_FP_rate"): 12.380,
    ("random", "reward_low_FN_rate"): 25.907,
    ("windowedGaussian", "standard"): 37.701,
    ("windowedGaussian", "reward_low_FP_rate"): 32.721,
    ("windowedGaussian", "reward_low_FN_rate"): 40.857,
}


@pytest.fixture(scope="module")
def corpus():
    return nab.load_corpus(NAB_ROOT)


@pytest.fixture(scope="module")
def detector_scores(corpus):
    return {d: nab.load_detector_scores(RESULTS, d, corpus) for d in DETECTORS}


def _reference_rows(detector, profile):
    with open(RESULTS / detector / f"{detector}_{profile}_scores.csv", newline="") as fh:
        return [r for r in csv.DictReader(fh) if r["File"] != "Totals"]


def _counts(row):
    return tuple(int(row[c]) for c in ("TP", "TN", "FP", "FN", "Total_Count"))


# --------------------------------------------------------------------------- reference files


@needs_data
@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("detector", ["numenta", "null", "windowedGaussian"])
def test_per_file_scores_match_nab_scores_csv(corpus, detector_scores, detector, profile):
    rows = _reference_rows(detector, profile)
    assert len(rows) == 31
    for row in rows:
        key = row["File"]
        got = nab.score_file(
            corpus.files[key],
            detector_scores[detector][key],
            float(row["Threshold"]),
            corpus.profiles[profile],
        )
        assert got.score == pytest.approx(float(row["Score"]), abs=1e-6), key
        assert (got.tp, got.tn, got.fp, got.fn, got.total) == _counts(row), key


@needs_data
@pytest.mark.parametrize("profile", PROFILES)
def test_random_scores_csv_is_from_legacy_nab(corpus, detector_scores, profile):
    """random's *_scores.csv (15 files) predates NAB v1.0 and is reproduced only by its rules.

    The old scorer had no 750-row cap on probation and divided TPs by a rounded 0.98661
    instead of S(-1) = 0.986614298; machine_temperature's labels changed since.
    """
    rows = _reference_rows("random", profile)
    assert len(rows) == 15
    legacy_tp = nab.scaled_sigmoid(-1.0) / 0.98661
    current_mismatch = 0
    for row in rows:
        key = row["File"]
        f, s = corpus.files[key], detector_scores["random"][key]
        threshold, prof = float(row["Threshold"]), corpus.profiles[profile]
        current = nab.score_file(f, s, threshold, prof)
        current_mismatch += abs(current.score - float(row["Score"])) > 1e-6
        if key == "realKnownCause/machine_temperature_system_failure.csv":
            continue
        old_file = dataclasses.replace(f, probation=math.floor(0.15 * f.n_rows))
        old_profile = dataclasses.replace(prof, tp_weight=prof.tp_weight * legacy_tp)
        old = nab.score_file(old_file, s, threshold, old_profile)
        assert old.score == pytest.approx(float(row["Score"]), abs=1e-6), key
        assert (old.tp, old.tn, old.fp, old.fn, old.total) == _counts(row), key
    assert current_mismatch > 0  # documents that the file is not current-NAB output


@needs_data
@pytest.mark.parametrize("detector", DETECTORS)
def test_corpus_normalized_scores_on_31_files(corpus, detector_scores, detector):
    results = nab.evaluate(corpus, detector_scores[detector])
    assert set(results) == set(PROFILES)
    for profile, res in results.items():
        assert res.null_score == -53 * corpus.profiles[profile].fn_weight
        assert res.perfect_score == 53 * corpus.profiles[profile].tp_weight
        assert res.normalized_score == pytest.approx(EXPECTED_NORMALIZED[detector, profile], abs=1e-3)


@needs_data
def test_numenta_published_targets(corpus, detector_scores):
    """69.5 / 62.9: optimized or NAB's published (58-file) thresholds give the same raw score."""
    scores = detector_scores["numenta"]
    with open(NAB_ROOT / "config" / "thresholds.json") as fh:
        published = {p: v["threshold"] for p, v in json.load(fh)["numenta"].items()}
    optimized = nab.evaluate(corpus, scores)
    fixed = nab.evaluate(corpus, scores, thresholds=published)
    for res in (optimized, fixed):
        assert res["standard"].normalized_score == pytest.approx(69.5, abs=0.1)
        assert res["reward_low_FP_rate"].normalized_score == pytest.approx(62.9, abs=0.1)
    assert fixed["standard"].threshold == published["standard"]
    # Raw score at the published threshold = sum of the per-file rows of numenta's csv.
    total = sum(float(r["Score"]) for r in _reference_rows("numenta", "standard"))
    assert fixed["standard"].raw_score == pytest.approx(total, abs=1e-9)


# --------------------------------------------------------------------------- sweep correctness


def _nab_port_optimize(corpus, scores, profile):
    """Straight row-by-row port of NAB's Sweeper + optimizeThreshold (slow, independent)."""
    max_tp = 2 / (1 + math.exp(-5.0)) - 1

    def sig(x):
        return -1.0 if x > 3.0 else 2 / (1 + math.exp(5 * x)) - 1

    with open(NAB_ROOT / "labels" / "combined_windows.json") as fh:
        all_windows = json.load(fh)
    points = []
    for key, anomaly in scores.items():
        stamps = [datetime.fromisoformat(t) for t in corpus.files[key].timestamps]
        pending = [tuple(datetime.fromisoformat(x) for x in w) for w in all_windows[key]]
        n = len(stamps)
        probation = min(math.floor(0.15 * n), 0.15 * 5000)
        cur = name = right = width = prev_right = prev_width = None
        for i, (t, a) in enumerate(zip(stamps, anomaly, strict=True)):
            if pending and t == pending[0][0]:
                cur = pending.pop(0)
                name = f"{key}|{cur[0]}"
                right = stamps.index(cur[1])
                width = float(right - stamps.index(cur[0]) + 1)
            if cur is not None:
                sweep = sig(-(right - i + 1) / width) * profile.tp_weight / max_tp
            elif prev_right is None:
                sweep = -profile.fp_weight
            else:
                sweep = sig(abs(prev_right - i) / float(prev_width - 1)) * profile.fp_weight
            if i >= probation:
                points.append((float(a), sweep, name))
            if cur is not None and t == cur[1]:
                prev_right, prev_width, cur, name = i, width, None, None
    points.sort(key=lambda p: p[0], reverse=True)
    parts = {"fp": 0.0}
    for _, _, name in points:
        if name is not None:
            parts[name] = -profile.fn_weight
    curve, threshold = [], 1.1
    for a, sweep, name in points:
        if a != threshold:
            curve.append((threshold, sum(parts.values())))
            threshold = a
        if name is None:
            parts["fp"] += sweep
        else:
            parts[name] = max(parts[name], sweep)
    curve.append((threshold, sum(parts.values())))
    return max(curve, key=lambda c: c[1])  # first maximum, like NAB's stable sort


@needs_data
@pytest.mark.parametrize(
    ("detector", "profile"),
    [("numenta", "standard"), ("numenta", "reward_low_FP_rate"), ("windowedGaussian", "reward_low_FN_rate")],
)
def test_vectorized_sweep_equals_nab_port(corpus, detector_scores, detector, profile):
    scores = detector_scores[detector]
    expected_threshold, expected_score = _nab_port_optimize(corpus, scores, corpus.profiles[profile])
    got = nab.optimize_threshold(corpus, scores, profile)
    assert got.threshold == expected_threshold
    assert got.raw_score == pytest.approx(expected_score, abs=1e-9)


@needs_data
def test_sweep_curve_equals_per_file_scoring(corpus, detector_scores):
    scores = detector_scores["random"]
    prof = corpus.profiles["reward_low_FP_rate"]
    best = nab.optimize_threshold(corpus, scores, prof)
    per_file = nab.score_corpus(corpus, scores, best.threshold, prof)
    assert sum(r.score for r in per_file) == pytest.approx(best.raw_score, abs=1e-9)
    all_scores = np.concatenate(list(scores.values()))
    for threshold in (0.0, 0.5, 0.99, float(np.quantile(all_scores, 0.999)), 1.0, 2.0):
        fixed = nab.evaluate(corpus, scores, [prof], thresholds={prof.name: threshold})[prof.name]
        direct = sum(r.score for r in nab.score_corpus(corpus, scores, threshold, prof))
        # cumulative vs direct summation: ~1e-12 relative over 118k FPs at threshold 0
        assert fixed.raw_score == pytest.approx(direct, rel=1e-12, abs=1e-9), threshold
        assert fixed.raw_score <= best.raw_score + 1e-9


@needs_data
def test_full_evaluation_is_fast(corpus, detector_scores):
    scores = detector_scores["numenta"]
    nab.evaluate(corpus, scores)  # warm the per-corpus layout cache
    start = time.perf_counter()
    for _ in range(5):
        nab.evaluate(corpus, scores)
    assert (time.perf_counter() - start) / 5 < 1.0


# --------------------------------------------------------------------------- results files


@needs_data
def test_results_csv_round_trip_in_nab_layout(corpus, detector_scores, tmp_path):
    scores = detector_scores["numenta"]
    paths = nab.write_detector_results(tmp_path, "mydet", corpus, scores)
    assert len(paths) == 31
    key = "realKnownCause/nyc_taxi.csv"
    path = nab.results_file_path(tmp_path, "mydet", key)
    assert path == tmp_path / "mydet" / "realKnownCause" / "mydet_nyc_taxi.csv"
    assert path.read_text().splitlines()[0] == "timestamp,value,anomaly_score,label"
    back = nab.load_detector_scores(tmp_path, "mydet", corpus)
    for k, s in scores.items():
        np.testing.assert_array_equal(back[k], s)
    # Labels written from the corpus windows equal the "label" column NAB wrote.
    for k in corpus.files:
        ours = nab.read_results_csv(nab.results_file_path(tmp_path, "mydet", k))
        theirs = nab.read_results_csv(nab.results_file_path(RESULTS, "numenta", k))
        np.testing.assert_array_equal(ours.labels, theirs.labels)
        assert ours.timestamps == theirs.timestamps


# --------------------------------------------------------------------------- synthetic cases

STANDARD = nab.Profile("standard", tp_weight=1.0, fp_weight=0.11, fn_weight=1.0)


def _synthetic(n=1000, windows=((400, 449),), probation_percent=0.0):
    start = datetime(2020, 1, 1)
    stamps = [(start + timedelta(minutes=5 * i)).strftime("%Y-%m-%d %H:%M:%S") for i in range(n)]
    limits = [[stamps[a] + ".000000", stamps[b] + ".000000"] for a, b in windows]
    return nab.build_file("g/synthetic.csv", stamps, np.zeros(n), limits, probation_percent)


def _score(f, detect_rows, profile=STANDARD):
    s = np.zeros(f.n_rows)
    s[list(detect_rows)] = 1.0
    return nab.score_file(f, s, 0.5, profile)


def test_detection_at_window_start_earns_tp_weight():
    f = _synthetic()
    assert f.windows == ((400, 449),)
    res = _score(f, [400])
    assert res.score == pytest.approx(1.0, abs=1e-12)
    assert (res.tp, res.fp, res.fn, res.tn) == (1, 0, 49, 950)
    heavy = dataclasses.replace(STANDARD, tp_weight=2.5)
    assert _score(f, [400], heavy).score == pytest.approx(2.5, abs=1e-12)


def test_only_the_earliest_detection_in_a_window_counts():
    f = _synthetic()
    middle = _score(f, [425]).score
    assert 0.0 < middle < 1.0
    assert _score(f, [425, 430, 449]).score == pytest.approx(middle, abs=1e-15)
    assert _score(f, [449]).score == pytest.approx(nab.scaled_sigmoid(-1 / 50) / nab.scaled_sigmoid(-1.0))


def test_missed_window_costs_fn_weight():
    f = _synthetic(windows=((300, 349), (700, 749)))
    assert _score(f, []).score == pytest.approx(-2.0, abs=1e-12)
    low_fn = dataclasses.replace(STANDARD, fn_weight=2.0)
    assert _score(f, [], low_fn).score == pytest.approx(-4.0, abs=1e-12)


def test_false_positive_far_from_windows_costs_fp_weight():
    f = _synthetic()
    assert _score(f, [100]).score == pytest.approx(-1.0 - 0.11, abs=1e-12)  # before any window
    assert _score(f, [999]).score == pytest.approx(-1.0 - 0.11, abs=1e-6)  # ~11 widths after
    just_after = _score(f, [450]).score + 1.0
    assert -0.011 < just_after < 0  # right after a window an FP is cheap
    assert just_after == pytest.approx(0.11 * nab.scaled_sigmoid(1 / 49), abs=1e-15)


def test_probation_rows_are_not_scored():
    f = _synthetic(probation_percent=0.15)
    assert f.probation == 150
    base = _score(f, [])
    assert base.score == -1.0
    assert base.tn + base.fn == 1000 - 150
    assert _score(f, [0, 10, 149]) == base  # detections in probation change nothing
    assert _score(f, [150]).score == pytest.approx(-1.11, abs=1e-12)


def test_window_inside_probation_is_ignored():
    f = _synthetic(windows=((50, 99), (400, 449)), probation_percent=0.15)
    assert f.n_scored_windows == 1
    assert _score(f, []).score == -1.0
    corpus = nab.NabCorpus({f.key: f}, {"standard": STANDARD})
    res = nab.evaluate(corpus, {f.key: np.zeros(f.n_rows)})["standard"]
    assert (res.null_score, res.perfect_score) == (-1.0, 2.0)  # NAB counts every window as perfect


def test_probation_length_formula():
    assert nab.probation_length(4032) == 604
    assert nab.probation_length(5000) == 750
    assert nab.probation_length(18050) == 750
    assert nab.probation_length(1127) == 169


def test_threshold_is_inclusive_and_optimizer_prefers_highest_tie():
    f = _synthetic()
    s = np.zeros(f.n_rows)
    s[400] = 0.7
    assert nab.score_file(f, s, 0.7, STANDARD).tp == 1
    assert nab.score_file(f, s, np.nextafter(0.7, 1), STANDARD).tp == 0
    corpus = nab.NabCorpus({f.key: f}, {"standard": STANDARD})
    best = nab.optimize_threshold(corpus, {f.key: s}, "standard")
    assert (best.threshold, best.raw_score) == (0.7, pytest.approx(1.0))
    s[420] = 0.6  # a later detection in the same window: 0.7 and 0.6 tie exactly
    best = nab.optimize_threshold(corpus, {f.key: s}, "standard")
    assert (best.threshold, best.raw_score) == (0.7, pytest.approx(1.0))
    s[[400, 420]] = 0.0  # nothing to gain: "no detection" (1.1) is the best candidate
    best = nab.optimize_threshold(corpus, {f.key: s}, "standard")
    assert (best.threshold, best.raw_score) == (nab.NO_DETECTION_THRESHOLD, -1.0)


def test_normalized_score_formula():
    assert nab.normalized_score(-53.0, -53.0, 53.0) == 0.0
    assert nab.normalized_score(53.0, -53.0, 53.0) == 100.0
    assert nab.normalized_score(0.0, -53.0, 53.0) == 50.0


def test_bad_inputs_raise():
    f = _synthetic()
    with pytest.raises(ValueError, match="expected 1000 scores"):
        nab.score_file(f, np.zeros(10), 0.5, STANDARD)
    with pytest.raises(ValueError, match="NaN"):
        nab.score_file(f, np.full(1000, np.nan), 0.5, STANDARD)
    with pytest.raises(ValueError, match="does not start/end on a row"):
        nab.build_file(
            "g/x.csv",
            ["2020-01-01 00:00:00", "2020-01-01 00:05:00"],
            [0, 0],
            [["2020-01-01 00:01:00", "2020-01-01 00:05:00"]],
        )
    corpus = nab.NabCorpus({f.key: f}, {"standard": STANDARD})
    with pytest.raises(KeyError):
        nab.evaluate(corpus, {"g/other.csv": np.zeros(3)})
