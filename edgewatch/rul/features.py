"""Per-engine online features for remaining-useful-life models.

A reading is first normalized for its operating condition: the operational settings put it
in a *regime* (nearest centroid of the regimes found in training; C-MAPSS FD002/FD004 fly
six, FD001 one), and each informative sensor becomes a z-score against that regime's mean
and spread. A *health index* (HI) — the linear combination of the z-scores that best tracks
the capped RUL in training — joins the sensors as one more channel.

Each channel then keeps, per engine, in a few floats of state:

* a fast and a slow EWMA (noise filtered at two speeds),
* the slope of an exponentially weighted least-squares line through its history
  (how fast it degrades now),
* the slow EWMA minus the engine's own baseline (the mean of its first ``baseline_n``
  readings): engines start with different wear, the change since the start is what counts,

plus the run's age in cycles. The whole update is one numba kernel over a batch of readings
(:func:`update_batch`), so training replays histories through exactly the code that serves.

>>> import numpy as np
>>> spec = FeatureSpec.identity(n_sensors=2)
>>> state = spec.new_state(1)
>>> rows = np.array([[0.0, 0.0, 0.0, 1.0, 2.0], [0.0, 0.0, 0.0, 2.0, 2.0]])
>>> features = spec.update(state, np.zeros(2, dtype=np.int64), rows)
>>> features.shape == (2, spec.n_features)
True
>>> float(features[1, 0])  # the age in cycles
2.0
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

N_SETTINGS = 3
#: features per channel: fast EWMA, slow EWMA, EW slope, slow EWMA - baseline
PER_CHANNEL = ("ewma_fast", "ewma_slow", "slope", "delta")


@dataclass
class FeatureSpec:
    """How readings become feature vectors: regimes, sensor normalization, HI weights, smoothing."""

    sensor_columns: np.ndarray  # int64[S]: which sensor columns of a reading row are used
    centroids: np.ndarray  # float64[K, 3]: regime centroids, in scaled settings
    settings_scale: np.ndarray  # float64[3]: settings are divided by this before matching a regime
    means: np.ndarray  # float64[K, S]
    stds: np.ndarray  # float64[K, S]
    hi_weights: np.ndarray  # float64[S]
    hi_bias: float = 0.0
    alpha_fast: float = 0.3
    alpha_slow: float = 0.1
    slope_decay: float = 0.95  # per-cycle forgetting of the slope's least-squares sums
    baseline_n: int = 15
    sensor_names: tuple[str, ...] = ()

    @classmethod
    def identity(cls, n_sensors: int) -> FeatureSpec:
        """No normalization, one regime, HI = mean of the sensors (tests and examples)."""
        return cls(
            sensor_columns=np.arange(n_sensors, dtype=np.int64),
            centroids=np.zeros((1, N_SETTINGS)),
            settings_scale=np.ones(N_SETTINGS),
            means=np.zeros((1, n_sensors)),
            stds=np.ones((1, n_sensors)),
            hi_weights=np.full(n_sensors, 1.0 / n_sensors),
            sensor_names=tuple(f"s{i}" for i in range(n_sensors)),
        )

    @property
    def n_channels(self) -> int:
        return len(self.sensor_columns) + 1

    @property
    def n_features(self) -> int:
        return 1 + len(PER_CHANNEL) * self.n_channels

    @property
    def state_width(self) -> int:
        return _state_width(self.n_channels)

    def feature_names(self) -> list[str]:
        channels = [*self.sensor_names, "HI"] if self.sensor_names else [f"c{i}" for i in range(self.n_channels)]
        return ["cycle"] + [f"{c}.{kind}" for c in channels for kind in PER_CHANNEL]

    def new_state(self, n_engines: int) -> np.ndarray:
        """Zeroed state for ``n_engines`` engines (one row each; a zero row is a fresh run)."""
        return np.zeros((n_engines, self.state_width))

    def update(self, state: np.ndarray, slots: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Advance the engines ``slots`` (row index into ``state``, in reading order) by their
        readings ``rows`` (``[settings(3), sensors...]``); the feature vector after each reading."""
        return update_batch(
            slots,
            rows,
            self.sensor_columns,
            self.centroids,
            self.settings_scale,
            self.means,
            self.stds,
            self.hi_weights,
            float(self.hi_bias),
            state,
            float(self.alpha_fast),
            float(self.alpha_slow),
            float(self.slope_decay),
            int(self.baseline_n),
        )

    def check(self) -> None:
        """Refuse arrays whose shapes disagree (the kernel indexes them without bounds checks)."""
        regimes, sensors = len(self.centroids), len(self.sensor_columns)
        if self.centroids.shape != (regimes, N_SETTINGS) or self.settings_scale.shape != (N_SETTINGS,):
            raise ValueError("regime centroids must be [regimes, 3] and the settings scale [3]")
        if self.means.shape != (regimes, sensors) or self.stds.shape != (regimes, sensors):
            raise ValueError(f"sensor means and spreads must be [{regimes}, {sensors}]")
        if self.hi_weights.shape != (sensors,) or sensors == 0 or self.sensor_columns.min() < 0:
            raise ValueError("health-index weights must match the sensors, and sensor columns be >= 0")
        if not (np.all(self.stds > 0) and np.all(self.settings_scale > 0)):
            raise ValueError("sensor spreads and the settings scale must be positive")

    def regimes(self, rows: np.ndarray) -> np.ndarray:
        """The regime (index of the nearest centroid) of each reading row."""
        scaled = rows[:, :N_SETTINGS] / self.settings_scale
        return np.argmin(((scaled[:, None, :] - self.centroids[None, :, :]) ** 2).sum(axis=2), axis=1)

    def arrays(self) -> dict[str, np.ndarray]:
        """The spec as named arrays (for a data-only artifact)."""
        return {
            "sensor_columns": self.sensor_columns,
            "centroids": self.centroids,
            "settings_scale": self.settings_scale,
            "means": self.means,
            "stds": self.stds,
            "hi_weights": self.hi_weights,
        }

    def parameters(self) -> dict:
        """The spec's scalars and names (for the artifact's JSON)."""
        return {
            "hi_bias": float(self.hi_bias),
            "alpha_fast": self.alpha_fast,
            "alpha_slow": self.alpha_slow,
            "slope_decay": self.slope_decay,
            "baseline_n": self.baseline_n,
            "sensor_names": list(self.sensor_names),
        }

    @classmethod
    def from_parts(cls, arrays: dict[str, np.ndarray], parameters: dict) -> FeatureSpec:
        return cls(
            sensor_columns=np.asarray(arrays["sensor_columns"], dtype=np.int64),
            centroids=np.asarray(arrays["centroids"], dtype=np.float64),
            settings_scale=np.asarray(arrays["settings_scale"], dtype=np.float64),
            means=np.asarray(arrays["means"], dtype=np.float64),
            stds=np.asarray(arrays["stds"], dtype=np.float64),
            hi_weights=np.asarray(arrays["hi_weights"], dtype=np.float64),
            hi_bias=float(parameters["hi_bias"]),
            alpha_fast=float(parameters["alpha_fast"]),
            alpha_slow=float(parameters["alpha_slow"]),
            slope_decay=float(parameters["slope_decay"]),
            baseline_n=int(parameters["baseline_n"]),
            sensor_names=tuple(parameters.get("sensor_names", ())),
        )


def find_regimes(settings: np.ndarray, max_regimes: int = 8, tolerance: float = 1e-3, seed: int = 0, restarts: int = 3):
    """Operating regimes of a fleet: ``(centroids, scale)`` of the fewest k-means clusters of the
    settings whose within-cluster spread is below ``tolerance`` of the total (1 when none is).

    Flight conditions are discrete set points plus sensor noise: a real split leaves almost
    no spread inside the clusters, splitting noise leaves most of it."""
    scale = np.maximum(np.abs(settings).max(axis=0), 1e-12)
    rng = np.random.default_rng(seed)
    if len(settings) > 1000:  # set points show in any thousand readings
        settings = settings[rng.choice(len(settings), 1000, replace=False)]
    scaled = settings / scale
    total = ((scaled - scaled.mean(axis=0)) ** 2).sum()
    for k in range(2, max_regimes + 1):
        within, centroids = min(
            (_within(scaled, c), i, c) for i, c in enumerate(_kmeans(scaled, k, rng) for _ in range(restarts))
        )[::2]
        if total > 0 and within / total < tolerance:
            return centroids, scale
    return scaled.mean(axis=0, keepdims=True), scale


def _within(points: np.ndarray, centroids: np.ndarray) -> float:
    return float((((points[:, None, :] - centroids[None]) ** 2).sum(axis=2)).min(axis=1).sum())


def _kmeans(points: np.ndarray, k: int, rng: np.random.Generator, iterations: int = 30) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding (small: 3 settings, a few regimes)."""
    centroids = [points[rng.integers(len(points))]]
    for _ in range(1, k):
        distance = np.min([((points - c) ** 2).sum(axis=1) for c in centroids], axis=0)
        centroids.append(points[rng.choice(len(points), p=distance / distance.sum())])
    centroids = np.array(centroids)
    for _ in range(iterations):
        labels = np.argmin(((points[:, None, :] - centroids[None]) ** 2).sum(axis=2), axis=1)
        moved = np.array([points[labels == j].mean(axis=0) if (labels == j).any() else centroids[j] for j in range(k)])
        if np.allclose(moved, centroids):
            break
        centroids = moved
    return centroids


def _state_width(n_channels: int) -> int:
    # cycle, Sw, St, Stt, then per channel: fast, slow, baseline sum, Sz, Stz
    return 4 + 5 * n_channels


@numba.njit(cache=True, nogil=True)
def update_batch(
    slots, rows, sensor_columns, centroids, settings_scale, means, stds, hi_weights, hi_bias, state, alpha_fast,
    alpha_slow, slope_decay, baseline_n
):  # fmt: skip
    n = rows.shape[0]
    n_sensors = sensor_columns.shape[0]
    n_channels = n_sensors + 1
    out = np.empty((n, 1 + 4 * n_channels))
    z = np.empty(n_channels)
    for i in range(n):
        s = state[slots[i]]
        # regime: nearest centroid of the scaled settings
        best, regime = np.inf, 0
        for k in range(centroids.shape[0]):
            d = 0.0
            for j in range(centroids.shape[1]):
                diff = rows[i, j] / settings_scale[j] - centroids[k, j]
                d += diff * diff
            if d < best:
                best, regime = d, k
        hi = hi_bias
        for c in range(n_sensors):
            z[c] = (rows[i, 3 + sensor_columns[c]] - means[regime, c]) / stds[regime, c]
            hi += hi_weights[c] * z[c]
        z[n_sensors] = hi
        s[0] += 1.0
        t = s[0]
        first = t == 1.0
        # exponentially weighted least squares of value on cycle: decayed sums
        s[1] = slope_decay * s[1] + 1.0
        s[2] = slope_decay * s[2] + t
        s[3] = slope_decay * s[3] + t * t
        denominator = s[1] * s[3] - s[2] * s[2]
        out[i, 0] = t
        for c in range(n_channels):
            base = 4 + 5 * c
            if first:
                s[base] = z[c]
                s[base + 1] = z[c]
            else:
                s[base] += alpha_fast * (z[c] - s[base])
                s[base + 1] += alpha_slow * (z[c] - s[base + 1])
            if t <= baseline_n:
                s[base + 2] += z[c]
            s[base + 3] = slope_decay * s[base + 3] + z[c]
            s[base + 4] = slope_decay * s[base + 4] + t * z[c]
            slope = 0.0
            if denominator > 1e-9:
                slope = (s[1] * s[base + 4] - s[2] * s[base + 3]) / denominator
            baseline = s[base + 2] / min(t, baseline_n)
            column = 1 + 4 * c
            out[i, column] = s[base]
            out[i, column + 1] = s[base + 1]
            out[i, column + 2] = slope
            out[i, column + 3] = s[base + 1] - baseline
    return out
