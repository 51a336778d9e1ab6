"""Every inference request through the API lands in ``inference_requests``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy as sa

from helixflow.store.database import Database
from helixflow.store.schema import metadata
from tests.conftest import ServerProcess

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "Say hello."}]


def fetch(url: str, table_name: str = "inference_requests", **where: Any) -> list[dict[str, Any]]:
    """Rows of a table of the database at ``url`` (matching ``where``)."""
    table = metadata.tables[table_name]

    async def query() -> list[dict[str, Any]]:
        db = Database(url)
        try:
            async with db.engine.connect() as conn:
                stmt = sa.select(table).where(*(table.c[k] == v for k, v in where.items()))
                return [dict(row._mapping) for row in await conn.execute(stmt)]
        finally:
            await db.dispose()

    return asyncio.run(query())


def wait_rows(
    url: str, count: int = 1, timeout: float = 15.0, **where: Any
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        rows = fetch(url, **where)
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def test_chat_request_is_recorded(server: ServerProcess, http: httpx.Client) -> None:
    response = http.post(
        CHAT,
        json={"model": "smollm2", "messages": MESSAGES, "max_tokens": 6, "user": "bob"},
        headers={"X-Request-Id": "caller-1", "X-Agent-Id": "planner"},
    )
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    assert request_id != "caller-1"  # the server's own id keys the record
    (row,) = wait_rows(server.database_url, request_id=request_id)
    usage = response.json()["usage"]
    assert row["client_request_id"] == "caller-1"
    assert row["agent_id"] == "planner"
    assert row["end_user"] == "bob"
    assert row["endpoint"] == "chat.completions"
    assert row["requested_model"] == "smollm2"
    assert row["served_model"] == "smollm2-135m"
    assert row["provider"] == "local"
    assert row["status"] == "success"
    assert row["http_status"] == 200
    assert row["prompt_tokens"] == usage["prompt_tokens"]
    assert row["completion_tokens"] == usage["completion_tokens"]
    assert row["finish_reason"] in ("stop", "length")
    assert row["streamed"] is False
    assert 0 < row["ttft_ms"] <= row["latency_ms"]


def test_streamed_completion_is_recorded(server: ServerProcess, client: openai.OpenAI) -> None:
    stream = client.completions.with_raw_response.create(
        model="smollm2-135m",
        prompt="Once upon a time",
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    request_id = stream.headers["x-request-id"]
    chunks = list(stream.parse())
    usage = chunks[-1].usage
    assert usage is not None
    (row,) = wait_rows(server.database_url, request_id=request_id)
    assert row["streamed"] is True
    assert row["endpoint"] == "completions"
    assert row["status"] == "success"
    assert row["completion_tokens"] == usage.completion_tokens
    assert 0 < row["ttft_ms"] <= row["latency_ms"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model": "no-such-model", "messages": MESSAGES}, 404, "model_not_found"),
        ({"model": "smollm2", "messages": "not a list"}, 400, None),
    ],
)
def test_refused_requests_are_recorded_with_their_error(
    server: ServerProcess, http: httpx.Client, body: dict[str, Any], status: int, code: str | None
) -> None:
    response = http.post(CHAT, json=body)
    assert response.status_code == status
    (row,) = wait_rows(server.database_url, request_id=response.headers["x-request-id"])
    assert row["status"] == "error"
    assert row["http_status"] == status
    error = response.json()["error"]
    assert row["error_type"] == error["type"]
    assert row["error_code"] == error["code"]
    if code is not None:
        assert row["error_code"] == code


def test_a_reused_caller_id_still_makes_two_records(
    server: ServerProcess, http: httpx.Client
) -> None:
    body = {"model": "smollm2", "messages": MESSAGES, "max_tokens": 2}
    ids = [
        http.post(CHAT, json=body, headers={"X-Request-Id": "retry-me"}).headers["x-request-id"]
        for _ in range(2)
    ]
    assert ids[0] != ids[1]
    rows = wait_rows(server.database_url, count=2, client_request_id="retry-me")
    assert sorted(r["request_id"] for r in rows) == sorted(ids)


def test_ready_reports_database_and_telemetry(http: httpx.Client) -> None:
    body = http.get("/ready").json()
    assert body["status"] == "ready"
    assert body["database"]["dialect"] == "postgresql"
    assert body["database"]["schema_revision"]
    assert body["telemetry"]["state"] == "ok"


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The embedded default: no database configured, SQLite created and migrated by serve."""
    config = {"models": [{"id": "smollm2-135m", "bundled": "smollm2-135m", "parallel": 2}]}
    proc = ServerProcess(config, tmp_path_factory.mktemp("sqlite-server"), "sqlite")
    yield proc
    proc.stop()


def test_embedded_sqlite_records_requests(sqlite_server: ServerProcess) -> None:
    assert Path(sqlite_server.data_dir / "helixflow.db").is_file()
    client = openai.OpenAI(base_url=f"{sqlite_server.base_url}/v1", api_key="unused")
    reply = client.chat.completions.with_raw_response.create(
        model="smollm2-135m",
        messages=MESSAGES,
        max_tokens=4,  # type: ignore[arg-type]
    )
    (row,) = wait_rows(sqlite_server.database_url, request_id=reply.headers["x-request-id"])
    assert row["status"] == "success"
    assert row["completion_tokens"] == reply.parse().usage.completion_tokens  # type: ignore[union-attr]


def test_recorded_requests_show_in_analytics(server: ServerProcess, http: httpx.Client) -> None:
    body = {"model": "gemma3-270m", "messages": MESSAGES, "max_tokens": 3}
    ids = [http.post(CHAT, json=body).headers["x-request-id"] for _ in range(3)]
    wait_rows(server.database_url, request_id=ids[-1])
    wait_rows(server.database_url, request_id=ids[0])
    models = http.get("/api/v1/analytics/models", params={"window": "1h"}).json()["data"]
    gemma = next(m for m in models if m["served_model"] == "gemma3-270m")
    rows = fetch(server.database_url, served_model="gemma3-270m")
    assert gemma["requests"] == len(rows) >= 3
    series = http.get("/api/v1/analytics/timeseries", params={"window": "1h", "bucket": "minute"})
    assert series.status_code == 200
    assert sum(p["requests"] for p in series.json()["data"]) >= 3
    bad = http.get("/api/v1/analytics/models", params={"window": "forever"})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "window"
