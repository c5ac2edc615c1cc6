"""The Grafana dashboard against the metrics list it was written for (edgewatch/ui/dashboard_metrics.py),
and its ConfigMap in the Helm chart for Grafana's dashboard sidecar."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from edgewatch.ui.dashboard_metrics import DASHBOARD_METRICS, METRICS, exposed_series, family_of

promql_parser = pytest.importorskip("promql_parser", reason="needs promql-parser (dev extra)")

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "k8s" / "grafana" / "edgewatch-dashboard.json"
CHART_COPY = ROOT / "k8s" / "helm" / "edgewatch" / "files" / "edgewatch-dashboard.json"
#: labels Prometheus itself adds to every scraped series
TARGET_LABELS = {"instance", "job"}
#: Grafana's variables, as Grafana substitutes them before Prometheus parses the query
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "6h"}


def panels(dashboard: dict) -> list[dict]:
    """Every panel, rows' nested panels included."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def queries(dashboard: dict) -> list[tuple[str, str, str]]:
    """``(panel title, PromQL, legend)`` of every query."""
    return [
        (panel["title"], target["expr"], target.get("legendFormat", ""))
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]


def parse(expr: str):
    """The query's syntax tree (PromQL's own grammar: promql-parser), Grafana variables substituted."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return promql_parser.parse(expr)


def nodes(node):
    """The node and everything below it."""
    yield node
    children = {
        promql_parser.BinaryExpr: ("lhs", "rhs"),
        promql_parser.AggregateExpr: ("expr", "param"),
        promql_parser.ParenExpr: ("expr",),
        promql_parser.UnaryExpr: ("expr",),
        promql_parser.SubqueryExpr: ("expr",),
        promql_parser.MatrixSelector: ("vector_selector",),
    }.get(type(node), ())
    kids = [getattr(node, name) for name in children]
    if isinstance(node, promql_parser.Call):
        kids = list(node.args)
    for kid in kids:
        if kid is not None:
            yield from nodes(kid)


def series_in(expr: str) -> set[str]:
    """Metric names the query selects."""
    return {n.name for n in nodes(parse(expr)) if isinstance(n, promql_parser.VectorSelector)}


def labels_in(expr: str, legend: str) -> set[str]:
    """Labels the query matches on or groups by, and those its legend names."""
    labels = set(re.findall(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", legend))
    for node in nodes(parse(expr)):
        if isinstance(node, promql_parser.VectorSelector):
            labels |= {matcher.name for matcher in node.matchers.matchers} - {"__name__"}
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            labels |= set(node.modifier.labels)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier and node.modifier.matching:
            labels |= set(node.modifier.matching.labels)
    return labels


def rated_series(expr: str) -> set[str]:
    """Metric names read through rate() or increase()."""
    return {
        selector.name
        for call in nodes(parse(expr))
        if isinstance(call, promql_parser.Call) and call.func.name in ("rate", "increase", "irate")
        for selector in nodes(call)
        if isinstance(selector, promql_parser.VectorSelector)
    }


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_every_panel_query_names_only_listed_metrics(dashboard):
    found = queries(dashboard)
    assert len(found) >= 15
    for title, expr, _ in found:
        selected = series_in(expr)
        assert selected, f"{title}: no metric in {expr!r}"
        unknown = {name for name in selected if family_of(name) is None}
        assert not unknown, f"panel {title!r} queries {sorted(unknown)}, not in DASHBOARD_METRICS: {expr}"


def test_every_listed_metric_is_on_the_dashboard(dashboard):
    used = {family_of(name) for _, expr, _ in queries(dashboard) for name in series_in(expr)}
    assert set(DASHBOARD_METRICS) - used == set()


def test_queries_group_and_name_only_labels_the_metrics_carry(dashboard):
    for title, expr, legend in queries(dashboard):
        families = {family_of(name) for name in series_in(expr)}
        allowed = set(TARGET_LABELS)
        for family in families:
            allowed |= set(METRICS[family].labels) | ({"le"} if METRICS[family].kind == "histogram" else set())
        assert labels_in(expr, legend) <= allowed, f"panel {title!r}: {expr} / {legend}"


def test_counters_are_read_as_rates_and_histograms_as_buckets(dashboard):
    for title, expr, _ in queries(dashboard):
        for name in series_in(expr):
            if METRICS[family_of(name)].kind in ("counter", "histogram"):
                assert name in rated_series(expr), f"{title}: {name} not read as a rate: {expr}"


def test_the_query_reader_sees_what_it_should():
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(edgewatch_x_bucket{topic="a b"}[$__rate_interval]))) / on (job) up'
    )
    assert series_in(expr) == {"edgewatch_x_bucket", "up"}
    assert rated_series(expr) == {"edgewatch_x_bucket"}
    assert labels_in(expr, "{{ topic }} p99") == {"le", "topic", "job"}
    with pytest.raises(ValueError):
        parse("sum(rate(edgewatch_x[5m])")  # a query Prometheus would refuse
    assert family_of("edgewatch_dead_letters") is None  # a counter is scraped as _total only
    assert exposed_series("edgewatch_model") == ("edgewatch_model_info",)


def test_panels_use_the_chosen_data_source_and_do_not_overlap(dashboard):
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids))
    variable = next(v for v in dashboard["templating"]["list"] if v["type"] == "datasource")
    assert variable["query"] == "prometheus"
    taken: set[tuple[int, int]] = set()
    for panel in panels(dashboard):
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == f"${{{variable['name']}}}", panel["title"]
            assert panel["description"], f"{panel['title']}: say what the panel answers"
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {(pos["x"] + dx, pos["y"] + dy) for dx in range(pos["w"]) for dy in range(pos["h"])}
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_the_chart_ships_the_same_dashboard():
    assert DASHBOARD.read_bytes() == CHART_COPY.read_bytes()


def load_renderer():
    spec = importlib.util.spec_from_file_location("render_manifests", ROOT / "k8s" / "render_manifests.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_helm_chart_renders_the_dashboard_configmap_for_grafanas_sidecar():
    pytest.importorskip("helm_python", reason="needs helm-python-sdk (dev extra)")
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="needs kubernetes-validate (dev extra)")
    renderer = load_renderer()

    def configmaps(values: dict) -> list[dict]:
        rendered = renderer.objects(renderer.render(values, release="plant-a", namespace="edge"))
        return [obj for _, obj in rendered if obj["kind"] == "ConfigMap"]

    assert configmaps({}) == []  # opt-in: not every cluster runs Grafana's sidecar
    (configmap,) = configmaps({"grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "Edge"}}})
    kubernetes_validate.validate(configmap, "1.30", strict=True)
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "Edge"}
    assert configmap["metadata"]["namespace"] == "edge"
    assert json.loads(configmap["data"]["edgewatch-dashboard.json"]) == json.loads(DASHBOARD.read_text())
    (elsewhere,) = configmaps({"grafanaDashboard": {"enabled": True, "namespace": "monitoring"}})
    assert elsewhere["metadata"]["namespace"] == "monitoring"


def test_exporter_check_finds_a_missing_metric_a_wrong_kind_and_wrong_labels():
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

    from edgewatch.ui.dashboard_metrics import exporter_problems

    def exporter(skip: str = "", kind_of: dict | None = None, labels_of: dict | None = None) -> CollectorRegistry:
        registry = CollectorRegistry()
        classes = {"counter": Counter, "gauge": Gauge, "histogram": Histogram, "info": Info}
        for name, spec in METRICS.items():
            if name == skip:
                continue
            kind = (kind_of or {}).get(name, spec.kind)
            labels = (labels_of or {}).get(name, spec.labels)
            metric = classes[kind](name, spec.help, labels if kind != "info" else (), registry=registry)
            if kind == "info":
                metric.info(dict.fromkeys(labels, "x"))
            elif labels:
                metric.labels(*["x"] * len(labels))
        return registry

    assert exporter_problems(exporter()) == []
    assert exporter_problems(exporter(skip="edgewatch_active_alarms")) == ["edgewatch_active_alarms: not exported"]
    assert exporter_problems(exporter(kind_of={"edgewatch_snapshot_duration_seconds": "gauge"})) == [
        "edgewatch_snapshot_duration_seconds: a gauge, the dashboard reads a histogram"
    ]
    assert exporter_problems(exporter(labels_of={"edgewatch_dead_letters": ("stage",)})) == [
        "edgewatch_dead_letters: labels ['stage'], the dashboard reads ['reason']"
    ]
