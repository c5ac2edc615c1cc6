"""Detectors by name: what ``--detector`` accepts.

A detector is any River anomaly detector (``learn_one`` / ``score_one`` on a dict of
features). Besides the built-in names, ``--detector package.module:factory`` plugs in
any callable that returns one, e.g. ``river.anomaly:HalfSpaceTrees``.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

from river.base import AnomalyDetector

from edgewatch import __version__
from edgewatch.online_models.compact_novelty import CompactNovelty
from edgewatch.online_models.relational_novelty import THRESHOLD, RelationalNovelty
from edgewatch.online_models.robust_zscore import RobustZScore


@dataclass(frozen=True)
class DetectorSpec:
    """How to build a detector, and the threshold its scores are labeled with."""

    name: str
    factory: Callable[[], AnomalyDetector]
    threshold: float
    version: str

    @property
    def vectorized(self) -> bool:
        """Whether the detector also runs as arrays over a whole bank (``score_learn_rows``)."""
        return hasattr(self.factory(), "score_learn_rows")

    @property
    def uses_time(self) -> bool:
        """Whether ``score_one``/``learn_one`` take the source time ``t``."""
        return "t" in inspect.signature(self.factory().score_one).parameters


def naive_half_space_trees() -> AnomalyDetector:
    """The River documentation's streaming detector: min-max scaling, then Half-Space Trees."""
    from river import anomaly, preprocessing  # imported on use: river's full import pulls in scipy (seconds)

    return preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees(n_trees=25, height=8, window_size=250, seed=42)


BUILTIN = {
    # the default: compact novelty + sensor relations + alarm state (one threshold for every dataset)
    "relational-novelty": DetectorSpec("relational-novelty", RelationalNovelty, THRESHOLD, __version__),
    # the threshold that scores best on NAB's standard profile (`edgewatch evaluate nab`)
    "compact-novelty": DetectorSpec("compact-novelty", CompactNovelty, 0.3426, __version__),
    "robust-zscore": DetectorSpec("robust-zscore", RobustZScore, 0.5, __version__),
    "half-space-trees": DetectorSpec("half-space-trees", naive_half_space_trees, 0.7, __version__),
}


#: what ``--detector`` and the evaluations use unless told otherwise
DEFAULT_DETECTOR = "relational-novelty"


def resolve_detector(name: str) -> DetectorSpec:
    """The spec for a built-in name or a ``package.module:factory`` import path."""
    if name in BUILTIN:
        return BUILTIN[name]
    module_name, _, attribute = name.partition(":")
    if not attribute:
        raise ValueError(f"unknown detector {name!r}: use one of {sorted(BUILTIN)} or package.module:factory")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import detector {name!r}: {exc}") from exc
    if not isinstance(factory(), AnomalyDetector):
        raise ValueError(f"{name!r} does not build a river AnomalyDetector")
    return DetectorSpec(
        name, factory, 0.5, getattr(importlib.import_module(module_name.split(".")[0]), "__version__", "0")
    )
