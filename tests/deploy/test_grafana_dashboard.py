"""deploy/grafana/helixflow.json: a dashboard Grafana can import, whose every query names only
catalogued metrics and labels, filters by the dashboard's variables, and parses as PromQL
(promtool checks each one, with the Grafana variables filled in)."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import DEPLOY, METRICS, SERIES, check_expr, promtool, scan

DASHBOARD_PATH = DEPLOY / "grafana" / "helixflow.json"
REQUIRED_ROWS = {
    "Traffic",
    "Latency",
    "Tokens",
    "Router",
    "Engine",
    "Caches",
    "Limits",
    "Telemetry writer",
    "Database pool",
}
REQUIRED_VARIABLES = {"datasource", "job", "instance", "model"}
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^{}]*)\}")
_VARIABLE = re.compile(r"\$\{?(\w+)(?::\w+)?\}?")


def load() -> dict[str, Any]:
    return json.loads(DASHBOARD_PATH.read_text())


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def query_panels() -> list[dict[str, Any]]:
    return [p for p in all_panels(load()["panels"]) if p["type"] != "row"]


def exprs() -> list[tuple[str, str]]:
    """(panel title / refId, expr) for every target of every panel."""
    return [
        (f"{panel['title']}/{target['refId']}", target["expr"])
        for panel in query_panels()
        for target in panel["targets"]
    ]


def variable_queries() -> list[str]:
    out = []
    for var in load()["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            out.append(query["query"] if isinstance(query, dict) else query)
    return out


def as_promql(expr: str) -> str:
    """Grafana's variables replaced by values PromQL accepts: intervals by 5m, the rest (all
    inside label matchers) by a match-anything regex."""
    expr = re.sub(r"\$__(rate_interval|interval|range)\b|\$\{__\w+\}", "5m", expr)
    return _VARIABLE.sub(".*", expr)


# --- structure ---------------------------------------------------------------------------


def test_loads_with_required_top_level_fields() -> None:
    dashboard = load()
    assert dashboard["uid"] == "helixflow-overview"
    assert dashboard["title"] == "HelixFlow"
    assert isinstance(dashboard["schemaVersion"], int)
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["panels"]
    assert dashboard["time"]["from"]
    assert dashboard["time"]["to"]
    assert "templating" in dashboard
    assert "annotations" in dashboard
    # Importable anywhere: no fixed database id, and no data source uid baked in.
    assert dashboard.get("id") is None
    assert "__inputs" not in dashboard


def test_panel_ids_are_unique() -> None:
    ids = [panel["id"] for panel in all_panels(load()["panels"])]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


def test_panels_fit_the_grid_without_overlapping() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in load()["panels"]:
        pos = panel["gridPos"]
        assert pos["w"] > 0, panel["title"]
        assert pos["h"] > 0, panel["title"]
        assert 0 <= pos["x"] <= pos["x"] + pos["w"] <= 24, panel["title"]
        assert pos["y"] >= 0, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_required_rows() -> None:
    rows = {p["title"] for p in all_panels(load()["panels"]) if p["type"] == "row"}
    assert rows >= REQUIRED_ROWS, REQUIRED_ROWS - rows


def test_template_variables() -> None:
    variables = {var["name"]: var for var in load()["templating"]["list"]}
    assert set(variables) >= REQUIRED_VARIABLES
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance", "model"):
        var = variables[name]
        assert var["type"] == "query"
        assert var["datasource"]["uid"] == "${datasource}"
        assert var["multi"]
        assert var["includeAll"]
        assert var["allValue"] == ".*"
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        assert var.get("definition", query) == query


@pytest.mark.parametrize("query", variable_queries())
def test_variable_queries_use_catalogued_metrics(query: str) -> None:
    match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query)
    assert match, query
    selector, label = match.groups()
    assert check_expr(selector) == []
    (metric,) = scan(selector)[0]
    assert label in {"job", "instance"} | METRICS[SERIES[metric]][1]
    for match in re.finditer(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*\$[^"]*)"', selector):
        assert match.group(2) == "=~", match.group(0)


def test_every_query_panel_uses_the_datasource_variable() -> None:
    for panel in query_panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert target["expr"].strip(), panel["title"]


# --- the queries -------------------------------------------------------------------------


@pytest.mark.parametrize(("where", "expr"), exprs(), ids=[w for w, _ in exprs()])
def test_expr_uses_only_catalogued_metrics_and_labels(where: str, expr: str) -> None:
    assert check_expr(expr) == []


@pytest.mark.parametrize(("where", "expr"), exprs(), ids=[w for w, _ in exprs()])
def test_expr_filters_by_the_dashboard_variables(where: str, expr: str) -> None:
    """Every selector honours $job and $instance, and $model where the metric has one; a
    multi-value variable only works in a regex matcher."""
    selectors = _SELECTOR.findall(expr)
    assert selectors, expr
    for metric, matchers in selectors:
        assert 'job=~"$job"' in matchers, (metric, matchers)
        assert 'instance=~"$instance"' in matchers, (metric, matchers)
        if "model" in METRICS[SERIES[metric]][1]:
            assert 'model=~"$model"' in matchers, (metric, matchers)
    for match in re.finditer(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*\$[^"]*)"', expr):
        assert match.group(2) == "=~", match.group(0)


def test_expr_variables_are_defined() -> None:
    defined = {var["name"] for var in load()["templating"]["list"]}
    for _where, expr in exprs():
        for name in _VARIABLE.findall(expr):
            assert name.startswith("__") or name in defined, (name, expr)


def test_every_catalogued_helixflow_metric_is_on_the_dashboard() -> None:
    used = set()
    for _where, expr in exprs():
        used |= {SERIES[name] for name in scan(expr)[0] if name in SERIES}
    wanted = {name for name in METRICS if name.startswith("helixflow_")}
    assert wanted - used == set()


def test_histogram_quantiles_aggregate_by_le() -> None:
    for where, expr in exprs():
        if "histogram_quantile" in expr:
            assert re.search(r"by \([^)]*\ble\b[^)]*\)", expr), where
            assert "_bucket{" in expr, where


def test_every_expr_parses_as_promql(tmp_path: Path) -> None:
    """promtool parses each query (as a recording rule) after the variables are filled in."""
    binary = promtool()
    rules = [
        {"record": f"dashboard:panel_{i}", "expr": as_promql(expr)}
        for i, (_where, expr) in enumerate(exprs())
    ]
    rules += [
        {"record": f"dashboard:variable_{i}", "expr": as_promql(query)}
        for i, query in enumerate(
            re.fullmatch(r"label_values\((.*),\s*\w+\)", q).group(1)  # type: ignore[union-attr]
            for q in variable_queries()
        )
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [binary, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
