"""Shared fixtures: a real HelixFlow server in a subprocess, on a free port, with real models;
the PostgreSQL and Redis servers that CI provides (``.ci/run`` exports their URLs)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import openai
import pytest
import redis
import yaml

CHAT_MODELS = ["smollm2-135m", "gemma3-270m"]
QUEUE_MODEL = "smollm2-queue"  # one slot and no waiting room: for 429 tests
SMALL_KV_MODEL = "smollm2-small-kv"  # a tiny shared KV budget: for preemption tests
EMBEDDING_MODEL = "smollm2-embed"  # /v1/embeddings (mean pooling, Matryoshka sizes)


DEFAULT_POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def postgres_dsn() -> str:
    """The server CI provides (``.ci/run`` exports it); tests create their own databases in it."""
    return os.environ.get("HELIXFLOW_TEST_POSTGRES_DSN", DEFAULT_POSTGRES_DSN)


async def _admin(statement: str) -> None:
    import asyncpg

    from helixflow.store.urls import parse_url

    url = parse_url(postgres_dsn())
    conn = await asyncpg.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username or "postgres",
        password=url.password,
        database=url.database or "postgres",
    )
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def create_postgres_database() -> str:
    """A new, empty database on the test server; returns its URL."""
    from helixflow.store.urls import parse_url

    name = f"hf_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    return parse_url(postgres_dsn()).set(database=name).render_as_string(hide_password=False)


def drop_postgres_database(url: str) -> None:
    from helixflow.store.urls import parse_url

    name = parse_url(url).database
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    url = create_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each supported kind (SQLite file; fresh PostgreSQL database)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'helixflow.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[object]:
    """A migrated ``helixflow.store.database.Database`` on each kind of database."""
    from helixflow.store.database import Database
    from helixflow.store.migrate import Migrator

    db = Database(database_url)
    await Migrator(db).upgrade()
    try:
        yield db
    finally:
        await db.dispose()


@pytest.fixture
def redis_key_prefix() -> str:
    """A prefix no other test uses, so tests may share one Redis, even in parallel."""
    return f"helixflow-test:{uuid.uuid4().hex}:"


@pytest.fixture
def redis_url(redis_key_prefix: str) -> Iterator[str]:
    """The test Redis; keys under ``redis_key_prefix`` (only those) are deleted afterwards."""
    url = os.environ.get("HELIXFLOW_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    yield url
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=redis_key_prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """`serve` (run in-process by CLI tests) configures the root logger for the process; put
    it back so that later tests' captured output holds no log lines."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No HELIXFLOW_* variable of the caller's leaks into settings under test."""
    for key in list(os.environ):
        if key.startswith("HELIXFLOW_"):
            monkeypatch.delenv(key)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``helixflow serve`` in a subprocess; ``database_url`` None means the embedded SQLite."""

    def __init__(
        self,
        config: dict[str, object],
        workdir: Path,
        name: str,
        database_url: str | None = None,
    ) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        config_path = workdir / f"{name}.yaml"
        config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / f"{name}.log"
        self.data_dir = workdir / "data"
        env = {k: v for k, v in os.environ.items() if not k.startswith("HELIXFLOW_")}
        env["HELIXFLOW_DATA_DIR"] = str(self.data_dir)
        self.database_url = database_url or f"sqlite:///{self.data_dir / 'helixflow.db'}"
        if database_url is not None:
            env["HELIXFLOW_DATABASE_URL"] = database_url
            # A production database is migrated by the operator, not by `serve`.
            subprocess.run(
                [sys.executable, "-m", "helixflow", "db", "upgrade"],
                env=env,
                check=True,
                capture_output=True,
            )
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "helixflow",
                "serve",
                "--config",
                str(config_path),
                "--port",
                str(self.port),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_path.read_text()}")
            try:
                if httpx.get(f"{self.base_url}/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready in {timeout}s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server with both chat models plus two small-capacity variants of SmolLM2, recording
    to a fresh PostgreSQL database."""
    config = {
        "server": {"max_body_bytes": 256 * 1024, "log_level": "info"},
        "models": [
            {
                "id": "smollm2-135m",
                "bundled": "smollm2-135m",
                "aliases": ["smollm2"],
                "parallel": 8,
                "context_size": 16384,
            },
            {"id": "gemma3-270m", "bundled": "gemma3-270m", "parallel": 8, "context_size": 16384},
            {
                "id": QUEUE_MODEL,
                "bundled": "smollm2-135m",
                "parallel": 1,
                "context_size": 4096,
                "max_queue": 0,
            },
            {
                "id": SMALL_KV_MODEL,
                "bundled": "smollm2-135m",
                "parallel": 4,
                "context_size": 256,
                "prefill_chunk": 16,
            },
            {
                "id": EMBEDDING_MODEL,
                "bundled": "smollm2-135m",
                "embedding": True,
                "parallel": 16,
                "batch_size": 512,
                "matryoshka_dims": [64, 128, 256],
            },
        ],
    }
    database_url = create_postgres_database()
    proc = ServerProcess(config, tmp_path_factory.mktemp("server"), "main", database_url)
    yield proc
    proc.stop()
    drop_postgres_database(database_url)


@pytest.fixture(scope="session")
def base_url(server: ServerProcess) -> str:
    return server.base_url


@pytest.fixture(scope="session")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=120) as c:
        yield c


def wait_idle(http: httpx.Client, model: str, timeout: float = 15.0) -> dict[str, object]:
    """Poll /ready until ``model`` has no active or queued sequences."""
    deadline = time.monotonic() + timeout
    entry: dict[str, object] = {}
    while time.monotonic() < deadline:
        entry = next(m for m in http.get("/ready").json()["models"] if m["id"] == model)
        if entry["active_sequences"] == 0 and entry["queued_requests"] == 0:
            return entry
        time.sleep(0.05)
    raise AssertionError(f"{model} still busy after {timeout}s: {entry}")
