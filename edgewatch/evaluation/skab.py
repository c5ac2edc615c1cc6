"""``edgewatch evaluate skab``: the product's detector on SKAB, scored by SKAB's own rules.

SKAB (Skoltech Anomaly Benchmark, github.com/waico/SKAB) records a water-circulation test
rig; each CSV is one experiment. The benchmark's protocol, as its scoring code applies it:

* **One device per file.** The first :data:`TRAIN_ROWS` rows are the training part: the
  device's detector is warm-started on them exactly as ``edgewatch train`` fits a fleet
  (:func:`~edgewatch.online_models.artifact.train`). The rest (the test part) streams
  through the bank the flow builds (:func:`~edgewatch.online_models.bank.new_bank`), all
  files interleaved like the devices of one shard, each row scored before it is learned.
* **Outlier metrics**, pooled over every test row of every file: ``is_anomaly`` against the
  ``anomaly`` column; F1 = TP / (TP + (FP + FN) / 2), FAR = 100 FP / (FP + TN),
  MAR = 100 FN / (FN + TP).
* **Changepoint score** (NAB-like, per file then summed): a window of
  :data:`CHANGEPOINT_WINDOW` seconds after each true changepoint (a window that reaches the
  next one moves that one's start to its end); predicted changepoints are where the
  outlier label changes (the first row counts as its value); the first prediction in a
  window earns a weight falling from 1 at its start to ``A_fp`` at its end, a window without
  one costs ``A_fn``, a prediction outside every window costs ``A_fp``.

>>> truth = np.array([0, 0, 1, 1, 0])
>>> outlier_metrics(truth, np.array([0, 1, 1, 1, 0]))
(0.8, 33.33, 0.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgewatch.evaluation import datafiles
from edgewatch.online_models import artifact
from edgewatch.online_models.bank import new_bank
from edgewatch.online_models.registry import DetectorSpec
from edgewatch.schema import RawMessage, Reading

TRAIN_ROWS = 400
CHANGEPOINT_WINDOW = 60.0  # seconds
BATCH = 2000
#: (A_tp, A_fp, A_fn) of SKAB's changepoint profiles
PROFILES = {"standard": (1.0, -0.11, -1.0), "low_fp": (1.0, -0.22, -1.0), "low_fn": (1.0, -0.11, -2.0)}
_SIGMOID_X = np.linspace(-math.pi / 2, math.pi / 2, 1000)


@dataclass
class SkabFile:
    """One experiment: source times (epoch seconds), sensor values and the two label columns."""

    name: str
    times: np.ndarray
    features: tuple[str, ...]
    values: np.ndarray  # (rows, features)
    anomaly: np.ndarray  # 0/1 per row
    changepoint: np.ndarray  # 0/1 per row

    @property
    def test(self) -> slice:
        return slice(TRAIN_ROWS, len(self.times))


def read_file(path: Path) -> SkabFile:
    """One SKAB CSV (``;``-separated, ``datetime`` first, ``anomaly`` and ``changepoint`` last).

    A file that is not one, or a row that cannot be read (a field missing, a value that is not a
    finite number, a bad time), raises ``ValueError`` naming the file and the line."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise datafiles.unreadable(path, exc) from None
    header = lines[0].strip().split(";") if lines else []
    if not header or header[0] != "datetime" or "anomaly" not in header:
        raise ValueError(f"{path} is not a SKAB file (expected datetime;...;anomaly;changepoint)")
    labels = [header.index("anomaly"), header.index("changepoint")] if "changepoint" in header else []
    sensors = [i for i in range(1, len(header)) if i not in labels]
    stamps, table = [], []
    for number, line in enumerate(lines[1:], start=2):
        if line.strip():
            stamp, values = _row(path, number, line.strip().split(";"), len(header))
            stamps.append(stamp)
            table.append(values)
    if len(table) <= TRAIN_ROWS:
        raise ValueError(f"{path}: {len(table)} rows, the protocol needs more than {TRAIN_ROWS} (training + test)")
    times = np.array(stamps, dtype="datetime64[s]").astype(np.int64)
    table = np.array(table, dtype=np.float64)
    column = {name: i - 1 for i, name in enumerate(header) if i > 0}
    return SkabFile(
        path.stem,
        times.astype(np.float64),
        tuple(header[i] for i in sensors),
        table[:, [i - 1 for i in sensors]],
        table[:, column["anomaly"]].astype(np.int8),
        table[:, column["changepoint"]].astype(np.int8) if "changepoint" in column else np.zeros(len(table), np.int8),
    )


def _row(path: Path, number: int, fields: list[str], width: int) -> tuple[np.datetime64, list[float]]:
    """One row's time and numbers, or a ``ValueError`` that says which line and why."""
    datafiles.check_width(path, number, fields, width)
    return datafiles.time(path, number, fields[0], "s"), [datafiles.number(path, number, text) for text in fields[1:]]


def load(root: Path, subsets: Sequence[str] = ("valve1",)) -> list[SkabFile]:
    """The experiments of ``subsets`` under the SKAB root, in numeric file order."""
    files = []
    for subset in subsets:
        folder = Path(root) / subset
        paths = sorted(folder.glob("*.csv"), key=lambda p: (len(p.stem), p.stem))
        if not paths:
            raise ValueError(f"no SKAB experiments in {folder} (is {root} a SKAB root?)")
        for path in paths:
            files.append(read_file(path))
            files[-1].name = f"{subset}/{path.stem}"
    return files


def outlier_metrics(truth: np.ndarray, predicted: np.ndarray) -> tuple[float, float, float]:
    """SKAB's F1, FAR (%) and MAR (%) of 0/1 predictions, rounded to 2 decimals."""
    truth, predicted = np.asarray(truth, bool), np.asarray(predicted, bool)
    tp = int(np.sum(truth & predicted))
    fp = int(np.sum(~truth & predicted))
    fn = int(np.sum(truth & ~predicted))
    tn = int(np.sum(~truth & ~predicted))
    f1 = tp / (tp + (fp + fn) / 2) if tp + fp + fn else 0.0
    far = 100.0 * fp / (fp + tn) if fp + tn else 0.0
    mar = 100.0 * fn / (fn + tp) if fn + tp else 0.0
    return round(f1, 2), round(far, 2), round(mar, 2)


def changepoint_windows(times: np.ndarray, changepoint: np.ndarray) -> list[tuple[float, float]]:
    """``[cp, cp + 60 s]`` after each true changepoint; a window reaching the next one moves its start."""
    windows: list[tuple[float, float]] = []
    for t in times[np.asarray(changepoint) > 0].tolist():
        start = t
        if windows and windows[-1][1] >= start:
            start = windows[-1][1]
        windows.append((start, t + CHANGEPOINT_WINDOW))
    return windows


def changepoint_predictions(predicted: np.ndarray) -> np.ndarray:
    """Where the outlier label changes: ``|diff|``, the first row being its own value."""
    predicted = np.asarray(predicted, np.int64)
    return np.abs(np.diff(predicted, prepend=0)) > 0


def changepoint_raw(
    times: np.ndarray, changepoint: np.ndarray, predicted: np.ndarray, profile: str
) -> tuple[float, int, int, int]:
    """One file's raw changepoint score, its number of windows, and its TP and FP predictions."""
    a_tp, a_fp, a_fn = PROFILES[profile]
    windows = changepoint_windows(times, changepoint)
    at = np.asarray(times)[changepoint_predictions(predicted)]
    inside = np.zeros(len(at), bool)
    score, tps = 0.0, 0
    for start, end in windows:
        hit = (at >= start) & (at <= end)
        inside |= hit
        if not hit.any():
            score += a_fn
            continue
        tps += 1
        first = float(at[np.argmax(hit)])
        k = min(int((first - start) / (end - start) * 1000), 999) if end > start else 0
        score += (a_tp - a_fp) / 2 * (-math.tanh(_SIGMOID_X[k]) / math.tanh(math.pi / 2)) + (a_tp - a_fp) / 2 + a_fp
    fps = int((~inside).sum())
    return score + a_fp * fps, len(windows), tps, fps


def changepoint_score(files: Sequence[SkabFile], predictions: Sequence[np.ndarray], profile: str) -> float:
    """NAB-normalized changepoint score over the test parts of ``files`` (perfect 100, null 0)."""
    a_tp, _, a_fn = PROFILES[profile]
    total, windows = 0.0, 0
    for f, predicted in zip(files, predictions, strict=True):
        raw, n, _, _ = changepoint_raw(f.times[f.test], f.changepoint[f.test], predicted, profile)
        total += raw
        windows += n
    perfect, null = windows * a_tp, windows * a_fn
    return round(100.0 * (total - null) / (perfect - null), 2) if windows else 0.0


@dataclass
class SkabRun:
    """Each file's test-part verdicts and scores, and the benchmark's figures over them."""

    files: list[SkabFile]
    predictions: list[np.ndarray]  # is_anomaly per test row
    scores: list[np.ndarray]  # detector score per test row
    #: per file, test row → the features' shares of its score (rows the detector called abnormal)
    explanations: list[dict[int, dict[str, float]]] | None = None

    @property
    def outliers(self) -> tuple[float, float, float]:
        truth = np.concatenate([f.anomaly[f.test] for f in self.files])
        return outlier_metrics(truth, np.concatenate(self.predictions))

    def changepoint(self, profile: str) -> float:
        return changepoint_score(self.files, self.predictions, profile)

    def line(self) -> str:
        f1, far, mar = self.outliers
        return (
            f"skab: f1={f1:.2f} far={far:.2f} mar={mar:.2f} "
            f"changepoint_standard={self.changepoint('standard'):.2f} "
            f"changepoint_low_fp={self.changepoint('low_fp'):.2f} files={len(self.files)}"
        )


def _readings(index: int, f: SkabFile) -> list[Reading]:
    device = f"skab-{f.name}"
    return [
        Reading(device, t, dict(zip(f.features, row, strict=True)), RawMessage(None, None, [], "skab", index, i, None))
        for i, (t, row) in enumerate(zip(f.times.tolist(), f.values.tolist(), strict=True))
    ]


def evaluate(
    files: Sequence[SkabFile],
    spec: DetectorSpec,
    progress: Callable[[int], None] = lambda rows: None,
    warm: bool = True,
) -> SkabRun:
    """Warm-start one device per file on its training rows, stream its test rows, score the verdicts.
    ``warm=False`` streams the training rows too instead (a cold start, for ablations; still not scored)."""
    streams = [_readings(i, f) for i, f in enumerate(files)]
    fitted = None
    if warm:
        history = [r for rows in streams for r in rows[:TRAIN_ROWS]]
        fitted = artifact.train(spec, history, source="SKAB training rows")
        progress(len(history))
    bank = new_bank(spec, threshold=None, artifact=fitted)
    longest = max(len(rows) for rows in streams)
    first = TRAIN_ROWS if warm else 0
    interleaved = [rows[i] for i in range(first, longest) for rows in streams if i < len(rows)]
    flags = [np.zeros(len(f.times), bool) for f in files]
    scores = [np.zeros(len(f.times)) for f in files]
    explanations: list[dict[int, dict[str, float]]] = [{} for _ in files]
    for start in range(0, len(interleaved), BATCH):
        result = bank.label(interleaved[start : start + BATCH])
        if result.dead_letters:
            raise RuntimeError(f"the detector refused SKAB rows: {result.dead_letters[0].reason}")
        for event in result.events:
            raw = event.reading.raw
            flags[raw.partition][raw.offset] = event.is_anomaly
            scores[raw.partition][raw.offset] = event.detection_score
            if event.explanation and raw.offset >= TRAIN_ROWS:
                explanations[raw.partition][raw.offset - TRAIN_ROWS] = event.explanation
        progress(len(result.events))
    return SkabRun(
        list(files),
        [p[f.test] for p, f in zip(flags, files, strict=True)],
        [s[f.test] for s, f in zip(scores, files, strict=True)],
        explanations,
    )


def write_results(run: SkabRun, out: Path) -> None:
    """One CSV per file: ``OUT/<subset>/<file>.csv`` (datetime, anomaly, changepoint, score, predicted)."""
    for f, predicted, scores in zip(run.files, run.predictions, run.scores, strict=True):
        target = Path(out) / f"{f.name}.csv"
        target.parent.mkdir(parents=True, exist_ok=True)
        times = f.times[f.test].astype("datetime64[s]").astype(str)
        lines = ["datetime,anomaly,changepoint,score,predicted"] + [
            f"{t.replace('T', ' ')},{a},{c},{s:.6f},{int(p)}"
            for t, a, c, s, p in zip(times, f.anomaly[f.test], f.changepoint[f.test], scores, predicted, strict=True)
        ]
        target.write_text("\n".join(lines) + "\n")


def write_report(run: SkabRun, out: Path, threshold: float | None = None) -> Path:
    """A PNG per file (sensors, score, threshold, hits and false alarms, the anomalous state),
    ``summary.png`` (F1, FAR and MAR per file) and ``index.html``."""
    from edgewatch.evaluation import report

    folder = Path(out) / "report"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, (f, predicted, scores) in enumerate(zip(run.files, run.predictions, run.scores, strict=True)):
        image = f"{report.file_stem(f.name)}.png"
        test = f.test
        f1, far, mar = outlier_metrics(f.anomaly[test], predicted)
        explanations = (run.explanations or [{}] * len(run.files))[index]
        trace = report.Trace(
            f"SKAB {f.name}",
            f.times[test],
            {name: f.values[test, column] for column, name in enumerate(f.features)},
            scores,
            np.asarray(predicted, bool),
            threshold if threshold is not None else _threshold_of(scores, predicted),
            truth=f.anomaly[test] > 0,
            truth_label="anomalous state (SKAB label)",
            explanations=explanations,
            subtitle=f"F1 {f1:.2f}, false alarm rate {far:.1f} %, missed alarm rate {mar:.1f} % "
            f"(test part: {len(f.times) - TRAIN_ROWS} rows after {TRAIN_ROWS} training rows)",
        )
        report.device_plot(trace, folder / image)
        rows.append(((f.name, f"{f1:.2f}", f"{far:.2f}", f"{mar:.2f}"), image))
    _summary_plot(run, rows, folder / "summary.png")
    return report.write_index(
        folder,
        "edgewatch on SKAB",
        [run.line()],
        ["file", "F1", "FAR %", "MAR %"],
        rows,
        notes=[
            "F1 = TP / (TP + (FP + FN) / 2); FAR = false alarms per normal row (%); MAR = missed anomalous rows (%). "
            f"Each file's first {TRAIN_ROWS} rows warm-start its device and are not plotted or scored."
        ],
    )


def _threshold_of(scores: np.ndarray, predicted: np.ndarray) -> float:
    """The detector's threshold when the caller does not say: the lowest score that raised an alarm."""
    raised = np.asarray(scores)[np.asarray(predicted, bool)]
    return float(raised.min()) if raised.size else float("nan")


def _summary_plot(run: SkabRun, rows, path: Path) -> None:
    """F1, FAR and MAR per file, side by side, the pooled figures as dashed lines."""
    from edgewatch.evaluation import report

    plt = report._pyplot()
    names = [cells[0] for cells, _ in rows]
    pooled = run.outliers
    fig, axes = plt.subplots(1, 3, figsize=(14, max(4.0, 0.32 * len(names) + 2.0)), sharey=True)
    panels = (
        ("F1 (higher is better)", 1, "#1f77b4", (0, 1)),
        ("FAR, false alarm rate % (lower is better)", 2, "#d62728", (0, 100)),
        ("MAR, missed alarm rate % (lower is better)", 3, "#ff7f0e", (0, 100)),
    )
    y = np.arange(len(names))
    for ax, (label, column, color, limits), total in zip(axes, panels, pooled, strict=True):
        values = [float(cells[column]) for cells, _ in rows]
        ax.barh(y, values, color=color, alpha=0.8)
        ax.axvline(total, color="black", ls="--", lw=1)
        ax.set_title(f"all files pooled: {total:g} (dashed line)", fontsize=9)
        for position, value in enumerate(values):
            ax.annotate(f"{value:g}", (value, position), xytext=(3, 0), textcoords="offset points", va="center",
                        fontsize=7)  # fmt: skip
        ax.set_xlim(limits[0], limits[1] * 1.1)
        ax.set_xlabel(label, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, names, fontsize=8)
    axes[0].invert_yaxis()
    from matplotlib.lines import Line2D

    pooled_line = Line2D([], [], color="black", ls="--", lw=1, label="all files pooled (the benchmark's figure)")
    fig.legend(handles=[pooled_line], loc="lower center", fontsize=8, frameon=False)
    fig.suptitle(run.line(), fontsize=11)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=report.DPI)
    plt.close(fig)
