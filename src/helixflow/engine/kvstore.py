"""Session KV persistence: a conversation's KV state kept between turns, in tiers.

After a turn the engine hands over the sequence's KV state (llama.cpp's per-sequence state
bytes) and the tokens it covers. The store keeps it under a hash of (model, session key):

* RAM: decoded states, least recently used dropped first past ``ram_bytes`` or ``ram_ttl_s``;
* disk: every save is written through (zstd-compressed, SHA-256 of the raw state in the
  header), so a restart loses nothing; past ``disk_bytes`` or ``disk_ttl_s`` a blob is moved
  to S3 when configured, else deleted;
* S3 (any S3-compatible service): the cold tier, with its own budget and TTL.

On the next turn the blob is looked up RAM first, then disk, then S3 (a hit below RAM is
promoted back up). A blob whose checksum fails, which cannot be decoded, or which was made by
another model build (``fingerprint``) is deleted and the prompt is recomputed: a restore can
make a reply faster, never different.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import os
import struct
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import orjson
import zstandard

from helixflow.config import KVCacheConfig, S3TierConfig
from helixflow.engine.base import GenerationRequest, KVRestore
from helixflow.engine.text import common_prefix_len

log = logging.getLogger(__name__)

MAGIC = b"HFKV\x01"
_HEADER_LEN = struct.Struct("<I")
TIERS = ("ram", "disk", "s3")


class CorruptBlobError(ValueError):
    """A stored blob cannot be trusted: bad framing, bad compression or a checksum mismatch."""


@dataclass(frozen=True, slots=True)
class SessionState:
    """A decoded blob."""

    model: str
    fingerprint: str
    tokens: tuple[int, ...]
    state: bytes
    sha256: str
    saved_at: float

    @property
    def size(self) -> int:
        return len(self.state) + 4 * len(self.tokens)


def encode(state: SessionState, level: int = 3) -> bytes:
    header = orjson.dumps(
        {
            "model": state.model,
            "fingerprint": state.fingerprint,
            "tokens": list(state.tokens),
            "sha256": state.sha256,
            "state_bytes": len(state.state),
            "saved_at": state.saved_at,
        }
    )
    body = zstandard.ZstdCompressor(level=level).compress(state.state)
    return MAGIC + _HEADER_LEN.pack(len(header)) + header + body


def decode(blob: bytes) -> SessionState:
    """The state in ``blob``; raises :class:`CorruptBlobError` if anything does not check out."""
    start = len(MAGIC) + _HEADER_LEN.size
    if len(blob) < start or not blob.startswith(MAGIC):
        raise CorruptBlobError("not a HelixFlow KV blob")
    (length,) = _HEADER_LEN.unpack_from(blob, len(MAGIC))
    try:
        header = orjson.loads(blob[start : start + length])
        state = zstandard.ZstdDecompressor().decompress(
            blob[start + length :], max_output_size=int(header["state_bytes"])
        )
        tokens = tuple(int(t) for t in header["tokens"])
        expected = str(header["sha256"])
    except (orjson.JSONDecodeError, zstandard.ZstdError, KeyError, TypeError, ValueError) as exc:
        raise CorruptBlobError(f"unreadable blob: {exc}") from exc
    if len(state) != header["state_bytes"] or hashlib.sha256(state).hexdigest() != expected:
        raise CorruptBlobError("checksum mismatch")
    return SessionState(
        model=str(header["model"]),
        fingerprint=str(header["fingerprint"]),
        tokens=tokens,
        state=state,
        sha256=expected,
        saved_at=float(header["saved_at"]),
    )


def session_key(model: str, session_id: str) -> str:
    """Storage key: the session id itself (possibly a user's name) is never written anywhere."""
    return hashlib.sha256(f"{model}\x00{session_id}".encode()).hexdigest()


# --- tiers -----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    size: int
    last_used: float


class _LruIndex:
    """Sizes and last-use times of the blobs of one tier, least recently used first."""

    def __init__(self) -> None:
        self._entries: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        self.bytes = 0

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def touch(self, key: str, size: int | None = None, when: float | None = None) -> None:
        now = time.time() if when is None else when
        entry = self._entries.pop(key, None)
        if entry is None:
            entry = _Entry(size or 0, now)
            self.bytes += entry.size
        elif size is not None:
            self.bytes += size - entry.size
            entry.size = size
        entry.last_used = now
        self._entries[key] = entry

    def discard(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry.size

    def over(self, budget: int, ttl_s: float, keep: str | None = None) -> Iterator[str]:
        """Keys to evict, oldest first: expired ones, then while over ``budget``."""
        cutoff = time.time() - ttl_s
        size = self.bytes
        for key, entry in list(self._entries.items()):
            if key == keep:
                continue
            if entry.last_used < cutoff or size > budget:
                size -= entry.size
                yield key
            else:
                break

    def expired(self, key: str, ttl_s: float) -> bool:
        entry = self._entries.get(key)
        return entry is not None and entry.last_used < time.time() - ttl_s


class RamTier:
    """Decoded states in memory."""

    name = "ram"

    def __init__(self, budget: int, ttl_s: float) -> None:
        self.budget = budget
        self.ttl_s = ttl_s
        self._states: dict[str, SessionState] = {}
        self._index = _LruIndex()

    @property
    def used_bytes(self) -> int:
        return self._index.bytes

    def get(self, key: str) -> SessionState | None:
        if self._index.expired(key, self.ttl_s):
            self.delete(key)
        state = self._states.get(key)
        if state is not None:
            self._index.touch(key)
        return state

    def put(self, key: str, state: SessionState) -> None:
        if state.size > self.budget:
            self.delete(key)
            return
        self._states[key] = state
        self._index.touch(key, state.size)
        for old in list(self._index.over(self.budget, self.ttl_s, keep=key)):
            self.delete(old)

    def delete(self, key: str) -> None:
        self._states.pop(key, None)
        self._index.discard(key)


class DiskTier:
    """Encoded blobs as files; written atomically (temporary file, then rename)."""

    name = "disk"
    SUFFIX = ".kv"

    def __init__(self, directory: Path, budget: int, ttl_s: float) -> None:
        self.directory = directory
        self.budget = budget
        self.ttl_s = ttl_s
        self._index = _LruIndex()
        directory.mkdir(parents=True, exist_ok=True)
        for path in sorted(directory.glob(f"*{self.SUFFIX}"), key=lambda p: p.stat().st_mtime):
            stat = path.stat()
            self._index.touch(path.stem, stat.st_size, stat.st_mtime)
        for stale in directory.glob("*.tmp"):
            stale.unlink(missing_ok=True)

    @property
    def used_bytes(self) -> int:
        return self._index.bytes

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}{self.SUFFIX}"

    def get(self, key: str) -> bytes | None:
        if key not in self._index:
            return None
        path = self._path(key)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            self._index.discard(key)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)
        self._index.touch(key)
        return blob

    def put(self, key: str, blob: bytes) -> None:
        path = self._path(key)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as handle:
            handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        self._index.touch(key, len(blob))

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)
        self._index.discard(key)

    def evictable(self, keep: str | None = None) -> list[str]:
        return list(self._index.over(self.budget, self.ttl_s, keep=keep))


class ObjectClient(Protocol):
    """The part of boto3's S3 client the tier uses."""

    def put_object(self, **kwargs: Any) -> Any: ...
    def get_object(self, **kwargs: Any) -> Any: ...
    def delete_object(self, **kwargs: Any) -> Any: ...
    def list_objects_v2(self, **kwargs: Any) -> Any: ...


class S3Tier:
    """Blobs in a bucket of any S3-compatible service (boto3; calls run in a thread)."""

    name = "s3"

    def __init__(self, config: S3TierConfig, client: ObjectClient | None = None) -> None:
        self.config = config
        self._client = client or _boto3_client(config)
        self._index = _LruIndex()
        self._listed = False

    @property
    def used_bytes(self) -> int:
        return self._index.bytes

    def _key(self, key: str) -> str:
        return f"{self.config.prefix}{key}"

    def _list(self) -> None:
        """Learn what the bucket already holds (once): budgets count blobs of earlier runs."""
        if self._listed:
            return
        self._listed = True
        token: str | None = None
        while True:
            args: dict[str, Any] = {"Bucket": self.config.bucket, "Prefix": self.config.prefix}
            if token:
                args["ContinuationToken"] = token
            page = self._client.list_objects_v2(**args)
            for item in page.get("Contents", []):
                name = str(item["Key"])[len(self.config.prefix) :]
                self._index.touch(name, int(item["Size"]), item["LastModified"].timestamp())
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")

    def get(self, key: str) -> bytes | None:
        self._list()
        if key not in self._index:
            return None
        if self._index.expired(key, self.config.ttl_s):
            self.delete(key)
            return None
        try:
            response = self._client.get_object(Bucket=self.config.bucket, Key=self._key(key))
        except Exception as exc:  # botocore raises per-service error classes
            if _is_not_found(exc):
                self._index.discard(key)
                return None
            raise
        self._index.touch(key)
        return bytes(response["Body"].read())

    def put(self, key: str, blob: bytes) -> None:
        self._list()
        self._client.put_object(Bucket=self.config.bucket, Key=self._key(key), Body=blob)
        self._index.touch(key, len(blob))
        for old in list(self._index.over(self.config.max_bytes, self.config.ttl_s, keep=key)):
            self.delete(old)

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.config.bucket, Key=self._key(key))
        self._index.discard(key)


def _boto3_client(config: S3TierConfig) -> ObjectClient:
    try:
        import boto3
    except ModuleNotFoundError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("the S3 tier needs boto3: pip install 'helixflow[s3]'") from exc
    kwargs: dict[str, Any] = {}
    if config.endpoint_url:
        kwargs["endpoint_url"] = config.endpoint_url
    if config.region:
        kwargs["region_name"] = config.region
    if config.access_key_id_env and config.secret_access_key_env:
        kwargs["aws_access_key_id"] = os.environ.get(config.access_key_id_env)
        kwargs["aws_secret_access_key"] = os.environ.get(config.secret_access_key_env)
    client: ObjectClient = boto3.client("s3", **kwargs)
    return client


def _is_not_found(exc: Exception) -> bool:
    response = getattr(exc, "response", None)
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    return code in ("NoSuchKey", "404", "NotFound")


# --- the store -------------------------------------------------------------------------------


@dataclass(slots=True)
class KVStoreStats:
    hits: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TIERS, 0))
    misses: int = 0
    saves: int = 0
    corrupt: int = 0
    """Blobs discarded for a failed checksum or an unreadable body."""
    stale: int = 0
    """Blobs discarded because another model build made them."""
    demoted: int = 0
    errors: int = 0
    bytes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TIERS, 0))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class KVMetadataSink(Protocol):
    """Where the store reports what it holds (the ``kv_sessions`` table)."""

    async def saved(
        self, key: str, model: str, fingerprint: str, tokens: int, tier: str, sha256: str, size: int
    ) -> None: ...

    async def used(self, key: str, model: str, tier: str) -> None: ...

    async def removed(self, key: str, model: str) -> None: ...


class SessionKVStore:
    def __init__(
        self,
        config: KVCacheConfig,
        directory: Path,
        *,
        s3_client: ObjectClient | None = None,
        metadata: KVMetadataSink | None = None,
    ) -> None:
        self.config = config
        self.ram = RamTier(config.ram_bytes, config.ram_ttl_s)
        self.disk = DiskTier(directory, config.disk_bytes, config.disk_ttl_s)
        self.s3 = S3Tier(config.s3, s3_client) if config.s3 is not None else None
        self.metadata = metadata
        self._stats = KVStoreStats()
        self._locks: dict[str, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        self._pending: set[asyncio.Task[None]] = set()

    def stats(self) -> KVStoreStats:
        self._stats.bytes = {
            "ram": self.ram.used_bytes,
            "disk": self.disk.used_bytes,
            "s3": self.s3.used_bytes if self.s3 else 0,
        }
        return self._stats

    # -- restore -------------------------------------------------------------------------------
    async def load(
        self, model: str, fingerprint: str, session_id: str, prompt: list[int]
    ) -> KVRestore | None:
        """The saved state of this session if it shares at least ``min_tokens`` with
        ``prompt``; None otherwise (and for anything that fails its checks)."""
        key = session_key(model, session_id)
        found = self._find_in_ram(key, fingerprint)
        if found is None:
            # Lower tiers wait for a save of this session still being written.
            async with self._locks[key]:
                found = await self._find_below(key, model, fingerprint)
        if found is None:
            self._stats.misses += 1
            return None
        state, tier = found
        shared = common_prefix_len(list(state.tokens), prompt)
        if shared < self.config.min_tokens:
            self._stats.misses += 1
            return None
        self._stats.hits[tier] += 1
        self._report(lambda sink: sink.used(key, model, tier))
        return KVRestore(tokens=state.tokens, state=state.state, tier=tier)

    def _find_in_ram(self, key: str, fingerprint: str) -> tuple[SessionState, str] | None:
        state = self.ram.get(key)
        if state is None:
            return None
        if state.fingerprint == fingerprint:
            return state, "ram"
        self.ram.delete(key)
        return None

    async def _find_below(
        self, key: str, model: str, fingerprint: str
    ) -> tuple[SessionState, str] | None:
        lower: list[DiskTier | S3Tier] = [self.disk] + ([self.s3] if self.s3 else [])
        for tier in lower:
            try:
                blob = await asyncio.to_thread(tier.get, key)
            except Exception as exc:
                self._stats.errors += 1
                log.warning("kv store: reading %s from %s failed: %s", key[:12], tier.name, exc)
                continue
            if blob is None:
                continue
            try:
                state = await asyncio.to_thread(decode, blob)
            except CorruptBlobError as exc:
                self._stats.corrupt += 1
                log.warning("kv store: discarding %s blob %s: %s", tier.name, key[:12], exc)
                await self._delete_everywhere(key, model)
                return None
            if state.fingerprint != fingerprint or state.model != model:
                self._stats.stale += 1
                log.info(
                    "kv store: discarding %s blob %s of another model build", tier.name, key[:12]
                )
                await self._delete_everywhere(key, model)
                return None
            self.ram.put(key, state)
            if tier is not self.disk:
                await asyncio.to_thread(self._write_disk, key, blob)
            return state, tier.name
        return None

    # -- save ----------------------------------------------------------------------------------
    def save_later(
        self, model: str, fingerprint: str, session_id: str, tokens: list[int], state: bytes
    ) -> None:
        """Schedule :meth:`save` (from the event loop; the decode thread must not wait)."""
        task = asyncio.get_running_loop().create_task(
            self.save(model, fingerprint, session_id, tokens, state)
        )
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def save(
        self, model: str, fingerprint: str, session_id: str, tokens: list[int], state: bytes
    ) -> None:
        if len(tokens) < self.config.min_tokens:
            return
        key = session_key(model, session_id)
        decoded = SessionState(
            model=model,
            fingerprint=fingerprint,
            tokens=tuple(tokens),
            state=state,
            sha256=hashlib.sha256(state).hexdigest(),
            saved_at=time.time(),
        )
        self.ram.put(key, decoded)  # the next turn finds it at once, while the disk write runs
        async with self._locks[key]:
            try:
                blob = await asyncio.to_thread(encode, decoded, self.config.zstd_level)
                await asyncio.to_thread(self._write_disk, key, blob)
            except Exception as exc:
                self._stats.errors += 1
                log.warning("kv store: saving session %s to disk failed: %s", key[:12], exc)
                return
        self._stats.saves += 1
        self._report(
            lambda sink: sink.saved(
                key, model, fingerprint, len(tokens), "disk", decoded.sha256, len(blob)
            )
        )

    def _write_disk(self, key: str, blob: bytes) -> None:
        """Write through to disk, then move what no longer fits down to S3 (or delete it)."""
        if self.disk.budget <= 0:
            if self.s3 is not None:
                self.s3.put(key, blob)
            return
        self.disk.put(key, blob)
        for old in self.disk.evictable(keep=key):
            if self.s3 is not None:
                moved = self.disk.get(old)
                if moved is not None:
                    self.s3.put(old, moved)
                    self._stats.demoted += 1
            self.disk.delete(old)

    async def _delete_everywhere(self, key: str, model: str) -> None:
        self.ram.delete(key)
        tiers: list[DiskTier | S3Tier] = [self.disk] + ([self.s3] if self.s3 else [])
        for tier in tiers:
            try:
                await asyncio.to_thread(tier.delete, key)
            except Exception as exc:
                log.warning("kv store: deleting %s from %s failed: %s", key[:12], tier.name, exc)
        self._report(lambda sink: sink.removed(key, model))

    # -- metadata ------------------------------------------------------------------------------
    def _report(self, update: Callable[[KVMetadataSink], Awaitable[None]]) -> None:
        """Run ``update`` on the metadata sink in the background, if there is one."""
        if self.metadata is None:
            return
        task = asyncio.get_running_loop().create_task(_quietly(update(self.metadata)))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self) -> None:
        """Wait for saves and metadata updates in flight (shutdown, tests)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)


async def _quietly(work: Awaitable[None]) -> None:
    """Metadata is bookkeeping: a database outage must not fail a save or a restore."""
    try:
        await work
    except Exception as exc:
        log.warning("kv store: metadata update failed: %s", exc)


@runtime_checkable
class SessionEngine(Protocol):
    """An engine that can save and restore session KV state through a store."""

    def use_kv_store(self, store: SessionKVStore) -> None: ...

    async def attach_session(self, request: GenerationRequest) -> None: ...
