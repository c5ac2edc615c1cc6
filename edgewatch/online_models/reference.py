"""The training reference of a model: a histogram per feature, kept in the artifact's metadata
(data only: JSON numbers) for fleet drift monitoring (:mod:`edgewatch.flows.fleet_drift`)."""

from __future__ import annotations

import math

import numpy as np

from edgewatch.schema import Reading

REFERENCE_BINS = 10
_SMOOTHING = 1e-4  # a share of an empty bin: PSI stays finite
#: window sizes (readings) whose PSI on the training history itself is recorded (:func:`null_psi`)
CALIBRATION_WINDOWS = (500, 1000, 2000, 5000, 10_000, 20_000, 50_000)
MIN_CALIBRATION_CHUNKS = 4  # a size is calibrated only when the history holds this many windows of it
#: the share of the history's windows whose PSI the bound covers: the rest are its own incidents
#: (a machine failing and restarting cold), not the stationary fleet's noise
NULL_QUANTILE = 0.9


def reference_histograms(readings: list[Reading], bins: int = REFERENCE_BINS) -> dict[str, dict]:
    """Per feature: inner bin ``edges`` at the training readings' quantiles (equal shares: no bin
    of the reference is nearly empty, so PSI measures the shift, not the smoothing of a rare
    bin; a feature with few distinct values gets fewer bins), the ``shares`` of the readings in
    each of the ``len(edges) + 1`` bins, and ``window_psi``: for window sizes the history holds
    at least four times, the 90th percentile of the PSI of its consecutive windows (in
    source-time order) against the whole reference — how far a window of that size strays with
    no drift at all (machines that random-walk, daily cycles a window only sees part of). Data
    only (JSON).

    >>> from edgewatch.schema import RawMessage
    >>> raw = RawMessage(None, None, [], "t", 0, 0, None)
    >>> ref = reference_histograms([Reading("d", float(v), {"x": float(v)}, raw) for v in range(2000)], bins=4)
    >>> ref["x"]["edges"], ref["x"]["shares"], sorted(ref["x"]["window_psi"])
    ([499.75, 999.5, 1499.25], [0.25, 0.25, 0.25, 0.25], ['500'])
    """
    ordered = sorted(readings, key=lambda reading: reading.timestamp)
    values: dict[str, list[float]] = {}
    for reading in ordered:
        for name, value in reading.features.items():
            values.setdefault(name, []).append(value)
    reference = {}
    for name, column in sorted(values.items()):
        data = np.asarray(column, np.float64)
        edges = np.unique(np.quantile(data, np.linspace(0, 1, bins + 1)[1:-1]).round(6))
        index = np.searchsorted(edges, data, side="right")
        shares = np.bincount(index, minlength=len(edges) + 1) / len(data)
        reference[name] = {
            "edges": edges.tolist(),
            "shares": shares.round(6).tolist(),
            "window_psi": null_psi(index, len(edges) + 1, shares),
        }
    return reference


def null_psi(index: np.ndarray, bins: int, shares: np.ndarray) -> dict[str, float]:
    """Per window size, the :data:`NULL_QUANTILE` of the PSI of the history's own consecutive
    windows (bin ``index`` of each reading, in time order) against its ``shares``."""
    found = {}
    for size in CALIBRATION_WINDOWS:
        chunks = len(index) // size
        if chunks < MIN_CALIBRATION_CHUNKS:
            break
        counts = [np.bincount(index[i * size : (i + 1) * size], minlength=bins) / size for i in range(chunks)]
        found[str(size)] = round(float(np.quantile([psi(shares, window) for window in counts], NULL_QUANTILE)), 6)
    return found


def null_bound(reference: dict, readings: int) -> float:
    """How much PSI a window of ``readings`` showed on the training history (0: not calibrated):
    the figure of the largest calibrated size not above it (a smaller window strays more, so the
    bound errs towards silence)."""
    calibrated = reference.get("window_psi") or {}
    sizes = sorted(int(size) for size in calibrated)
    fitting = [size for size in sizes if size <= readings] or sizes[:1]
    return float(calibrated[str(fitting[-1])]) if fitting else 0.0


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
            and _calibration_ok(ref.get("window_psi", {}))
        ):
            return None
    return reference


def _calibration_ok(calibrated: object) -> bool:
    return isinstance(calibrated, dict) and all(
        isinstance(size, str) and size.isdigit() and isinstance(v, int | float) and math.isfinite(v) and v >= 0
        for size, v in calibrated.items()
    )
