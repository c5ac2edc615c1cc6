"""`edgewatch evaluate nab`: the flow's detector replayed on NAB and scored the NAB way."""

import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from edgewatch.cli import app
from edgewatch.evaluation import nab, nab_replay
from edgewatch.online_models.registry import BUILTIN
from tests.support.cli import assert_refused, evaluate, said
from tests.support.images import assert_report

runner = CliRunner()
LINE = re.compile(
    r"^nab: standard=(-?\d+\.\d\d) reward_low_FP_rate=(-?\d+\.\d\d) reward_low_FN_rate=(-?\d+\.\d\d) "
    r"files=(\d+) windows=(\d+)$"
)


@pytest.fixture(scope="module")
def evaluated(nab_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("nab-results")
    result = runner.invoke(app, ["evaluate", "nab", "--data-dir", str(nab_root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output.strip().splitlines()[-1]


def test_prints_the_nab_line_and_beats_numenta_htm(evaluated):
    _, line = evaluated
    match = LINE.match(line)
    assert match, line
    standard, low_fp, low_fn = map(float, match.groups()[:3])
    assert (int(match[4]), int(match[5])) == (31, 53)
    assert standard >= 70.0, line  # Numenta HTM scores 69.5 on these 31 files
    assert low_fp > 60.0 and low_fn > 70.0, line


def test_results_are_in_nab_layout_and_rescore_the_same(evaluated, nab_root):
    out, line = evaluated
    corpus = nab.load_corpus(nab_root)
    scores = {}
    for key in corpus.keys:
        group, name = key.split("/")
        results = nab.read_results_csv(out / group / f"edgewatch_{name}")
        assert results.timestamps == list(corpus.files[key].timestamps)
        np.testing.assert_array_equal(results.labels, corpus.files[key].labels)
        scores[key] = results.anomaly_scores
    rescored = nab.evaluate(corpus, scores)
    assert f"standard={rescored['standard'].normalized_score:.2f}" in line


def test_default_threshold_is_the_one_that_scores_best_on_nab_standard(nab_root):
    spec = BUILTIN["compact-novelty"]
    run = nab_replay.evaluate(nab_replay.load(nab_root), spec)
    assert spec.threshold == pytest.approx(run.results["standard"].threshold, abs=1e-4)


def test_groups_and_report(nab_root, tmp_path):
    args = ["--data-dir", str(nab_root), "--groups", "realKnownCause", "--out", str(tmp_path), "--report"]
    result = runner.invoke(app, ["evaluate", "nab", *args])
    assert result.exit_code == 0, result.output
    assert "files=7 " in result.output
    pngs = assert_report(tmp_path / "report")  # valid, readable, every one linked from index.html
    assert len(pngs) == 8 and "summary.png" in pngs
    index = (tmp_path / "report" / "index.html").read_text()
    assert "realKnownCause/nyc_taxi.csv" in index
    # the reference detectors, scored on the same 7 files, beside edgewatch
    assert "numenta: standard=" in index and "<th>numenta score</th>" in index
    assert "ARTime" in index  # its published score (all of NAB) is named as such


def test_reference_detectors_are_scored_on_the_same_files(nab_root):
    corpus = nab_replay.load(nab_root)
    numenta = nab.load_detector_scores(nab_root / "results", "numenta", corpus)
    run = nab_replay.NabRun(corpus, numenta, nab.evaluate(corpus, numenta))
    references = nab_replay.reference_results(run)
    assert "null" not in references and {"numenta", "windowedGaussian"} <= set(references)
    results, per_file = references["numenta"]
    assert results["standard"].normalized_score == pytest.approx(69.519, abs=1e-3)  # NAB's figure on these files
    assert set(per_file) == set(corpus.keys)
    assert nab_replay.published_scores(nab_root)["ARTime"] == pytest.approx(57.66, abs=0.01)


def test_unknown_group_and_missing_data_are_clear_errors(nab_root, tmp_path):
    result = runner.invoke(app, ["evaluate", "nab", "--data-dir", str(nab_root), "--groups", "nope"])
    assert result.exit_code == 2 and "no such NAB group" in said(result)
    result = runner.invoke(app, ["evaluate", "nab", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "not a NAB root" in said(result)


def synthetic_corpus(values):
    start = np.datetime64("2024-01-01T00:00")
    stamps = [str(start + np.timedelta64(5 * i, "m")).replace("T", " ") + ":00" for i in range(len(values))]
    window = [stamps[700], stamps[760]]
    files = {"synthetic/a.csv": nab.build_file("synthetic/a.csv", stamps, np.asarray(values, float), [window])}
    return nab.NabCorpus(files, {})


def test_replay_never_looks_ahead():
    rng = np.random.default_rng(0)
    base = np.sin(np.arange(1200) / 20.0) + 0.1 * rng.normal(size=1200)
    altered = base.copy()
    altered[900:] += 50.0
    spec = BUILTIN["compact-novelty"]
    first = nab_replay.replay(synthetic_corpus(base), spec)["synthetic/a.csv"]
    second = nab_replay.replay(synthetic_corpus(altered), spec)["synthetic/a.csv"]
    np.testing.assert_array_equal(first[:900], second[:900])
    assert second[900] > first[900]


PROFILES = {
    name: {"CostMatrix": {"tpWeight": 1.0, "fpWeight": fp, "fnWeight": fn}}
    for name, fp, fn in [("standard", 0.11, 1.0), ("reward_low_FP_rate", 0.22, 1.0), ("reward_low_FN_rate", 0.11, 2.0)]
}


def small_nab_root(tmp_path, data_row: str | None = None, labels: str | None = None, profiles=PROFILES):
    """A NAB root of one file (100 hourly rows), its row 50 replaced by ``data_row``."""
    rows = [f"2024-01-{1 + i // 24:02d} {i % 24:02d}:00:00,{i % 7}.5" for i in range(100)]
    if data_row is not None:
        rows[48] = data_row  # line 50 of the file
    (tmp_path / "data" / "g").mkdir(parents=True)
    (tmp_path / "labels").mkdir()
    (tmp_path / "data" / "g" / "f.csv").write_text("timestamp,value\n" + "\n".join(rows) + "\n")
    window = '[["2024-01-03 00:00:00", "2024-01-03 05:00:00"]]'
    (tmp_path / "labels" / "combined_windows.json").write_text(labels or f'{{"g/f.csv": {window}}}')
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "profiles.json").write_text(json.dumps(profiles))
    return tmp_path


@pytest.mark.parametrize(
    ("data_row", "labels", "expected"),
    [
        ("2024-01-03 00:00:00,abc", None, "line 50: value 'abc' is not a finite number"),
        ("2024-01-03 00:00:00,nan", None, "line 50: value 'nan' is not a finite number"),
        ("garbage", None, "line 50: 1 fields, the header has 2"),
        ("2024-99-03 00:00:00,1", None, "line 50: '2024-99-03 00:00:00' is not a time"),
        (None, "{", "cannot read"),
        (None, '{"g/f.csv": []}', "no anomaly windows in these files"),
    ],
)
def test_a_corrupted_file_is_named_with_its_line(tmp_path, data_row, labels, expected):
    root = small_nab_root(tmp_path, data_row, labels)
    result = evaluate("nab", root, tmp_path / "out")
    assert_refused(result, expected)


@pytest.mark.parametrize(
    ("profiles", "expected"),
    [
        ({"standard": PROFILES["standard"]}, "lacks NAB's profile(s) reward_low_FN_rate, reward_low_FP_rate"),
        ({"standard": {"CostMatrix": {}}}, "not NAB's profiles"),
    ],
)
def test_profiles_nab_scores_by_are_checked(tmp_path, profiles, expected):
    root = small_nab_root(tmp_path, profiles=profiles)
    result = evaluate("nab", root, tmp_path / "out")
    assert_refused(result, expected)


def test_the_error_names_the_file_and_line(tmp_path):
    with pytest.raises(ValueError, match=r"g/f\.csv line 50: 1 fields, the header has 2"):
        nab_replay.load(small_nab_root(tmp_path, "garbage"))


def test_a_small_corpus_is_scored(tmp_path):
    root = small_nab_root(tmp_path)
    result = evaluate("nab", root, tmp_path / "out")
    assert result.exit_code == 0 and "files=1" in result.output, result.output


def test_an_unwritable_results_folder_is_refused_before_the_replay(tmp_path):
    (tmp_path / "a-file").write_text("")
    root = small_nab_root(tmp_path)
    result = evaluate("nab", root, tmp_path / "a-file" / "out")
    assert_refused(result, "cannot write results to")
    assert "Not a directory" in said(result)
