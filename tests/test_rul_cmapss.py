"""RUL on NASA C-MAPSS FD001: the trained model's benchmark figures, through the CLI, and the
fleet model learning from engines streamed to failure. Skipped without the data."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgewatch.cli import app
from edgewatch.config import data_dir
from edgewatch.evaluation.cmapss import learn_from_failures
from edgewatch.rul import artifact
from edgewatch.rul.train import TrainConfig
from tests.support.cli import said

pytest.importorskip("lightgbm", reason="training needs the train extra (lightgbm)")

LINE = re.compile(
    r"cmapss: rmse=(?P<rmse>[\d.]+) score=(?P<score>[\d.]+) rmse_all_cycles=(?P<all>[\d.]+) "
    r"coverage=(?P<coverage>[\d.]+) engines=(?P<engines>\d+)"
)


@pytest.fixture(scope="module")
def cmapss_root() -> Path:
    root = data_dir() / "cmapss"
    if not all((root / name).exists() for name in ("train_FD001.txt", "test_FD001.txt", "RUL_FD001.txt")):
        pytest.skip(f"CMAPSS FD001 not found in {root} (set EDGEWATCH_DATA_DIR or run `edgewatch data fetch cmapss`)")
    return root


@pytest.fixture(scope="module")
def trained_dir(cmapss_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rul") / "model"
    result = CliRunner().invoke(
        app, ["train", "--task", "rul", "--input", str(cmapss_root / "train_FD001.txt"), "--out", str(out)]
    )
    assert result.exit_code == 0, said(result)
    assert "train: task=rul version=rul-" in result.output and "runs=100 rows=20631" in result.output
    return out


def test_trained_model_meets_the_fd001_targets_through_the_cli(cmapss_root, trained_dir, tmp_path):
    result = CliRunner().invoke(
        app,
        ["evaluate", "cmapss", "--model", str(trained_dir), "--data-dir", str(cmapss_root), "--report", str(tmp_path)],
    )
    assert result.exit_code == 0, said(result)
    figures = LINE.fullmatch(result.stdout.strip().splitlines()[-1])
    assert figures, result.stdout
    assert int(figures["engines"]) == 100
    assert float(figures["rmse"]) <= 12.0
    assert float(figures["score"]) <= 250.0
    assert float(figures["coverage"]) >= 0.8
    assert len(list(tmp_path.glob("engine-*.png"))) == 100
    assert artifact.load(trained_dir).metadata["training"]["sensors"]  # a loadable, data-only artifact


def test_cli_refuses_bad_inputs_in_one_line(cmapss_root, tmp_path):
    missing = CliRunner().invoke(app, ["evaluate", "cmapss", "--data-dir", str(tmp_path)])
    assert missing.exit_code != 0 and "try `edgewatch data fetch cmapss`" in said(missing)
    not_a_model = CliRunner().invoke(
        app, ["evaluate", "cmapss", "--model", str(tmp_path), "--data-dir", str(cmapss_root)]
    )
    assert not_a_model.exit_code != 0 and "is not a model directory" in said(not_a_model)
    task = CliRunner().invoke(app, ["train", "--task", "eta", "--input", "x.txt", "--out", str(tmp_path / "m")])
    assert task.exit_code != 0 and "--task must be anomaly or rul" in said(task)


def test_streamed_failures_make_the_fleet_model_better_on_the_test_set(cmapss_root):
    """Half the training engines train the model; the other half stream to failure through the
    learning fleet (a refit every 25 failures); the test set scores better after."""
    learned = learn_from_failures(cmapss_root, config=TrainConfig(folds=0), refit_every=25)
    assert learned.failures == 50 and learned.refits == 2
    assert learned.after.rmse < learned.before.rmse, (learned.before.line(), learned.after.line())
    assert learned.after.score < learned.before.score, (learned.before.line(), learned.after.line())
