"""Checks of deploy/: the Prometheus rules and scrape config, and the Grafana dashboard.

The catalogue below is the contract with ``helixflow.observability.metrics``: the names and
labels the dashboard and the alert rules may use. A query that names anything else would
show an empty panel or an alert that can never fire, so the tests refuse it.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"

# name -> (type, labels). Histograms are exported as <name>_bucket{le}, _sum and _count.
METRICS: dict[str, tuple[str, frozenset[str]]] = {
    name: (kind, frozenset(labels.split()))
    for name, kind, labels in [
        ("helixflow_build_info", "gauge", "version"),
        ("helixflow_http_requests_total", "counter", "route method status"),
        ("helixflow_inference_requests_total", "counter", "endpoint model target provider status"),
        ("helixflow_request_duration_seconds", "histogram", "endpoint model"),
        ("helixflow_time_to_first_token_seconds", "histogram", "endpoint model"),
        ("helixflow_prompt_tokens_total", "counter", "model target"),
        ("helixflow_completion_tokens_total", "counter", "model target"),
        ("helixflow_cached_prompt_tokens_total", "counter", "model target"),
        ("helixflow_response_cache_hits_total", "counter", ""),
        ("helixflow_response_cache_misses_total", "counter", ""),
        ("helixflow_response_cache_bytes", "gauge", ""),
        ("helixflow_rate_limit_rejections_total", "counter", "reason"),
        ("helixflow_router_decisions_total", "counter", "strategy outcome"),
        ("helixflow_router_fallback_attempts_total", "counter", "target"),
        ("helixflow_router_circuit_state", "gauge", "target"),
        ("helixflow_router_target_in_flight", "gauge", "target"),
        ("helixflow_engine_active_sequences", "gauge", "model"),
        ("helixflow_engine_queue_depth", "gauge", "model"),
        ("helixflow_engine_batch_tokens_total", "counter", "model"),
        ("helixflow_engine_steps_total", "counter", "model"),
        ("helixflow_kv_cache_cells_used", "gauge", "model"),
        ("helixflow_kv_cache_cells", "gauge", "model"),
        ("helixflow_kv_prefix_reused_tokens_total", "counter", "model"),
        ("helixflow_kv_store_hits_total", "counter", "tier"),
        ("helixflow_kv_store_misses_total", "counter", ""),
        ("helixflow_kv_store_bytes", "gauge", "tier"),
        ("helixflow_telemetry_queue_events", "gauge", ""),
        ("helixflow_telemetry_lag_seconds", "gauge", ""),
        ("helixflow_telemetry_spool_bytes", "gauge", ""),
        ("helixflow_telemetry_events_written_total", "counter", ""),
        ("helixflow_db_pool_size", "gauge", ""),
        ("helixflow_db_pool_checked_out", "gauge", ""),
        ("helixflow_db_pool_overflow", "gauge", ""),
        # Prometheus's own per-target series and prometheus_client's process collector.
        ("up", "gauge", ""),
        ("process_cpu_seconds_total", "counter", ""),
        ("process_resident_memory_bytes", "gauge", ""),
        ("process_virtual_memory_bytes", "gauge", ""),
        ("process_start_time_seconds", "gauge", ""),
        ("process_open_fds", "gauge", ""),
        ("process_max_fds", "gauge", ""),
    ]
}

# Labels that Prometheus attaches to every scraped series, and the histogram bucket label.
TARGET_LABELS = frozenset({"job", "instance"})
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def series_names() -> dict[str, str]:
    """Every exported series name -> the catalogue name it belongs to."""
    names: dict[str, str] = {}
    for name, (kind, _labels) in METRICS.items():
        if kind == "histogram":
            for suffix in HISTOGRAM_SUFFIXES:
                names[name + suffix] = name
        else:
            names[name] = name
    return names


SERIES = series_names()


def labels_of(series: str) -> frozenset[str]:
    base = SERIES[series]
    labels = METRICS[base][1] | TARGET_LABELS
    if series.endswith("_bucket") and METRICS[base][0] == "histogram":
        labels |= {"le"}
    return labels


# --- a small PromQL scanner: enough to find the metric names and labels of an expression ---

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{([^{}]*)\}")
_MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)", re.IGNORECASE
)
_IDENT = re.compile(r"(?<![\w.$])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
    | {"group_left", "group_right", "inf", "nan"}
)
HELIXFLOW_NAME = re.compile(r"helixflow_[a-z0-9_]+")


def scan(expr: str) -> tuple[set[str], set[str]]:
    """The metric names and the label names (in matchers and grouping clauses) of ``expr``.

    Strings, ranges and durations are blanked first; what is left that looks like an
    identifier and is not a function call or a keyword is a metric name."""
    labels: set[str] = set()
    text = _STRING.sub('""', expr)
    for block in _MATCHERS.findall(text):
        labels.update(_MATCHER_LABEL.findall(block))
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    for _keyword, names in _GROUPING.findall(text):
        labels.update(n.strip() for n in names.split(",") if n.strip())
    text = _GROUPING.sub(" ", text)
    metrics: set[str] = set()
    for match in _IDENT.finditer(text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in _KEYWORDS:
            continue
        metrics.add(word)
    return metrics, labels


def check_expr(expr: str) -> list[str]:
    """Problems with ``expr`` against the catalogue (an empty list when there are none)."""
    problems: list[str] = []
    metrics, labels = scan(expr)
    if not metrics:
        problems.append(f"no metric name found in {expr!r}")
    # The plain regex named in the contract, over the raw text, as a second net.
    for name in set(HELIXFLOW_NAME.findall(_STRING.sub('""', expr))):
        if name not in SERIES:
            problems.append(f"unknown metric {name!r} in {expr!r}")
    allowed_labels = {"__name__"}
    for name in metrics:
        if name not in SERIES:
            problems.append(f"unknown metric {name!r} in {expr!r}")
        else:
            allowed_labels |= labels_of(name)
    for label in sorted(labels - allowed_labels):
        problems.append(f"label {label!r} belongs to none of {sorted(metrics)} in {expr!r}")
    return sorted(set(problems))


def promtool() -> str:
    """The promtool binary; the test is skipped without one unless CI demands it."""
    path = shutil.which("promtool")
    if path:
        return path
    if os.environ.get("HELIXFLOW_REQUIRE_PROMTOOL"):
        pytest.fail(
            "HELIXFLOW_REQUIRE_PROMTOOL is set but promtool is not on PATH "
            "(Debian: apt-get install -y prometheus)"
        )
    pytest.skip("promtool not installed (Debian: apt-get install -y prometheus)")
