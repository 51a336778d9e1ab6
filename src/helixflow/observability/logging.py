"""Process-wide logging setup (called once by the CLI)."""

from __future__ import annotations

import logging
from typing import Literal

from rich.logging import RichHandler

from helixflow.observability.json_logs import configure_json_logging
from helixflow.observability.redaction import install_redaction


def configure_logging(level: str = "info", fmt: Literal["text", "json"] = "text") -> None:
    if fmt == "json":
        configure_json_logging(level)
        return
    handler = RichHandler(show_path=False, rich_tracebacks=False, markup=False)
    logging.basicConfig(
        level=level.upper(),
        format="%(name)s: %(message)s",
        datefmt="[%X]",
        handlers=[handler],
        force=True,
    )
    for noisy in ("uvicorn.access", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    install_redaction(logging.getLogger())  # keys, tokens and passwords never reach a log
