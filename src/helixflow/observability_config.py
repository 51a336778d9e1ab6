"""The observability section of the settings tree (see ``config.py``): logs, traces, metrics.

Metrics with several worker processes (``uvicorn --workers N``, gunicorn with uvicorn workers):
each worker keeps its own figures, so prometheus_client's multiprocess mode has every worker
write them to files in one directory, and the worker that answers a scrape sums them up. The
library turns that mode on from the ``PROMETHEUS_MULTIPROC_DIR`` environment variable, read
when it is first imported, so ``metrics_multiproc_dir`` defaults to that variable and must
agree with it (how to run it: ``observability/metrics.py``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

MULTIPROC_ENV_VAR = "PROMETHEUS_MULTIPROC_DIR"


def prometheus_multiproc_env() -> Path | None:
    """The directory prometheus_client's multiprocess mode writes to (None: the mode is off)."""
    value = os.environ.get(MULTIPROC_ENV_VAR, "").strip()
    return Path(value) if value else None


class ObservabilityConfig(BaseModel):
    # --- logs ----------------------------------------------------------------------------------
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="`json`: one JSON object per line (request and trace ids, secrets masked).",
    )

    # --- traces --------------------------------------------------------------------------------
    tracing: bool = Field(default=False, description="OpenTelemetry spans for every request.")
    service_name: str = Field(default="helixflow", min_length=1, max_length=128)
    trace_sample_ratio: float = Field(
        default=1.0, ge=0.0, le=1.0, description="Share of new traces recorded (parent-based)."
    )
    otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP traces endpoint, e.g. http://collector:4318/v1/traces "
        "(unset: spans are not exported).",
    )

    # --- metrics -------------------------------------------------------------------------------
    metrics_enabled: bool = Field(
        default=True, description="Serve Prometheus metrics at `metrics_path`."
    )
    metrics_path: str = Field(
        default="/metrics",
        pattern=r"^/[A-Za-z0-9._~/-]*$",
        max_length=200,
        description="Path of the Prometheus endpoint (public, like /health).",
    )
    metrics_multiproc_dir: Path | None = Field(
        default_factory=prometheus_multiproc_env,
        description="Several worker processes: the directory every worker writes its figures "
        "to (prometheus_client's multiprocess mode; default: $PROMETHEUS_MULTIPROC_DIR, which "
        "must name the same directory). Empty it before the workers start.",
    )
    metrics_publish_interval_s: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="Multiprocess mode: how often each worker writes its gauges (engine load, "
        "circuits, queues, process figures) for the others to read. A scrape always sees the "
        "answering worker's own figures fresh.",
    )
