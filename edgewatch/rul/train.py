"""Batch training of the fleet RUL model from run-to-failure histories (needs the ``train`` extra).

``train_rul(readings)`` takes readings in time order, one run to failure per device (the last
reading of a device is its failure), and returns a :class:`~edgewatch.rul.model.RulModel`:

1. operating regimes (k-means on the settings), per-regime sensor normalization, the
   informative sensors (those whose normalized value follows the capped RUL) and the
   health-index weights (ridge regression of the capped RUL on them);
2. every run replayed through the online feature kernel, one feature row per reading;
3. LightGBM: P50 on the capped RUL (squared error), P10 and P90 quantile models on the true RUL;
4. band margins from ``folds``-fold cross-validation *by engine* (conformalized quantile
   regression): the amount by which held-out engines fall outside the raw band.

LightGBM is imported here only; serving needs the exported arrays, numpy and numba.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np

from edgewatch import __version__
from edgewatch.rul.features import FeatureSpec, find_regimes
from edgewatch.rul.model import RulModel
from edgewatch.rul.trees import Forest
from edgewatch.schema import CMAPSS_FEATURES, Reading

#: a sensor is used when |corr(normalized value, capped RUL)| reaches this
MIN_CORRELATION = 0.2


@dataclass
class Run:
    """One device's readings as rows (columns: 3 settings, then sensors) from start to end.

    ``failed``: the run ended in a failure (its last row is the failure), so every row's
    RUL is known; a run cut short by maintenance is not labeled data."""

    device_id: str
    rows: np.ndarray
    failed: bool = True

    @property
    def rul(self) -> np.ndarray:
        """The true RUL at each row: cycles left until the failure."""
        return np.arange(len(self.rows) - 1, -1, -1, dtype=np.float64)


@dataclass
class TrainConfig:
    """Model-family choices (picked by cross-validation on training engines, see the README)."""

    cap: float = 125.0
    trees: int = 200
    learning_rate: float = 0.06
    leaves: int = 15
    max_depth: int = 6  # bounds the serving kernel's fixed-length tree walks
    min_leaf: int = 40
    feature_fraction: float = 0.8
    bagging_fraction: float = 0.8
    bins: int = 63
    point_objective: str = "l2"  # "l2" or "quantile" (median)
    folds: int = 5  # for the band margins; 0: no margins
    coverage: float = 0.8  # nominal band coverage the margins aim for
    seed: int = 0
    threads: int = 1  # small data: one thread is as fast and does not spin against other work
    spec: dict = field(default_factory=dict)  # FeatureSpec smoothing overrides (alpha_fast, ...)


def runs_from_readings(readings: Iterable[Reading], columns: Sequence[str] = CMAPSS_FEATURES) -> list[Run]:
    """Group readings by device, in arrival order: one run to failure per device."""
    by_device: dict[str, list[list[float]]] = defaultdict(list)
    for reading in readings:
        try:
            by_device[reading.device_id].append([reading.features[name] for name in columns])
        except KeyError as exc:
            raise ValueError(f"{reading.device_id}: reading lacks feature {exc.args[0]!r}") from None
    return [Run(device, np.array(rows, dtype=np.float64)) for device, rows in by_device.items()]


def fit_spec(runs: Sequence[Run], cap: float, names: Sequence[str] = CMAPSS_FEATURES, **smoothing) -> FeatureSpec:
    """Regimes, normalization, informative sensors and health-index weights of a fleet."""
    rows = np.concatenate([run.rows for run in runs])
    target = np.minimum(np.concatenate([run.rul for run in runs]), cap)
    centroids, scale = find_regimes(rows[:, :3])
    probe = FeatureSpec(np.arange(rows.shape[1] - 3), centroids, scale, np.zeros((1, 1)), np.ones((1, 1)), np.ones(1))
    regimes = probe.regimes(rows)
    sensors = rows[:, 3:]
    means = np.stack([sensors[regimes == k].mean(axis=0) for k in range(len(centroids))])
    stds = np.stack([sensors[regimes == k].std(axis=0) for k in range(len(centroids))])
    varies = np.all(stds > 1e-6 * np.maximum(np.abs(means), 1.0), axis=0)
    z = (sensors - means[regimes]) / np.where(stds > 0, stds, 1.0)[regimes]
    correlation = np.array(
        [abs(np.corrcoef(z[:, j], target)[0, 1]) if varies[j] else 0.0 for j in range(sensors.shape[1])]
    )
    columns = np.flatnonzero(correlation >= MIN_CORRELATION).astype(np.int64)
    if columns.size == 0:
        raise ValueError("no sensor follows the run-to-failure target: cannot learn RUL from these runs")
    chosen = z[:, columns]
    design = np.column_stack([chosen, np.ones(len(chosen))])
    ridge = 1.0 * len(chosen) * np.eye(design.shape[1])
    ridge[-1, -1] = 0.0
    coefficients = np.linalg.solve(design.T @ design + ridge, design.T @ target)
    return FeatureSpec(
        sensor_columns=columns,
        centroids=centroids,
        settings_scale=scale,
        means=means[:, columns],
        stds=stds[:, columns],
        hi_weights=coefficients[:-1],
        hi_bias=float(coefficients[-1]),
        sensor_names=tuple(names[3 + c] for c in columns),
        **smoothing,
    )


def replay_features(spec: FeatureSpec, runs: Sequence[Run]) -> np.ndarray:
    """Feature rows of every reading of every run, exactly as the online state computes them."""
    return np.concatenate(
        [spec.update(spec.new_state(1), np.zeros(len(run.rows), dtype=np.int64), run.rows) for run in runs]
    )


def _lightgbm_forest(features: np.ndarray, target: np.ndarray, objective: dict, config: TrainConfig) -> Forest:
    import lightgbm  # the train extra

    params = {
        **objective,
        "learning_rate": config.learning_rate,
        "num_leaves": config.leaves,
        "max_depth": config.max_depth,
        "min_data_in_leaf": config.min_leaf,
        "feature_fraction": config.feature_fraction,
        "bagging_fraction": config.bagging_fraction,
        "bagging_freq": 1,
        "max_bin": config.bins,
        "seed": config.seed,
        "num_threads": config.threads,
        "deterministic": True,
        "verbosity": -1,
    }
    booster = lightgbm.train(params, lightgbm.Dataset(features, target), num_boost_round=config.trees)
    return Forest.from_lightgbm_dump(booster.dump_model())


def fit_forests(features: np.ndarray, rul: np.ndarray, config: TrainConfig) -> dict[str, Forest]:
    """P50 on the capped RUL, P10 and P90 on the true RUL."""
    point = {"objective": "regression"} if config.point_objective == "l2" else {"objective": "quantile", "alpha": 0.5}
    low = (1.0 - config.coverage) / 2
    return {
        "p10": _lightgbm_forest(features, rul, {"objective": "quantile", "alpha": low}, config),
        "p50": _lightgbm_forest(features, np.minimum(rul, config.cap), point, config),
        "p90": _lightgbm_forest(features, rul, {"objective": "quantile", "alpha": 1.0 - low}, config),
    }


def engine_folds(n_runs: int, folds: int, seed: int) -> np.ndarray:
    """The fold of each run (engines, not rows, are held out)."""
    order = np.random.default_rng(seed).permutation(n_runs)
    fold = np.empty(n_runs, dtype=np.int64)
    fold[order] = np.arange(n_runs) % folds
    return fold


def out_of_fold(runs: Sequence[Run], config: TrainConfig) -> list[np.ndarray]:
    """Raw P10/P50/P90 forest outputs for every run's rows from models that never saw that run.

    The folds are independent: they train side by side, one per CPU core (LightGBM and the
    feature kernel release the GIL; each fold's forests are seeded, so the outputs are the same
    as one after another)."""
    fold = engine_folds(len(runs), config.folds, config.seed)
    predictions: list[np.ndarray] = [np.empty(0)] * len(runs)

    def held_out(k: int) -> None:
        train = [run for run, f in zip(runs, fold, strict=True) if f != k]
        model = _fit(train, config, margins=(0.0, 0.0))
        for index in np.flatnonzero(fold == k):
            predictions[index] = model.raw(replay_features(model.spec, [runs[index]]))

    with ThreadPoolExecutor(max_workers=max(1, min(config.folds, os.cpu_count() or 1))) as pool:
        list(pool.map(held_out, range(config.folds)))  # list(): a fold's error is raised here
    return predictions


def band_margins(runs: Sequence[Run], predictions: Sequence[np.ndarray], coverage: float) -> tuple[float, float]:
    """CQR margins: the ``coverage`` quantile of how far held-out truths fall below P10 / above P90.

    Each engine weighs the same (its rows share one weight), as engines do in the test score."""
    low_miss, high_miss, weights = [], [], []
    for run, predicted in zip(runs, predictions, strict=True):
        low_miss.append(predicted[:, 0] - run.rul)
        high_miss.append(run.rul - predicted[:, 2])
        weights.append(np.full(len(run.rul), 1.0 / len(run.rul)))
    w = np.concatenate(weights)
    level = 1.0 - (1.0 - coverage) / 2
    return _weighted_quantile(np.concatenate(low_miss), w, level), _weighted_quantile(
        np.concatenate(high_miss), w, level
    )


def _weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order]) / weights.sum()
    return float(values[order][min(np.searchsorted(cumulative, q), len(values) - 1)])


def _fit(runs: Sequence[Run], config: TrainConfig, margins: tuple[float, float]) -> RulModel:
    labeled = [run for run in runs if run.failed]
    if len(labeled) < 2:
        raise ValueError(f"need at least 2 runs to failure, got {len(labeled)}")
    spec = fit_spec(labeled, config.cap, **config.spec)
    features = replay_features(spec, labeled)
    rul = np.concatenate([run.rul for run in labeled])
    forests = fit_forests(features, rul, config)
    return RulModel(spec, forests, config.cap, margins[0], margins[1], CMAPSS_FEATURES)


def train_runs(runs: Sequence[Run], config: TrainConfig | None = None, source: str = "") -> RulModel:
    """The fleet model of these runs to failure, its band calibrated by cross-validation."""
    config = config or TrainConfig()
    labeled = [run for run in runs if run.failed]
    if config.folds >= 2 and len(labeled) >= config.folds:
        # the model itself does not depend on the margins: it trains beside the folds
        with ThreadPoolExecutor(max_workers=1) as beside:
            trained = beside.submit(_fit, labeled, config, (0.0, 0.0))
            margins = band_margins(labeled, out_of_fold(labeled, config), config.coverage)
            model = trained.result()
        model.lower_margin, model.upper_margin = margins
    else:
        model = _fit(labeled, config, (0.0, 0.0))
    model.metadata = {
        "edgewatch_version": __version__,
        "family": "lightgbm-quantile-forests",
        "config": asdict(config),
        "training": {
            "source": source,
            "runs": len(labeled),
            "rows": int(sum(len(run.rows) for run in labeled)),
            "regimes": len(model.spec.centroids),
            "sensors": list(model.spec.sensor_names),
        },
    }
    return model


def train_rul(
    run_to_failure_readings: Iterable[Reading], config: TrainConfig | None = None, source: str = ""
) -> RulModel:
    """The fleet RUL model of readings that run each device to failure (its last reading)."""
    return train_runs(runs_from_readings(run_to_failure_readings), config, source)
