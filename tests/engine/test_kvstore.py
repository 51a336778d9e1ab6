"""The session KV store: blob format, tiers, eviction, demotion to a real S3 server."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from helixflow.config import KVCacheConfig, S3TierConfig
from helixflow.engine.kvstore import (
    CorruptBlobError,
    SessionKVStore,
    SessionState,
    decode,
    encode,
    session_key,
)
from tests.conftest import free_port

MODEL = "smollm2-135m"
FP = "build-a"
TOKENS = list(range(100, 400))


def state_bytes(seed: int, size: int = 50_000) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (size // 32)


def make(seed: int = 1) -> SessionState:
    raw = state_bytes(seed)
    return SessionState(MODEL, FP, tuple(TOKENS), raw, hashlib.sha256(raw).hexdigest(), 1.0)


def test_blob_round_trip() -> None:
    state = make()
    assert decode(encode(state)) == state


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:-10],  # truncated
        lambda b: b[:40] + bytes([b[40] ^ 0xFF]) + b[41:],  # a flipped byte in the header
        lambda b: b[:-5] + bytes([b[-5] ^ 0x01]) + b[-4:],  # a flipped byte in the body
        lambda b: b"not a blob",
    ],
)
def test_damaged_blobs_are_detected(damage: object) -> None:
    blob = encode(make())
    with pytest.raises(CorruptBlobError):
        decode(damage(blob))  # type: ignore[operator]


def config(**overrides: object) -> KVCacheConfig:
    return KVCacheConfig(min_tokens=16, **overrides)  # type: ignore[arg-type]


async def test_save_then_load_from_ram_and_disk(tmp_path: Path) -> None:
    store = SessionKVStore(config(), tmp_path)
    await store.save(MODEL, FP, "alice", TOKENS, state_bytes(1))
    prompt = [*TOKENS[:250], 7, 8, 9]
    hit = await store.load(MODEL, FP, "alice", prompt)
    assert hit is not None
    assert hit.tier == "ram"
    assert hit.state == state_bytes(1)
    assert list(hit.tokens) == TOKENS
    # A new process: RAM is empty, the disk tier has it.
    again = await SessionKVStore(config(), tmp_path).load(MODEL, FP, "alice", prompt)
    assert again is not None
    assert again.tier == "disk"
    assert again.state == state_bytes(1)


async def test_session_ids_never_reach_the_disk(tmp_path: Path) -> None:
    store = SessionKVStore(config(), tmp_path)
    await store.save(MODEL, FP, "alice@example.com", TOKENS, state_bytes(1))
    names = [p.name for p in tmp_path.iterdir()]  # noqa: ASYNC240 (a test's own tmp dir)
    assert names == [f"{session_key(MODEL, 'alice@example.com')}.kv"]
    assert all("alice" not in n for n in names)


async def test_misses(tmp_path: Path) -> None:
    store = SessionKVStore(config(), tmp_path)
    await store.save(MODEL, FP, "alice", TOKENS, state_bytes(1))
    assert await store.load(MODEL, FP, "bob", TOKENS) is None
    assert await store.load("other-model", FP, "alice", TOKENS) is None
    assert await store.load(MODEL, FP, "alice", [1, 2, 3, *TOKENS]) is None  # no shared prefix
    assert store.stats().misses == 3


async def test_a_corrupted_blob_is_discarded(tmp_path: Path) -> None:
    await SessionKVStore(config(), tmp_path).save(MODEL, FP, "alice", TOKENS, state_bytes(1))
    (path,) = tmp_path.glob("*.kv")  # noqa: ASYNC240
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    store = SessionKVStore(config(), tmp_path)
    assert await store.load(MODEL, FP, "alice", TOKENS) is None
    assert store.stats().corrupt == 1
    assert not path.exists()


async def test_a_blob_of_another_model_build_is_discarded(tmp_path: Path) -> None:
    await SessionKVStore(config(), tmp_path).save(MODEL, FP, "alice", TOKENS, state_bytes(1))
    store = SessionKVStore(config(), tmp_path)
    assert await store.load(MODEL, "build-b", "alice", TOKENS) is None
    assert store.stats().stale == 1
    assert list(tmp_path.glob("*.kv")) == []  # noqa: ASYNC240


async def test_ram_budget_is_lru(tmp_path: Path) -> None:
    one = len(state_bytes(0)) + 4 * len(TOKENS)
    store = SessionKVStore(config(ram_bytes=2 * one + 10), tmp_path)
    for name in ("a", "b", "c"):
        await store.save(MODEL, FP, name, TOKENS, state_bytes(1))
    assert store.stats().bytes["ram"] == 2 * one
    assert (await store.load(MODEL, FP, "a", TOKENS)).tier == "disk"  # type: ignore[union-attr]
    assert (await store.load(MODEL, FP, "c", TOKENS)).tier == "ram"  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's standalone S3-compatible server, over real HTTP on a free port."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> S3TierConfig:
    monkeypatch.setenv("HF_TEST_S3_KEY", "testing")
    monkeypatch.setenv("HF_TEST_S3_SECRET", "testing")
    name = f"kv-{os.urandom(4).hex()}"
    boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket=name)
    return S3TierConfig(
        bucket=name,
        endpoint_url=s3_endpoint,
        region="us-east-1",
        access_key_id_env="HF_TEST_S3_KEY",
        secret_access_key_env="HF_TEST_S3_SECRET",
    )


async def test_disk_overflow_moves_blobs_to_s3_and_back(
    tmp_path: Path, bucket: S3TierConfig
) -> None:
    blob_size = len(encode(make()))
    store = SessionKVStore(
        config(ram_bytes=0, disk_bytes=int(blob_size * 1.5), s3=bucket), tmp_path
    )
    await store.save(MODEL, FP, "old", TOKENS, state_bytes(1))
    await store.save(MODEL, FP, "new", TOKENS, state_bytes(2))  # pushes "old" down to S3
    assert store.stats().demoted == 1
    assert len(list(tmp_path.glob("*.kv"))) == 1  # noqa: ASYNC240
    hit = await store.load(MODEL, FP, "old", TOKENS)
    assert hit is not None
    assert hit.tier == "s3"
    assert hit.state == state_bytes(1)
    # Bringing "old" back to disk pushed "new" down in turn; a fresh store (another
    # replica, a restart with an empty disk) finds both in the bucket.
    assert store.stats().demoted == 2
    fresh = SessionKVStore(config(ram_bytes=0, disk_bytes=0, s3=bucket), tmp_path / "other")
    for name, seed in (("old", 1), ("new", 2)):
        found = await fresh.load(MODEL, FP, name, TOKENS)
        assert found is not None
        assert found.tier == "s3"
        assert found.state == state_bytes(seed)


async def test_a_corrupted_s3_blob_is_discarded(tmp_path: Path, bucket: S3TierConfig) -> None:
    store = SessionKVStore(config(ram_bytes=0, disk_bytes=0, s3=bucket), tmp_path)
    await store.save(MODEL, FP, "alice", TOKENS, state_bytes(1))
    client = boto3.client(
        "s3",
        endpoint_url=bucket.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    key = f"{bucket.prefix}{session_key(MODEL, 'alice')}"
    blob = bytearray(client.get_object(Bucket=bucket.bucket, Key=key)["Body"].read())
    blob[-50] ^= 0xFF
    client.put_object(Bucket=bucket.bucket, Key=key, Body=bytes(blob))
    assert await store.load(MODEL, FP, "alice", TOKENS) is None
    assert store.stats().corrupt == 1
    assert "Contents" not in client.list_objects_v2(Bucket=bucket.bucket)
