"""Session KV persistence through the API: restored turns answer exactly as recomputed ones."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.test_telemetry import fetch
from tests.conftest import ServerProcess

SYSTEM = "You are a patient assistant who answers in one short sentence. " * 6
QUESTIONS = ["Name a colour.", "Name a fruit.", "Name an animal."]


def config(tmp: Path) -> dict[str, Any]:
    return {
        "models": [
            # No prefix cache: a saved session state is the only way a prompt is reused.
            {"id": "smollm2-135m", "bundled": "smollm2-135m", "parallel": 2, "prefix_cache": False},
            {"id": "gemma3-270m", "bundled": "gemma3-270m", "parallel": 2, "prefix_cache": False},
        ],
        # No RAM tier: every restore is read back from disk.
        "kv_cache": {"min_tokens": 16, "ram_bytes": 0},
    }


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sessions")


@pytest.fixture(scope="module")
def server(workdir: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(config(workdir), workdir, "sessions")
    yield proc
    proc.stop()


def converse(
    http: httpx.Client, model: str, session: str | None, turns: int = 3, **extra: Any
) -> list[tuple[str, int]]:
    """(reply, cached prompt tokens) of each turn of a fixed conversation."""
    messages: list[dict[str, str]] = [{"role": "system", "content": SYSTEM}]
    out = []
    headers = {"X-Session-Id": session} if session else {}
    for question in QUESTIONS[:turns]:
        messages.append({"role": "user", "content": question})
        body = {"model": model, "messages": messages, "max_tokens": 24, "temperature": 0, **extra}
        reply = http.post("/v1/chat/completions", json=body, headers=headers)
        assert reply.status_code == 200, reply.text
        data = reply.json()
        text = data["choices"][0]["message"]["content"]
        out.append((text, data["usage"]["prompt_tokens_details"]["cached_tokens"]))
        messages.append({"role": "assistant", "content": text})
    return out


def kv_stats(http: httpx.Client) -> dict[str, Any]:
    stats: dict[str, Any] = http.get("/ready").json()["kv_cache"]
    return stats


@pytest.mark.parametrize("model", ["smollm2-135m", "gemma3-270m"])
def test_restored_turns_answer_exactly_like_recomputed_ones(
    server: ServerProcess, model: str
) -> None:
    with httpx.Client(base_url=server.base_url, timeout=120) as http:
        cold = converse(http, model, session=None)
        warm = converse(http, model, session=f"conv-{model}")
    assert [text for text, _ in warm] == [text for text, _ in cold]
    assert all(cached == 0 for _, cached in cold)
    if model == "smollm2-135m":
        # Every later turn starts from the state saved after the previous one.
        assert all(cached > 0 for _, cached in warm[1:])


def test_the_user_field_is_a_session_key(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.base_url, timeout=120) as http:
        turns = converse(http, "smollm2-135m", session=None, user="user-42")
        assert turns[-1][1] > 0
        model = next(m for m in http.get("/ready").json()["models"] if m["id"] == "smollm2-135m")
        assert model["kv_restores"] >= 2
        assert model["kv_restore_failures"] == 0


def test_a_corrupted_blob_is_detected_and_recomputed(server: ServerProcess, workdir: Path) -> None:
    with httpx.Client(base_url=server.base_url, timeout=120) as http:
        reference = converse(http, "smollm2-135m", session=None, turns=2)
        converse(http, "smollm2-135m", session="to-corrupt", turns=1)
        time.sleep(0.5)  # the save is written after the reply
        before = kv_stats(http)["corrupt"]
        for path in (workdir / "data" / "kv").glob("*.kv"):
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0xFF
            path.write_bytes(bytes(data))
        again = converse(http, "smollm2-135m", session="to-corrupt", turns=2)
        assert kv_stats(http)["corrupt"] > before
        assert again[0][1] == 0  # the damaged state was dropped: turn 1 computed afresh ...
        assert again[1][1] > 0  # ... and saved anew, so turn 2 restores again
        assert [text for text, _ in again] == [text for text, _ in reference]


def test_sessions_survive_a_restart_and_are_listed(workdir: Path) -> None:
    first = ServerProcess(config(workdir), workdir, "restart-1")
    try:
        with httpx.Client(base_url=first.base_url, timeout=120) as http:
            reference = converse(http, "smollm2-135m", session="durable", turns=2)
            time.sleep(0.5)
    finally:
        first.stop()
    second = ServerProcess(config(workdir), workdir, "restart-2")
    try:
        with httpx.Client(base_url=second.base_url, timeout=120) as http:
            # The second turn of the same conversation, on a server that never saw it.
            again = converse(http, "smollm2-135m", session="durable", turns=2)
            assert [t for t, _ in again] == [t for t, _ in reference]
            assert again[0][1] > 0  # even the first turn: the state saved after it is found
            assert kv_stats(http)["hits"]["disk"] >= 2
        rows = [r for r in fetch_sessions(second) if r["model"] == "smollm2-135m"]
        assert rows
        assert all(r["n_tokens"] > 16 and r["tier"] == "disk" for r in rows)
    finally:
        second.stop()


def fetch_sessions(server: ServerProcess) -> list[dict[str, Any]]:
    return fetch(server.database_url, "kv_sessions")
