"""bench/ablation.py: each variant switches one part off, and the harness scores through the CLI's evaluations."""

import functools
import math

import numpy as np
import pytest

from bench import ablation
from edgewatch.config import data_dir
from edgewatch.evaluation import nab, nab_replay, skab
from edgewatch.online_models.bank import ModelBank
from edgewatch.online_models.compact_novelty import CompactNovelty
from edgewatch.online_models.registry import BUILTIN, DEFAULT_DETECTOR, DetectorSpec
from edgewatch.online_models.vector_bank import VectorBank
from edgewatch.schema import RawMessage, Reading, SourceRef

# the three smallest NAB files of three groups: seconds, not minutes
NAB_KEYS = ("realAdExchange/exchange-3_cpc_results.csv", "realKnownCause/rogue_agent_key_hold.csv",
            "realTraffic/speed_7578.csv")  # fmt: skip


@pytest.fixture(scope="module")
def root():
    root = data_dir()
    needed = [root / "nab" / "data" / key for key in NAB_KEYS] + [root / "skab" / "valve1"]
    missing = [str(path) for path in needed if not path.exists()]
    if missing:
        pytest.skip(f"NAB/SKAB data not found under {root} ({len(missing)} paths missing; set EDGEWATCH_DATA_DIR)")
    return root


def test_each_variant_changes_the_default_detector_and_only_by_parameters():
    default = BUILTIN[DEFAULT_DETECTOR]
    assert ablation.BY_NAME["default"].spec() is default
    params = default.factory()._get_params()
    # the switches' defaults keep the detector as it is
    assert ablation.build_detector(DEFAULT_DETECTOR, {}, {})._get_params() == params
    for variant in ablation.VARIANTS[1:]:
        built = variant.spec().factory()
        assert built._get_params() != params or not variant.warm, f"{variant.name} changes nothing"


def test_harness_scores_a_tiny_subset_as_the_cli_does(root, tmp_path):
    setup = ablation.Setup(root, nab_keys=NAB_KEYS, skab_files=2, devices=3, ticks=700, seeds=(0,))
    variants = [ablation.BY_NAME["default"], ablation.BY_NAME["no-protected-learning"]]
    results = ablation.run(variants, setup, jobs=1)

    corpus = nab_replay.load(root / "nab")
    corpus = nab.NabCorpus({k: corpus.files[k] for k in NAB_KEYS}, corpus.profiles, corpus.root)
    direct = nab_replay.evaluate(corpus, BUILTIN[DEFAULT_DETECTOR]).results
    default = results["default"]
    assert default["nab"]["std:all"] == pytest.approx(direct["standard"].normalized_score)
    assert default["nab"]["lowFP:all"] == pytest.approx(direct["reward_low_FP_rate"].normalized_score)
    # the halves are scored on their own: files 0 and 2, then file 1
    odd = nab.evaluate(corpus, {NAB_KEYS[1]: nab_replay.replay(corpus, BUILTIN[DEFAULT_DETECTOR])[NAB_KEYS[1]]})
    assert default["nab"]["std:odd"] == pytest.approx(odd["standard"].normalized_score)

    files = skab.load(root / "skab")[:2]
    f1, far, mar = skab.evaluate(files, BUILTIN[DEFAULT_DETECTOR]).outliers
    assert (default["skab"]["f1:all"], default["skab"]["far:all"], default["skab"]["mar:all"]) == (f1, far, mar)
    assert set(default) == {"nab", "skab", "sim:0:cold", "sim:0:warm"}
    assert 0.0 <= default["sim:0:warm"]["precision"] <= 1.0 and 0.0 <= default["sim:0:warm"]["recall"] <= 1.0
    # learning every reading changes the verdicts: the switch reaches the kernel
    assert results["no-protected-learning"]["skab"] != default["skab"]

    text = ablation.markdown(ablation.tables(results, variants, setup), ["# test"])
    assert "| default |" in text and "| no-protected-learning |" in text and "SKAB valve1" in text


def test_command_line_writes_the_markdown_tables(root, tmp_path):
    out = tmp_path / "ablation.md"
    ablation.main(["--variants", "default,cold-start", "--bench", "skab", "--files", "2", "--jobs", "1",
                   "--out", str(out), "--data-dir", str(root)])  # fmt: skip
    text = out.read_text()
    assert "python bench/ablation.py" in text and "| cold-start |" in text and "warm=False" in text


def test_profile_switch_turns_the_channel_off_in_objects_and_kernel_alike():
    raw = RawMessage(b"", b"", [], *SourceRef("t", 0, 0))
    rng = np.random.default_rng(1)
    # a daily cycle every 30 minutes for three weeks, a level the profile alone finds odd in the last days
    stream = [
        Reading(f"d{i % 2}", 1800.0 * (i // 2), {"a": math.sin(2 * math.pi * (i // 2) / 48) + 0.05 * rng.normal()},
                raw)
        for i in range(2 * 48 * 21)
    ]  # fmt: skip
    for reading in stream[-2 * 48 * 2 :]:
        reading.features["a"] = -reading.features["a"]
    scores = {}
    for profile in (True, False):
        spec = DetectorSpec("compact-novelty", functools.partial(CompactNovelty, profile=profile), 0.3426, "test")
        objects = [e.score for e in ModelBank(spec).label(stream).events]
        arrays = [e.score for e in VectorBank(spec).label(stream).events]
        np.testing.assert_allclose(arrays, objects, rtol=0, atol=1e-9)
        scores[profile] = np.array(arrays)
    assert not np.array_equal(scores[True], scores[False])


def test_set_option_gives_the_detector_or_a_one_line_usage_error(capsys):
    """The benchmarks' ``--set NAME=VALUE``: a parameter of the default detector with a JSON value, else
    argparse's usage error naming what is wrong (no traceback)."""
    import argparse

    parser = argparse.ArgumentParser(prog="bench")
    ablation.add_set_option(parser)
    for bad, reason in (("hold_alarm", "is not name=value"), ("no_such=1", "is not a parameter"),
                        ("hold_alarm=flase", "is not JSON")):  # fmt: skip
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args(["--set", bad])
        assert exit_.value.code == 2
        assert reason in capsys.readouterr().err.splitlines()[-1]
    args = parser.parse_args(["--set", "hold_alarm=false", "--set", "clear_after=7"])
    model = ablation.spec_from_sets(parser, args.set).factory()
    assert model.hold_alarm is False and model.clear_after == 7
    assert ablation.spec_from_sets(parser, []) is BUILTIN[DEFAULT_DETECTOR]
