"""What each part of the default detector adds: an ablation on NAB, SKAB and the simulator.

    python bench/ablation.py [--quick] [--out ablation.md] [--jobs 2] [--variants default,no-jumps,...]

The default detector is the registry's (``DEFAULT_DETECTOR``, relational-novelty). Each
*variant* is that detector with one part switched off by a named parameter (see
:data:`VARIANTS`; every parameter's default keeps the part on):

* the alarm layer: the relations' score, the alarm state (held until it clears or is accepted;
  off: each reading judged alone against the threshold), protected learning (off: every
  reading teaches), consistent-shift acceptance, the ``accept_after`` timeout, new extremes
  excused along the relations, the relations altogether; the moves along the relations
  (a shift judged as a whole, moves the others predict not counted as novelty, extreme steps,
  held related means, the relations' warm-up, the cube root of their statistic);
* the warm start (off: NAB's probation rows and SKAB's training rows stream cold instead);
* each per-feature channel of CompactNovelty: weekly profile, shapes (shingles), new
  extremes, jumps, stuck values; and the per-feature channels alone (the registry's
  ``compact-novelty``: no relations, no alarm layer).

Every variant is scored by the code the CLI runs, nothing re-implemented:
``nab_replay.evaluate`` (``edgewatch evaluate nab``), ``skab.evaluate`` (``edgewatch evaluate
skab``) and ``faults.score_fleet`` (the simulator with faults and legitimate changes).

* **NAB**: standard, low-FP and low-FN normalized scores over all 31 files, and over the
  even- and odd-numbered files (corpus order) separately, each half with its own optimized
  threshold as NAB does for a corpus: a part that helps one half only is fitted to files.
* **SKAB** (valve1): F1, FAR %, MAR % and the standard changepoint score, over all files and
  the even- and odd-numbered ones.
* **Simulator**: per fleet (seed 0 and 1; cold, and warm-started on the fault-free history)
  episode precision, episode recall and ``active_after_change`` (changes after which the
  device is still in alarm two minutes later; target 0). Full: 40 devices x 3000 ticks;
  ``--quick``: 20 devices x 1500 ticks, seed 0 only (about 3 minutes on 2 cores).

Runs the (variant, benchmark) tasks on ``--jobs`` processes, prints rich tables and writes
them as markdown to ``--out``, with a last table of each variant's change from the default
on the headline figures. Data from ``EDGEWATCH_DATA_DIR`` (nab/, skab/).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import json
import math
import multiprocessing
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from edgewatch.online_models.registry import BUILTIN, DEFAULT_DETECTOR, DetectorSpec  # noqa: E402

NEVER = math.inf  # a count or a time that is never reached: the part never acts


@dataclass(frozen=True)
class Variant:
    """The default detector with ``relational`` (RelationalNovelty) and ``novelty`` (its
    CompactNovelty) parameters changed, or another registry detector (``detector``)."""

    name: str
    part: str  # what is switched off, in words
    relational: dict = field(default_factory=dict)
    novelty: dict = field(default_factory=dict)
    warm: bool = True  # NAB and SKAB warm-started on their history (as the CLI does)
    detector: str = DEFAULT_DETECTOR

    def spec(self) -> DetectorSpec:
        base = BUILTIN[self.detector]
        if not (self.relational or self.novelty):
            return base
        factory = functools.partial(build_detector, self.detector, self.relational, self.novelty)
        return DetectorSpec(base.name, factory, base.threshold, base.version)


def build_detector(detector: str, relational: dict, novelty: dict):
    """The registry's ``detector`` with some parameters changed (a picklable factory)."""
    model = BUILTIN[detector].factory()
    changes = dict(relational)
    if novelty:
        changes["novelty"] = model.novelty.clone(novelty)
    return model.clone(changes)


def spec_with(changes: dict) -> DetectorSpec:
    """The default detector with ``changes`` to its parameters (a benchmark's ``--set``), picklable."""
    return Variant("set", "parameters given on the command line", relational=changes).spec()


@functools.cache
def _parameters() -> frozenset[str]:
    return frozenset(inspect.signature(type(BUILTIN[DEFAULT_DETECTOR].factory())).parameters)


def detector_setting(item: str) -> tuple[str, object]:
    """argparse type of ``--set name=value``: a parameter of the default detector and its JSON value."""
    name, equals, text = item.partition("=")
    if not equals or not name:
        raise argparse.ArgumentTypeError(f"{item!r} is not name=value")
    if name not in _parameters():
        raise argparse.ArgumentTypeError(f"{name!r} is not a parameter of {DEFAULT_DETECTOR} (see its docstring)")
    try:
        return name, json.loads(text)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"{item!r}: the value is not JSON (e.g. true, 0.5, 10)") from None


def add_set_option(parser: argparse.ArgumentParser) -> None:
    """The benchmarks' ``--set name=value`` (repeatable), read back by :func:`spec_from_sets`."""
    parser.add_argument("--set", action="append", default=[], type=detector_setting, metavar="NAME=VALUE",
                        help=f"change a parameter of the default detector ({DEFAULT_DETECTOR}); JSON value; "
                        "repeatable")  # fmt: skip


def fleets_option(text: str) -> list[tuple[int, int]]:
    """argparse type of ``--fleets``: comma-separated seed:devices pairs."""
    try:
        fleets = [(int(seed), int(devices)) for seed, devices in (fleet.split(":") for fleet in text.split(","))]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not comma-separated SEED:DEVICES pairs") from None
    if any(devices < 1 for _, devices in fleets):
        raise argparse.ArgumentTypeError(f"{text!r}: a fleet needs at least one device")
    return fleets


def spec_from_sets(parser: argparse.ArgumentParser, sets: list[tuple[str, object]]) -> DetectorSpec:
    """The detector ``--set`` describes; a value the detector refuses is a one-line usage error."""
    spec = spec_with(dict(sets))
    try:
        spec.factory()
    except (TypeError, ValueError) as error:
        parser.error(f"argument --set: {error}")
    return spec


VARIANTS = (
    Variant("default", "nothing (the default detector)"),
    Variant("no-relation-score", "the relations' surprise in the score", {"relation_score": False}),
    Variant("no-relations", "the relations altogether (never ready: no score, no shift, no excused extreme)",
            {"min_relation": NEVER}),
    Variant("no-alarm-state", "the alarm state: each reading judged alone (those at the threshold still not learned)",
            {"hold_alarm": False}),
    Variant("no-protected-learning", "protected learning: every reading teaches", {"protected_learning": False}),
    Variant("per-reading-only", "both: each reading judged alone, and every reading teaches",
            {"hold_alarm": False, "protected_learning": False}),
    Variant("no-consistent-shift", "consistent-shift acceptance", {"accept_readings": NEVER}),
    Variant("no-timeout", "the accept_after timeout", {"accept_after": NEVER}),
    Variant("no-extremes-along-relations", "new extremes excused along the relations",
            {"extremes_along_relations": False}),
    Variant("no-along-relations", "a shift judged along the relations as a whole (not reading by reading)",
            {"along_relations": 0.0}),
    Variant("no-explain-along", "moves the other features predict not counted as shape/profile novelty",
            {"explain_along": 0.0}),
    Variant("no-extreme-steps", "a record must go one normal step past the range (multi-feature devices)",
            {"extreme_steps": 0.0}),
    Variant("no-hold-related", "the relation means of correlated features held with the implicated ones",
            {"hold_related": False}),
    Variant("no-relation-warmup", "the relations learn their first readings even in alarm",
            {"relation_warmup": False}),
    Variant("no-level", "the level channel (a feature's EW level against its effective-sample-size calibration)",
            {"level_rate": 0.0}),
    Variant("level-hold", "(on, off by default) a level alarm held through the recent readings' chance dips "
            "back to normal", {"level_hold": True}),
    Variant("no-level-steps", "the level channel judging only departures that came as a step (not ramps)",
            {"level_steps": False}),
    Variant("no-empirical-bound", "a calibrated novelty no larger than a normal one learned is worth at most "
            "log10(n + 1) decades", {"empirical_bound": False}),
    Variant("no-gap-restart", "the temporal context restarted after a gap in a device's readings",
            {"gap_spread": 0.0}),
    Variant("no-relation-cube-root", "the relations' statistic calibrated as a square root (not a cube root)",
            {"relation_cube_root": False}),
    Variant("shape-effective", "(adds) shape scores judged as Student's t over the independent shingles calibrated",
            {"shape_effective": True}),
    Variant("no-residual-clip", "one reading's relation residual clipped at the alarm's standard score before "
            "smoothing", {"residual_clip": False}),
    Variant("no-clear-on-return", "in alarm, a cause feature whose recent readings are back at its normal level "
            "holds the alarm only by spread, spikes, stuck values, extremes or a relation break",
            {"clear_on_return": False}),
    Variant("no-resolution-spread", "the profile channel's spread widened by the rounding of a quantized "
            "feature's readings (its smallest nonzero step)", {"resolution_spread": False}),
    Variant("no-shape-resolution", "a shingle within one resolution (smallest nonzero step) of a known one is no "
            "shape novelty (multi-feature devices)", {"shape_resolution": 0.0}),
    Variant("no-residual-cusum", "the CUSUM of each feature's relation residual (design shift 2 long-run deviations)",
            {"residual_cusum": 0.0}),
    Variant("no-cusum-steps", "the residual CUSUM counting only departures that came as a step (not slow drifts)",
            {"cusum_steps": 0.0}),
    Variant("no-profile-along", "a feature's profile novelty excused when the others explain it and predict its "
            "reading (multi-feature devices)", {"profile_along": False}),
    Variant("history-fill-0", "(adds, off by default) a warm start calibrating on all of its history, as a cold "
            "start over it would (default: the first half fills memories and profile only)", {"history_fill": 0.0}),
    Variant("no-history-effective", "a warm start's calibrations widened by the Student-t predictive of their "
            "history values' effective sample size (autocorrelation) over the one of their count",
            {"history_effective": False}),
    Variant("no-unfollowed-steps", "a shift of features moving along their own relations that the alarm's cause, "
            "normal by itself, did not follow accepted as a consistent shift (their cross-relations learned anew)",
            {"unfollowed_steps": False}),
    Variant("no-centered-spread", "in alarm, a cause feature back at its normal level holds it by its spread and "
            "spikes judged wherever they sit (extreme shingles relative to their mean) while the device's relations "
            "hold", {"centered_spread": False}),
    Variant("no-level-warmup", "the level channel learns its first readings even in alarm (a cold start's early "
            "alarm otherwise keeps clear_on_return from ever judging the device back)", {"level_warmup": False}),
    Variant("no-level-warmup-centered", "level-warmup and centered-spread together",
            {"level_warmup": False, "centered_spread": False}),
    Variant("level-from-mean", "(adds, off by default) the level channel's level starting at the relations' mean, "
            "not at one reading", {"level_from_mean": True}),
    Variant("level-scales", "(adds, off by default) the level channel's fast level and fast-vs-slow gap judged with "
            "each scale's own persistence (a slow wander shared, not a factor)", {"level_scales": True}),
    Variant("level-scales-from-mean", "(adds, off by default) both of the above",
            {"level_from_mean": True, "level_scales": True}),
    Variant("no-rearm-on-return", "the debouncing level dropped once a cleared alarm's cause features are back at "
            "their normal level and every channel judged the device unsurprising for one longest block (a new "
            "episode is not debounced against the last)", {"rearm_on_return": False}),
    Variant("relation-chi-square", "(adds, off by default) the relations' mean square calibrated as the scaled "
            "chi-square matching its mean and variance (Satterthwaite), not a Gaussian fitted to its cube root",
            {"relation_chi_square": True}),
    Variant("relation-chi-square-level", "(adds, off by default) relation-chi-square with level-scales-from-mean",
            {"relation_chi_square": True, "level_from_mean": True, "level_scales": True}),
    Variant("profile-chi-square", "(adds, off by default) the profile residual's square calibrated as the scaled "
            "chi-square matching the squares learned (Satterthwaite), not a Gaussian fitted to its absolute value",
            {"profile_chi_square": True}),
    Variant("no-unfollowed-core", "unfollowed-steps judging the step on the departed features' largest "
            "departures: a smaller departure of a feature normal by itself (an exogenous slow wander) is dropped "
            "from the step, down to two, instead of vetoing it", {"unfollowed_core": False}),
    Variant("no-step-cusum", "a step of a feature the others do not predict also judged against the level it "
            "left (held while the step lasts) and its short-run noise, not only against the relations' mean and its "
            "long-run deviation", {"step_cusum": False}),
    Variant("step-residual", "(adds, off by default) step-cusum judging the feature's regression residual, not its "
            "own level (its standardized deviation and the level channel's moments)", {"step_level": False}),
    Variant("smooth-extremes", "(adds, off by default) an extreme shape block valued continuously, mean + (a^p - b^p) "
            "/ (a^(p-1) + b^(p-1)) of its extremes' departures a, b, p = 32 (an exact tie: the upper one), not by the "
            "farther extreme (which flips on a drifting oscillation)", {"smooth_extremes": 32.0}),
    Variant("smooth-extremes-8", "(adds, off by default) smooth-extremes with p = 8", {"smooth_extremes": 8.0}),
    Variant("cold-start", "the warm start on NAB/SKAB history (simulator: see default's cold columns)", warm=False),
    Variant("no-profile", "CompactNovelty's weekly profile channel", novelty={"profile": False}),
    Variant("no-shapes", "CompactNovelty's shape (shingle) channels", novelty={"min_blocks": 10**9}),
    Variant("no-extremes", "CompactNovelty's new-extreme check", novelty={"extreme_warmup": 10**9}),
    Variant("no-jumps", "CompactNovelty's jump check", novelty={"jump_factor": NEVER}),
    Variant("no-stuck", "CompactNovelty's stuck-value (repeat run) check", novelty={"repeat_floor": 1.0}),
    Variant("channels-only", "relations and the alarm layer (registry's compact-novelty)", detector="compact-novelty"),
)  # fmt: skip
BY_NAME = {variant.name: variant for variant in VARIANTS}


@dataclass(frozen=True)
class Setup:
    """What is run: data, subsets and fleet sizes."""

    data: Path
    nab_keys: tuple[str, ...] | None = None  # None: every NAB file
    skab_files: int | None = None  # None: every valve1 file
    devices: int = 40
    ticks: int = 3000
    seeds: tuple[int, ...] = (0, 1)


@dataclass(frozen=True)
class Task:
    variant: str
    bench: str  # "nab", "skab" or "sim"
    seed: int = 0
    warm: bool = False  # simulator only

    @property
    def key(self) -> str:
        return self.bench if self.bench != "sim" else f"sim:{self.seed}:{'warm' if self.warm else 'cold'}"


def halves(items: Sequence) -> dict[str, list[int]]:
    """Indices of all items, the even-numbered and the odd-numbered ones."""
    indices = list(range(len(items)))
    return {"all": indices, "even": indices[0::2], "odd": indices[1::2]}


NAB_PROFILES = {"std": "standard", "lowFP": "reward_low_FP_rate", "lowFN": "reward_low_FN_rate"}


def run_nab(variant: Variant, setup: Setup) -> dict[str, float]:
    from edgewatch.evaluation import nab, nab_replay

    corpus = nab_replay.load(setup.data / "nab")
    if setup.nab_keys is not None:
        corpus = nab.NabCorpus({k: corpus.files[k] for k in setup.nab_keys}, corpus.profiles, corpus.root)
    scores = nab_replay.replay(corpus, variant.spec(), warm=variant.warm)
    keys = corpus.keys
    figures = {}
    for half, indices in halves(keys).items():
        if not indices:
            continue
        results = nab.evaluate(corpus, {keys[i]: scores[keys[i]] for i in indices})
        for short, profile in NAB_PROFILES.items():
            figures[f"{short}:{half}"] = results[profile].normalized_score
    return figures


def run_skab(variant: Variant, setup: Setup) -> dict[str, float]:
    from edgewatch.evaluation import skab

    files = skab.load(setup.data / "skab")[: setup.skab_files]
    run = skab.evaluate(files, variant.spec(), warm=variant.warm)
    figures = {}
    for half, indices in halves(files).items():
        if not indices:
            continue
        part = skab.SkabRun([files[i] for i in indices], [run.predictions[i] for i in indices],
                            [run.scores[i] for i in indices])  # fmt: skip
        f1, far, mar = part.outliers
        figures.update(
            {f"f1:{half}": f1, f"far:{half}": far, f"mar:{half}": mar, f"cp:{half}": part.changepoint("standard")}
        )
    return figures


def run_sim(variant: Variant, setup: Setup, seed: int, warm: bool) -> dict[str, float]:
    from edgewatch.evaluation import faults

    score = faults.score_fleet(variant.spec(), devices=setup.devices, ticks=setup.ticks, seed=seed, warm=warm)
    return {"precision": score.episode_precision, "recall": score.recall, "active": score.active_after_change}


def run_task(job: tuple[Task, Setup]) -> tuple[Task, dict[str, float], float]:
    """One (variant, benchmark) pair: its figures and its seconds."""
    task, setup = job
    variant = BY_NAME[task.variant]
    start = time.perf_counter()
    if task.bench == "nab":
        figures = run_nab(variant, setup)
    elif task.bench == "skab":
        figures = run_skab(variant, setup)
    else:
        figures = run_sim(variant, setup, task.seed, task.warm)
    return task, figures, time.perf_counter() - start


def tasks_for(variants: Iterable[Variant], setup: Setup, benches: Sequence[str]) -> list[Task]:
    """The simulator's fleets first (the longest tasks), then NAB, then SKAB."""
    variants = list(variants)
    tasks = []
    if "sim" in benches:
        tasks += [Task(v.name, "sim", seed, warm) for seed in setup.seeds for warm in (False, True) for v in variants
                  if v.warm]  # fmt: skip
    tasks += [Task(v.name, bench) for bench in ("nab", "skab") if bench in benches for v in variants]
    return tasks


def run(
    variants: Iterable[Variant],
    setup: Setup,
    benches: Sequence[str] = ("nab", "skab", "sim"),
    jobs: int = 2,
    progress: Callable[[Task, float], None] = lambda task, seconds: None,
) -> dict[str, dict[str, dict[str, float]]]:
    """``results[variant][task key][figure]`` for every variant and benchmark, on ``jobs`` processes."""
    work = [(task, setup) for task in tasks_for(variants, setup, benches)]
    results: dict[str, dict[str, dict[str, float]]] = {}
    if jobs <= 1:
        done = map(run_task, work)
        for task, figures, seconds in done:
            results.setdefault(task.variant, {})[task.key] = figures
            progress(task, seconds)
        return results
    # spawn: fresh workers, no forked numba or thread state
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        for task, figures, seconds in pool.imap_unordered(run_task, work):
            results.setdefault(task.variant, {})[task.key] = figures
            progress(task, seconds)
    return results


# ---------------------------------------------------------------------------------------- tables


def _cell(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "–"
    return str(int(value)) if digits == 0 else f"{value:.{digits}f}"


def tables(results: dict, variants: Sequence[Variant], setup: Setup) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of the NAB, SKAB, simulator and change-from-default tables."""
    names = [v.name for v in variants if v.name in results]
    out = []
    nab_cols = [f"{short}:{half}" for short in NAB_PROFILES for half in ("all", "even", "odd")]
    if any("nab" in results[n] for n in names):
        rows = [[n, *(_cell(results[n].get("nab", {}).get(c)) for c in nab_cols)] for n in names]
        header = ["variant", *(c.replace(":", " ") for c in nab_cols)]
        out.append(("NAB (normalized scores; even/odd: files 0, 2, 4… and 1, 3, 5… in corpus order)", header, rows))
    skab_cols = [f"{m}:{half}" for m in ("f1", "far", "mar", "cp") for half in ("all", "even", "odd")]
    if any("skab" in results[n] for n in names):
        rows = [[n, *(_cell(results[n].get("skab", {}).get(c)) for c in skab_cols)] for n in names]
        header = ["variant", *(c.replace(":", " ") for c in skab_cols)]
        out.append(("SKAB valve1 (F1, FAR %, MAR %, standard changepoint score)", header, rows))
    fleets = [f"sim:{seed}:{mode}" for seed in setup.seeds for mode in ("cold", "warm")]
    if any(key in results[n] for n in names for key in fleets):
        header, rows = ["variant"], [[n] for n in names]
        for fleet in fleets:
            _, seed, mode = fleet.split(":")
            header += [f"P s{seed} {mode}", f"R s{seed} {mode}", f"act s{seed} {mode}"]
            for row, n in zip(rows, names, strict=True):
                figures = results[n].get(fleet, {})
                row += [_cell(figures.get("precision"), 3), _cell(figures.get("recall"), 3),
                        _cell(figures.get("active"), 0) if figures else "–"]  # fmt: skip
        title = (f"Simulator ({setup.devices} devices x {setup.ticks} ticks): episode precision P, recall R, "
                 "alarms still active 2 min after a legitimate change (act)")  # fmt: skip
        out.append((title, header, rows))
    if "default" in results:
        header, rows = headline_changes(results, names)
        out.append(
            (
                "Each variant minus the default (higher is better for NAB, F1, cp, P, R; lower for FAR, MAR, act)",
                header,
                rows,
            )
        )
    return out


#: headline figures: (label, task key, figure or None for the simulator mean, sign that is better)
HEADLINE = (
    ("NAB std", "nab", "std:all", +1),
    ("NAB std even−odd", "nab", None, 0),
    ("NAB lowFP", "nab", "lowFP:all", +1),
    ("SKAB F1", "skab", "f1:all", +1),
    ("SKAB FAR", "skab", "far:all", -1),
    ("SKAB MAR", "skab", "mar:all", -1),
    ("SKAB cp", "skab", "cp:all", +1),
    ("sim P (mean)", "sim", "precision", +1),
    ("sim R (mean)", "sim", "recall", +1),
    ("sim act (sum)", "sim", "active", -1),
)


def _headline(figures: dict[str, dict[str, float]], task: str, figure: str | None) -> float | None:
    if task == "nab" and figure is None:
        nab = figures.get("nab", {})
        return nab["std:even"] - nab["std:odd"] if "std:even" in nab and "std:odd" in nab else None
    if task != "sim":
        return figures.get(task, {}).get(figure)
    values = [f[figure] for key, f in figures.items() if key.startswith("sim:")]
    if not values:
        return None
    return sum(values) if figure == "active" else sum(values) / len(values)


def headline_changes(results: dict, names: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """Each variant's headline figures minus the default's (the default row: its own figures)."""
    header = ["variant", *(label for label, *_ in HEADLINE)]
    base = results["default"]
    rows = []
    for n in names:
        row = [n]
        for _, task, figure, _sign in HEADLINE:
            value, reference = _headline(results[n], task, figure), _headline(base, task, figure)
            if value is None or reference is None:
                row.append("–")
            elif n == "default":
                row.append(_cell(value, 0 if figure == "active" else 3 if task == "sim" else 2))
            else:
                row.append(f"{value - reference:+.{0 if figure == 'active' else 3 if task == 'sim' else 2}f}")
        rows.append(row)
    return header, rows


def markdown(blocks, preamble: Sequence[str]) -> str:
    lines = [*preamble, ""]
    for title, header, rows in blocks:
        lines += [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines)


def show(console: Console, blocks) -> None:
    for title, header, rows in blocks:
        table = Table(title=title, title_justify="left")
        for column, name in enumerate(header):
            table.add_column(name, justify="left" if column == 0 else "right", no_wrap=column == 0)
        for row in rows:
            table.add_row(*row)
        console.print(table)


#: what makes some cells equal to the default's by construction (not a finding about the part)
READING_NOTES = (
    "Where a part cannot act, its row equals the default's: NAB files have one feature (no relations, so no"
    " relation score, consistent shift or excused extreme); SKAB's test parts (13 minutes each) and the"
    " simulated fleets (3000 one-second ticks) never reach `accept_after` (1 hour), which NAB's series"
    " (one reading per 5 minutes in 21 files, per hour in 7) reach within 12 readings, or at the next one.",
)


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main(argv: Sequence[str] | None = None) -> dict:
    from edgewatch.config import data_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller simulated fleets, seed 0 only")
    parser.add_argument("--out", type=Path, default=Path("ablation.md"), help="markdown tables (default ablation.md)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--variants", help=f"comma-separated subset of: {', '.join(BY_NAME)}")
    parser.add_argument("--bench", default="nab,skab,sim", help="comma-separated subset of nab,skab,sim")
    parser.add_argument("--data-dir", type=Path, help="holding nab/ and skab/ (default EDGEWATCH_DATA_DIR)")
    parser.add_argument("--files", type=int, help="only the first N NAB and SKAB files (a smoke run)")
    args = parser.parse_args(argv)
    names = args.variants.split(",") if args.variants else list(BY_NAME)
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}: use {', '.join(BY_NAME)}")
    benches = args.bench.split(",")
    if not set(benches) <= {"nab", "skab", "sim"}:
        parser.error(f"--bench takes nab, skab, sim; got {args.bench}")
    data = args.data_dir or data_dir()
    missing = [b for b in ("nab", "skab") if b in benches and not (data / b).is_dir()]
    if missing:
        parser.error(f"no {' or '.join(missing)} data under {data} (set EDGEWATCH_DATA_DIR)")
    setup = Setup(data, devices=20, ticks=1500, seeds=(0,)) if args.quick else Setup(data)
    if args.files is not None:
        from edgewatch.evaluation import nab

        keys = tuple(nab.load_corpus(data / "nab").keys[: args.files]) if "nab" in benches else None
        setup = dataclasses.replace(setup, nab_keys=keys, skab_files=args.files)
    variants = [BY_NAME[n] for n in names]
    console = Console(width=240)
    started = time.perf_counter()

    def progress(task: Task, seconds: float) -> None:
        console.log(f"{task.variant} {task.key}: {seconds:.1f} s")

    results = run(variants, setup, benches, args.jobs, progress)
    elapsed = time.perf_counter() - started
    blocks = tables(results, variants, setup)
    show(console, blocks)
    command = " ".join(["python bench/ablation.py", *(argv if argv is not None else sys.argv[1:])])
    preamble = [
        f"## Ablation of `{DEFAULT_DETECTOR}` ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {_commit()})",
        "",
        f"`{command}` ({elapsed / 60:.1f} min on {args.jobs} processes). Each row switches one part off:",
        "",
        *(f"- **{v.name}**: {v.part}" + (f" (`{_params(v)}`)" if _params(v) else "") for v in variants),
        "",
        *READING_NOTES,
    ]
    args.out.write_text(markdown(blocks, preamble) + "\n")
    console.print(f"ablation: variants={len(variants)} minutes={elapsed / 60:.1f} out={args.out}")
    return results


def _params(variant: Variant) -> str:
    items = {**variant.relational, **{f"novelty.{k}": v for k, v in variant.novelty.items()}}
    if not variant.warm:
        items["warm"] = False
    return ", ".join(f"{k}={v}" for k, v in items.items())


if __name__ == "__main__":
    main()
