"""Per-file diagnosis of SKAB's changepoint score: where the detector's predictions land.

    python bench/skab_changepoints.py [--set NAME=VALUE ...]

SKAB derives changepoint predictions from the outlier labels (every raise and every clear of an
alarm is one; see ``edgewatch.evaluation.skab``). For each valve1 file this prints its windows'
first predictions (seconds after the window's start, ``R`` a raise, ``C`` a clear, ``miss``), the
predictions outside every window (each costs ``A_fp``) with the features that drove them, the file's
raw score and its F1/FAR/MAR; then the figures over all files and the even and odd halves.
``--set NAME=VALUE`` (JSON values) changes the default detector's parameters, as bench/ablation.py's
variants do. Data from ``EDGEWATCH_DATA_DIR``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ablation import add_set_option, spec_from_sets  # noqa: E402
from edgewatch.config import data_dir  # noqa: E402
from edgewatch.evaluation import skab  # noqa: E402
from edgewatch.evaluation.faults import top_feature  # noqa: E402


def file_lines(run: skab.SkabRun) -> list[str]:
    """One line per file (windows' first predictions, outside predictions with their features)."""
    lines = []
    for index, (f, predicted) in enumerate(zip(run.files, run.predictions, strict=True)):
        times, changepoint, truth = f.times[f.test], f.changepoint[f.test], f.anomaly[f.test]
        windows = skab.changepoint_windows(times, changepoint)
        at = np.flatnonzero(skab.changepoint_predictions(predicted))
        firsts = []
        for start, end in windows:
            hit = [j for j in at if start <= times[j] <= end]
            firsts.append(f"{int(times[hit[0]] - start)}{'R' if predicted[hit[0]] else 'C'}" if hit else "miss")
        outside = []
        for j in at:
            if not any(start <= times[j] <= end for start, end in windows):
                explanation = (run.explanations or [{}] * len(run.files))[index]
                shares = explanation.get(j) or explanation.get(j - 1) or {}
                outside.append(f"{'R' if predicted[j] else 'C'}@{j}({top_feature(shares) or '?'})")
        raw, _, _, _ = skab.changepoint_raw(times, changepoint, predicted, "standard")
        f1, far, mar = skab.outlier_metrics(truth, predicted)
        lines.append(
            f"{f.name:10s} windows {' '.join(firsts):24s} raw {raw:+.2f}  f1 {f1:.2f} far {far:6.2f} mar {mar:6.2f}"
            f"  outside: {' '.join(outside) or '-'}"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_set_option(parser)
    args = parser.parse_args(argv)
    spec = spec_from_sets(parser, args.set)
    files = skab.load(data_dir() / "skab")
    run = skab.evaluate(files, spec)
    print("\n".join(file_lines(run)))
    print(run.line())
    for half, chosen in (("even", slice(0, None, 2)), ("odd", slice(1, None, 2))):
        part = skab.SkabRun(run.files[chosen], run.predictions[chosen], run.scores[chosen])
        f1, far, mar = part.outliers
        changepoints = part.changepoint("standard")
        print(f"{half}: f1={f1:.2f} far={far:.2f} mar={mar:.2f} changepoint_standard={changepoints:.2f}")


if __name__ == "__main__":
    main()
