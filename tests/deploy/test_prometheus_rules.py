"""deploy/prometheus: the alert rules and the sample scrape config, checked by promtool, the
rules' unit tests run by promtool, and every query checked against the metric catalogue.

promtool comes from Debian's ``prometheus`` package. Without it the promtool tests skip,
unless HELIXFLOW_REQUIRE_PROMTOOL is set (CI sets it), when they fail."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import DEPLOY, check_expr, promtool

PROMETHEUS = DEPLOY / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ALERTS_TEST = PROMETHEUS / "alerts_test.yml"
CONFIG = PROMETHEUS / "prometheus.yml"

REQUIRED_ALERTS = {
    "HelixFlowInstanceDown",
    "HelixFlowHighErrorRatio",
    "HelixFlowHighRequestLatencyP95",
    "HelixFlowHighTimeToFirstTokenP95",
    "HelixFlowCircuitOpen",
    "HelixFlowAllTargetsOpen",
    "HelixFlowTelemetryLagHigh",
    "HelixFlowTelemetrySpoolGrowing",
    "HelixFlowRateLimitRejectionsSpiking",
    "HelixFlowDBPoolExhausted",
}
SEVERITIES = {"critical", "warning"}
_DURATION = re.compile(r"^(\d+[smhdwy])+$")


def run_promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def load_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smhdwy])", duration))


# --- promtool ----------------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    result = run_promtool("check", "rules", ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(load_rules())} rules found" in result.stdout


def test_promtool_check_config() -> None:
    # check config also loads the rule files it names (alerts.yml, beside it).
    result = run_promtool("check", "config", CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is valid prometheus config file syntax" in result.stdout
    assert "1 rule files found" in result.stdout


def test_promtool_rule_unit_tests() -> None:
    result = run_promtool("test", "rules", ALERTS_TEST)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    assert "FAILED" not in result.stdout


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    """The checks above mean something: promtool does fail on a bad expression."""
    bad = tmp_path / "bad.yml"
    bad.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "x",
                        "rules": [{"alert": "X", "expr": "sum by (job (up)"}],
                    }
                ]
            }
        )
    )
    result = run_promtool("check", "rules", bad)
    assert result.returncode != 0


# --- the rules themselves ----------------------------------------------------------------


def test_one_group_named_helixflow() -> None:
    data = yaml.safe_load(ALERTS.read_text())
    assert [group["name"] for group in data["groups"]] == ["helixflow"]


def test_required_alerts_are_defined_once() -> None:
    names = [rule.get("alert") for rule in load_rules()]
    assert None not in names, "only alerting rules belong in alerts.yml"
    assert len(names) == len(set(names)), names
    assert set(names) >= REQUIRED_ALERTS, REQUIRED_ALERTS - set(names)


@pytest.mark.parametrize("rule", load_rules(), ids=lambda rule: rule["alert"])
def test_rule_has_severity_annotations_and_for(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in SEVERITIES
    assert rule["annotations"]["summary"].strip()
    assert rule["annotations"]["description"].strip()
    duration = str(rule.get("for", ""))
    assert _DURATION.match(duration), f"for: {duration!r}"
    assert seconds(duration) >= 60


@pytest.mark.parametrize("rule", load_rules(), ids=lambda rule: rule["alert"])
def test_rule_uses_only_catalogued_metrics(rule: dict[str, Any]) -> None:
    assert check_expr(rule["expr"]) == []


# --- the unit tests cover every alert ----------------------------------------------------


def unit_cases() -> dict[str, dict[str, int]]:
    """alert name -> {"fires": n, "quiet": n} over alerts_test.yml."""
    data = yaml.safe_load(ALERTS_TEST.read_text())
    cases: dict[str, dict[str, int]] = {}
    for test in data["tests"]:
        for case in test.get("alert_rule_test", []):
            counts = cases.setdefault(case["alertname"], {"fires": 0, "quiet": 0})
            counts["fires" if case.get("exp_alerts") else "quiet"] += 1
    return cases


def test_unit_tests_name_the_rule_file() -> None:
    data = yaml.safe_load(ALERTS_TEST.read_text())
    assert data["rule_files"] == ["alerts.yml"]


@pytest.mark.parametrize("alert", sorted(REQUIRED_ALERTS))
def test_every_alert_has_a_firing_and_a_quiet_case(alert: str) -> None:
    cases = unit_cases()
    assert alert in cases, f"no unit test for {alert}"
    assert cases[alert]["fires"] >= 1, f"{alert} is never shown to fire"
    assert cases[alert]["quiet"] >= 1, f"{alert} is never shown to stay quiet"


def test_firing_cases_pin_the_rendered_annotations() -> None:
    """promtool compares annotations exactly, so each firing case shows what the templates
    render to with the alert's real labels: a $labels.x aggregated away would show as a gap."""
    data = yaml.safe_load(ALERTS_TEST.read_text())
    for test in data["tests"]:
        for case in test.get("alert_rule_test", []):
            for alert in case.get("exp_alerts") or []:
                annotations = alert.get("exp_annotations", {})
                assert set(annotations) == {"summary", "description"}, (case, alert)
                for text in annotations.values():
                    assert "{{" not in text
                    assert "<no value>" not in text
                    assert "()" not in text
                    assert "  " not in text


def test_unit_test_series_use_only_catalogued_metrics() -> None:
    data = yaml.safe_load(ALERTS_TEST.read_text())
    for test in data["tests"]:
        for series in test["input_series"]:
            assert check_expr(series["series"]) == [], series["series"]


# --- the checker itself ------------------------------------------------------------------


def test_checker_catches_unknown_names_and_labels() -> None:
    good = 'sum by (model) (rate(helixflow_inference_requests_total{job="x"}[5m]))'
    assert check_expr(good) == []
    assert check_expr("rate(helixflow_inference_request_total[5m])")  # singular: a typo
    assert check_expr("rate(helixflow_request_duration_seconds_total[5m])")  # not a counter
    assert check_expr("helixflow_router_circuit_state_bucket")  # a gauge has no buckets
    assert check_expr("sum by (model) (helixflow_router_circuit_state)")  # no model label
    assert check_expr("process_cpu_seconds_total + node_load1")  # not ours
    buckets = "rate(helixflow_time_to_first_token_seconds_bucket[5m])"
    assert check_expr(f"histogram_quantile(0.9, sum by (le) ({buckets}))") == []
