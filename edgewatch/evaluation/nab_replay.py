"""``edgewatch evaluate nab``: the product's detector, scored by NAB.

Every NAB file is one device. Its probationary rows are its history: ``train`` fits the
device's detector on them exactly as ``edgewatch train`` fits a fleet; the rest of the
file then streams through the same bank the flow builds (:func:`new_bank`), all files
interleaved like devices of one shard, each row scored before it is learned. Nothing
looks ahead and no parameter depends on the file.
"""

from __future__ import annotations

import html
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
) -> dict[str, np.ndarray]:
    """Anomaly scores per file (0 on probation rows, which NAB does not score)."""
    streams = {key: _readings(key, f) for key, f in corpus.files.items()}
    history = [r for key, rows in streams.items() for r in rows[: corpus.files[key].probation]]
    fitted = artifact.train(spec, history, source="NAB probationary rows")
    bank = new_bank(spec, threshold=None, artifact=fitted)
    progress(len(history))
    # all files at once, interleaved row by row, like devices sending at the same time
    pending = [rows[corpus.files[key].probation :] for key, rows in streams.items()]
    interleaved = [r for step in _round_robin(pending) for r in step]
    scores = {key: np.zeros(f.n_rows) for key, f in corpus.files.items()}
    for start in range(0, len(interleaved), BATCH):
        events, dead, _, _ = bank.label(interleaved[start : start + BATCH])
        if dead:
            raise RuntimeError(f"the detector refused NAB rows: {dead[0].reason}")
        for event in events:
            scores[event.reading.device_id][event.reading.raw.offset] = event.score
        progress(len(events))
    return scores


def _round_robin(lists: Sequence[list]) -> list[list]:
    longest = max((len(rows) for rows in lists), default=0)
    return [[rows[i] for rows in lists if i < len(rows)] for i in range(longest)]


def load(root: Path, groups: Sequence[str] | None = None) -> nab.NabCorpus:
    """The NAB corpus at ``root``, or only its files in ``groups``."""
    corpus = nab.load_corpus(root)
    if not groups:
        return corpus
    unknown = set(groups) - {key.split("/")[0] for key in corpus.keys}
    if unknown:
        raise ValueError(f"no such NAB group(s): {', '.join(sorted(unknown))}")
    return nab.NabCorpus(
        {k: f for k, f in corpus.files.items() if k.split("/")[0] in groups}, corpus.profiles, corpus.root
    )


def evaluate(corpus: nab.NabCorpus, spec: DetectorSpec, progress: Callable[[int], None] = lambda rows: None) -> NabRun:
    scores = replay(corpus, spec, progress)
    return NabRun(corpus, scores, nab.evaluate(corpus, scores))


def write_results(run: NabRun, out: Path) -> None:
    """NAB's results layout: ``OUT/<group>/edgewatch_<file>.csv`` (timestamp,value,anomaly_score,label)."""
    for key, scores in run.scores.items():
        f = run.corpus.files[key]
        group, name = key.split("/")
        nab.write_results_csv(Path(out) / group / f"{DETECTOR_NAME}_{name}", f.timestamps, f.values, scores, f.labels)


def write_report(run: NabRun, out: Path) -> Path:
    """A PNG per file (values, scores, detections, windows) and ``index.html`` summarizing them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out) / "report"
    out.mkdir(parents=True, exist_ok=True)
    standard = run.results["standard"]
    profile = run.corpus.profiles["standard"]
    rows = []
    for key, scores in run.scores.items():
        f = run.corpus.files[key]
        file_score = nab.score_file(f, scores, standard.threshold, profile)
        image = f"{key.replace('/', '__').removesuffix('.csv')}.png"
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 5), sharex=True, height_ratios=(3, 1))
        times = f.times.astype("datetime64[s]").astype("O")
        top.plot(times, f.values, lw=0.6, color="#335")
        detected = np.flatnonzero(scores >= standard.threshold)
        top.scatter([times[i] for i in detected], f.values[detected], s=14, color="red", zorder=3, label="detection")
        for first, last in f.windows:
            for ax in (top, bottom):
                ax.axvspan(times[first], times[last], color="orange", alpha=0.25, lw=0)
        for ax in (top, bottom):
            ax.axvspan(times[0], times[max(f.probation - 1, 0)], color="grey", alpha=0.15, lw=0)
        bottom.plot(times, scores, lw=0.6, color="#a33")
        bottom.axhline(standard.threshold, color="black", lw=0.6, ls="--")
        bottom.set_ylim(0, 1)
        bottom.set_ylabel("score")
        top.set_title(f"{key}: standard score {file_score.score:+.3f} (windows orange, probation grey)", fontsize=10)
        fig.tight_layout()
        fig.savefig(out / image, dpi=90)
        plt.close(fig)
        rows.append((key, file_score, image))

    fig, ax = plt.subplots(figsize=(12, 6))
    ax.barh([key for key, _, _ in rows], [s.score for _, s, _ in rows], color="#468")
    ax.axvline(0, color="black", lw=0.6)
    ax.set_xlabel("NAB standard score per file (+1 ≈ a window found at its start, -1 a window missed)")
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title(run.line())
    fig.tight_layout()
    fig.savefig(out / "summary.png", dpi=90)
    plt.close(fig)

    table = "\n".join(
        f"<tr><td>{html.escape(key)}</td><td>{s.score:+.3f}</td><td>{s.tp}</td><td>{s.fp}</td>"
        f'<td><a href="{image}">plot</a></td></tr>'
        for key, s, image in rows
    )
    profiles = "".join(
        f"<li>{name}: {r.normalized_score:.2f} (threshold {r.threshold:.4f})</li>" for name, r in run.results.items()
    )
    index = out / "index.html"
    index.write_text(
        f"<!doctype html><meta charset=utf-8><title>edgewatch on NAB</title>"
        f"<h1>edgewatch on NAB</h1><p><code>{html.escape(run.line())}</code></p><ul>{profiles}</ul>"
        f'<img src="summary.png" width=900><table border=1 cellpadding=3>'
        f"<tr><th>file</th><th>standard score</th><th>TP rows</th><th>FP rows</th><th></th></tr>{table}</table>"
    )
    return index
