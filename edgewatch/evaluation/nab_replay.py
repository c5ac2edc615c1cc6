"""``edgewatch evaluate nab``: the product's detector, scored by NAB.

Every NAB file is one device. Its probationary rows are its history: ``train`` fits the
device's detector on them exactly as ``edgewatch train`` fits a fleet; the rest of the
file then streams through the same bank the flow builds (:func:`new_bank`), all files
interleaved like devices of one shard, each row scored before it is learned. Nothing
looks ahead and no parameter depends on the file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgewatch.evaluation import nab
from edgewatch.online_models import artifact
from edgewatch.online_models.bank import new_bank
from edgewatch.online_models.registry import DetectorSpec
from edgewatch.schema import RawMessage, Reading

DETECTOR_NAME = "edgewatch"
BATCH = 2000


@dataclass
class NabRun:
    """Scores of every file and the corpus results per profile."""

    corpus: nab.NabCorpus
    scores: dict[str, np.ndarray]
    results: dict[str, nab.ProfileResult]

    @property
    def windows(self) -> int:
        return sum(self.corpus.files[key].n_scored_windows for key in self.scores)

    def line(self) -> str:
        r = self.results
        return (
            f"nab: standard={r['standard'].normalized_score:.2f} "
            f"reward_low_FP_rate={r['reward_low_FP_rate'].normalized_score:.2f} "
            f"reward_low_FN_rate={r['reward_low_FN_rate'].normalized_score:.2f} "
            f"files={len(self.scores)} windows={self.windows}"
        )


def _readings(key: str, nab_file: nab.NabFile) -> list[Reading]:
    epoch = nab_file.times.astype("datetime64[us]").astype(np.int64) / 1e6
    group = key.split("/")[0]
    return [
        Reading(key, float(t), {"value": float(v)}, RawMessage(None, None, [], group, 0, i, None))
        for i, (t, v) in enumerate(zip(epoch.tolist(), nab_file.values.tolist(), strict=True))
    ]


def replay(
    corpus: nab.NabCorpus,
    spec: DetectorSpec,
    progress: Callable[[int], None] = lambda rows: None,
    warm: bool = True,
) -> dict[str, np.ndarray]:
    """Anomaly scores per file (0 on probation rows, which NAB does not score). ``warm=False``
    streams the probation rows too instead of fitting on them (a cold start, for ablations)."""
    streams = {key: _readings(key, f) for key, f in corpus.files.items()}
    fitted = None
    if warm:
        history = [r for key, rows in streams.items() for r in rows[: corpus.files[key].probation]]
        fitted = artifact.train(spec, history, source="NAB probationary rows")
        progress(len(history))
    bank = new_bank(spec, threshold=None, artifact=fitted)
    # all files at once, interleaved row by row, like devices sending at the same time
    pending = [rows[corpus.files[key].probation if warm else 0 :] for key, rows in streams.items()]
    interleaved = [r for step in _round_robin(pending) for r in step]
    scores = {key: np.zeros(f.n_rows) for key, f in corpus.files.items()}
    for start in range(0, len(interleaved), BATCH):
        events, dead, _, _ = bank.label(interleaved[start : start + BATCH])
        if dead:
            raise RuntimeError(f"the detector refused NAB rows: {dead[0].reason}")
        for event in events:
            if event.reading.raw.offset >= corpus.files[event.reading.device_id].probation:
                scores[event.reading.device_id][event.reading.raw.offset] = event.detection_score
        progress(len(events))
    return scores


def _round_robin(lists: Sequence[list]) -> list[list]:
    longest = max((len(rows) for rows in lists), default=0)
    return [[rows[i] for rows in lists if i < len(rows)] for i in range(longest)]


def load(root: Path, groups: Sequence[str] | None = None) -> nab.NabCorpus:
    """The NAB corpus at ``root``, or only its files in ``groups``."""
    corpus = nab.load_corpus(root)
    missing = sorted({"standard", "reward_low_FP_rate", "reward_low_FN_rate"} - set(corpus.profiles))
    if missing:
        raise ValueError(f"{Path(root) / 'config' / 'profiles.json'} lacks NAB's profile(s) {', '.join(missing)}")
    if groups:
        unknown = set(groups) - {key.split("/")[0] for key in corpus.keys}
        if unknown:
            raise ValueError(f"no such NAB group(s): {', '.join(sorted(unknown))}")
        chosen = {k: f for k, f in corpus.files.items() if k.split("/")[0] in groups}
        corpus = nab.NabCorpus(chosen, corpus.profiles, corpus.root)
    if not any(f.windows for f in corpus.files.values()):  # NAB normalizes by the windows' reward
        raise ValueError("no anomaly windows in these files: NAB's score needs some (add a group that has them)")
    return corpus


def evaluate(
    corpus: nab.NabCorpus, spec: DetectorSpec, progress: Callable[[int], None] = lambda rows: None, warm: bool = True
) -> NabRun:
    scores = replay(corpus, spec, progress, warm)
    return NabRun(corpus, scores, nab.evaluate(corpus, scores))


def write_results(run: NabRun, out: Path) -> None:
    """NAB's results layout: ``OUT/<group>/edgewatch_<file>.csv`` (timestamp,value,anomaly_score,label)."""
    for key, scores in run.scores.items():
        f = run.corpus.files[key]
        group, name = key.split("/")
        nab.write_results_csv(Path(out) / group / f"{DETECTOR_NAME}_{name}", f.timestamps, f.values, scores, f.labels)


def reference_results(run: NabRun) -> dict[str, tuple[dict[str, nab.ProfileResult], dict[str, float]]]:
    """NAB's shipped detectors (``<root>/results/<detector>``) scored on the same files the same way:
    thresholds optimized over these files, per file at the standard one. Detectors whose results do
    not cover every file are left out (their score would be over other files)."""
    folder = run.corpus.root / "results" if run.corpus.root is not None else None
    if folder is None or not folder.is_dir():
        return {}
    subset = nab.NabCorpus({k: run.corpus.files[k] for k in run.scores}, run.corpus.profiles, run.corpus.root)
    references = {}
    for detector in sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in (DETECTOR_NAME, "null")):
        scores = nab.load_detector_scores(folder, detector, subset)
        if set(scores) != set(run.scores):
            continue
        results = nab.evaluate(subset, scores)
        profile = subset.profiles["standard"]
        per_file = {
            k: nab.score_file(subset.files[k], s, results["standard"].threshold, profile).score
            for k, s in scores.items()
        }
        references[detector] = (results, per_file)
    return references


def published_scores(root: Path | None) -> dict[str, float]:
    """NAB's published standard scores over its whole corpus (``config/thresholds.json``)."""
    path = Path(root) / "config" / "thresholds.json" if root is not None else None
    if path is None or not path.exists():
        return {}
    import json

    return {name: float(v["standard"]["score"]) for name, v in json.loads(path.read_text()).items() if "standard" in v}


def write_report(run: NabRun, out: Path) -> Path:
    """A PNG per file (values, scores, threshold, hits and false alarms, windows), ``summary.png``
    (edgewatch beside NAB's reference detectors, per file and over the corpus) and ``index.html``."""
    from edgewatch.evaluation import report

    out = Path(out) / "report"
    out.mkdir(parents=True, exist_ok=True)
    standard = run.results["standard"]
    profile = run.corpus.profiles["standard"]
    rows = []
    for key, scores in run.scores.items():
        f = run.corpus.files[key]
        file_score = nab.score_file(f, scores, standard.threshold, profile)
        image = f"{report.file_stem(key)}.png"
        epoch = f.times.astype("datetime64[us]").astype(np.int64) / 1e6
        trace = report.Trace(
            key.removesuffix(".csv"),
            epoch,
            {"value": f.values},
            scores,
            scores >= standard.threshold,
            standard.threshold,
            truth=f.labels > 0,
            truth_label="NAB anomaly window",
            learned=f.probation,
            learned_label="probation (learned from, not scored)",
            value_label="value (NAB gives no unit)",
            subtitle=f"NAB standard score {file_score.score:+.2f} "
            f"(+1 ≈ a window found at its start, −1 a window missed, small costs per false alarm)",
        )
        report.device_plot(trace, out / image)
        rows.append((key, file_score, image))

    references = reference_results(run)
    published = published_scores(run.corpus.root)
    _summary_plot(run, rows, references, published, out / "summary.png")
    corpus_lines = [run.line()] + [
        f"{name}: standard={r['standard'].normalized_score:.2f} "
        f"reward_low_FP_rate={r['reward_low_FP_rate'].normalized_score:.2f} "
        f"reward_low_FN_rate={r['reward_low_FN_rate'].normalized_score:.2f} (same files, NAB's shipped results)"
        for name, (r, _) in references.items()
    ]
    notes = [
        "Thresholds: " + ", ".join(f"{n} {r.threshold:.4f}" for n, r in run.results.items()) + ".",
        "Per-file scores use the standard profile at the corpus threshold; TP/FP count rows after probation.",
    ]
    if published:
        notes.append(
            "Published standard scores over NAB's 58 files (config/thresholds.json; not the same files): "
            + ", ".join(f"{n} {s:.1f}" for n, s in sorted(published.items(), key=lambda item: -item[1]))
            + "."
        )
    return report.write_index(
        out,
        "edgewatch on NAB",
        corpus_lines,
        ["file", "standard score", *(f"{n} score" for n in references), "TP rows", "FP rows"],
        [(_index_cells(key, s, references), image) for key, s, image in rows],
        notes=notes,
    )


def _index_cells(key: str, s: nab.FileScore, references) -> tuple:
    """A file's row of the index: its score, the references' scores, its TP and FP rows."""
    return (key, f"{s.score:+.3f}", *(f"{per_file[key]:+.3f}" for _, per_file in references.values()), s.tp, s.fp)


def _summary_plot(run, rows, references, published, path: Path) -> None:
    """Left: per-file standard scores, edgewatch beside the references; right: corpus scores."""
    from edgewatch.evaluation import report

    plt = report._pyplot()
    keys = [key for key, _, _ in rows]
    series = {DETECTOR_NAME: [s.score for _, s, _ in rows]}
    series.update({name: [per_file[k] for k in keys] for name, (_, per_file) in references.items()})
    height = max(4.0, 0.3 * len(keys) * (1 + 0.25 * (len(series) - 1)) + 2.2)
    fig = plt.figure(figsize=(15, height))
    grid = fig.add_gridspec(2, 2, width_ratios=(3, 1.3), height_ratios=(1, max(0.1, height / 6 - 1)))
    left, right = fig.add_subplot(grid[:, 0]), fig.add_subplot(grid[0, 1])
    y = np.arange(len(keys))
    bar = 0.8 / len(series)
    colors = plt.get_cmap("tab10").colors
    for k, (name, values) in enumerate(series.items()):
        left.barh(y - 0.4 + bar * (k + 0.5), values, height=bar, color=colors[k % 10], label=name,
                  alpha=1.0 if name == DETECTOR_NAME else 0.55)  # fmt: skip
    left.set_yticks(y, [k.removesuffix(".csv") for k in keys], fontsize=8)
    left.invert_yaxis()
    left.set_ylim(len(keys) - 0.5, -0.5)
    left.axvline(0, color="black", lw=0.6)
    left.grid(axis="x", alpha=0.3)
    left.set_xlabel("NAB standard score per file (+1 ≈ window found at its start, −1 window missed)", fontsize=9)
    left.set_title("per file (each detector at its own corpus threshold)", fontsize=10)
    left.legend(fontsize=8, loc="upper left")

    names = [DETECTOR_NAME, *references]
    values = [run.results["standard"].normalized_score]
    values += [r["standard"].normalized_score for r, _ in references.values()]
    labels = [f"{n} (these {len(keys)} files)" for n in names]
    bar_colors = [colors[k % 10] for k in range(len(names))]
    shown = {n: s for n, s in published.items() if n in ("ARTime", "numenta", "htmjava", "contextOSE")}
    for name, score in sorted(shown.items(), key=lambda item: -item[1]):
        labels.append(f"{name} (published, all 58 files)")
        values.append(score)
        bar_colors.append("#bbbbbb")
    order = np.argsort(values)[::-1]
    right.barh(np.arange(len(values)), [values[i] for i in order], color=[bar_colors[i] for i in order])
    right.set_yticks(np.arange(len(values)), [labels[i] for i in order], fontsize=8)
    right.invert_yaxis()
    for position, i in enumerate(order):
        right.annotate(f"{values[i]:.1f}", (values[i], position), xytext=(3 if values[i] >= 0 else -3, 0),
                       textcoords="offset points", va="center", ha="left" if values[i] >= 0 else "right",
                       fontsize=8)  # fmt: skip
    right.axvline(0, color="black", lw=0.6)
    lowest = min(0.0, min(values))
    right.set_xlim(lowest * 1.25 - 5 if lowest < 0 else 0, 110)
    right.grid(axis="x", alpha=0.3)
    right.set_xlabel("NAB normalized score, standard profile\n(100 = perfect, 0 = never fires)", fontsize=9)
    right.set_title("over the corpus", fontsize=10)
    fig.suptitle(run.line(), fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.98 if height > 8 else 0.96))
    fig.savefig(path, dpi=report.DPI)
    plt.close(fig)
