"""Score an RUL model on NASA C-MAPSS the way the literature does (``edgewatch evaluate cmapss``).

* **rmse**, **score** — on each test engine's last cycle against ``RUL_<set>.txt``, the truth
  as published (uncapped). The PHM08 score sums, over engines, ``exp(-d/13) - 1`` for an
  early prediction (``d = predicted - true < 0``) and ``exp(d/10) - 1`` for a late one.
* **rmse_all_cycles** — over every test cycle; the truth at cycle ``t`` is the final RUL plus
  the cycles that remain after ``t``, capped at ``cap`` (the model cannot see wear that has
  not started, the training target's convention).
* **coverage** — the share of test engines whose P10–P90 band at the last cycle holds the
  published RUL.

The model replays each test engine through the same online feature kernel that serves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgewatch.rul.model import RulModel, banded
from edgewatch.rul.train import Run, TrainConfig, band_margins, out_of_fold, replay_features, train_runs


@dataclass
class EngineTrace:
    """One test engine: its predictions at every cycle and the truth."""

    device_id: str
    true_rul: np.ndarray  # uncapped truth at every cycle
    predicted: np.ndarray  # float64[n, 3]: P10, P50, P90


@dataclass
class CmapssResult:
    rmse: float
    score: float
    rmse_all_cycles: float
    coverage: float
    engines: int
    traces: list[EngineTrace]

    def line(self) -> str:
        return (
            f"cmapss: rmse={self.rmse:.2f} score={self.score:.1f} rmse_all_cycles={self.rmse_all_cycles:.2f} "
            f"coverage={self.coverage:.2f} engines={self.engines}"
        )


def load_runs(path: Path, failed: bool) -> list[Run]:
    """The engines of a C-MAPSS file (``unit cycle settings… sensors…``) as runs, in unit order."""
    path = Path(path)
    try:
        table = np.loadtxt(path, ndmin=2)
    except ValueError as exc:
        raise ValueError(f"{path}: not a C-MAPSS table: {exc}") from None
    if table.shape[1] != 26:
        raise ValueError(f"{path}: expected 26 columns (unit, cycle, 3 settings, 21 sensors), got {table.shape[1]}")
    runs = []
    for unit in np.unique(table[:, 0]):
        rows = table[table[:, 0] == unit]
        rows = rows[np.argsort(rows[:, 1])]
        runs.append(Run(f"engine-{int(unit):03d}", rows[:, 2:].copy(), failed))
    return runs


def load_truth(path: Path) -> np.ndarray:
    """The published RUL of each test engine after its last cycle."""
    return np.atleast_1d(np.loadtxt(path, dtype=np.float64))


def phm08_score(predicted: np.ndarray, true: np.ndarray) -> float:
    """The PHM08 challenge score (lower is better; late predictions cost more than early ones)."""
    d = np.asarray(predicted, dtype=np.float64) - np.asarray(true, dtype=np.float64)
    return float(np.sum(np.where(d < 0, np.exp(-d / 13.0) - 1.0, np.exp(d / 10.0) - 1.0)))


def score_traces(traces: list[EngineTrace], cap: float) -> CmapssResult:
    """The benchmark figures of per-engine predictions."""
    last = np.array([trace.predicted[-1] for trace in traces])
    truth = np.array([trace.true_rul[-1] for trace in traces])
    every = np.concatenate([trace.predicted[:, 1] for trace in traces])
    every_truth = np.minimum(np.concatenate([trace.true_rul for trace in traces]), cap)
    return CmapssResult(
        rmse=float(np.sqrt(np.mean((last[:, 1] - truth) ** 2))),
        score=phm08_score(last[:, 1], truth),
        rmse_all_cycles=float(np.sqrt(np.mean((every - every_truth) ** 2))),
        coverage=float(np.mean((last[:, 0] <= truth) & (truth <= last[:, 2]))),
        engines=len(traces),
        traces=traces,
    )


def evaluate(model: RulModel, runs: list[Run], final_rul: np.ndarray) -> CmapssResult:
    """Replay each test run through ``model`` and score it against its published final RUL."""
    if len(runs) != len(final_rul):
        raise ValueError(f"{len(runs)} test engines but {len(final_rul)} published RUL values")
    traces = []
    for run, final in zip(runs, final_rul, strict=True):
        predicted = model.predict(replay_features(model.spec, [run]))
        true_rul = final + np.arange(len(run.rows) - 1, -1, -1, dtype=np.float64)
        traces.append(EngineTrace(run.device_id, true_rul, predicted))
    return score_traces(traces, model.cap)


def evaluate_files(model: RulModel, root: Path, subset: str = "FD001") -> CmapssResult:
    """:func:`evaluate` on ``root/test_<subset>.txt`` against ``root/RUL_<subset>.txt``."""
    root = Path(root)
    return evaluate(model, load_runs(root / f"test_{subset}.txt", failed=False), load_truth(root / f"RUL_{subset}.txt"))


def write_report(result: CmapssResult, out: Path, cap: float = 125.0) -> Path:
    """One PNG per test engine (true and predicted RUL with the P10–P90 band); the folder.

    One figure drawn again for each engine, with fixed margins (what ``tight_layout`` finds for
    tick labels of up to four digits): a new figure and a layout pass per engine took a third
    of the report's time, and every plot gets the same frame."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(7, 4))
    figure.subplots_adjust(left=0.115, right=0.975, bottom=0.146, top=0.909)
    try:
        for trace in result.traces:
            axes.clear()
            cycles = np.arange(1, len(trace.true_rul) + 1)
            axes.fill_between(cycles, trace.predicted[:, 0], trace.predicted[:, 2], alpha=0.25, label="P10–P90 band")
            axes.plot(cycles, trace.predicted[:, 1], label="predicted RUL (P50)")
            axes.plot(cycles, trace.true_rul, "k--", label="true RUL")
            axes.plot(cycles, np.minimum(trace.true_rul, cap), "k:", alpha=0.5, label=f"true RUL capped at {cap:g}")
            axes.set_xlabel("cycle")
            axes.set_ylabel("remaining useful life (cycles)")
            final, predicted = trace.true_rul[-1], trace.predicted[-1, 1]
            axes.set_title(f"{trace.device_id}: final RUL {final:.0f}, predicted {predicted:.0f}")
            axes.legend(loc="upper right", fontsize="small")
            figure.savefig(out / f"{trace.device_id}.png", dpi=80)
    finally:
        plt.close(figure)
    return out


@dataclass
class LearningResult:
    """The fleet model before and after it learned from streamed failures."""

    before: CmapssResult
    after: CmapssResult
    refits: int
    failures: int


def learn_from_failures(
    root: Path, subset: str = "FD001", config: TrainConfig | None = None, refit_every: int = 10, batch: int = 500
) -> LearningResult:
    """Train on the odd-numbered training engines, stream the even-numbered ones to failure
    through a learning :class:`~edgewatch.rul.online.RulFleet`, then score the test set with the
    model it started from and with the model it ends with.

    The stream goes through the real message path (``read_cmapss`` → ``parse_message``); the
    last reading of an engine in the file is its failure (``RunEnd(kind="failure")``)."""
    from edgewatch.connectors.files import read_cmapss
    from edgewatch.rul.events import RunEnd
    from edgewatch.rul.online import RulFleet
    from edgewatch.schema import Reading, parse_message

    root = Path(root)
    train_path = root / f"train_{subset}.txt"
    runs = load_runs(train_path, failed=True)
    seen, streamed = runs[0::2], {run.device_id for run in runs[1::2]}
    model = train_runs(seen, config, source=f"{train_path} (odd engines)")
    before = evaluate_files(model, root, subset)
    readings = [
        reading
        for reading in (parse_message(raw) for raw in read_cmapss(train_path))
        if isinstance(reading, Reading) and reading.device_id in streamed
    ]
    last = {reading.device_id: index for index, reading in enumerate(readings)}
    fleet = RulFleet(model, refit_every=refit_every, history=seen)
    failures = 0
    try:
        for start in range(0, len(readings), batch):
            chunk = readings[start : start + batch]
            fleet.update_many(chunk)
            for index, reading in enumerate(chunk, start):
                if last[reading.device_id] == index:
                    failures += fleet.end_run(RunEnd(reading.device_id, "failure", reading.timestamp)) is not None
        fleet.wait_for_refit()
    finally:
        fleet.close()
    return LearningResult(before, evaluate_files(fleet.model, root, subset), fleet.refits, failures)


def cross_validate(
    runs: list[Run], config: TrainConfig | None = None, cuts: int = 5, seed: int = 123, min_cycles: int = 31
) -> CmapssResult:
    """The benchmark figures on held-out *training* engines (folds by engine): the way to
    choose a model without looking at the test set.

    In each of ``cuts`` rounds every held-out engine is cut the way the test set was made:
    a remaining life drawn uniformly from 5–150 cycles (the range of FD001's published RULs),
    keeping at least ``min_cycles``; the cut engine plays a test engine. The figures are the
    rounds' means (the score is per round, so it compares with a test set of as many engines)."""
    config = config or TrainConfig()
    predictions = out_of_fold(runs, config)
    lower, upper = band_margins(runs, predictions, config.coverage)
    bands = [banded(predicted, lower, upper) for predicted in predictions]
    rng = np.random.default_rng(seed)
    rounds = []
    for _ in range(cuts):
        traces = []
        for run, band in zip(runs, bands, strict=True):
            remaining = int(rng.integers(5, 150))
            end = max(len(run.rows) - 1 - remaining, min(min_cycles, len(run.rows)) - 1)
            traces.append(EngineTrace(run.device_id, run.rul[: end + 1], band[: end + 1]))
        rounds.append(score_traces(traces, config.cap))
    return CmapssResult(
        rmse=float(np.mean([r.rmse for r in rounds])),
        score=float(np.mean([r.score for r in rounds])),
        rmse_all_cycles=float(np.mean([r.rmse_all_cycles for r in rounds])),
        coverage=float(np.mean([r.coverage for r in rounds])),
        engines=len(runs),
        traces=rounds[-1].traces,
    )
