"""Plots people read: one device's stream with its scores, alarms and labels, and an index.

Every report (``evaluate nab --report``, ``evaluate skab --report``, ``run --replay FILE --report DIR``)
draws its devices with :func:`device_plot` from a :class:`Trace` and links them from an
``index.html`` written by :func:`write_index`, so a NAB file, a SKAB experiment and a user's own
machine look the same:

* top: the readings (one panel per sensor with its unit, or the sensors scaled and stacked when
  there are many); labeled windows / fault periods shaded orange, the part the detector learned
  from shaded grey, drift events (a new normal accepted) as dashed lines;
* bottom: the anomaly score, the threshold drawn and labeled, the alarm periods shaded — green
  where they overlap a labeled period (hits), red where they do not (false alarms) — and the
  features that explain each alarm written on it.

>>> import tempfile
>>> times = np.arange(0.0, 600.0, 10.0)
>>> scores = np.where((times > 300) & (times < 360), 0.9, 0.1)
>>> trace = Trace("pump-1", times, {"temperature": 20 + scores}, scores, scores >= 0.5, 0.5,
...               truth=(times >= 290) & (times <= 370))
>>> path = device_plot(trace, Path(tempfile.mkdtemp()) / "pump-1.png")
>>> path.read_bytes()[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
True
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: units of the sensors edgewatch knows (SKAB's rig, the simulated fleet); others are drawn without
UNITS = {
    "Accelerometer1RMS": "g",
    "Accelerometer2RMS": "g",
    "Current": "A",
    "Pressure": "bar",
    "Temperature": "°C",
    "Thermocouple": "°C",
    "Voltage": "V",
    "Volume Flow RateRMS": "l/min",
    "machine.temperature": "°C",
    "ambient.temperature": "°C",
    "ambient.humidity": "%",
}
HIT, FALSE_ALARM, TRUTH, LEARNED, SCORE, DRIFT = "#2a9d3f", "#d62728", "#f4a261", "#9e9e9e", "#1f4e79", "#7b3fa0"
#: at most this many sensors get a panel each; more are scaled to their range and stacked
PANELS = 4
DPI = 100


@dataclass
class Trace:
    """One device's stream as plotted: per row its time, readings, score and alarm state.

    ``times`` are epoch seconds; ``truth`` marks rows inside labeled windows / fault periods (``None``:
    the stream has no labels); ``learned`` the leading rows the detector was fitted on (NAB's probation,
    SKAB's training part); ``explanations`` maps a row to its features' shares of the score;
    ``drift`` holds ``(epoch seconds, reason)`` of each accepted new normal.
    """

    name: str
    times: np.ndarray
    values: dict[str, np.ndarray]
    scores: np.ndarray
    alarm: np.ndarray
    threshold: float
    truth: np.ndarray | None = None
    truth_label: str = "labeled anomaly window"
    learned: int = 0
    learned_label: str = "learned from (not scored)"
    explanations: dict[int, dict[str, float]] = field(default_factory=dict)
    drift: list[tuple[float, str]] = field(default_factory=list)
    value_label: str | None = None
    subtitle: str = ""


@dataclass(frozen=True)
class AlarmCounts:
    """Alarm periods (runs of alarm rows) that overlap a labeled period, that do not, and labeled
    periods no alarm touched."""

    hits: int
    false_alarms: int
    missed: int


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[first, last]`` row ranges where ``mask`` is true.

    >>> runs(np.array([0, 1, 1, 0, 1], bool))
    [(1, 2), (4, 4)]
    """
    mask = np.asarray(mask, bool)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.astype(np.int8), [0]))))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def alarm_counts(alarm: np.ndarray, truth: np.ndarray | None) -> AlarmCounts:
    """Hits, false alarms and missed labeled periods, counted by period (not by row).

    >>> alarm_counts(np.array([0, 1, 0, 0, 1, 0, 0]), np.array([1, 1, 0, 0, 0, 0, 1]))
    AlarmCounts(hits=1, false_alarms=1, missed=1)
    """
    alarm = np.asarray(alarm, bool)
    truth = np.zeros(len(alarm), bool) if truth is None else np.asarray(truth, bool)
    periods = runs(alarm)
    hits = sum(1 for a, b in periods if truth[a : b + 1].any())
    missed = sum(1 for a, b in runs(truth) if not alarm[a : b + 1].any())
    return AlarmCounts(hits, len(periods) - hits, missed)


def label_with_unit(feature: str) -> str:
    unit = UNITS.get(feature)
    return f"{feature} ({unit})" if unit else feature


def _dates(times: np.ndarray) -> np.ndarray:
    return (np.asarray(times, np.float64) * 1e6).astype("datetime64[us]").astype("O")


def _shade(ax, dates, mask, color, alpha, label=None) -> None:
    for first, last in runs(mask):
        # a one-row period still gets a visible band: half a row on each side
        left = dates[max(first - 1, 0)] + (dates[first] - dates[max(first - 1, 0)]) / 2
        right = dates[last] + (dates[min(last + 1, len(dates) - 1)] - dates[last]) / 2
        if left == right:
            left, right = dates[first], dates[last]
        ax.axvspan(left, right, color=color, alpha=alpha, lw=0, label=label)
        label = None  # one legend entry per kind


def _top_features(shares: Sequence[dict[str, float]], n: int = 2) -> str:
    total: dict[str, float] = {}
    for row in shares:
        for name, share in row.items():
            total[name] = total.get(name, 0.0) + share
    ranked = sorted(total.items(), key=lambda item: -item[1])[:n]
    whole = sum(total.values()) or 1.0
    return ", ".join(f"{name} {100 * share / whole:.0f}%" for name, share in ranked if share > 0)


def device_plot(trace: Trace, path: Path) -> Path:
    """Draw ``trace`` to the PNG at ``path`` (see the module's description)."""
    plt = _pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    n = len(trace.times)
    dates = _dates(trace.times)
    features = list(trace.values)
    stacked = len(features) > PANELS
    panels = 1 if stacked else max(len(features), 1)
    fig, axes = plt.subplots(
        panels + 1, 1, figsize=(13, 2.2 * panels + 2.6), sharex=True, height_ratios=[3] * panels + [2], squeeze=False
    )
    value_axes, score_ax = list(axes[:-1, 0]), axes[-1, 0]
    alarm = np.asarray(trace.alarm, bool)
    truth = np.zeros(n, bool) if trace.truth is None else np.asarray(trace.truth, bool)
    learned = np.arange(n) < trace.learned

    if stacked:
        ax = value_axes[0]
        for row, name in enumerate(features):
            column = np.asarray(trace.values[name], float)
            low, span = np.nanmin(column), np.ptp(column[np.isfinite(column)]) if np.isfinite(column).any() else 0
            ax.plot(dates, 0.8 * (column - low) / (span or 1.0) + row + 0.1, lw=0.7, label=label_with_unit(name))
        ax.set_yticks(np.arange(len(features)) + 0.5, [label_with_unit(f) for f in features], fontsize=8)
        ax.set_ylabel(trace.value_label or "each sensor scaled to its range")
    else:
        for ax, name in zip(value_axes, features, strict=False):
            ax.plot(dates, trace.values[name], lw=0.7, color=SCORE, label="reading")
            ax.set_ylabel(trace.value_label or label_with_unit(name), fontsize=9)
    # the readings under alarm, coloured like the periods below (visible when a period is one row)
    size = 14 if alarm.sum() < 200 else 5
    for ax, name in zip(value_axes, [] if stacked else features, strict=False):
        for mask, color in ((alarm & truth, HIT), (alarm & ~truth, FALSE_ALARM)):
            ax.scatter(dates[mask], np.asarray(trace.values[name])[mask], s=size, color=color, zorder=3, lw=0)

    for ax in [*value_axes, score_ax]:
        _shade(ax, dates, learned, LEARNED, 0.18)
        _shade(ax, dates, truth, TRUTH, 0.35)
        for when, _ in trace.drift:
            ax.axvline(_dates(np.array([when]))[0], color=DRIFT, lw=1.0, ls="--")
        ax.grid(alpha=0.25, lw=0.5)

    score_ax.plot(dates, trace.scores, lw=0.7, color=SCORE)
    for mask, color in ((alarm & truth, HIT), (alarm & ~truth, FALSE_ALARM)):
        score_ax.scatter(dates[mask], np.asarray(trace.scores)[mask], s=size, color=color, zorder=3, lw=0)
    _shade(score_ax, dates, alarm & truth, HIT, 0.35)
    _shade(score_ax, dates, alarm & ~truth, FALSE_ALARM, 0.35)
    score_ax.axhline(trace.threshold, color="black", lw=1.0, ls="--")
    score_ax.annotate(
        f"threshold {trace.threshold:.3g}",
        (1.0, trace.threshold),
        xycoords=("axes fraction", "data"),
        xytext=(-4, 3),
        textcoords="offset points",
        ha="right",
        va="bottom",
        fontsize=8,
    )
    top = max(1.0, float(np.nanmax(trace.scores)) if n else 1.0)
    score_ax.set_ylim(0, top * (1.45 if trace.explanations else 1.05))
    score_ax.set_yticks(np.linspace(0, 1, 5) * (1.0 if top <= 1.0 else round(top, 1)))
    score_ax.set_ylabel("anomaly score (0–1)", fontsize=9)
    score_ax.set_xlabel("time (UTC)", fontsize=9)
    _explain(score_ax, dates, alarm, trace.explanations, top)

    counts = alarm_counts(alarm & ~learned, truth if trace.truth is not None else None)
    scored_alarm = alarm & ~learned
    outside = int((scored_alarm & ~truth).sum())
    share = f"; {100 * outside / scored_alarm.sum():.0f}% of alarmed readings outside labels" if outside else ""
    what = (
        f"alarm periods: {counts.hits} hit(s), {counts.false_alarms} false alarm(s); "
        f"{counts.missed} labeled period(s) missed" + share
        if trace.truth is not None
        else f"{counts.false_alarms + counts.hits} alarm period(s), no labels"
    )
    value_axes[0].set_title(
        f"{trace.name}\n{what}" + (f"\n{trace.subtitle}" if trace.subtitle else ""), fontsize=10, loc="center"
    )
    handles = [
        Line2D([], [], color=SCORE, lw=1, label="anomaly score"),
        Line2D([], [], color="black", lw=1, ls="--", label=f"threshold ({trace.threshold:.3g})"),
        Patch(color=HIT, alpha=0.5, label="alarm inside a labeled period (hit)"),
        Patch(color=FALSE_ALARM, alpha=0.5, label="alarm outside labeled periods (false alarm)"),
    ]
    if trace.truth is not None:
        handles.append(Patch(color=TRUTH, alpha=0.5, label=trace.truth_label))
    if trace.learned:
        handles.append(Patch(color=LEARNED, alpha=0.4, label=trace.learned_label))
    if trace.drift:
        handles.append(Line2D([], [], color=DRIFT, lw=1, ls="--", label="new normal accepted (drift)"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=8, frameon=False)
    fig.autofmt_xdate(rotation=0, ha="center")
    fig.tight_layout(rect=(0, 0.07 if len(handles) > 4 else 0.045, 1, 1))
    path = Path(path)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _explain(ax, dates, alarm, explanations, top, most: int = 6) -> None:
    """The top features of the longest alarm periods ("what drove it"), written above their start
    on one of three lines; a text that would cover another is left out."""
    if not explanations or not len(dates):
        return
    periods = sorted(runs(alarm), key=lambda r: r[0] - r[1])[:most]
    start, width = dates[0], (dates[-1] - dates[0]) or 1
    free_from = [-1.0, -1.0, -1.0]  # per line, the axis fraction where the last text ends
    for first, last in sorted(periods):
        shares = [explanations[i] for i in range(first, last + 1) if i in explanations]
        text = _top_features(shares)
        at = (dates[first] - start) / width
        line = next((k for k in range(3) if free_from[k] <= at), None)
        if not text or line is None:
            continue
        free_from[line] = at + 0.0075 * len(text) * 13 / ax.figure.get_figwidth()
        ax.annotate(text, (dates[first], top * (1.42 - 0.12 * line)), fontsize=7, va="top", ha="left",
                    bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.8})  # fmt: skip


def bar_summary(
    path: Path,
    labels: Sequence[str],
    series: dict[str, Sequence[float]],
    xlabel: str,
    title: str,
    note: str = "",
    emphasize: str | None = None,
    colors: Sequence[str] | None = None,
) -> Path:
    """Horizontal grouped bars: a row per label, a bar per series (``emphasize`` drawn strongest)."""
    plt = _pyplot()
    rows = len(labels)
    fig, ax = plt.subplots(figsize=(12, max(3.0, 0.22 * rows * max(len(series), 2) ** 0.5 + 2.0)))
    height = 0.8 / max(len(series), 1)
    y = np.arange(rows)
    colors = colors or plt.get_cmap("tab10").colors
    for k, (name, values) in enumerate(series.items()):
        strong = emphasize is None or name == emphasize
        ax.barh(y - 0.4 + height * (k + 0.5), values, height=height, label=name,
                color=colors[k % len(colors)], alpha=1.0 if strong else 0.6)  # fmt: skip
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.6)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_title(title, fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    widest = max((max(values, default=0) for values in series.values()), default=0)
    if widest > 0:  # room on the right for the legend, so it covers no bar
        ax.set_xlim(right=widest * 1.45)
    ax.legend(fontsize=8, loc="lower right")
    if note:
        fig.text(0.01, 0.005, note, fontsize=8, va="bottom", ha="left", wrap=True)
    fig.tight_layout(rect=(0, 0.04 if note else 0, 1, 1))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return Path(path)


def write_index(
    folder: Path,
    title: str,
    summary_lines: Sequence[str],
    header: Sequence[str],
    rows: Sequence[tuple[Sequence[object], str | None]],
    images: Sequence[str] = ("summary.png",),
    notes: Sequence[str] = (),
) -> Path:
    """``folder/index.html``: the summary images, then a table row per plot linking to it.

    ``rows`` are ``(cells, image or None)``; every image is shown full width under the table too."""
    escape = html.escape
    head = "".join(f"<th>{escape(str(h))}</th>" for h in [*header, "plot"])
    table = "\n".join(
        "<tr>"
        + "".join(f"<td>{escape(str(c))}</td>" for c in cells)
        + (f'<td><a href="{escape(image)}">{escape(image)}</a></td></tr>' if image else "<td>–</td></tr>")
        for cells, image in rows
    )
    body = "\n".join(f'<p><a href="{escape(i)}"><img src="{escape(i)}" style="max-width:100%"></a></p>' for i in images)
    plots = "\n".join(
        f'<h3 id="{escape(image)}">{escape(str(cells[0]))}</h3><img src="{escape(image)}" loading="lazy" '
        f'style="max-width:100%">'
        for cells, image in rows
        if image
    )
    lines = "".join(f"<p><code>{escape(line)}</code></p>" for line in summary_lines)
    extra = "".join(f"<p>{escape(note)}</p>" for note in notes)
    index = Path(folder) / "index.html"
    index.write_text(
        f"<!doctype html><meta charset=utf-8><title>{escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:1em 2em}td,th{padding:2px 8px;text-align:left}"
        "table{border-collapse:collapse}tr:nth-child(even){background:#f3f3f3}</style>"
        f"<h1>{escape(title)}</h1>{lines}{extra}{body}"
        f"<table><tr>{head}</tr>\n{table}</table>\n{plots}\n"
    )
    return index


def file_stem(name: str) -> str:
    """A file name for a plot of ``name`` (path separators and odd characters replaced)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name.replace("/", "__"))
    return safe.removesuffix(".csv") or "device"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# -- a user's own devices (``edgewatch run --replay FILE --report DIR``) ------------------------------

#: at most this many devices get a plot (those with the most alarms first); the index lists them all
MOST_DEVICES = 50


def _epoch(stamp: str) -> float:
    from edgewatch.schema import parse_iso_utc

    return parse_iso_utc(stamp).timestamp()


def read_fault_labels(path: Path) -> dict[int, str] | None:
    """Line number → fault kind of a recorded ``.jsonl`` stream whose messages carry the simulator's
    ``edgewatch-fault`` header (``None`` when the stream has no such labels: a user's own file)."""
    import orjson

    from edgewatch.simulator.fleet import FAULT_HEADER, MALFORMED

    path = Path(path)
    if path.suffix.lower() != ".jsonl":
        return None
    labels: dict[int, str] = {}
    labeled = False
    with open(path, "rb") as lines:
        for number, line in enumerate(lines):
            if not line.strip():
                continue
            headers = orjson.loads(line).get("headers") or {}
            if FAULT_HEADER in headers:
                labeled = True
                kind = str(headers[FAULT_HEADER])
                if kind and kind != MALFORMED:
                    labels[number] = kind
    return labels if labeled else None


def _jsonl(path: Path, since: dict[Path, int] | None = None) -> list[dict]:
    """The objects of a JSONL file, from byte ``since[path]`` on (the sinks append: a second run
    to the same file adds to it, and its report must show that run only)."""
    import orjson

    path = Path(path)
    if not path.exists():
        return []
    with open(path, "rb") as handle:
        handle.seek((since or {}).get(path, 0))
        return [orjson.loads(line) for line in handle.read().splitlines() if line.strip()]


def file_sizes(labeled_path: Path) -> dict[Path, int]:
    """The sizes of ``labeled.jsonl`` and its siblings now: give them to :func:`write_device_report`
    to plot only what a run adds after this."""
    from edgewatch.flows.wiring import sibling

    paths = [Path(labeled_path), *(sibling(labeled_path, kind) for kind in ("alarms", "drift"))]
    return {p: p.stat().st_size for p in paths if p.exists()}


def device_traces(
    labeled_path: Path, threshold: float, replayed: Path | None = None, since: dict[Path, int] | None = None
) -> tuple[list[Trace], dict[str, list[dict]]]:
    """A :class:`Trace` per device from what ``run --replay`` wrote (``labeled.jsonl`` and its
    ``.alarms`` / ``.drift`` siblings), fault periods from the replayed file when it carries them;
    and each device's alarm events."""
    from edgewatch.flows.wiring import sibling

    faults = read_fault_labels(replayed) if replayed is not None else None
    by_device: dict[str, list[dict]] = {}
    for event in _jsonl(labeled_path, since):
        by_device.setdefault(event["device_id"], []).append(event)
    drift: dict[str, list[tuple[float, str]]] = {}
    for event in _jsonl(sibling(labeled_path, "drift"), since):
        drift.setdefault(event["device_id"], []).append((_epoch(event["timestamp"]), event["reason"]))
    alarms: dict[str, list[dict]] = {}
    for event in _jsonl(sibling(labeled_path, "alarms"), since):
        alarms.setdefault(event["device_id"], []).append(event)
    traces = []
    for device, events in sorted(by_device.items()):
        # by source time (not by its text: "…:06Z" sorts after "…:06.3Z"), then in file order
        events.sort(key=lambda e: (_epoch(e["timestamp"]), e["source"]["offset"] or 0))
        names = sorted({name for e in events for name in e["features"]})
        values = {n: np.array([float(e["features"].get(n, np.nan)) for e in events]) for n in names}
        offsets = [e["source"]["offset"] for e in events]
        traces.append(
            Trace(
                device,
                np.array([_epoch(e["timestamp"]) for e in events]),  # parsed twice: small files
                values,
                np.array([float(e["score"]) for e in events]),
                np.array([bool(e["is_anomaly"]) for e in events]),
                threshold,
                truth=None if faults is None else np.array([o in faults for o in offsets]),
                truth_label="fault period (edgewatch-fault header)",
                explanations={i: e["explanation"] for i, e in enumerate(events) if e.get("explanation")},
                drift=drift.get(device, []),
                subtitle=f"{len(events)} readings, model {events[0]['model']['name']} {events[0]['model']['version']}",
            )
        )
    return traces, alarms


def write_device_report(
    labeled_path: Path,
    out: Path,
    threshold: float,
    replayed: Path | None = None,
    since: dict[Path, int] | None = None,
) -> Path:
    """``run --replay FILE --report DIR``: a PNG per device (the most alarmed first, at most
    :data:`MOST_DEVICES`), ``summary.png`` (alarms per device: hits, false alarms, missed faults)
    and ``index.html``; ``since`` (:func:`file_sizes` before the run) skips what earlier runs wrote."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    traces, alarms = device_traces(labeled_path, threshold, replayed, since)
    if not traces:
        raise ValueError(f"{labeled_path} holds no labeled events: nothing to plot")
    counts = {t.name: alarm_counts(t.alarm, t.truth) for t in traces}
    labeled = any(t.truth is not None for t in traces)
    ranked = sorted(traces, key=lambda t: (-(counts[t.name].hits + counts[t.name].false_alarms), t.name))
    plotted = {t.name for t in ranked[:MOST_DEVICES]}
    rows = []
    for trace in traces:
        c = counts[trace.name]
        raised = sum(1 for a in alarms.get(trace.name, []) if a["event"] == "raised")
        cells = (trace.name, len(trace.times), raised, c.hits, c.false_alarms, c.missed if labeled else "–",
                 len(trace.drift))  # fmt: skip
        image = f"{file_stem(trace.name)}.png"
        if trace.name in plotted:
            device_plot(trace, folder / image)
        rows.append((cells, image if trace.name in plotted else None))
    shown = [t for t in traces if t.name in plotted]
    names = {
        "alarm periods inside a fault (hits)": lambda c: c.hits,
        "alarm periods outside faults (false alarms)": lambda c: c.false_alarms,
        "fault periods without an alarm (missed)": lambda c: c.missed,
    }
    if not labeled:
        names = {"alarm periods (no fault labels)": lambda c: c.hits + c.false_alarms}
    totals = ", ".join(f"{sum(map(count, counts.values()))} {name.split(' (')[0]}" for name, count in names.items())
    source = Path(replayed).name if replayed else Path(labeled_path).name
    bar_summary(
        folder / "summary.png",
        [t.name for t in shown],
        {name: [count(counts[t.name]) for t in shown] for name, count in names.items()},
        "periods per device",
        f"{len(traces)} device(s) from {source}"
        + (f" ({len(shown)} most alarmed shown)" if len(shown) < len(traces) else "")
        + f":\n{totals}",
        colors=(HIT, FALSE_ALARM, TRUTH) if labeled else (SCORE,),
    )
    unplotted = len(traces) - len(plotted)
    return write_index(
        folder,
        f"edgewatch run on {source}",
        [f"labeled events: {labeled_path}", f"threshold {threshold:.4g}"],
        ["device", "readings", "alarms raised", "hits", "false alarms", "missed faults", "drift events"],
        rows,
        notes=[f"{unplotted} device(s) with fewer alarms are not plotted."] if unplotted else [],
    )
