"""The closed-loop load of the gateway benchmarks (``gateway_overhead.py``, ``auth_overhead.py``).

``benchmarks/stub_upstream.py`` runs in its own process as the upstream; a HelixFlow in front
of it serves ``bench-model`` from it. The load: non-streamed ``/v1/chat/completions`` (one
short user message) from aiohttp workers, each sending its next request when the last one
ends (keep-alive, one connection pool), for a duration or a number of requests per level.
Every reply is checked (HTTP 200 and the stub's exact text); anything else counts as an error,
with the first messages kept. Per level: the wall time, every latency, and the CPU that the
load generator, the gateway's process group, the stub and the whole machine used meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import statistics
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Self, TypeVar

import aiohttp
import orjson

from _common import (
    REPO_ROOT,
    NotReady,
    free_port,
    group_cpu_seconds,
    helixflow_env,
    helixflow_python,
    machine_busy_seconds,
    percentile,
    run_async,
    server_process,
    wait_ready,
)
from stub_upstream import MODEL, REPLY_TEXT

STUB_SCRIPT = Path(__file__).resolve().with_name("stub_upstream.py")
PROMPT = "Say hello in five words."
WARMUP_CONCURRENCY = 16
"""Concurrency of the warm-up requests before the levels (not measured)."""
BUSY_OTHER_PCT = 20.0
"""Other processes' CPU % above which a level is flagged as measured on a busy machine."""
REQUEST_ERRORS = (aiohttp.ClientError, TimeoutError, ValueError, LookupError, TypeError)
"""What a failed request raises: refused, timed out, or a reply not shaped as expected."""


def ms(seconds: float | None) -> float | None:
    """Seconds as milliseconds, to the microsecond."""
    return None if seconds is None else round(seconds * 1000, 3)


def chat_request(**extra: Any) -> bytes:
    """The benchmark's chat completion: one short user message to ``bench-model``, at most
    16 tokens, plus ``extra`` fields."""
    messages = [{"role": "user", "content": PROMPT}]
    return orjson.dumps({"model": MODEL, "messages": messages, "max_tokens": 16, **extra})


def chat_headers(api_key: str | None) -> dict[str, str]:
    """A JSON request's headers, with ``api_key`` as the bearer token unless it is None."""
    headers = {"Content-Type": "application/json"}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


# --------------------------------------------------------------------------- measurements


@dataclass(slots=True)
class LoadLevel:
    """One concurrency level of one target: every request's outcome, and the CPU used meanwhile."""

    concurrency: int
    wall_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    client_cpu_s: float = 0.0
    gateway_cpu_s: float | None = None
    stub_cpu_s: float | None = None
    machine_cpu_s: float | None = None
    """Busy CPU of the whole machine during the level: the processes above and everything else."""

    @property
    def label(self) -> str:
        """The level in a note: ``c=16``."""
        return f"c={self.concurrency}"

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def requests(self) -> int:
        return self.ok + sum(self.errors.values())

    @property
    def rps(self) -> float:
        return self.ok / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def side_cpu_s(self) -> float:
        """CPU of further processes a subclass watches (none here)."""
        return 0.0

    @property
    def other_cpu_s(self) -> float | None:
        """CPU of every other process on the machine (not the client, the gateway, the stub or
        the side processes: other work on a shared machine)."""
        if self.machine_cpu_s is None:
            return None
        own = self.client_cpu_s + (self.gateway_cpu_s or 0.0) + (self.stub_cpu_s or 0.0)
        own += self.side_cpu_s
        return max(self.machine_cpu_s - own, 0.0)

    def cpu_pct(self, seconds: float | None) -> float | None:
        """``seconds`` of CPU in % of one core over the level's wall time."""
        if seconds is None or self.wall_s <= 0:
            return None
        return round(100 * seconds / self.wall_s, 1)

    def load_summary(self) -> dict[str, Any]:
        """Requests, errors, throughput and latencies (the start of a level's summary)."""
        lat = self.latencies
        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "ok": self.ok,
            "errors": sum(self.errors.values()),
            "error_samples": [f"{n} x {msg}" for msg, n in self.errors.most_common(3)],
            "wall_s": round(self.wall_s, 3),
            "rps": round(self.rps, 1),
            "latency_mean_ms": ms(statistics.fmean(lat)) if lat else None,
            "latency_p50_ms": ms(percentile(lat, 50)),
            "latency_p90_ms": ms(percentile(lat, 90)),
            "latency_p99_ms": ms(percentile(lat, 99)),
        }


L = TypeVar("L", bound=LoadLevel)


@dataclass(slots=True, kw_only=True)
class LoadSettings:
    """How much load per level (:func:`add_load_arguments`), and the run's limits and
    directory (:func:`add_run_arguments`)."""

    concurrency: list[int]
    duration_s: float
    requests: int | None
    warmup: int
    timeout_s: float
    ready_timeout_s: float
    work_dir: Path

    @classmethod
    def from_args(cls, args: argparse.Namespace, work_dir: Path, **more: Any) -> Self:
        """From the parsed options (``args.concurrency`` too), and ``more`` fields."""
        return cls(
            concurrency=args.concurrency,
            duration_s=args.duration,
            requests=args.requests,
            warmup=args.warmup,
            timeout_s=args.timeout,
            ready_timeout_s=args.ready_timeout,
            work_dir=work_dir,
            **more,
        )

    @property
    def pool_size(self) -> int:
        return max([*self.concurrency, WARMUP_CONCURRENCY])

    def load_note(self) -> str:
        """How long each level lasts, after how much warm-up."""
        per_level = f"{self.requests} requests" if self.requests else f"{self.duration_s:g} s"
        return f"{per_level} per level after {self.warmup} warm-up requests"


@dataclass(slots=True)
class LoadRun(Generic[L]):
    """One target put under load: how it was started, its levels, whether it failed."""

    name: str
    command: list[str] = field(default_factory=list)
    levels: list[L] = field(default_factory=list)
    failed: str | None = None
    log_file: str | None = None
    sent: int = 0
    """Requests sent, probes and warm-up included."""

    def count_warm_up(self, warm: LoadLevel) -> None:
        """Count the warm-up's requests; RuntimeError if any of them failed."""
        self.sent += warm.requests
        if warm.errors:
            msg, n = warm.errors.most_common(1)[0]
            raise RuntimeError(f"warm-up: {n} of {warm.requests} failed: {msg}")

    def add(self, level: L) -> None:
        """A measured level."""
        self.levels.append(level)
        self.sent += level.requests

    async def load(
        self,
        run_one: Callable[[L, float | None, int | None], Awaitable[L]],
        new_level: Callable[[int], L],
        settings: LoadSettings,
        progress: Callable[[str, L], None],
    ) -> None:
        """The warm-up (``settings.warmup`` requests at :data:`WARMUP_CONCURRENCY`, not
        measured), then each level of ``settings.concurrency``: ``run_one(level, duration_s,
        requests)`` runs a level (see :func:`run_level`)."""
        if settings.warmup:
            warm = await run_one(new_level(WARMUP_CONCURRENCY), None, settings.warmup)
            self.count_warm_up(warm)
        for concurrency in settings.concurrency:
            level = await run_one(new_level(concurrency), settings.duration_s, settings.requests)
            self.add(level)
            progress(self.name, level)


def busy_levels(runs: Mapping[str, LoadRun[Any]]) -> list[str]:
    """Levels during which other processes used a noticeable share of the machine."""
    out = []
    for name, run in runs.items():
        for level in run.levels:
            other = level.cpu_pct(level.other_cpu_s)
            if other is not None and other > BUSY_OTHER_PCT:
                out.append(f"{name} {level.label} ({other:.0f} %)")
    return out


def busy_note(busy: Sequence[str]) -> str:
    """What :func:`busy_levels` found, as a sentence without its end."""
    return f"other processes used more than {BUSY_OTHER_PCT:g} % of a core during {', '.join(busy)}"


def markdown_preamble(meta: Mapping[str, Any], shared_by: str, notes: str) -> list[str]:
    """A Markdown report's first lines: when, on what (the cores ``shared_by`` whom), which
    commit and versions, ``notes``, and the command."""
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    return [
        f"Measured {meta['date']} on {meta['cpus']} CPUs ({meta['machine']}), shared by "
        f"{shared_by} (nothing pinned); commit {meta['git_commit']}; {versions}. {notes}",
        "",
        f"Command: `{meta['command']}`",
        "",
    ]


# --------------------------------------------------------------------------- load generator


class ChatClient(Generic[L]):
    """Closed-loop load against one base URL (``.../v1``), with ``api_key`` as the bearer
    token (None: no Authorization header)."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, api_key: str | None) -> None:
        self.session = session
        self.url = base_url + "/chat/completions"
        self.headers = chat_headers(api_key)
        self.body = chat_request()

    def accept(self, headers: Mapping[str, str], level: L) -> str | None:
        """Further checks of a right reply, by its headers (recording what they say in
        ``level``): an error message, or None to count the reply. None here."""
        return None

    async def chat(self, level: L) -> None:
        """One non-streamed chat completion: its latency, or an error, into ``level``."""
        start = time.perf_counter()
        try:
            async with self.session.post(self.url, data=self.body, headers=self.headers) as resp:
                raw = await resp.read()
                status = resp.status
                headers = resp.headers
            elapsed = time.perf_counter() - start
            if status != 200:
                level.errors[f"HTTP {status}: {raw[:100].decode(errors='replace')}"] += 1
                return
            content = orjson.loads(raw)["choices"][0]["message"]["content"]
            if content != REPLY_TEXT:
                level.errors[f"wrong content: {str(content)[:60]!r}"] += 1
                return
            if (problem := self.accept(headers, level)) is not None:
                level.errors[problem] += 1
                return
            level.latencies.append(elapsed)
        except REQUEST_ERRORS as exc:
            level.errors[f"{type(exc).__name__}: {exc}"[:120]] += 1


@dataclass(frozen=True, slots=True)
class Watched:
    """Whose CPU a level counts besides the load generator's and the machine's: the gateway's
    process group and the stub's (None: not counted)."""

    gateway_pgid: int | None
    stub_pgid: int | None


async def run_level(
    send: Callable[[L], Awaitable[None]],
    level: L,
    duration_s: float | None,
    requests: int | None,
    watched: Watched,
) -> L:
    """``level.concurrency`` workers, each sending its next request when the last one ends,
    until ``requests`` were sent or ``duration_s`` passed."""
    issued = 0
    deadline = 0.0

    async def worker() -> None:
        nonlocal issued
        while True:
            if requests is not None:
                if issued >= requests:
                    return
                issued += 1
            elif time.perf_counter() >= deadline:
                return
            await send(level)

    def group_cpu(pgid: int | None) -> float | None:
        return None if pgid is None else group_cpu_seconds(pgid)

    gw0, stub0 = group_cpu(watched.gateway_pgid), group_cpu(watched.stub_pgid)
    machine0 = machine_busy_seconds()
    cpu0 = time.process_time()
    start = time.perf_counter()
    deadline = start + (duration_s or 0.0)
    await asyncio.gather(*(worker() for _ in range(level.concurrency)))
    level.wall_s = time.perf_counter() - start
    level.client_cpu_s = time.process_time() - cpu0
    if machine0 is not None and (machine1 := machine_busy_seconds()) is not None:
        level.machine_cpu_s = machine1 - machine0
    if gw0 is not None and (gw1 := group_cpu(watched.gateway_pgid)) is not None:
        level.gateway_cpu_s = gw1 - gw0
    if stub0 is not None and (stub1 := group_cpu(watched.stub_pgid)) is not None:
        level.stub_cpu_s = stub1 - stub0
    return level


@contextlib.asynccontextmanager
async def load_session(pool_size: int, timeout_s: float) -> AsyncIterator[aiohttp.ClientSession]:
    """The load generator's session: keep-alive connections, ``pool_size`` of them at most,
    ``timeout_s`` per request."""
    connector = aiohttp.TCPConnector(limit=pool_size, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        yield session


# --------------------------------------------------------------------------- servers


def chat_call(base_url: str, api_key: str | None) -> tuple[int, dict[str, str], str]:
    """One blocking chat completion: (status, headers lower-cased, start of the body);
    status 0 when nothing answered."""
    req = urllib.request.Request(
        base_url + "/chat/completions", data=chat_request(), headers=chat_headers(api_key)
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            hdrs = {k.lower(): v for k, v in resp.headers.items()}
            return int(resp.status), hdrs, resp.read(300).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        hdrs = {k.lower(): v for k, v in exc.headers.items()}
        return int(exc.code), hdrs, exc.read(300).decode(errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        return 0, {}, str(exc)


def probe_chat(base_url: str, api_key: str | None) -> dict[str, str]:
    """One chat completion; NotReady unless it answers 200 with the stub's text. Its headers
    (lower-cased)."""
    code, headers, text = chat_call(base_url, api_key)
    if code != 200:
        raise NotReady(f"{MODEL} answered HTTP {code}: {text[:200]}")
    if REPLY_TEXT not in text:
        raise NotReady(f"unexpected reply: {text[:200]}")
    return headers


@dataclass(frozen=True, slots=True)
class Stub:
    """The stub upstream, running."""

    url: str
    pid: int
    command: list[str]
    log_file: Path


@contextlib.contextmanager
def stub_upstream(work_dir: Path) -> Iterator[Stub]:
    """``stub_upstream.py`` on a free port (its log in ``work_dir``), once it answers; stopped
    on the way out."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, str(STUB_SCRIPT), "--port", str(port)]
    log_file = work_dir / "stub.log"
    with server_process(cmd, log_file=log_file, cwd=work_dir, env=os.environ) as proc:
        run_async(wait_ready(proc, url + "/v1/models", 30, "stub upstream"))
        yield Stub(url, proc.pid, cmd, log_file)


def helixflow_config(stub_url: str, **sections: Any) -> dict[str, Any]:
    """A HelixFlow configuration serving ``bench-model`` from the stub, telemetry on, plus
    ``sections``."""
    return {
        "providers": [{"name": "stub", "base_url": stub_url + "/v1", "models": [MODEL]}],
        "telemetry": {"enabled": True},
        **sections,
    }


def helixflow_command(*args: str) -> list[str]:
    """``python -m helixflow <args>`` with the project's venv."""
    return [str(helixflow_python()), "-m", "helixflow", *args]


def helixflow_data_env(data_dir: Path) -> dict[str, str]:
    """The environment of a HelixFlow keeping its data (SQLite, secret) in ``data_dir``."""
    env = helixflow_env()
    env["HELIXFLOW_DATA_DIR"] = str(data_dir)
    return env


# --------------------------------------------------------------------------- CLI


def add_load_arguments(parser: argparse.ArgumentParser, *, unit: str, duration_s: float) -> None:
    """``--duration``, ``--requests`` and ``--warmup``, per level and ``unit`` (a target, a
    configuration)."""
    add = parser.add_argument
    add(
        "--duration",
        type=float,
        default=duration_s,
        help=f"seconds per level and {unit} (default: {duration_s:g}); ignored with --requests",
    )
    add(
        "--requests",
        type=int,
        default=None,
        help=f"a fixed number of requests per level and {unit} instead of --duration",
    )
    add(
        "--warmup",
        type=int,
        default=300,
        help=f"warm-up requests per {unit} at concurrency {WARMUP_CONCURRENCY}, not measured "
        "(default: 300)",
    )


def add_run_arguments(
    parser: argparse.ArgumentParser, *, ready: str, json_out: Path, work_dir: str
) -> None:
    """``--timeout``, ``--ready-timeout`` (for ``ready``), ``--json-out`` (default
    ``json_out``), ``--markdown-out`` and ``--keep-logs`` (of ``work_dir``: what it holds)."""
    add = parser.add_argument
    add(
        "--timeout",
        type=float,
        default=30.0,
        help="per-request timeout in seconds; a request past it counts as an error (default: 30)",
    )
    add(
        "--ready-timeout",
        type=float,
        default=180.0,
        help=f"seconds to wait for {ready} to be ready (default: 180)",
    )
    add(
        "--json-out",
        type=Path,
        default=json_out,
        help=f"machine-readable results (default: {json_out.relative_to(REPO_ROOT)})",
    )
    add("--markdown-out", type=Path, default=None, help="also write the tables as Markdown here")
    add(
        "--keep-logs",
        action="store_true",
        help=f"keep the temporary directory ({work_dir}) after a good run",
    )
