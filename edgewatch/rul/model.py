"""The fleet RUL model: features → P10 / P50 / P90 of the remaining useful life, in cycles.

Three tree ensembles (:class:`~edgewatch.rul.trees.Forest`) share one feature vector
(:mod:`edgewatch.rul.features`):

* **P50** — the point estimate, trained on the RUL capped at ``cap`` (125 cycles for C-MAPSS):
  early in a run no sensor shows wear, so the model claims "at least ``cap``" there, the
  benchmarks' convention.
* **P10, P90** — quantiles of the *true* (uncapped) RUL: the band a maintenance planner reads
  ("10 % chance of failure within P10 cycles"). Their offsets ``lower_margin`` /
  ``upper_margin`` widen them by what cross-validation on held-out engines showed they miss
  (conformalized quantile regression), so the band holds its nominal 80 % on new engines.

The reported band always contains P50 and nothing goes below 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numba
import numpy as np

from edgewatch.rul.features import FeatureSpec
from edgewatch.rul.trees import Forest, Forests

QUANTILES = ("p10", "p50", "p90")


@dataclass
class RulModel:
    """Feature spec, one forest per quantile, band margins, and the training record."""

    spec: FeatureSpec
    forests: dict[str, Forest]
    cap: float = 125.0
    lower_margin: float = 0.0
    upper_margin: float = 0.0
    columns: tuple[str, ...] = ()  # reading feature names, in row order: 3 settings, then sensors
    version: str = ""
    metadata: dict = field(default_factory=dict)
    _packed: Forests | None = field(default=None, init=False, repr=False, compare=False)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """``float64[n, 3]``: P10, P50, P90 for each feature row."""
        return banded(self.raw(features), self.lower_margin, self.upper_margin)

    def raw(self, features: np.ndarray) -> np.ndarray:
        """The three forests' outputs, before margins and ordering (one kernel call)."""
        if self._packed is None:
            self._packed = Forests.pack([self.forests[name] for name in QUANTILES])
        return self._packed.predict(features)

    def check(self) -> None:
        """Refuse a spec with inconsistent arrays and forests that read features it does not produce."""
        self.spec.check()
        for name in QUANTILES:
            used = self.forests[name].feature
            if used.size and used.max() >= self.spec.n_features:
                raise ValueError(f"forest {name} reads feature {used.max()}, the spec has {self.spec.n_features}")
        needed = 3 + int(self.spec.sensor_columns.max(initial=-1)) + 1
        if len(self.columns) < needed:
            raise ValueError(f"the spec reads {needed} reading columns, the model names {len(self.columns)}")


@numba.njit(cache=True, nogil=True)
def banded(raw, lower_margin, upper_margin):
    """P10 lowered and P90 raised by the margins; the band holds P50; nothing below 0."""
    out = np.empty_like(raw)
    for i in range(raw.shape[0]):
        p50 = max(raw[i, 1], 0.0)
        out[i, 0] = max(min(raw[i, 0] - lower_margin, p50), 0.0)
        out[i, 1] = p50
        out[i, 2] = max(raw[i, 2] + upper_margin, p50)
    return out
