"""Numenta Anomaly Benchmark (NAB) scoring, re-implemented with numpy.

Reproduces NAB v1.x (``nab/sweeper.py``, ``nab/optimizer.py``, ``nab/scorer.py``,
``nab/runner.py``) without pandas, and sweeps every candidate threshold of a whole
corpus in one vectorized pass, so a detector can be scored many times while tuning.

Typical use::

    corpus = load_corpus("/work/shared/data/nab")
    scores = {key: my_detector(f.values) for key, f in corpus.files.items()}
    for name, result in evaluate(corpus, scores).items():
        print(name, result.threshold, result.raw_score, result.normalized_score)

NAB's rules, as implemented here:

* rows ``i < probation_length(n)`` (the first 15 %, at most 750 rows) are not scored;
* a row is a detection when ``anomaly_score >= threshold``;
* in a window only the earliest detection counts, worth
  ``tp_weight * S(-(right - i + 1) / width) / S(-1)`` with ``S(x) = 2 / (1 + e^{5x}) - 1``;
  a window without detection costs ``-fn_weight``;
* a detection outside windows costs ``fp_weight * S((i - right_prev) / (width_prev - 1))``
  (``S = -1`` past 3 widths, and ``-fp_weight`` before the first window);
* one threshold per profile for the whole corpus, chosen as the best raw score over
  every distinct anomaly score (ties go to the highest threshold);
* ``normalized = 100 * (raw - null) / (perfect - null)``, where ``null`` is the score of a
  detector that never fires and ``perfect = tp_weight * number of windows`` (NAB's
  ``run.py`` feeds ``combined_windows.json`` to ``Runner.normalize`` as its label file).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgewatch.evaluation import datafiles

__all__ = [
    "NO_DETECTION_THRESHOLD",
    "PROBATION_PERCENT",
    "FileScore",
    "NabCorpus",
    "NabFile",
    "NabResults",
    "Profile",
    "ProfileResult",
    "ThresholdScore",
    "evaluate",
    "load_corpus",
    "load_detector_scores",
    "load_profiles",
    "normalized_score",
    "null_score",
    "optimize_threshold",
    "perfect_score",
    "probation_length",
    "read_results_csv",
    "results_file_path",
    "scaled_sigmoid",
    "score_corpus",
    "score_file",
    "write_detector_results",
    "write_results_csv",
]

PROBATION_PERCENT = 0.15
# NAB starts its sweep at 1.1, above every score in [0, 1]: "no detection at all".
NO_DETECTION_THRESHOLD = 1.1

_MAX_TP = 2.0 * (1.0 / (1.0 + math.exp(-5.0))) - 1.0  # scaled_sigmoid(-1.0), as NAB computes it


# --------------------------------------------------------------------------- data model


@dataclass(frozen=True)
class Profile:
    """A NAB application profile (cost matrix); ``tn`` is not weighted by NAB."""

    name: str
    tp_weight: float = 1.0
    fp_weight: float = 0.11
    fn_weight: float = 1.0


@dataclass(frozen=True, eq=False)
class NabFile:
    """One NAB data file with its windows and the per-row geometry used for scoring.

    ``windows`` are inclusive row ranges. ``window_id`` is -1 outside windows;
    ``tp_shape``/``fp_shape`` are NAB's unweighted sweep scores of a detection at that row
    (``tp_shape`` in windows, ``fp_shape`` outside).
    """

    key: str
    timestamps: tuple[str, ...]
    times: np.ndarray
    values: np.ndarray
    windows: tuple[tuple[int, int], ...]
    probation: int
    window_id: np.ndarray
    tp_shape: np.ndarray
    fp_shape: np.ndarray
    labels: np.ndarray

    @property
    def n_rows(self) -> int:
        return len(self.values)

    @property
    def n_scored_windows(self) -> int:
        """Windows with at least one row after probation (those NAB counts)."""
        return sum(1 for _, last in self.windows if last >= self.probation)


@dataclass(frozen=True)
class FileScore:
    """Per-file result, as in NAB's ``<detector>_<profile>_scores.csv`` (counts are rows)."""

    key: str
    threshold: float
    score: float
    tp: int
    tn: int
    fp: int
    fn: int
    total: int


@dataclass(frozen=True)
class ThresholdScore:
    """Best corpus threshold of a profile and the raw score it yields."""

    threshold: float
    raw_score: float


@dataclass(frozen=True)
class ProfileResult:
    """Corpus-level result of one profile."""

    profile: str
    threshold: float
    raw_score: float
    null_score: float
    perfect_score: float
    normalized_score: float


@dataclass(frozen=True)
class NabResults:
    """Rows of a NAB results CSV (``timestamp,value,anomaly_score,label,...``)."""

    timestamps: list[str]
    values: np.ndarray
    anomaly_scores: np.ndarray
    labels: np.ndarray


class NabCorpus:
    """A NAB corpus: data files (keyed ``"group/file.csv"``) and scoring profiles."""

    def __init__(self, files: Mapping[str, NabFile], profiles: Mapping[str, Profile], root=None):
        self.files: dict[str, NabFile] = dict(files)
        self.profiles: dict[str, Profile] = dict(profiles)
        self.root = Path(root) if root is not None else None
        self._sweeps: dict[tuple[str, ...], _SweepLayout] = {}

    @property
    def keys(self) -> list[str]:
        return list(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def _layout(self, keys: tuple[str, ...]) -> _SweepLayout:
        # The concatenated geometry only depends on the file set: build it once.
        layout = self._sweeps.get(keys)
        if layout is None:
            layout = _SweepLayout([self.files[k] for k in keys])
            self._sweeps[keys] = layout
        return layout


# --------------------------------------------------------------------------- NAB formulas


def probation_length(n_rows: int, probation_percent: float = PROBATION_PERCENT) -> int:
    """NAB's probationary period: ``min(floor(p * n), p * 5000)`` rows (750 for p = 0.15)."""
    return int(min(math.floor(probation_percent * n_rows), probation_percent * 5000))


def scaled_sigmoid(x):
    """NAB's ``scaledSigmoid``: ``2 * sigmoid(-5x) - 1``, and -1 beyond ``x > 3``."""
    x = np.asarray(x, dtype=np.float64)
    # Clip before exp only to avoid overflow warnings; those rows take -1 anyway.
    xc = np.minimum(x, 4.0)
    val = 2.0 * (1.0 / (1.0 + np.exp(-(-5.0 * xc)))) - 1.0
    out = np.where(x > 3.0, -1.0, val)
    return out if out.ndim else float(out)


def normalized_score(raw: float, null: float, perfect: float) -> float:
    """``100 * (raw - null) / (perfect - null)`` (NAB's ``Runner.normalize``)."""
    return 100.0 * (raw - null) / (perfect - null)


def null_score(corpus: NabCorpus, profile: Profile | str, keys: Iterable[str] | None = None) -> float:
    """Raw score of a detector that never fires: ``-fn_weight`` per scored window."""
    profile = _profile(corpus, profile)
    files = [corpus.files[k] for k in (keys if keys is not None else corpus.files)]
    return -profile.fn_weight * sum(f.n_scored_windows for f in files)


def perfect_score(corpus: NabCorpus, profile: Profile | str, keys: Iterable[str] | None = None) -> float:
    """NAB's "perfect" score: ``tp_weight`` per window.

    NAB counts the entries of the file given as ``--windowsFile`` (``combined_windows.json``),
    i.e. windows, including any that lie wholly in probation. Counting the labels of
    ``combined_labels.json`` instead (54 for 53 windows here) would lower every score.
    """
    profile = _profile(corpus, profile)
    files = [corpus.files[k] for k in (keys if keys is not None else corpus.files)]
    return profile.tp_weight * sum(len(f.windows) for f in files)


# --------------------------------------------------------------------------- loading


def load_profiles(path) -> dict[str, Profile]:
    """Read NAB's ``config/profiles.json``."""
    raw = _read_json(Path(path))
    try:
        return {
            name: Profile(
                name=name,
                tp_weight=float(spec["CostMatrix"]["tpWeight"]),
                fp_weight=float(spec["CostMatrix"]["fpWeight"]),
                fn_weight=float(spec["CostMatrix"]["fnWeight"]),
            )
            for name, spec in raw.items()
        }
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not NAB's profiles (CostMatrix tpWeight/fpWeight/fnWeight): {exc!r}") from None


def load_corpus(
    root,
    keys: Iterable[str] | None = None,
    probation_percent: float = PROBATION_PERCENT,
) -> NabCorpus:
    """Load a NAB root (``data/``, ``labels/combined_windows.json``, ``config/profiles.json``).

    ``keys`` restricts the corpus to some ``"group/file.csv"``; by default every data file.
    """
    root = Path(root)
    all_windows: dict[str, list[list[str]]] = _read_json(root / "labels" / "combined_windows.json")
    profiles_path = root / "config" / "profiles.json"
    profiles = load_profiles(profiles_path) if profiles_path.exists() else {}

    data_dir = root / "data"
    if keys is None:
        keys = sorted(p.relative_to(data_dir).as_posix() for p in data_dir.glob("*/*.csv"))
    files = {}
    for key in keys:
        if key not in all_windows:
            raise ValueError(f"{key}: no entry in combined_windows.json")
        timestamps, values = _read_data_csv(data_dir / key)
        files[key] = build_file(key, timestamps, values, all_windows[key], probation_percent)
    return NabCorpus(files, profiles, root=root)


def build_file(
    key: str,
    timestamps: Sequence[str],
    values,
    window_limits: Sequence[Sequence[str]],
    probation_percent: float = PROBATION_PERCENT,
) -> NabFile:
    """Build a :class:`NabFile` from rows and ``[[start, end], ...]`` window timestamps.

    Window geometry follows NAB's ``Sweeper.calcSweepScore`` row walk. Unlike NAB, a window
    whose start or end is not a row timestamp raises instead of silently dropping windows.
    """
    timestamps = tuple(str(t) for t in timestamps)
    times = _to_datetime64(timestamps)
    values = np.asarray(values, dtype=np.float64)
    n = len(times)
    if len(values) != n:
        raise ValueError(f"{key}: {n} timestamps but {len(values)} values")

    window_id = np.full(n, -1, dtype=np.int64)
    tp_shape = np.zeros(n)
    fp_shape = np.full(n, -1.0)  # before any window NAB charges the full -fpWeight
    labels = np.zeros(n, dtype=np.int8)
    windows: list[tuple[int, int]] = []
    limits = [(_to_datetime64([a])[0], _to_datetime64([b])[0]) for a, b in window_limits]
    pos = 0
    idx = np.arange(n)
    for wid, (start, end) in enumerate(limits):
        # NAB's labeler marks rows by timestamp comparison (the "label" column).
        labels[(times >= start) & (times <= end)] = 1
        hits = np.flatnonzero(times[pos:] == start)
        first_start = np.flatnonzero(times == start)
        first_end = np.flatnonzero(times == end)
        if not hits.size or not first_end.size:
            raise ValueError(f"{key}: window {window_limits[wid]} does not start/end on a row after {pos}")
        enter = pos + int(hits[0])
        exits = np.flatnonzero(times[enter:] == end)
        last = enter + int(exits[0]) if exits.size else n - 1
        # NAB uses list.index(): first occurrences, even with duplicated timestamps.
        right = int(first_end[0])
        width = float(right - int(first_start[0]) + 1)
        rows = idx[enter : last + 1]
        window_id[rows] = wid
        tp_shape[rows] = scaled_sigmoid(-(right - rows + 1) / width)
        windows.append((enter, last))
        # Rows up to the next window are scored against this one (NAB's prevWindow*).
        after = idx[last + 1 :]
        if width > 1:
            fp_shape[after] = scaled_sigmoid(np.abs(last - after) / (width - 1.0))
        else:  # NAB divides by zero here; treat it as "far after the window"
            fp_shape[after] = -1.0
        pos = last + 1
    fp_shape[window_id >= 0] = 0.0
    return NabFile(
        key=key,
        timestamps=timestamps,
        times=times,
        values=values,
        windows=tuple(windows),
        probation=probation_length(n, probation_percent),
        window_id=window_id,
        tp_shape=tp_shape,
        fp_shape=fp_shape,
        labels=labels,
    )


# --------------------------------------------------------------------------- scoring


def score_file(nab_file: NabFile, anomaly_scores, threshold: float, profile: Profile) -> FileScore:
    """Score one file at a fixed threshold (NAB ``Sweeper.scoreDataSet``); counts are rows."""
    s = _check_scores(nab_file, anomaly_scores)
    p = nab_file.probation
    active = s[p:] >= threshold
    wid = nab_file.window_id[p:]
    in_win = wid >= 0
    tp = int(np.count_nonzero(active & in_win))
    fp = int(np.count_nonzero(active & ~in_win))
    fn = int(np.count_nonzero(in_win)) - tp
    tn = int(np.count_nonzero(~in_win)) - fp

    fp_rows = np.flatnonzero(active & ~in_win) + p
    score = float(np.sum(nab_file.fp_shape[fp_rows] * profile.fp_weight))
    scored_windows = np.unique(wid[in_win])
    hit_rows = np.flatnonzero(active & in_win) + p
    hit_windows, first = np.unique(nab_file.window_id[hit_rows], return_index=True)
    # Rows are in time order, so `first` is each window's earliest detection.
    tp_values = nab_file.tp_shape[hit_rows[first]] * profile.tp_weight / _MAX_TP
    score += float(np.sum(np.maximum(tp_values, -profile.fn_weight)))
    score -= profile.fn_weight * (len(scored_windows) - len(hit_windows))
    return FileScore(nab_file.key, float(threshold), score, tp, tn, fp, fn, nab_file.n_rows)


def score_corpus(
    corpus: NabCorpus,
    anomaly_scores: Mapping[str, np.ndarray],
    threshold: float,
    profile: Profile | str,
) -> list[FileScore]:
    """Per-file scores at one threshold (the rows of NAB's ``*_scores.csv``, without Totals)."""
    profile = _profile(corpus, profile)
    return [score_file(corpus.files[k], s, threshold, profile) for k, s in anomaly_scores.items()]


def optimize_threshold(
    corpus: NabCorpus,
    anomaly_scores: Mapping[str, np.ndarray],
    profile: Profile | str,
) -> ThresholdScore:
    """Best single threshold over all given files jointly (NAB ``optimizeThreshold``)."""
    profile = _profile(corpus, profile)
    sweep = _Sweep(corpus, anomaly_scores)
    thresholds, raw = sweep.curve(profile)
    best = int(np.argmax(raw))  # first maximum = highest threshold, as NAB's stable sort
    return ThresholdScore(float(thresholds[best]), float(raw[best]))


def evaluate(
    corpus: NabCorpus,
    anomaly_scores: Mapping[str, np.ndarray],
    profiles: Iterable[Profile | str] | None = None,
    thresholds: Mapping[str, float] | None = None,
) -> dict[str, ProfileResult]:
    """Corpus result for every profile: threshold, raw and normalized score.

    The corpus is the set of keys of ``anomaly_scores`` (null and perfect scores are taken
    over the same files). Thresholds are optimized jointly over those files unless
    ``thresholds`` (profile name -> threshold) fixes them, e.g. NAB's published ones.
    """
    sweep = _Sweep(corpus, anomaly_scores)
    chosen = [_profile(corpus, p) for p in (profiles if profiles is not None else corpus.profiles)]
    results = {}
    for profile in chosen:
        cand, raw = sweep.curve(profile)
        if thresholds is None or profile.name not in thresholds:
            best = int(np.argmax(raw))
            threshold, score = float(cand[best]), float(raw[best])
        else:
            threshold = float(thresholds[profile.name])
            score = sweep.score_at(cand, raw, threshold)
        null = null_score(corpus, profile, sweep.keys)
        perfect = perfect_score(corpus, profile, sweep.keys)
        results[profile.name] = ProfileResult(
            profile=profile.name,
            threshold=threshold,
            raw_score=score,
            null_score=null,
            perfect_score=perfect,
            normalized_score=normalized_score(score, null, perfect),
        )
    return results


class _SweepLayout:
    """Scored rows of a file set, concatenated once: window ids and sweep shapes."""

    def __init__(self, files: Sequence[NabFile]):
        wids, tps, fps, offset = [], [], [], 0
        self.sizes = []
        for f in files:
            p = f.probation
            wid = f.window_id[p:].copy()
            wid[wid >= 0] += offset  # make window ids unique across files
            offset += len(f.windows)
            wids.append(wid)
            tps.append(f.tp_shape[p:])
            fps.append(f.fp_shape[p:])
            self.sizes.append(f.n_rows - p)
        self.window_id = np.concatenate(wids) if wids else np.zeros(0, np.int64)
        self.tp_shape = np.concatenate(tps) if tps else np.zeros(0)
        self.fp_shape = np.concatenate(fps) if fps else np.zeros(0)
        self.n_windows = int(np.unique(self.window_id[self.window_id >= 0]).size)
        self.n_rows = len(self.window_id)


class _Sweep:
    """Score of every candidate threshold of a corpus, in one vectorized pass.

    NAB walks all scored rows by decreasing anomaly score, keeping per window the best
    (earliest) detection and summing FP costs; the score after the last row of each run
    of equal anomaly scores is the score of that threshold. Here the walk is a cumulative
    sum of per-row score changes. A window's change is exact because its value only
    depends on the earliest active row, found with a segmented running minimum.
    """

    def __init__(self, corpus: NabCorpus, anomaly_scores: Mapping[str, np.ndarray]):
        self.keys = tuple(anomaly_scores)
        unknown = [k for k in self.keys if k not in corpus.files]
        if unknown:
            raise KeyError(f"not in corpus: {unknown}")
        layout = corpus._layout(self.keys)
        self.layout = layout
        parts = [_check_scores(corpus.files[k], anomaly_scores[k])[corpus.files[k].probation :] for k in self.keys]
        s = np.concatenate(parts) if parts else np.zeros(0)
        n = len(s)
        # Stable sort on -s: decreasing scores, ties kept in corpus order (NAB's sort).
        order = np.argsort(-s, kind="stable")
        s_sorted = s[order]
        wid_sorted = layout.window_id[order]
        self.is_fp = wid_sorted < 0
        self.fp_rows = order[self.is_fp]
        # Segmented running minimum of row index per window, in activation order.
        win_pos = np.flatnonzero(~self.is_fp)
        w = wid_sorted[win_pos]
        by_window = np.argsort(w, kind="stable")
        w = w[by_window]
        rows = order[win_pos][by_window]
        big = n + 1
        earliest = w * big - np.maximum.accumulate(w * big - rows)
        self.win_pos = win_pos[by_window]
        self.earliest = earliest
        self.seg_start = np.ones(len(w), dtype=bool)
        self.seg_start[1:] = w[1:] != w[:-1]
        # Last row of each run of equal scores closes one candidate threshold.
        ends = np.flatnonzero(np.append(s_sorted[1:] != s_sorted[:-1], True)) if n else np.zeros(0, int)
        self.ends = ends
        top = NO_DETECTION_THRESHOLD
        if n and s_sorted[0] >= top:  # out-of-range scores: keep "no detection" above them
            top = float(np.nextafter(s_sorted[0], np.inf))
        self.candidates = np.concatenate(([top], s_sorted[ends]))
        self.n = n

    def curve(self, profile: Profile) -> tuple[np.ndarray, np.ndarray]:
        """Candidate thresholds (decreasing) and the raw score at each."""
        layout = self.layout
        delta = np.zeros(self.n)
        delta[self.is_fp] = layout.fp_shape[self.fp_rows] * profile.fp_weight
        value = layout.tp_shape[self.earliest] * profile.tp_weight / _MAX_TP
        value = np.maximum(value, -profile.fn_weight)  # NAB: max(-fnWeight, sweepScore)
        prev = np.empty_like(value)
        prev[1:] = value[:-1]
        prev[self.seg_start] = -profile.fn_weight
        delta[self.win_pos] = value - prev
        base = -profile.fn_weight * layout.n_windows
        raw = np.concatenate(([base], base + np.cumsum(delta)[self.ends]))
        return self.candidates, raw

    @staticmethod
    def score_at(candidates: np.ndarray, raw: np.ndarray, threshold: float) -> float:
        # Detections are rows >= threshold: the last candidate still >= threshold.
        i = int(np.count_nonzero(candidates >= threshold)) - 1
        return float(raw[max(i, 0)])


# --------------------------------------------------------------------------- results files


def read_results_csv(path) -> NabResults:
    """Read a NAB results CSV; extra columns (``raw_score``, ``S(t)_*``) are ignored."""
    timestamps, values, scores, labels = [], [], [], []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            timestamps.append(row["timestamp"])
            values.append(float(row["value"]))
            scores.append(float(row["anomaly_score"]))
            labels.append(int(float(row.get("label") or 0)))
    return NabResults(
        timestamps=timestamps,
        values=np.asarray(values, dtype=np.float64),
        anomaly_scores=np.asarray(scores, dtype=np.float64),
        labels=np.asarray(labels, dtype=np.int8),
    )


def write_results_csv(path, timestamps, values, anomaly_scores, labels) -> Path:
    """Write ``timestamp,value,anomaly_score,label`` (floats in round-trip precision)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh, lineterminator="\n")
        out.writerow(["timestamp", "value", "anomaly_score", "label"])
        for t, v, s, lab in zip(timestamps, values, anomaly_scores, labels, strict=True):
            out.writerow([t, repr(float(v)), repr(float(s)), int(lab)])
    return path


def results_file_path(results_dir, detector: str, key: str) -> Path:
    """NAB layout: ``<results_dir>/<detector>/<group>/<detector>_<file>.csv``."""
    group, name = key.split("/")
    return Path(results_dir) / detector / group / f"{detector}_{name}"


def load_detector_scores(results_dir, detector: str, corpus: NabCorpus) -> dict[str, np.ndarray]:
    """Anomaly scores of a detector's NAB results directory, for every file it has."""
    scores = {}
    for key, f in corpus.files.items():
        path = results_file_path(results_dir, detector, key)
        if not path.exists():
            continue
        res = read_results_csv(path)
        if len(res.anomaly_scores) != f.n_rows:
            raise ValueError(f"{path}: {len(res.anomaly_scores)} rows, data has {f.n_rows}")
        scores[key] = res.anomaly_scores
    return scores


def write_detector_results(
    results_dir, detector: str, corpus: NabCorpus, anomaly_scores: Mapping[str, np.ndarray]
) -> list[Path]:
    """Write one results CSV per file in NAB's layout (labels from the corpus windows)."""
    paths = []
    for key, s in anomaly_scores.items():
        f = corpus.files[key]
        s = _check_scores(f, s)
        path = results_file_path(results_dir, detector, key)
        paths.append(write_results_csv(path, f.timestamps, f.values, s, f.labels))
    return paths


# --------------------------------------------------------------------------- helpers


def _profile(corpus: NabCorpus, profile: Profile | str) -> Profile:
    return corpus.profiles[profile] if isinstance(profile, str) else profile


def _check_scores(nab_file: NabFile, anomaly_scores) -> np.ndarray:
    s = np.asarray(anomaly_scores, dtype=np.float64)
    if s.shape != (nab_file.n_rows,):
        raise ValueError(f"{nab_file.key}: expected {nab_file.n_rows} scores, got shape {s.shape}")
    if np.isnan(s).any():
        raise ValueError(f"{nab_file.key}: anomaly scores contain NaN")
    return s


def _read_data_csv(path: Path) -> tuple[list[str], np.ndarray]:
    """A NAB data file's ``timestamp`` and ``value`` columns; a file or row that cannot be read
    raises ``ValueError`` naming the file and the line."""
    timestamps, values = [], []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, [])
            if "timestamp" not in header or "value" not in header:
                raise ValueError(f"{path} is not a NAB data file (expected a header timestamp,value)")
            t_col, v_col = header.index("timestamp"), header.index("value")
            for row in reader:
                if row:
                    timestamp, value = _row(path, reader.line_num, row, len(header), t_col, v_col)
                    timestamps.append(timestamp)
                    values.append(value)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise datafiles.unreadable(path, exc) from None
    return timestamps, np.asarray(values, dtype=np.float64)


def _row(path: Path, line: int, row: list[str], width: int, t_col: int, v_col: int) -> tuple[str, float]:
    """One data row's timestamp and value, or a ``ValueError`` that says which line and why."""
    datafiles.check_width(path, line, row, width)
    datafiles.time(path, line, row[t_col], "us")
    return row[t_col], datafiles.number(path, line, row[v_col], what="value ")


def _read_json(path: Path):
    """A NAB JSON file (labels, profiles), or a ``ValueError`` naming it."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise datafiles.unreadable(path, exc) from None


def _to_datetime64(timestamps: Sequence[str]) -> np.ndarray:
    # NAB files use "YYYY-MM-DD HH:MM:SS[.ffffff]"; numpy parses both at microseconds.
    return np.asarray([t.strip() for t in timestamps], dtype="datetime64[us]")
