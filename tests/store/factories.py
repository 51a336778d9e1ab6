"""Telemetry events for tests: plausible values, any field overridable."""

from __future__ import annotations

from typing import Any

from helixflow.store.telemetry.events import InferenceEvent, RoutingEvent


def inference_event(i: int, **overrides: Any) -> InferenceEvent:
    values: dict[str, Any] = {
        "request_id": f"req-{i:06d}",
        "endpoint": "chat.completions",
        "status": "success",
        "http_status": 200,
        "latency_ms": 10.0 + i,
        "served_model": "smollm2-135m",
        "prompt_tokens": i,
        "completion_tokens": i % 17,
    }
    return InferenceEvent(**(values | overrides))


def routing_event(i: int, **overrides: Any) -> RoutingEvent:
    values: dict[str, Any] = {
        "request_id": f"req-{i:06d}",
        "strategy": "weighted",
        "chosen_target": "local/smollm2-135m",
    }
    return RoutingEvent(**(values | overrides))
