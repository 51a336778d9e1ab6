"""End to end: PostgreSQL goes away in the middle of a burst; nothing is lost or doubled."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from helixflow.store.urls import parse_url
from tests.api.test_telemetry import fetch
from tests.conftest import ServerProcess
from tests.tcp_proxy import ThreadedTcpProxy

BODY = {
    "model": "smollm2-135m",
    "messages": [{"role": "user", "content": "Hi"}],
    "max_tokens": 1,
}


@pytest.fixture
def proxied_server(
    postgres_url: str, tmp_path: Path
) -> Iterator[tuple[ServerProcess, ThreadedTcpProxy]]:
    url = parse_url(postgres_url)
    proxy = ThreadedTcpProxy(url.host or "127.0.0.1", url.port or 5432)
    through = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    config = {
        "models": [{"id": "smollm2-135m", "bundled": "smollm2-135m", "parallel": 4}],
        "database": {"connect_timeout_s": 1, "pool_timeout_s": 2, "statement_timeout_ms": 3000},
        "telemetry": {"batch_size": 20, "flush_interval_ms": 50, "retry_interval_ms": 200},
    }
    server = ServerProcess(config, tmp_path, "outage", through)
    try:
        yield server, proxy
    finally:
        server.stop()
        proxy.close()


def telemetry_state(http: httpx.Client) -> tuple[str, dict[str, object]]:
    body = http.get("/ready").json()
    return body["status"], body["telemetry"]


def wait_state(http: httpx.Client, status: str, timeout: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        current, telemetry = telemetry_state(http)
        if current == status:
            return telemetry
        assert time.monotonic() < deadline, f"/ready stayed {current}: {telemetry}"
        time.sleep(0.1)


def test_database_outage_mid_burst_loses_and_duplicates_nothing(
    proxied_server: tuple[ServerProcess, ThreadedTcpProxy], postgres_url: str
) -> None:
    server, proxy = proxied_server
    ids: list[str] = []
    with (
        httpx.Client(base_url=server.base_url, timeout=60) as http,
        concurrent.futures.ThreadPoolExecutor(4) as pool,
    ):

        def send(_: int) -> str:
            response = http.post("/v1/chat/completions", json=BODY)
            assert response.status_code == 200, response.text
            return response.headers["x-request-id"]

        ids += pool.map(send, range(60))
        proxy.cut()  # the database host disappears mid-burst
        ids += pool.map(send, range(60))  # serving goes on
        degraded = wait_state(http, "degraded")
        assert "unreachable" in str(degraded["reason"])
        ids += pool.map(send, range(60))
        proxy.restore()
        recovered = wait_state(http, "ready")
        assert recovered["state"] == "ok"
        assert recovered["spool_bytes"] == 0
        ids += pool.map(send, range(20))
    deadline = time.monotonic() + 20
    while len(rows := fetch(postgres_url)) < len(ids) and time.monotonic() < deadline:
        time.sleep(0.2)
    stored = [row["request_id"] for row in rows]
    assert len(stored) == len(set(stored)), "a request was recorded twice"
    assert sorted(stored) == sorted(ids), "a request was lost"
