"""`make demo` and `edgewatch bench`, shortened: they must keep working end to end."""

import re

from bench.rul_bench import main as rul_bench_main
from bench.throughput import _child as bench_child
from bench.throughput import main as bench_main
from edgewatch.rul import artifact
from edgewatch.rul.train import train_runs
from tests.support.processes import EdgewatchProcess
from tests.support.rul import SMALL, synthetic_fleet, write_cmapss

DEMO_LINE = re.compile(
    r"^demo: events=(\d+) labeled=(\d+) deadletter=(\d+) faults=(\d+) detected=(\d+) "
    r"precision=([01]\.\d{3}) recall=([01]\.\d{3}) changes=(\d+) alarmed_after_change=(\d+)$"
)


def test_demo_runs_and_accounts_for_every_event(tmp_path):
    # the same 14,400 simulated readings in half the time (the fleet's ticks, not the rate, make the readings)
    demo = EdgewatchProcess(["demo", "--seconds", "6", "--devices", "60", "--rate", "2400"], tmp_path / "demo.log")
    assert demo.run(timeout=120) == 0, demo.tail(2000)
    match = DEMO_LINE.match(demo.output().strip().splitlines()[-1])
    assert match, demo.tail()
    events, labeled, dead, faults, detected = map(int, match.groups()[:5])
    precision, recall = map(float, match.groups()[5:7])
    changes, _alarmed_after_change = map(int, match.groups()[7:])
    assert events == 14400 and labeled + dead == events
    assert faults > 20 and detected <= faults and changes > 0
    # precision per alarm episode, warm-started on the fleet's history (the full demo measures 0.975 / 0.975;
    # 240 ticks here are few episodes): a guard against a collapse, not the target
    assert recall >= 0.8 and precision >= 0.8
    assert "fault-free history" in demo.output()  # the models were fitted on it before the stream


def test_bench_prints_its_summary_line(kafka_bootstrap, capsys):
    # the line and the rates depend on neither the count nor the fleet, and the naive River flow's cost
    # is per device (Bytewax's stateful_map deep-copies each device's 25 Half-Space Trees at every
    # epoch's snapshot): 2 devices, 100 messages (5 and 300 made it most of the test's time)
    rates = bench_main(messages=100, devices=2, bootstrap=kafka_bootstrap, quick=True)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"bench: null=\d+ naive=\d+ edgewatch=\d+ ratio_vs_naive=[\d.]+ ratio_vs_null=[\d.]+", last)
    assert all(rate > 0 for rate in rates.values())


def test_bench_in_process_runs_the_flow_without_a_broker():
    # its own process, as `bench/throughput.py --in-process` runs it (the flow tunes the GC, sets metrics)
    figures = bench_child("in-process", "--messages", "600", "--devices", "6")
    assert figures["messages"] == 600 and figures["events_per_cpu_s"] > 0
    assert figures["produced"] >= 600  # every message labeled (and any alarm or drift event) reached a sink


def test_rul_bench_runs_the_rul_flow_to_its_summary_line(kafka_bootstrap, tmp_path, capsys):
    # a small synthetic fleet and model: no data set needed, a few seconds
    model = artifact.save(train_runs(synthetic_fleet(6, seed=3), SMALL), tmp_path / "model")
    telemetry = write_cmapss(synthetic_fleet(4, seed=4), tmp_path / "test_SYN.txt")
    figures = rul_bench_main(2000, kafka_bootstrap, quick=True, model=tmp_path / "model", input_file=telemetry)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(
        r"rul_bench: flow_readings_per_s=\d+ flow_readings_per_cpu_s=\d+ null_readings_per_s=\d+ "
        r"null_readings_per_cpu_s=\d+ ratio_vs_null=[\d.]+ readings=2000 devices=\d+ alerts=\d+",
        last,
    )
    assert model.version and figures["readings"] == 2000 and figures["flow_readings_per_s"] > 0
