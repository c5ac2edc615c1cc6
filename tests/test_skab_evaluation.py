"""`edgewatch evaluate skab`: SKAB's protocol and metrics, checked against the benchmark's sanity values."""

import re

import numpy as np
import pytest
from typer.testing import CliRunner

from edgewatch.cli import app
from edgewatch.config import data_dir
from edgewatch.evaluation import skab
from tests.support.cli import assert_refused, evaluate, said
from tests.support.images import assert_report

runner = CliRunner()
LINE = re.compile(
    r"^skab: f1=(\d\.\d\d) far=(\d+\.\d\d) mar=(\d+\.\d\d) changepoint_standard=(-?\d+\.\d\d) "
    r"changepoint_low_fp=(-?\d+\.\d\d) files=(\d+)$"
)


@pytest.fixture(scope="module")
def skab_root():
    root = data_dir() / "skab"
    if not (root / "valve1").is_dir():
        pytest.skip(f"SKAB data not found at {root} (set EDGEWATCH_DATA_DIR)")
    return root


@pytest.fixture(scope="module")
def files(skab_root):
    return skab.load(skab_root)


def run_of(files, predictions):
    return skab.SkabRun(files, predictions, [p.astype(float) for p in predictions])


def test_shipped_subset_has_the_documented_size(files):
    assert len(files) == 16
    assert sum(len(f.times) - skab.TRAIN_ROWS for f in files) == 11_760
    assert sum(int(f.anomaly[f.test].sum()) for f in files) == 6_309
    assert sum(int(f.changepoint[f.test].sum()) for f in files) == 63
    assert all(f.values.shape[1] == 8 and not f.anomaly[: skab.TRAIN_ROWS].any() for f in files)


def test_sanity_values_of_the_research_note(files):
    truth = [f.anomaly[f.test].astype(bool) for f in files]
    null = run_of(files, [np.zeros_like(t) for t in truth])
    assert null.line() == (
        "skab: f1=0.00 far=0.00 mar=100.00 changepoint_standard=0.00 changepoint_low_fp=0.00 files=16"
    )
    always = run_of(files, [np.ones_like(t) for t in truth])
    assert always.outliers == (0.70, 100.0, 0.0)
    perfect_outliers = run_of(files, truth)
    assert perfect_outliers.outliers == (1.0, 0.0, 0.0)
    assert perfect_outliers.changepoint("standard") == 55.57  # 23 windows closer than 60 s are missed


def test_changepoint_windows_and_weights():
    times = np.arange(0.0, 300.0)
    changepoint = np.zeros(300)
    changepoint[[10, 40, 200]] = 1
    # the second window starts where the first ends
    assert skab.changepoint_windows(times, changepoint) == [(10.0, 70.0), (70.0, 100.0), (200.0, 260.0)]
    predicted = np.zeros(300)
    predicted[10:20] = 1  # raised at the first window's start, cleared inside it
    raw, windows, tps, fps = skab.changepoint_raw(times, changepoint, predicted, "standard")
    assert (windows, tps, fps) == (3, 1, 0) and raw == pytest.approx(1.0 - 2.0)
    predicted[150] = 1  # raised and cleared outside every window: two false positives
    raw_fp, *_ = skab.changepoint_raw(times, changepoint, predicted, "low_fp")
    assert raw_fp == pytest.approx(1.0 - 2.0 - 2 * 0.22)
    late = np.zeros(300)
    late[259:] = 1  # at the third window's end: worth about A_fp
    raw_late, _, tps, _ = skab.changepoint_raw(times, changepoint, late, "standard")
    assert tps == 1 and raw_late == pytest.approx(-2.0 - 0.11, abs=0.01)


def test_evaluate_prints_the_line_and_writes_results_and_report(skab_root, tmp_path):
    result = runner.invoke(app, ["evaluate", "skab", "--data-dir", str(skab_root), "--out", str(tmp_path), "--report"])
    assert result.exit_code == 0, result.output
    match = LINE.match(result.output.strip().splitlines()[-1])
    assert match, result.output
    assert int(match[6]) == 16
    written = sorted((tmp_path / "valve1").glob("*.csv"))
    assert len(written) == 16
    assert written[0].read_text().splitlines()[0] == "datetime,anomaly,changepoint,score,predicted"
    pngs = assert_report(tmp_path / "report")  # valid, readable, every one linked from index.html
    assert len(pngs) == 17 and "valve1__0.png" in pngs  # a plot per file and summary.png
    index = (tmp_path / "report" / "index.html").read_text()
    assert "skab: f1=" in index and "<th>FAR %</th>" in index


def test_missing_data_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["evaluate", "skab", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "no SKAB experiments" in said(result)


def test_clear_on_return_a_drift_alarm_ends_before_the_fault_which_raises_its_own(files):
    """valve1/15: the temperature drifts in the normal part and its profile channel raises an alarm that,
    held by the profile's smoothed residual, spans the fault's onset (no changepoint detected there). With
    ``clear_on_return`` the level channel, which knows what a slow signal's level is worth, finds the
    temperature's recent level no departure: that alarm clears before the onset and the fault raises its
    own within the first changepoint window, with fewer false alarm rows."""
    from edgewatch.online_models.registry import DetectorSpec
    from edgewatch.online_models.relational_novelty import THRESHOLD, RelationalNovelty

    (f,) = [f for f in files if f.name == "valve1/15"]
    truth, times = f.anomaly[f.test].astype(bool), f.times[f.test]
    onset = int(np.argmax(truth))
    runs = {}
    for on in (False, True):
        spec = DetectorSpec("relational-novelty", lambda on=on: RelationalNovelty(clear_on_return=on), THRESHOLD, "t")
        runs[on] = skab.evaluate([f], spec).predictions[0]
    raised = {on: np.flatnonzero(np.diff(p.astype(int), prepend=0) == 1) for on, p in runs.items()}
    window = (times >= times[onset]) & (times <= times[onset] + skab.CHANGEPOINT_WINDOW)
    assert runs[False][onset - 1] and not window[raised[False]].any()  # one alarm across the onset
    assert not runs[True][onset - 1] and window[raised[True]].any()
    assert skab.outlier_metrics(truth, runs[True])[1] < skab.outlier_metrics(truth, runs[False])[1]  # FAR
    changepoints = {on: skab.changepoint_raw(times, f.changepoint[f.test], p, "standard")[0] for on, p in runs.items()}
    # (+1.3: without clear_on_return the residual CUSUM also raises a second alarm near the fault's end, whose
    # raise lands in a window; with the CUSUM off the gain was above 2)
    assert changepoints[True] > changepoints[False] + 1.0


def small_skab_root(tmp_path, row: str | None = None, rows: int = 450):
    """A SKAB root of one experiment (``rows`` rows), its row 50 replaced by ``row``."""
    header = "datetime;Pressure;Temperature;anomaly;changepoint"
    lines = [f"2020-03-09 10:{i // 60:02d}:{i % 60:02d};0.{i % 9};70.{i % 5};0.0;0.0" for i in range(rows)]
    if row is not None:
        lines[48] = row  # line 50 of the file
    (tmp_path / "valve1").mkdir()
    (tmp_path / "valve1" / "0.csv").write_text("\n".join([header, *lines]) + "\n")
    return tmp_path


@pytest.mark.parametrize(
    ("row", "rows", "expected"),
    [
        ("2020-03-09 10:00:48;0.1", 450, "line 50: 2 fields, the header has 5"),
        ("2020-03-09 10:00:48;0.1;x;0.0;0.0", 450, "line 50: 'x' is not a finite number"),
        ("2020-03-09 10:00:48;0.1;inf;0.0;0.0", 450, "line 50: 'inf' is not a finite number"),
        ("2020-13-09 10:00:48;0.1;70;0.0;0.0", 450, "line 50: '2020-13-09 10:00:48' is not a time"),
        (None, 300, "300 rows, the protocol needs more than 400"),
    ],
)
def test_a_corrupted_file_is_named_with_its_line(tmp_path, row, rows, expected):
    root = small_skab_root(tmp_path, row, rows)
    result = evaluate("skab", root, tmp_path / "out")
    assert_refused(result, expected)


def test_the_error_names_the_file_and_line(tmp_path):
    with pytest.raises(ValueError, match=r"valve1/0\.csv line 50: 'x' is not a finite number"):
        skab.load(small_skab_root(tmp_path, "2020-03-09 10:00:48;0.1;x;0.0;0.0"))


def test_a_small_experiment_is_scored(tmp_path):
    root = small_skab_root(tmp_path)
    result = evaluate("skab", root, tmp_path / "out")
    assert result.exit_code == 0 and "files=1" in result.output, result.output


def test_an_unwritable_results_folder_is_refused_before_the_replay(tmp_path):
    (tmp_path / "a-file").write_text("")
    root = small_skab_root(tmp_path)
    result = evaluate("skab", root, tmp_path / "a-file" / "out")
    assert_refused(result, "cannot write results to")
    assert "Not a directory" in said(result)


@pytest.mark.parametrize("level", [False, True])
def test_step_cusum_holds_valve1_2_whose_flow_steps_down_less_than_its_level_wanders(files, level):
    """valve1/2: the valve's flow drops 1.4 training deviations (31.8 -> 31.1 l/min) for the whole fault; the
    flow's level wanders between sessions by about as much, so judged against the relations' mean and its
    long-run deviation (level channel, residual CUSUM) nothing of it is visible and every fault row is missed.
    As a step from the level the flow had just before, in its short-run deviations, it is: with ``step_cusum``
    the fault is labeled for most of its rows, and the rows after it stay normal; judged on the flow's
    regression residual or (``step_level``) on its own level alike."""
    from edgewatch.online_models.registry import DetectorSpec
    from edgewatch.online_models.relational_novelty import THRESHOLD, RelationalNovelty

    (f,) = [f for f in files if f.name == "valve1/2"]
    truth = f.anomaly[f.test].astype(bool)
    runs = {}
    for on in (False, True):
        spec = DetectorSpec(
            "relational-novelty", lambda on=on: RelationalNovelty(step_cusum=on, step_level=level), THRESHOLD, "t"
        )
        runs[on] = skab.evaluate([f], spec).predictions[0].astype(bool)
    assert not runs[False][truth].any()
    assert runs[True][truth].mean() > 0.5
    end = int(np.flatnonzero(truth)[-1])
    assert not runs[True][end + 20 :].any()  # no false alarm once the flow is back
