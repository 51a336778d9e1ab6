"""Streamed chat throughput of HelixFlow against llama-cpp-python's server and llama-server.

Within one run, on the same GGUF file, this starts each server in turn on a free port of
127.0.0.1 (never two at once), waits until it is ready, warms it up, then sends streamed
``/v1/chat/completions`` requests (temperature 0, repeat penalty 1.0, a handful of varied
short prompts) at each concurrency level from a closed-loop aiohttp load generator: N workers
keep N requests in flight until the level's requests are done. It stops the server before
starting the next.

Servers (``--servers``): ``helixflow`` (HelixFlow with ``flash_attention: off``, its default),
``helixflow-fa`` (the same with ``flash_attention: auto``), ``llama-cpp-python`` (flash
attention off, its default) and ``llama-server`` (``-fa auto``, its default, which turns it on
for the CPU); ``trivial`` is described below.

Rounds. On a small shared machine the same configuration measured twice varies by about
+-15 %, so one pass per server makes the ratios unreliable. The whole sequence therefore runs
``--rounds`` times (default 3): each round starts every server in turn, runs every
concurrency level and stops it, and the order rotates from round to round (A B C, then B C A,
then C A B) so that no server always runs in the same slot. Per server and level the tables
give the median tok/s over the rounds and its min-max; TTFT and latency percentiles pool all
requests of all rounds. HelixFlow / peer ratios are taken within each round (the two servers
measured minutes apart) and reported as the median ratio with its min-max over the rounds,
for both HelixFlow variants; the targets (concurrency 8: >= 2x llama-cpp-python and >= 0.9x
llama-server; concurrency 1: >= 0.95x llama-cpp-python) are judged on the median ratio. It
only reports: no threshold fails the run. ``--json-out`` keeps every round's numbers and every
request. A rough estimate of the run time is printed at the start and refined after each
round.

Output tokens are counted per request from ``usage.completion_tokens`` where the server
sends it for ``stream_options.include_usage`` (HelixFlow, llama-server), otherwise as the
number of non-empty content deltas (llama-cpp-python ignores include_usage). Each table says
which. As a server-independent cross-check every reply's text is also re-tokenized with the
GGUF's own vocabulary ("retok tok/s"). llama-server reports one token more than it streamed
when it stops on end-of-sequence, which slightly favours it.

Is the load generator the bottleneck? ``--servers trivial`` points it at a trivial SSE server
(this script, in a child process) that streams ``max_tokens`` chunks as fast as it can.
Measured on the 2-core development machine (``--servers trivial --requests 200``): about
70,000 chunks/s at concurrency 1 and 100,000-120,000 at 4-16, the client then using one full
core (~10 us of client CPU per streamed token): several hundred times what the real servers
reach (70-300 tok/s), where the client uses 1-3 % of a core ("client CPU" column). It still
shares the machine's cores with the server under test, as a real client on the host would.

Every request opens its own connection (llama-server drops kept-alive connections after a
streamed reply). The same eight prompts recur at every level, so servers with a prompt cache
(HelixFlow, llama-server) may reuse the prompts' KV after the first level, as they would a
shared system prompt. Every round starts each server afresh, so no cache outlives a round.

Example (the full default run, 4 servers x 3 rounds, takes about 14 minutes on 2 cores):
  .venv/bin/python benchmarks/engine_throughput.py \\
      --json-out benchmarks/results/engine.json --markdown-out docs/benchmarks-latest.md

Set-up: ``pip install sse-starlette starlette-context`` (the pure-Python extras of
``llama-cpp-python[server]``; do not reinstall llama-cpp-python itself) and
``benchmarks/build_llama_server.sh`` for llama-server. A missing peer is skipped with a note.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from _common import (
    fmt,
    free_port,
    helixflow_env,
    int_list,
    markdown_table,
    percentile,
    process_cpu_seconds,
    run_metadata,
    server_process,
    wait_ready,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LLAMA_SERVER = REPO_ROOT / ".build" / "llama-server" / "bin" / "llama-server"
MODEL_NAME = "bench"
HELIXFLOW_VARIANTS = ("helixflow", "helixflow-fa")
PEERS = ("llama-cpp-python", "llama-server")
# (concurrency, peer, minimum HelixFlow / peer throughput ratio): the targets.
TARGETS: tuple[tuple[int, str, float], ...] = (
    (1, "llama-cpp-python", 0.95),
    (8, "llama-cpp-python", 2.0),
    (8, "llama-server", 0.9),
)
WARMUP_MAX_TOKENS = 32
# For the run-time estimate only: start-up, stop and settling per server and round.
START_STOP_S = 4.0
PROMPTS: tuple[str, ...] = (
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle stays upright.",
    "List some tips for growing tomatoes at home.",
    "What is the difference between weather and climate?",
    "Describe a busy market in the morning.",
    "Give me a recipe for a simple vegetable soup.",
    "Why do cats purr?",
    "Summarize the water cycle for a ten-year-old.",
)

# Wide enough for the tables when the output is a pipe or a narrow terminal.
console = Console(width=max(150, shutil.get_terminal_size().columns))


# --------------------------------------------------------------------------- measurements


@dataclass(slots=True)
class RequestResult:
    ok: bool
    latency_s: float
    ttft_s: float | None = None
    chunks: int = 0
    usage_tokens: int | None = None
    finish_reason: str | None = None
    text: str = ""
    error: str | None = None
    retok_tokens: int | None = None

    @property
    def tokens(self) -> int:
        return self.usage_tokens if self.usage_tokens is not None else self.chunks


@dataclass(slots=True)
class LevelResult:
    concurrency: int
    wall_s: float
    client_cpu_s: float
    server_cpu_s: float | None
    results: list[RequestResult]

    def summary(self) -> dict[str, Any]:
        ok = [r for r in self.results if r.ok]
        tokens = sum(r.tokens for r in ok)
        retok = [r.retok_tokens for r in ok]
        ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
        latency = [r.latency_s for r in ok]
        errors = sorted({r.error for r in self.results if r.error})
        return {
            "concurrency": self.concurrency,
            "requests": len(self.results),
            "ok": len(ok),
            "errors": errors[:5],
            "output_tokens": tokens,
            "content_chunks": sum(r.chunks for r in ok),
            "usage_reported": sum(r.usage_tokens is not None for r in ok),
            "usage_vs_chunks_mismatch": sum(
                r.usage_tokens is not None and r.usage_tokens != r.chunks for r in ok
            ),
            "wall_s": round(self.wall_s, 3),
            "tok_s": round(tokens / self.wall_s, 2) if self.wall_s > 0 else 0.0,
            "retok_tok_s": (
                round(sum(t for t in retok if t is not None) / self.wall_s, 2)
                if ok and None not in retok and self.wall_s > 0
                else None
            ),
            "ttft_p50_ms": _ms(percentile(ttft, 50)),
            "ttft_p95_ms": _ms(percentile(ttft, 95)),
            "latency_p50_ms": _ms(percentile(latency, 50)),
            "latency_p99_ms": _ms(percentile(latency, 99)),
            "finish_length": sum(r.finish_reason == "length" for r in ok),
            "client_cpu_pct": round(100 * self.client_cpu_s / self.wall_s, 1),
            "server_cpu_pct": (
                round(100 * self.server_cpu_s / self.wall_s, 1)
                if self.server_cpu_s is not None
                else None
            ),
        }


def pooled_summary(levels: Sequence[tuple[int, LevelResult]]) -> dict[str, Any]:
    """One server's level over several rounds, given as (round number, level) pairs.

    tok/s, retok tok/s and CPU % are medians over the rounds (with tok/s's min, max and
    per-round values); TTFT and latency percentiles pool every request of every round;
    request, token and stop counts add up.
    """
    per_round = {number: level.summary() for number, level in levels}
    summaries = list(per_round.values())
    ok = [r for _, level in levels for r in level.results if r.ok]
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    latency = [r.latency_s for r in ok]
    tok_s = [float(s["tok_s"]) for s in summaries]
    retok = [s["retok_tok_s"] for s in summaries]
    server_cpu = [s["server_cpu_pct"] for s in summaries]

    def total(key: str) -> int:
        return sum(int(s[key]) for s in summaries)

    return {
        "concurrency": levels[0][1].concurrency,
        "rounds": len(levels),
        "requests": total("requests"),
        "ok": total("ok"),
        "errors": sorted({e for s in summaries for e in s["errors"]})[:5],
        "output_tokens": total("output_tokens"),
        "usage_vs_chunks_mismatch": total("usage_vs_chunks_mismatch"),
        "tok_s": round(statistics.median(tok_s), 2),
        "tok_s_min": min(tok_s),
        "tok_s_max": max(tok_s),
        "tok_s_by_round": {str(number): s["tok_s"] for number, s in per_round.items()},
        "retok_tok_s": None if None in retok else round(statistics.median(retok), 2),
        "ttft_p50_ms": _ms(percentile(ttft, 50)),
        "ttft_p95_ms": _ms(percentile(ttft, 95)),
        "latency_p50_ms": _ms(percentile(latency, 50)),
        "latency_p99_ms": _ms(percentile(latency, 99)),
        "finish_length": total("finish_length"),
        "client_cpu_pct": round(statistics.median(s["client_cpu_pct"] for s in summaries), 1),
        "server_cpu_pct": (None if None in server_cpu else round(statistics.median(server_cpu), 1)),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


# --------------------------------------------------------------------------- servers


@dataclass(slots=True)
class BenchConfig:
    model: Path
    concurrency: list[int]
    requests: int | None
    max_tokens: int
    threads: int | None
    slot_context: int
    warmup: int
    ready_timeout: float
    llama_server_bin: Path
    log_dir: Path
    rounds: int = 1

    @property
    def parallel(self) -> int:
        return max(self.concurrency)

    def requests_for(self, concurrency: int) -> int:
        wanted = self.requests if self.requests is not None else max(8, 2 * concurrency)
        return max(wanted, concurrency)

    def max_output_tokens(self) -> int:
        """Output tokens of one server in one round at most, warm-up included."""
        levels = sum(self.requests_for(c) for c in self.concurrency) * self.max_tokens
        return levels + self.warmup * WARMUP_MAX_TOKENS


class ServerKind(ABC):
    """How to start one kind of server and how to talk to it."""

    name: ClassVar[str]
    ready_path: ClassVar[str]
    # Output tok/s for the run-time estimate only (SmolLM2-135M Q4_1 on the 2-core machine).
    nominal_tok_s: ClassVar[float] = 160.0

    @abstractmethod
    def command(self, cfg: BenchConfig, port: int) -> list[str]: ...

    def missing(self, cfg: BenchConfig) -> str | None:
        """Why this server cannot run here, or None."""
        return None

    def env(self) -> dict[str, str]:
        return dict(os.environ)


class HelixFlow(ServerKind):
    name = "helixflow"
    ready_path = "/ready"
    # Set explicitly, so the two variants stay what their names say if the default changes.
    flash_attention: ClassVar[str] = "off"

    def command(self, cfg: BenchConfig, port: int) -> list[str]:
        model: dict[str, Any] = {
            "id": MODEL_NAME,
            "path": str(cfg.model),
            "parallel": cfg.parallel,
            "context_size": cfg.parallel * cfg.slot_context,
            "flash_attention": self.flash_attention,
        }
        if cfg.threads is not None:
            model["threads"] = cfg.threads
        config = {"models": [model], "data_dir": str(cfg.log_dir / f"{self.name}-data")}
        config_file = cfg.log_dir / f"{self.name}.yaml"
        config_file.write_text(json.dumps(config, indent=2))  # JSON is valid YAML
        script = Path(sys.executable).with_name("helixflow")
        launcher = [str(script)] if script.exists() else [sys.executable, "-m", "helixflow"]
        return [*launcher, "serve", "--port", str(port), "--config", str(config_file)]

    def env(self) -> dict[str, str]:
        return helixflow_env()


class HelixFlowFlashAttention(HelixFlow):
    """HelixFlow with llama.cpp's flash attention left to llama.cpp ("auto": on for the CPU).

    Not HelixFlow's default: the CPU kernel can make a temperature-0 reply depend on how the
    prompt was chunked (prefix reuse) for some models.
    """

    name = "helixflow-fa"
    flash_attention = "auto"


class LlamaCppPython(ServerKind):
    name = "llama-cpp-python"
    ready_path = "/v1/models"
    nominal_tok_s = 80.0

    def missing(self, cfg: BenchConfig) -> str | None:
        absent = [m for m in ("sse_starlette", "starlette_context") if not _has_module(m)]
        if absent:
            return (
                f"python modules {', '.join(absent)} missing: `{sys.executable} -m pip install "
                "sse-starlette starlette-context` (llama-cpp-python[server]'s extras)"
            )
        return None

    def command(self, cfg: BenchConfig, port: int) -> list[str]:
        cmd = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(cfg.model),
            "--model_alias", MODEL_NAME, "--host", "127.0.0.1", "--port", str(port),
            "--n_ctx", str(max(2048, cfg.slot_context)),
            # True (its default) lets a new request cut off the running stream.
            "--interrupt_requests", "False",
        ]  # fmt: skip
        if cfg.threads is not None:
            cmd += ["--n_threads", str(cfg.threads)]
        return cmd


class LlamaServer(ServerKind):
    name = "llama-server"
    ready_path = "/health"
    nominal_tok_s = 170.0

    def missing(self, cfg: BenchConfig) -> str | None:
        if not os.access(cfg.llama_server_bin, os.X_OK):
            return f"{cfg.llama_server_bin} not found: run benchmarks/build_llama_server.sh"
        return None

    def command(self, cfg: BenchConfig, port: int) -> list[str]:
        cmd = [
            str(cfg.llama_server_bin), "-m", str(cfg.model), "--alias", MODEL_NAME,
            "--host", "127.0.0.1", "--port", str(port),
            "-np", str(cfg.parallel), "-c", str(cfg.parallel * cfg.slot_context),
        ]  # fmt: skip
        if cfg.threads is not None:
            cmd += ["-t", str(cfg.threads)]
        return cmd


class Trivial(ServerKind):
    """A server with no model: measures the load generator's own ceiling."""

    name = "trivial"
    ready_path = "/health"
    nominal_tok_s = 50_000.0

    def command(self, cfg: BenchConfig, port: int) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "--trivial-server-port", str(port)]


SERVER_KINDS: dict[str, ServerKind] = {
    k.name: k
    for k in (HelixFlow(), HelixFlowFlashAttention(), LlamaCppPython(), LlamaServer(), Trivial())
}


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


@dataclass(slots=True)
class RunningServer:
    kind: ServerKind
    proc: subprocess.Popen[bytes]
    base_url: str
    log_file: Path
    command: list[str]


@contextlib.contextmanager
def running_server(kind: ServerKind, cfg: BenchConfig, round_no: int) -> Iterator[RunningServer]:
    port = free_port()
    cmd = kind.command(cfg, port)
    log_file = cfg.log_dir / f"{kind.name}-round{round_no}.log"
    with server_process(cmd, log_file=log_file, cwd=cfg.log_dir, env=kind.env()) as proc:
        yield RunningServer(kind, proc, f"http://127.0.0.1:{port}", log_file, cmd)


# --------------------------------------------------------------------------- load generator


def request_body(prompt: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        # llama-cpp-python defaults to 1.1, the others to 1.0; all three accept the field.
        "repeat_penalty": 1.0,
    }


async def stream_one(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> RequestResult:
    """Send one streamed chat completion and time it."""
    start = time.perf_counter()
    result = RequestResult(ok=False, latency_s=0.0)
    parts: list[str] = []
    try:
        async with session.post(url, json=body) as resp:
            if resp.status != 200:
                result.error = f"HTTP {resp.status}: {(await resp.text())[:120]}"
                return result
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    break
                _take_chunk(orjson.loads(payload), result, parts, start)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:160]
    finally:
        result.latency_s = time.perf_counter() - start
        result.text = "".join(parts)
    if result.error is None and result.finish_reason is None:
        result.error = "stream ended without finish_reason"
    result.ok = result.error is None
    return result


def _take_chunk(
    chunk: dict[str, Any], result: RequestResult, parts: list[str], start: float
) -> None:
    if chunk.get("error"):
        result.error = f"error chunk: {str(chunk['error'])[:120]}"
        return
    usage = chunk.get("usage")
    if usage and usage.get("completion_tokens") is not None:
        result.usage_tokens = int(usage["completion_tokens"])
    for choice in chunk.get("choices") or ():
        content = (choice.get("delta") or {}).get("content")
        if content:
            if result.ttft_s is None:
                result.ttft_s = time.perf_counter() - start
            result.chunks += 1
            parts.append(content)
        if choice.get("finish_reason"):
            result.finish_reason = choice["finish_reason"]


async def run_level(
    session: aiohttp.ClientSession, url: str, bodies: list[dict[str, Any]], concurrency: int
) -> tuple[list[RequestResult], float]:
    """Closed loop: `concurrency` workers each send their next request as the last one ends."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(bodies)):
        queue.put_nowait(i)
    results: list[RequestResult | None] = [None] * len(bodies)

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            results[i] = await stream_one(session, url, bodies[i])

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    return [r for r in results if r is not None], wall


async def bench_server(server: RunningServer, cfg: BenchConfig) -> list[LevelResult]:
    url = server.base_url + server.kind.ready_path
    await wait_ready(server.proc, url, cfg.ready_timeout, server.kind.name)
    url = server.base_url + "/v1/chat/completions"
    # A new connection per request: llama-server closes a connection after each streamed
    # reply while announcing keep-alive, and a reused dead connection fails the next request
    # ("Can not write request body"). A loopback connect costs well under a millisecond.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        warm = [
            request_body(PROMPTS[i % len(PROMPTS)], WARMUP_MAX_TOKENS) for i in range(cfg.warmup)
        ]
        warm_results, _ = await run_level(session, url, warm, min(len(warm), 4) or 1)
        failed = [r.error for r in warm_results if not r.ok]
        if failed:
            raise RuntimeError(f"warm-up failed: {failed[0]}")
        levels = []
        for concurrency in cfg.concurrency:
            n = cfg.requests_for(concurrency)
            bodies = [request_body(PROMPTS[i % len(PROMPTS)], cfg.max_tokens) for i in range(n)]
            cpu0, srv0 = time.process_time(), process_cpu_seconds(server.proc.pid)
            results, wall = await run_level(session, url, bodies, concurrency)
            cpu1, srv1 = time.process_time(), process_cpu_seconds(server.proc.pid)
            srv_cpu = None if srv0 is None or srv1 is None else srv1 - srv0
            levels.append(LevelResult(concurrency, wall, cpu1 - cpu0, srv_cpu, results))
            s = levels[-1].summary()
            console.print(
                f"  {server.kind.name} c={concurrency}: {s['ok']}/{s['requests']} ok, "
                f"{s['tok_s']} tok/s"
            )
    return levels


# --------------------------------------------------------------------------- the run


@dataclass(slots=True)
class ServerRun:
    """One server in one round."""

    name: str
    round_no: int
    command: list[str] = field(default_factory=list)
    levels: list[LevelResult] = field(default_factory=list)
    failed: str | None = None
    log_file: str | None = None
    wall_s: float = 0.0

    def level(self, concurrency: int) -> LevelResult | None:
        return next((lv for lv in self.levels if lv.concurrency == concurrency), None)

    def tok_s(self, concurrency: int) -> float | None:
        level = self.level(concurrency)
        return None if level is None else float(level.summary()["tok_s"])


@dataclass(slots=True)
class Round:
    number: int
    order: list[str]
    runs: dict[str, ServerRun] = field(default_factory=dict)
    wall_s: float = 0.0


@dataclass(slots=True)
class Results:
    servers: list[str]
    """The servers that ran, in the order of round 1 (the order given)."""
    skipped: dict[str, str]
    """Servers that cannot run here: why."""
    rounds: list[Round] = field(default_factory=list)

    def runs_of(self, name: str) -> list[ServerRun]:
        return [rnd.runs[name] for rnd in self.rounds if name in rnd.runs]

    def pooled(self, name: str, concurrency: int) -> dict[str, Any] | None:
        """The level over all rounds that measured it; None if none did."""
        levels = [
            (run.round_no, level)
            for run in self.runs_of(name)
            if (level := run.level(concurrency)) is not None
        ]
        return pooled_summary(levels) if levels else None

    def ratios(self, mine: str, theirs: str, concurrency: int) -> dict[int, float]:
        """tok/s of `mine` / tok/s of `theirs` in each round that measured both: round -> ratio."""
        out = {}
        for rnd in self.rounds:
            a, b = rnd.runs.get(mine), rnd.runs.get(theirs)
            x = a.tok_s(concurrency) if a else None
            y = b.tok_s(concurrency) if b else None
            if x and y:
                out[rnd.number] = x / y
        return out

    def failures(self) -> list[ServerRun]:
        return [run for rnd in self.rounds for run in rnd.runs.values() if run.failed]


def rotated(names: Sequence[str], round_index: int) -> list[str]:
    """Round 0: A B C; round 1: B C A; round 2: C A B; ..."""
    k = round_index % len(names) if names else 0
    return [*names[k:], *names[:k]]


def estimate_s(cfg: BenchConfig, names: Sequence[str]) -> float:
    """Rough run time: every reply at max_tokens, each server at its nominal speed."""
    tokens = cfg.max_output_tokens()
    per_round = sum(START_STOP_S + tokens / SERVER_KINDS[n].nominal_tok_s for n in names)
    return cfg.rounds * per_round


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def run_rounds(names: Sequence[str], cfg: BenchConfig, retok: Retokenizer) -> Results:
    skipped = {n: why for n in names if (why := SERVER_KINDS[n].missing(cfg)) is not None}
    for name, why in skipped.items():
        console.print(f"[yellow]skipping {name}:[/yellow] {escape(why)}")
    active = [n for n in names if n not in skipped]
    results = Results(servers=active, skipped=skipped)
    if not active:
        return results
    console.print(
        f"{cfg.rounds} round(s) x {len(active)} server(s), up to {cfg.max_output_tokens():,} "
        f"output tokens per server and round: about {_duration(estimate_s(cfg, active))} "
        "(rough: the default model's speed on 2 cores; refined after each round)"
    )
    start = time.monotonic()
    for index in range(cfg.rounds):
        rnd = Round(index + 1, rotated(active, index))
        results.rounds.append(rnd)
        round_start = time.monotonic()
        for name in rnd.order:
            rnd.runs[name] = run_one(SERVER_KINDS[name], cfg, retok, rnd.number)
        rnd.wall_s = time.monotonic() - round_start
        left = (cfg.rounds - rnd.number) * (time.monotonic() - start) / rnd.number
        console.print(
            f"round {rnd.number}/{cfg.rounds} took {_duration(rnd.wall_s)}"
            + (f"; about {_duration(left)} left" if left else ""),
            style="bold",
        )
    return results


def run_one(kind: ServerKind, cfg: BenchConfig, retok: Retokenizer, round_no: int) -> ServerRun:
    run = ServerRun(kind.name, round_no)
    console.rule(f"[bold]round {round_no}/{cfg.rounds}: {kind.name}")
    start = time.monotonic()
    with running_server(kind, cfg, round_no) as server:
        run.command, run.log_file = server.command, str(server.log_file)
        console.print("  " + " ".join(server.command), style="dim", soft_wrap=True, markup=False)
        try:
            run.levels = asyncio.run(bench_server(server, cfg))
        except Exception as exc:  # report it and go on with the next server
            run.failed = f"{type(exc).__name__}: {exc}"
            console.print(
                f"[red]{kind.name} failed:[/red] {escape(run.failed)}; log: {server.log_file}"
            )
    for level in run.levels:
        for r in level.results:
            r.retok_tokens = retok.count(r.text) if r.ok else None
    time.sleep(2)  # let the CPU settle before the next server
    run.wall_s = time.monotonic() - start
    return run


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class Retokenizer:
    """Counts the tokens of a reply's text with the GGUF's vocabulary (a cross-check)."""

    def __init__(self, model: Path) -> None:
        self._llm: Any = None
        try:
            from llama_cpp import Llama

            with _quiet_stderr():  # llama.cpp logs from C, past verbose=False
                self._llm = Llama(model_path=str(model), vocab_only=True, verbose=False)
        except Exception as exc:
            console.print(f"[yellow]no re-tokenization cross-check:[/yellow] {escape(str(exc))}")

    def count(self, text: str) -> int | None:
        if self._llm is None:
            return None
        return len(self._llm.tokenize(text.encode(), add_bos=False, special=False))


# --------------------------------------------------------------------------- reporting

# (header, key of pooled_summary()); "" is ok/reqs, "tok_s_range" the min-max of tok/s.
LEVEL_COLUMNS: tuple[tuple[str, str], ...] = (
    ("conc", "concurrency"),
    ("ok/reqs", ""),
    ("out tok", "output_tokens"),
    ("tok/s", "tok_s"),
    ("tok/s min-max", "tok_s_range"),
    ("retok tok/s", "retok_tok_s"),
    ("TTFT p50 ms", "ttft_p50_ms"),
    ("TTFT p95 ms", "ttft_p95_ms"),
    ("lat p50 ms", "latency_p50_ms"),
    ("lat p99 ms", "latency_p99_ms"),
    ("len stops", "finish_length"),
    ("server CPU %", "server_cpu_pct"),
    ("client CPU %", "client_cpu_pct"),
)


def token_counting(runs: Sequence[ServerRun]) -> str:
    ok = [r for run in runs for lv in run.levels for r in lv.results if r.ok]
    with_usage = sum(r.usage_tokens is not None for r in ok)
    if ok and with_usage == len(ok):
        return "usage.completion_tokens (stream_options.include_usage)"
    if with_usage == 0:
        return "content deltas counted by the client (no usage in the stream)"
    return f"mixed: usage in {with_usage} of {len(ok)} replies, content deltas otherwise"


POOLING_NOTE = (
    "Per server and level: tok/s, retok tok/s and CPU % are medians over the rounds (tok/s "
    "min-max: its lowest and highest round); TTFT and latency percentiles pool every request "
    "of every round; ok/reqs, out tok and len stops add up all rounds."
)


def level_caption(results: Results, name: str) -> str:
    runs = results.runs_of(name)
    measured = sum(bool(run.levels) for run in runs)
    text = f"output tokens: {token_counting(runs)}"
    if measured < len(results.rounds):
        text += f"; measured in {measured} of {len(results.rounds)} rounds"
    return text


def level_rows(results: Results, name: str, concurrency: list[int]) -> list[list[str]]:
    rows = []
    for c in concurrency:
        s = results.pooled(name, c)
        if s is None:
            continue
        row = []
        for _, key in LEVEL_COLUMNS:
            if key == "":
                row.append(f"{s['ok']}/{s['requests']}")
            elif key == "tok_s_range":
                row.append(f"{fmt(s['tok_s_min'])}-{fmt(s['tok_s_max'])}")
            else:
                row.append(fmt(s[key]))
        rows.append(row)
    return rows


def tok_s_cell(results: Results, name: str, concurrency: int) -> str:
    """Median throughput for the ratio tables, flagged when some requests failed."""
    s = results.pooled(name, concurrency)
    if s is None:
        return "—"
    failed = s["requests"] - s["ok"]
    return fmt(float(s["tok_s"])) + (f" ({failed} failed)" if failed else "")


def ratio_cell(by_round: dict[int, float], rounds: int) -> str:
    """Median ratio over rounds, with its min-max and how many rounds when not all."""
    if not by_round:
        return "—"
    values = list(by_round.values())
    text = f"{statistics.median(values):.2f}x"
    if len(values) > 1:
        text += f" ({min(values):.2f}-{max(values):.2f})"
    if len(values) < rounds:
        text += f" [{len(values)} of {rounds} rounds]"
    return text


def _median(by_round: dict[int, float]) -> float | None:
    return statistics.median(by_round.values()) if by_round else None


def ratio_rows(results: Results, concurrency: list[int]) -> list[list[str]]:
    rows = []
    for mine in (v for v in HELIXFLOW_VARIANTS if v in results.servers):
        for c in concurrency:
            row = [mine, str(c), tok_s_cell(results, mine, c)]
            for peer in PEERS:
                by_round = results.ratios(mine, peer, c)
                row += [
                    tok_s_cell(results, peer, c),
                    ratio_cell(by_round, len(results.rounds)),
                    _target_mark(c, peer, _median(by_round)),
                ]
            rows.append(row)
    return rows


def flash_rows(results: Results, concurrency: list[int]) -> list[list[str]]:
    plain, fa = HELIXFLOW_VARIANTS
    return [
        [
            str(c),
            tok_s_cell(results, plain, c),
            tok_s_cell(results, fa, c),
            ratio_cell(results.ratios(fa, plain, c), len(results.rounds)),
        ]
        for c in concurrency
    ]


def _target_mark(concurrency: int, peer: str, ratio: float | None) -> str:
    marks = []
    for c, p, minimum in TARGETS:
        if c == concurrency and p == peer:
            met = "—" if ratio is None else ("met" if ratio >= minimum else "MISSED")
            if ratio is not None and ratio < minimum <= round(ratio, 2):
                met += f" ({ratio:.3f}x)"  # the table's 2 decimals would show it as reached
            marks.append(f">= {minimum}x: {met}")
    return "; ".join(marks)


RATIO_HEADERS = [
    "HelixFlow", "conc", "HelixFlow tok/s",
    "llama-cpp-python tok/s", "HF / lcp", "target vs lcp",
    "llama-server tok/s", "HF / llama-server", "target vs llama-server",
]  # fmt: skip
FLASH_HEADERS = ["conc", "helixflow tok/s", "helixflow-fa tok/s", "helixflow-fa / helixflow"]
RATIO_NOTE = (
    "tok/s: median over rounds; ratios: taken within each round, median (min-max) over rounds; "
    "targets judged on the median"
)


def _has_ratios(results: Results) -> bool:
    servers = results.servers
    return any(v in servers for v in HELIXFLOW_VARIANTS) and any(p in servers for p in PEERS)


def _has_flash(results: Results) -> bool:
    return all(v in results.servers for v in HELIXFLOW_VARIANTS)


def print_tables(results: Results, cfg: BenchConfig) -> None:
    console.rule("[bold]results")
    if len(results.rounds) > 1:
        console.print(POOLING_NOTE)
    for name in results.servers:
        runs = results.runs_of(name)
        if not any(run.levels for run in runs):
            continue
        table = Table(title=name, caption=level_caption(results, name))
        for header, key in LEVEL_COLUMNS:
            table.add_column(header, justify="right", no_wrap=key == "tok_s_range")
        for row in level_rows(results, name, cfg.concurrency):
            table.add_row(*row)
        console.print(table)
        mismatched = sum(lv.summary()["usage_vs_chunks_mismatch"] for r in runs for lv in r.levels)
        if mismatched:
            console.print(
                f"  {name}: usage.completion_tokens != streamed content deltas in "
                f"{mismatched} replies (see the JSON output)",
                style="dim",
            )
        for c in cfg.concurrency:
            s = results.pooled(name, c)
            if s and s["errors"]:
                console.print(f"  [red]c={c} errors:[/red] {escape(str(s['errors']))}")
    if _has_ratios(results):
        table = Table(
            title="HelixFlow / peers, output tokens per second (same round)", caption=RATIO_NOTE
        )
        for header in RATIO_HEADERS:
            table.add_column(header, justify="right", no_wrap=header.startswith("HF /"))
        for row in ratio_rows(results, cfg.concurrency):
            table.add_row(*row)
        console.print(table)
    if _has_flash(results):
        table = Table(title="HelixFlow with / without flash attention (same round)")
        for header in FLASH_HEADERS:
            table.add_column(header, justify="right", no_wrap=True)
        for row in flash_rows(results, cfg.concurrency):
            table.add_row(*row)
        console.print(table)
    for run in results.failures():
        console.print(
            f"[red]round {run.round_no}: {run.name} failed:[/red] {escape(run.failed or '')}"
        )


def markdown(results: Results, cfg: BenchConfig, meta: dict[str, Any]) -> str:
    out = [
        f"Measured {meta['date']} on {meta['cpus']} CPUs ({meta['machine']}), "
        f"model `{cfg.model.name}`, streamed chat, max_tokens {cfg.max_tokens}, "
        f"temperature 0, repeat penalty 1.0; commit {meta['git_commit']}.",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"{len(results.rounds)} round(s), each starting every server in turn and running every "
        "concurrency level; the order rotates from round to round:",
        "",
    ]
    out += [
        f"- round {rnd.number} ({_duration(rnd.wall_s)}): {', '.join(rnd.order)}"
        for rnd in results.rounds
    ]
    out.append("")
    if len(results.rounds) > 1:
        out += [POOLING_NOTE, ""]
    for name, why in results.skipped.items():
        out += [f"Skipped {name}: {why}", ""]
    for run in results.failures():
        out += [f"Round {run.round_no}: {run.name} failed: {run.failed}", ""]
    for name in results.servers:
        if not any(run.levels for run in results.runs_of(name)):
            continue
        out += [f"**{name}** ({level_caption(results, name)})", ""]
        out += markdown_table(
            [h for h, _ in LEVEL_COLUMNS], level_rows(results, name, cfg.concurrency)
        )
    if _has_ratios(results):
        out += [f"**HelixFlow / peers** (output tokens per second; {RATIO_NOTE})", ""]
        out += markdown_table(RATIO_HEADERS, ratio_rows(results, cfg.concurrency))
    if _has_flash(results):
        out += ["**HelixFlow with / without flash attention** (same round; as above)", ""]
        out += markdown_table(FLASH_HEADERS, flash_rows(results, cfg.concurrency))
    return "\n".join(out)


def _ratio_json(by_round: dict[int, float]) -> dict[str, Any] | None:
    if not by_round:
        return None
    values = list(by_round.values())
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "by_round": {str(n): round(v, 3) for n, v in by_round.items()},
    }


def to_json(results: Results, cfg: BenchConfig, meta: dict[str, Any]) -> dict[str, Any]:
    rounds = []
    for rnd in results.rounds:
        servers = {}
        for name, run in rnd.runs.items():
            servers[name] = {
                "command": run.command,
                "failed": run.failed,
                "wall_s": round(run.wall_s, 1),
                "token_counting": token_counting([run]) if run.levels else None,
                "levels": [lv.summary() for lv in run.levels],
                "requests": [
                    {
                        "concurrency": lv.concurrency,
                        **{k: v for k, v in asdict(r).items() if k != "text"},
                    }
                    for lv in run.levels
                    for r in lv.results
                ],
            }
        rounds.append(
            {
                "round": rnd.number,
                "order": rnd.order,
                "wall_s": round(rnd.wall_s, 1),
                "servers": servers,
            }
        )
    summary = {
        name: [s for c in cfg.concurrency if (s := results.pooled(name, c)) is not None]
        for name in results.servers
    }
    # ratios[mine][theirs][concurrency]: tok/s of mine / tok/s of theirs, within each round.
    pairs = [(mine, peer) for mine in HELIXFLOW_VARIANTS for peer in PEERS]
    pairs.append((HELIXFLOW_VARIANTS[1], HELIXFLOW_VARIANTS[0]))
    ratios: dict[str, dict[str, dict[str, Any]]] = {}
    for mine, theirs in pairs:
        if mine in results.servers and theirs in results.servers:
            ratios.setdefault(mine, {})[theirs] = {
                str(c): _ratio_json(results.ratios(mine, theirs, c)) for c in cfg.concurrency
            }
    settings: dict[str, Any] = {
        k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()
    }
    settings["servers"] = results.servers
    return {
        "meta": meta,
        "settings": settings,
        "skipped": results.skipped,
        "rounds": rounds,
        "summary": summary,
        "ratios": ratios,
    }


# --------------------------------------------------------------------------- trivial server


def serve_trivial(port: int) -> None:
    """Stream ``max_tokens`` one-word chunks at once: a ceiling for the load generator."""
    from aiohttp import web

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        n = int(body.get("max_tokens") or 16)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(n):
            choice = {"index": 0, "delta": {"content": " tok"}, "finish_reason": None}
            if i == n - 1:
                choice["finish_reason"] = "length"
            chunk = {"object": "chat.completion.chunk", "choices": [choice]}
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        usage = {"choices": [], "usage": {"completion_tokens": n, "prompt_tokens": 1}}
        await resp.write(b"data: " + orjson.dumps(usage) + b"\n\ndata: [DONE]\n\n")
        return resp

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/health", health)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


# --------------------------------------------------------------------------- CLI


def default_model() -> Path:
    from helixflow.engine.bundled import resolve_bundled

    return Path(resolve_bundled("smollm2-135m"))


def _server_list(text: str) -> list[str]:
    names = list(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    unknown = [n for n in names if n not in SERVER_KINDS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown server(s) {unknown}; choose from {', '.join(SERVER_KINDS)}"
        )
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="engine_throughput.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--servers",
        type=_server_list,
        default=",".join([*HELIXFLOW_VARIANTS, *PEERS]),
        help="servers to run one at a time, comma separated, in this order in round 1, "
        "rotated by one each later round (default: %(default)s; also: trivial)",
    )
    add(
        "--rounds",
        type=int,
        default=3,
        help="times to run every server through every level; tok/s and HelixFlow / peer "
        "ratios are reported as the median over rounds with their min-max (default: 3)",
    )
    add(
        "--concurrency",
        type=int_list,
        default=[1, 4, 8, 16],
        help="concurrency levels, comma separated (default: 1,4,8,16)",
    )
    add(
        "--requests",
        type=int,
        default=None,
        help="requests per level and round (default: max(8, 2 x concurrency)); never below the "
        "level's concurrency",
    )
    add("--max-tokens", type=int, default=128, help="max_tokens of every request (default: 128)")
    add(
        "--model",
        type=Path,
        default=None,
        help="GGUF file for every server (default: the bundled SmolLM2-135M Q4_1)",
    )
    add(
        "--threads",
        type=int,
        default=None,
        help="decode threads for every server (default: each server's own: all cores for "
        "HelixFlow and llama-server, 1 for llama-cpp-python, its fastest setting here)",
    )
    add(
        "--slot-context",
        type=int,
        default=1024,
        help="KV tokens per parallel sequence: HelixFlow and llama-server get parallel = the "
        "highest concurrency and context = parallel x this (default: 1024)",
    )
    add(
        "--warmup",
        type=int,
        default=4,
        help="warm-up requests per server and round (default: 4)",
    )
    add(
        "--ready-timeout",
        type=float,
        default=300.0,
        help="seconds to wait for a server to be ready (default: 300)",
    )
    add(
        "--llama-server-bin",
        type=Path,
        default=DEFAULT_LLAMA_SERVER,
        help="llama-server binary (default: .build/llama-server/bin/llama-server, "
        "built by benchmarks/build_llama_server.sh)",
    )
    add("--json-out", type=Path, default=None, help="write machine-readable results here")
    add(
        "--markdown-out",
        type=Path,
        default=None,
        help="write markdown tables here (for docs/benchmarks.md)",
    )
    add("--trivial-server-port", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be positive")
    if args.requests is not None and args.requests < 1:
        parser.error("--requests must be positive")
    if args.max_tokens < 1:
        parser.error("--max-tokens must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.trivial_server_port is not None:
        serve_trivial(args.trivial_server_port)
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup on SIGTERM too
    model = (args.model or default_model()).resolve()
    if not model.is_file():
        console.print(f"[red]model not found:[/red] {model}")
        return 2
    log_dir = Path(tempfile.mkdtemp(prefix="helixflow-bench-"))
    cfg = BenchConfig(
        model=model,
        concurrency=args.concurrency,
        requests=args.requests,
        max_tokens=args.max_tokens,
        threads=args.threads,
        slot_context=args.slot_context,
        warmup=args.warmup,
        ready_timeout=args.ready_timeout,
        llama_server_bin=args.llama_server_bin,
        log_dir=log_dir,
        rounds=args.rounds,
    )
    meta = run_metadata(REPO_ROOT, ("helixflow", "llama_cpp_python", "aiohttp"))
    meta["model"] = str(cfg.model)
    console.print(f"model {cfg.model}; logs in {log_dir}", style="dim")
    retok = Retokenizer(cfg.model)
    try:
        results = run_rounds(args.servers, cfg, retok)
    except KeyboardInterrupt:  # the server was stopped on the way out of running_server()
        console.print(f"[yellow]interrupted[/yellow]; server logs in {log_dir}")
        return 130
    print_tables(results, cfg)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_bytes(
            orjson.dumps(to_json(results, cfg, meta), option=orjson.OPT_INDENT_2) + b"\n"
        )
        console.print(f"wrote {args.json_out}")
    if args.markdown_out:
        args.markdown_out.parent.mkdir(parents=True, exist_ok=True)
        args.markdown_out.write_text(markdown(results, cfg, meta) + "\n")
        console.print(f"wrote {args.markdown_out}")
    failed = results.failures()
    if failed:
        names = ", ".join(f"{r.name} (round {r.round_no})" for r in failed)
        console.print(f"[red]{names} failed; logs in {log_dir}[/red]")
        return 1
    shutil.rmtree(log_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
