"""kv_sessions: the session KV store's metadata, upserted per (session, model)."""

from __future__ import annotations

from helixflow.store.database import Database
from helixflow.store.repositories.kv_sessions import KVSessionRepository


async def test_saved_used_removed(database: Database) -> None:
    repo = KVSessionRepository(database)
    await repo.saved("a" * 64, "smollm2-135m", "fp1", 300, "disk", "c" * 64, 1234)
    row = await repo.get("a" * 64, "smollm2-135m")
    assert row is not None
    assert (row["n_tokens"], row["tier"], row["size_bytes"], row["hits"]) == (300, "disk", 1234, 0)
    first_use = row["last_used_at"]

    await repo.saved("a" * 64, "smollm2-135m", "fp1", 450, "disk", "d" * 64, 2000)  # next turn
    await repo.used("a" * 64, "smollm2-135m", "ram")
    await repo.used("a" * 64, "smollm2-135m", "disk")
    row = await repo.get("a" * 64, "smollm2-135m")
    assert row is not None
    assert (row["n_tokens"], row["checksum_sha256"], row["hits"]) == (450, "d" * 64, 2)
    assert row["last_used_at"] >= first_use

    await repo.saved("a" * 64, "gemma3-270m", "fp2", 100, "disk", "e" * 64, 10)
    await repo.removed("a" * 64, "smollm2-135m")
    assert await repo.get("a" * 64, "smollm2-135m") is None
    assert await repo.get("a" * 64, "gemma3-270m") is not None
