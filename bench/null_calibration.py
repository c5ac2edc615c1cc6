"""How well the relations' and the profile channel's surprises are calibrated on fault-free data.

    NUMBA_DISABLE_JIT=1 python bench/null_calibration.py [--set NAME=VALUE ...]

A surprise of d decades should come about as rarely as 10^-d on readings known normal. This replays
SKAB's anomaly-free recording (trained on its first 400 rows, the rest streamed) and every valve1 file's
rows 200-400 (trained on rows 0-200; even and odd files apart) through the flow's bank, with the kernel
re-run from its source in pure Python with two probes: per reading, the relations' weighted mean square
and whether the device learned it into its calibration; per feature, the profile channel's smoothed
residual and whether it was learned. Offline, the same running moments the kernel keeps give each
calibration's surprise: for the relations, a Gaussian fitted to the cube root (the default) or to the
square root of the mean square, or the scaled chi-square matching its mean and variance
(``relation_chi_square``); for the profile channel (per feature, before the features' Bonferroni), a
Gaussian fitted to |residual| (the default, unbounded) or the scaled chi-square of the squares
(``profile_chi_square``). Prints the rate of surprises of d decades or more against 10^-d. Pure Python:
about a minute. ``--set`` changes the default detector's parameters (the path the readings take).
"""

from __future__ import annotations

import argparse
import csv
import inspect
import math
import os
import sys
from pathlib import Path

import numpy as np

if not os.environ.get("NUMBA_DISABLE_JIT"):
    sys.exit("run with NUMBA_DISABLE_JIT=1 (the kernel's probes are Python)")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edgewatch.online_models import compact_novelty_kernel as kernel  # noqa: E402
from edgewatch.online_models.compact_novelty import _Gauss  # noqa: E402

RELATIONS: list[list[float]] = []  # (row key, row, mean square or -1, ready, history, learned)
PROFILE: list[list[float]] = []  # (row key, row, feature, residual, rounding variance, history, learned)
_PROBES = (
    (
        "        if alarms and not history:\n            for f in range(features):\n                rel[r, f, FAST]",
        "        _RELATIONS.append([rel.ctypes.data, r, ss / weights if weights > 0.0 else -1.0, float(rel_ready),"
        " float(history), 0.0])\n",
        True,
    ),
    ("                _device_gauss_update(dev, r, RG_N, stat)\n", "                _RELATIONS[-1][5] = 1.0\n", False),
    (
        "                    zps[f] = zp\n",
        "                    _PROFILE.append([s.ctypes.data, r, f, resid, rounding, float(history), 0.0])\n",
        False,
    ),
    (
        "                            _gauss_update(s, r, PROFILE_N, f, learned)\n",
        "                            _profile_learned(s.ctypes.data, r, f)\n",
        False,
    ),
)


def _profile_learned(key: int, r: int, f: int) -> None:
    for row in reversed(PROFILE[-64:]):
        if row[0] == key and row[1] == r and row[2] == f:
            row[6] = 1.0
            return


def _install_probes() -> None:
    source = inspect.getsource(kernel)
    for anchor, probe, before in _PROBES:
        if source.count(anchor) != 1:
            raise SystemExit(f"the kernel changed: probe anchor not found once: {anchor.strip()[:60]!r}")
        source = source.replace(anchor, probe + anchor if before else anchor + probe)
    kernel.__dict__.update(_RELATIONS=RELATIONS, _PROFILE=PROFILE, _profile_learned=_profile_learned)
    exec(compile(source, kernel.__file__, "exec"), kernel.__dict__)


class _Moments(_Gauss):
    """Equal-weight running mean and variance (``update``: the kernel's ``_gauss_update``) and the
    surprises the calibrations read from them."""

    __slots__ = ()

    def gauss(self, x: float) -> float:
        return kernel.gaussian_surprise((x - self.mu) / math.sqrt(self.var)) if self.var > 0.0 else 0.0

    def chi_square(self, q: float, extra: float = 0.0) -> float:
        return kernel._scaled_chi_square_surprise(q, self.n, self.mu + extra, self.var, 0)


def relation_surprises(min_n: int = 50) -> dict[str, np.ndarray]:
    out: dict[str, list[float]] = {"cube root": [], "square root": [], "chi-square": []}
    moments: dict[tuple, tuple[_Moments, _Moments, _Moments]] = {}
    for key, r, q, ready, history, learned in RELATIONS:
        cube, root, square = moments.setdefault((key, r), (_Moments(), _Moments(), _Moments()))
        if ready and q >= 0.0 and not history and cube.n >= min_n:
            out["cube root"].append(cube.gauss(q ** (1.0 / 3.0)))
            out["square root"].append(root.gauss(math.sqrt(q)))
            out["chi-square"].append(square.chi_square(q))
        if learned and q >= 0.0:
            cube.update(q ** (1.0 / 3.0))
            root.update(math.sqrt(q))
            square.update(q)
    return {name: np.array(values) for name, values in out.items()}


def profile_surprises(min_n: int = 50) -> dict[str, np.ndarray]:
    out: dict[str, list[float]] = {"|residual|": [], "chi-square": []}
    moments: dict[tuple, tuple[_Moments, _Moments]] = {}
    for key, r, f, resid, rounding, history, learned in PROFILE:
        absolute, square = moments.setdefault((key, r, f), (_Moments(), _Moments()))
        if not history and absolute.n >= min_n:
            var = absolute.var + rounding
            z = (abs(resid) - absolute.mu) / math.sqrt(var) if var > 0.0 else 0.0
            out["|residual|"].append(kernel.gaussian_surprise(z))
            out["chi-square"].append(square.chi_square(resid * resid, rounding))
        if learned:
            absolute.update(abs(resid))
            square.update(resid * resid)
    return {name: np.array(values) for name, values in out.items()}


def table(title: str, surprises: dict[str, np.ndarray], decades=(1, 2, 3, 4, 5.2, 6.1)) -> str:
    lines = [f"{title} ({len(next(iter(surprises.values())))} values)"]
    lines.append("  d     10^-d     " + "  ".join(f"{name:>11s}" for name in surprises))
    for d in decades:
        rates = "  ".join(
            f"{(values >= d).mean() if len(values) else float('nan'):11.2e}" for values in surprises.values()
        )
        lines.append(f"  {d:<5} {10.0**-d:8.2e}  {rates}")
    return "\n".join(lines)


def main(argv=None) -> None:
    _install_probes()  # before anything imports the kernel's functions by name
    from bench.ablation import add_set_option, spec_from_sets
    from edgewatch.config import data_dir
    from edgewatch.evaluation import skab
    from edgewatch.online_models import artifact
    from edgewatch.online_models.bank import new_bank
    from edgewatch.schema import RawMessage, Reading

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_set_option(parser)
    args = parser.parse_args(argv)
    spec = spec_from_sets(parser, args.set)

    def readings(f, lo: int, hi: int, index: int = 0) -> list[Reading]:
        rows = zip(f.times[lo:hi].tolist(), f.values[lo:hi].tolist(), strict=True)
        return [
            Reading(
                f.name, t, dict(zip(f.features, row, strict=True)), RawMessage(None, None, [], "null", index, i, None)
            )
            for i, (t, row) in enumerate(rows, start=lo)
        ]

    def replay(history: list[Reading], stream: list[Reading]) -> None:
        RELATIONS.clear()
        PROFILE.clear()
        bank = new_bank(spec, threshold=None, artifact=artifact.train(spec, history, source="null calibration"))
        for start in range(0, len(stream), 500):
            bank.label(stream[start : start + 500])

    path = data_dir() / "skab" / "anomaly-free" / "anomaly-free.csv"
    with open(path) as handle:
        header, *rows = list(csv.reader(handle, delimiter=";"))
    times = np.array([row[0].replace(" ", "T") for row in rows], dtype="datetime64[s]").astype(np.int64)
    values = np.array([[float(v) for v in row[1:]] for row in rows])
    zeros = np.zeros(len(rows), np.int8)
    free = skab.SkabFile("anomaly-free", times.astype(np.float64), tuple(header[1:]), values, zeros, zeros)
    replay(readings(free, 0, 400), readings(free, 400, len(rows)))
    print(table("anomaly-free: relations", relation_surprises()))
    print(table("anomaly-free: profile (per feature)", profile_surprises()))
    files = skab.load(data_dir() / "skab")
    for half, name in ((0, "even"), (1, "odd")):
        chosen = [(i, f) for i, f in enumerate(files) if i % 2 == half]
        stream = sorted((r for i, f in chosen for r in readings(f, 200, 400, i)), key=lambda r: r.timestamp)
        replay([r for i, f in chosen for r in readings(f, 0, 200, i)], stream)
        print(table(f"valve1 {name} rows 200-400: relations", relation_surprises()))
        print(table(f"valve1 {name} rows 200-400: profile (per feature)", profile_surprises()))


if __name__ == "__main__":
    main()
