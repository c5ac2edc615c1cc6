"""The training reference of a model: a histogram per feature, kept in the artifact's metadata
(data only: JSON numbers) for fleet drift monitoring (:mod:`edgewatch.flows.fleet_drift`)."""

from __future__ import annotations

import math

import numpy as np

from edgewatch.schema import Reading

REFERENCE_BINS = 10
_SMOOTHING = 1e-4  # a share of an empty bin: PSI stays finite


def reference_histograms(readings: list[Reading], bins: int = REFERENCE_BINS) -> dict[str, dict]:
    """Per feature: inner bin ``edges`` (equal widths between the readings' 0.5 % and 99.5 %
    quantiles; the outer bins are open) and the ``shares`` of the readings in each of the
    ``len(edges) + 1`` bins. Data only (JSON numbers). (Deciles were tried too: on the
    simulator neither kind kept a steady stream's windows under the threshold — its machines
    random-walk — so the test checks the reference against its own history and a shifted copy.)

    >>> from edgewatch.schema import RawMessage
    >>> raw = RawMessage(None, None, [], "t", 0, 0, None)
    >>> ref = reference_histograms([Reading("d", 0.0, {"x": float(v)}, raw) for v in range(100)], bins=4)
    >>> ref["x"]["edges"], ref["x"]["shares"]
    ([24.9975, 49.5, 74.0025], [0.25, 0.25, 0.25, 0.25])
    """
    values: dict[str, list[float]] = {}
    for reading in readings:
        for name, value in reading.features.items():
            values.setdefault(name, []).append(value)
    reference = {}
    for name, column in sorted(values.items()):
        data = np.asarray(column, np.float64)
        low, high = np.quantile(data, [0.005, 0.995])
        edges = np.unique(np.linspace(low, high, bins + 1)[1:-1].round(6))
        counts = np.bincount(np.searchsorted(edges, data, side="right"), minlength=len(edges) + 1)
        reference[name] = {"edges": edges.tolist(), "shares": (counts / len(data)).round(6).tolist()}
    return reference


def psi(reference: np.ndarray, window: np.ndarray) -> float:
    """The population stability index of ``window`` shares against ``reference`` shares."""
    p = np.maximum(np.asarray(window, np.float64), _SMOOTHING)
    q = np.maximum(np.asarray(reference, np.float64), _SMOOTHING)
    return float(np.sum((p - q) * np.log(p / q)))


def checked_reference(metadata: dict) -> dict[str, dict] | None:
    """The metadata's ``reference``, or ``None`` when absent or not well formed (an artifact is data
    from elsewhere: a bad reference turns drift monitoring off, it never stops the flow)."""
    reference = metadata.get("reference")
    if not isinstance(reference, dict):
        return None
    for ref in reference.values():
        edges, shares = (ref.get("edges"), ref.get("shares")) if isinstance(ref, dict) else (None, None)
        if not (
            isinstance(edges, list)
            and isinstance(shares, list)
            and len(shares) == len(edges) + 1
            and all(isinstance(v, int | float) and math.isfinite(v) for v in edges + shares)
            and edges == sorted(edges)
        ):
            return None
    return reference
