"""Plots people read: the report module, and `edgewatch run --replay FILE --report DIR` end to end."""

from pathlib import Path

import numpy as np
import orjson
import pytest
from typer.testing import CliRunner

from edgewatch.cli import app
from edgewatch.evaluation import report
from tests.support.cli import said
from tests.support.images import assert_readable_png, assert_report, linked_images, png_size

runner = CliRunner()


def test_alarm_periods_are_hits_false_alarms_or_missed():
    alarm = np.array([0, 1, 1, 0, 0, 1, 0, 0, 0, 1, 1], bool)
    truth = np.array([0, 0, 1, 1, 0, 0, 0, 1, 0, 0, 0], bool)
    assert report.runs(alarm) == [(1, 2), (5, 5), (9, 10)]
    assert report.alarm_counts(alarm, truth) == report.AlarmCounts(hits=1, false_alarms=2, missed=1)
    assert report.alarm_counts(alarm, None) == report.AlarmCounts(hits=0, false_alarms=3, missed=0)
    assert report.runs(np.zeros(0, bool)) == []


def trace(features=("temperature",), rows=500, **extra) -> report.Trace:
    times = 1.7e9 + np.arange(rows) * 60.0
    scores = np.full(rows, 0.05)
    scores[200:220] = 0.9  # inside the labeled window: a hit
    scores[400:405] = 0.8  # outside: a false alarm
    truth = np.zeros(rows, bool)
    truth[195:230] = True
    values = {name: np.sin(np.arange(rows) / 20.0) + k for k, name in enumerate(features)}
    explanations = {i: {features[0]: 0.8, features[-1]: 0.2} for i in range(200, 220)}
    return report.Trace("pump/7", times, values, scores, scores >= 0.5, 0.5, truth=truth, learned=50,
                        explanations=explanations, drift=[(times[300], "consistent-shift")], **extra)  # fmt: skip


@pytest.mark.parametrize("features", [("temperature",), ("Current", "Voltage"), tuple(f"s{i}" for i in range(8))])
def test_device_plot_is_a_png_a_person_can_read(tmp_path, features):
    path = report.device_plot(trace(features), tmp_path / "pump.png")
    assert_readable_png(path)
    _, height = png_size(path)
    assert height < 2000  # one panel per sensor up to PANELS, then stacked
    if len(features) == 2:
        assert height > png_size(report.device_plot(trace(features[:1]), tmp_path / "one.png"))[1]


def test_device_plot_without_labels_or_alarms(tmp_path):
    quiet = trace()
    quiet.truth, quiet.alarm, quiet.explanations = None, np.zeros(500, bool), {}
    assert_readable_png(report.device_plot(quiet, tmp_path / "quiet.png"))


def test_index_links_every_plot_and_escapes_names(tmp_path):
    report.device_plot(trace(), tmp_path / "a.png")
    report.bar_summary(tmp_path / "summary.png", ["a<b>"], {"hits": [1], "false alarms": [2]}, "periods", "t")
    index = report.write_index(tmp_path, "title", ["line"], ["device"], [(("a<b>",), "a.png"), (("c",), None)])
    text = index.read_text()
    assert "a&lt;b&gt;" in text and "<td>–</td>" in text
    assert linked_images(index) == {"a.png", "summary.png"}
    assert_report(tmp_path)
    assert report.file_stem("realKnownCause/nyc taxi.csv") == "realKnownCause__nyc_taxi"


def simulated(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.jsonl"
    args = ["simulate", "--devices", "3", "--rate", "30", "--duration", "40", "--fault-rate", "0.02",
            "--malformed-rate", "0.01", "--start-time", "2026-01-01T00:00:00", "--out", str(path)]  # fmt: skip
    assert runner.invoke(app, args).exit_code == 0
    return path


def test_run_replay_report_plots_every_device_from_what_the_flow_wrote(tmp_path):
    stream = simulated(tmp_path)
    labeled, folder = tmp_path / "labeled.jsonl", tmp_path / "report"
    result = runner.invoke(app, ["run", "--replay", str(stream), "--out", str(labeled), "--report", str(folder)])
    assert result.exit_code == 0, result.output
    assert f"report: {folder / 'index.html'}" in result.output
    written = assert_report(folder)
    assert written == {"summary.png", "machine-0000.png", "machine-0001.png", "machine-0002.png"}
    index = (folder / "index.html").read_text()
    # the table's counts come from the files the flow wrote and the fault headers of the stream
    events = [orjson.loads(line) for line in labeled.read_bytes().splitlines()]
    faults = {n for n, line in enumerate(stream.read_bytes().splitlines())
              if orjson.loads(line)["headers"]["edgewatch-fault"] not in ("", "malformed")}  # fmt: skip
    traces, _ = report.device_traces(labeled, 0.343, stream)
    assert sum(len(t.times) for t in traces) == len(events)
    assert sum(int(t.truth.sum()) for t in traces) == sum(e["source"]["offset"] in faults for e in events) > 0
    for t in traces:
        c = report.alarm_counts(t.alarm, t.truth)
        assert f"<td>{t.name}</td><td>{len(t.times)}</td>" in index
        assert f"<td>{c.hits}</td><td>{c.false_alarms}</td><td>{c.missed}</td>" in index
    # a second run to the same files starts them anew (once they doubled) and reports that run
    alarms = labeled.with_suffix(".alarms.jsonl").read_bytes()
    again = runner.invoke(app, ["run", "--replay", str(stream), "--out", str(labeled), "--report", str(folder)])
    assert again.exit_code == 0, again.output
    assert len(labeled.read_bytes().splitlines()) == len(events)
    assert labeled.with_suffix(".alarms.jsonl").read_bytes() == alarms
    assert (folder / "index.html").read_text() == index


def test_report_needs_a_replay_and_a_folder_that_can_be_made(tmp_path):
    result = runner.invoke(app, ["run", "--report", str(tmp_path / "r")])
    assert result.exit_code == 2 and "use it with --replay FILE" in said(result)
    stream = tmp_path / "s.jsonl"
    stream.write_text("")
    result = runner.invoke(app, ["run", "--replay", str(stream), "--report", str(tmp_path / "no" / "r")])
    assert result.exit_code == 2 and "does not exist" in said(result)


def test_a_report_of_nothing_is_a_clear_error(tmp_path):
    empty = tmp_path / "labeled.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="no labeled events"):
        report.write_device_report(empty, tmp_path / "r", 0.5)
