"""Time to first token of a long conversation: cold, restored from RAM, restored from disk.

A 10-turn chat (a long system prompt, then short user questions; the history reaches about
1,500 prompt tokens by the last turn) is sent turn by turn as streamed
``/v1/chat/completions`` requests (temperature 0, ``max_tokens`` 48, repeat penalty 1.0),
each turn's reply appended to the history of the next. Time to first token (TTFT) is the time
from sending a turn to its first non-empty content delta, measured in these modes:

* **cold**: no session key. With ``prefix_cache: false`` HelixFlow recomputes the whole
  prompt on every turn;
* **ram**: ``X-Session-Id`` set, on an instance with a RAM tier (``kv_cache.ram_bytes``
  512 MiB): after each turn the prompt's KV state is saved, and the next turn restores it
  from RAM and computes only what is new (the previous reply and the new question);
* **disk**: the same on a second instance with ``kv_cache.ram_bytes: 0``, so every restore
  is read from disk, zstd-decompressed and SHA-256-verified;
* **llama-cpp-python** (``--peer llama-cpp-python``): llama-cpp-python's own server with its
  disk prompt cache (``--cache true --cache_type disk``) and its single-slot automatic prefix
  reuse, on the same GGUF file. It has no session key and no cold mode.

Both HelixFlow instances also run the conversation cold, so each warm mode is compared with
cold on the same server in the same round ("cold/ram", "cold/disk": cold TTFT / warm TTFT).
Goal: the last turn's TTFT restored from disk at least 5x lower than cold (``cold/disk`` >=
5x). It is printed as met / missed; nothing fails the run.

Each turn's prompt and cached token counts come from the server's ``usage``
(``prompt_tokens``, ``prompt_tokens_details.cached_tokens``). HelixFlow saves the KV of the
prompt only (not of the reply), so turn N can restore exactly turn N-1's prompt: a cached
count other than that is marked ``!``. After every turn ``/ready``'s ``kv_cache`` counters
are read, which tells which tier (or a miss) served the turn; the hit rates per tier and the
counters before/after each warm conversation are reported, and a cold conversation must leave
them unchanged.

Rounds. The run repeats ``--rounds`` times (default 3). Each round starts every server afresh
(one at a time, order rotating from round to round), each HelixFlow instance with a new data
directory under one temporary directory (so the disk tier starts empty) and with its cold and
warm conversations in alternating order; every round uses new session keys and the same
conversation text. Per turn the tables give the median TTFT over the rounds; ratios are taken
within a round and reported as the median with min-max over the rounds. ``--think-s`` (default
1 s) is the pause between turns, the time a person takes to read and type; 0 sends the next
turn as soon as the previous reply ends (its restore may then wait for the previous turn's
save to finish compressing and writing).

Example (3 rounds with the peer: roughly 10 minutes on an idle 2-core machine, far longer on a
busy one):
  .venv/bin/python benchmarks/session_ttft.py --peer llama-cpp-python

Set-up for the peer: ``pip install sse-starlette starlette-context`` (the pure-Python extras of
``llama-cpp-python[server]``, also the ``bench`` extra; do not reinstall llama-cpp-python).
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
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from _common import free_port, helixflow_env, run_metadata, server_process, wait_ready

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON_OUT = REPO_ROOT / "benchmarks" / "results" / "session_ttft.json"
MODEL_NAME = "bench"
SESSION_HEADER = "X-Session-Id"
GOAL_RATIO = 5.0
"""Goal: last turn's TTFT restored from disk >= this many times lower than cold."""
RAM_TIER_BYTES = 512 * 1024**2
PEERS = ("llama-cpp-python",)

SYSTEM_PROMPT = """\
You are Spoke, the help desk assistant of the Riverside Bicycle Cooperative, a member-owned \
workshop in an old warehouse by the canal. Members pay a yearly fee and may then use the \
tools, the work stands and the parts library during opening hours; volunteers called \
mechanics help them repair their own bicycles. The cooperative does not repair bicycles for \
people: it teaches them to do it themselves.

Opening hours: Tuesday and Thursday from 17:00 to 21:00, Saturday from 10:00 to 16:00. The \
workshop is closed on public holidays and for the whole of the first week of January, when \
the volunteers take stock of the parts library. On the last Saturday of every month the \
workshop runs a women and non-binary session from 10:00 to 13:00.

Membership: the yearly fee is 40 euros, 20 euros for students, people on benefits and anyone \
under eighteen. Nobody is turned away for lack of money: ask a mechanic about the solidarity \
fund. A day pass costs 5 euros. Members under sixteen must come with an adult. Membership \
cards are personal and must be shown at the front desk on every visit.

Workshop rules: book a work stand at the front desk on arrival; a stand is yours for two \
hours when others are waiting. Clean your stand and put every tool back on its shadow board \
before you leave. Never use the compressor, the wheel truing stand or the headset press \
without a mechanic. Drinks stay on the kitchen table, never at the stands. Bicycles left in \
the workshop overnight must carry a tag with the owner's name and the date; untagged \
bicycles are moved to the yard after three days.

Parts library: second-hand parts are free for members, within reason; new parts (tubes, \
brake pads, cables, chains) are sold at cost, and the price list hangs by the till. Tubes \
come in the three common sizes: 26 inch, 700c and 27.5 inch. Chains are sold for 8, 9 and \
10 speed drivetrains. The cooperative does not stock electric bicycle parts, carbon parts or \
hydraulic brake fluid.

Courses: a six-week basic maintenance course starts every February, May and September, on \
Tuesday evenings, for 60 euros, materials included. A one-day wheel building course runs \
twice a year. Courses fill up quickly: members get a week of early booking.

Location and contact: the workshop is at Canal Street 14, in the blue warehouse behind the \
boat yard; the entrance is round the back, through the yard gate. Bus lines 3 and 12 stop at \
Canal Bridge, two minutes away on foot. There is covered parking for twenty bicycles in the \
yard. The front desk answers the phone during opening hours only; at other times, write to \
the members' mailbox and a volunteer replies within three days. Lost property is kept at the \
front desk for one month.

Donations: the cooperative gladly takes donated bicycles and parts, except child seats, \
helmets and anything with a battery. Donated bicycles are refurbished by volunteers and sold \
in the spring sale, or given to the refugee support project.

How to answer: be friendly and brief, two or three sentences at most. Answer only from the \
facts above; when something is not covered, say that you do not know and suggest asking a \
mechanic at the front desk. Never make up prices, times or rules. Do not give medical or \
legal advice. Reply in the language of the question."""

QUESTIONS: tuple[str, ...] = (
    "Hi! I just moved to the neighbourhood. When is the workshop open?",
    "How much does a membership cost for a student?",
    "My back tyre keeps going flat. Can a mechanic fix it for me while I wait?",
    "Which tube sizes do you have, and what do they cost?",
    "Can I bring my twelve-year-old daughter along on Saturday?",
    "Is the compressor free to use for pumping my tyres?",
    "I would like to learn basic maintenance properly. Is there a course?",
    "I have an old electric bike with a dead battery. Can I donate it?",
    "Can I leave my bicycle in the workshop until next Tuesday?",
    "Thanks! Please summarize what I need to bring on my first visit.",
)
WARMUP_PROMPT = (
    "Warm-up request, unrelated to the conversation: name three rivers of Europe and three "
    "mountains of Asia, then count from one to twenty in words, separated by commas."
)

# Wide enough for the tables when the output is a pipe or a narrow terminal.
console = Console(width=max(150, shutil.get_terminal_size().columns))


# --------------------------------------------------------------------------- measurements


@dataclass(slots=True)
class TurnResult:
    turn: int
    ok: bool = False
    ttft_s: float | None = None
    latency_s: float = 0.0
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    text: str = ""
    error: str | None = None
    tier: str | None = None
    """What served the turn per /ready's kv_cache counters: ram, disk, s3, miss, or none."""


@dataclass(slots=True)
class Conversation:
    """One mode's conversation on one server in one round."""

    mode: str
    server: str
    round_no: int
    session_id: str | None
    turns: list[TurnResult] = field(default_factory=list)
    kv_before: dict[str, Any] | None = None
    kv_after: dict[str, Any] | None = None
    error: str | None = None

    @property
    def complete(self) -> bool:
        return self.error is None and all(t.ok for t in self.turns)

    def turn(self, number: int) -> TurnResult | None:
        return next((t for t in self.turns if t.turn == number and t.ok), None)

    def kv_delta(self) -> dict[str, int] | None:
        if self.kv_before is None or self.kv_after is None:
            return None
        before, after = _flat_counters(self.kv_before), _flat_counters(self.kv_after)
        return {k: after.get(k, 0) - before.get(k, 0) for k in after}


def _flat_counters(kv: dict[str, Any]) -> dict[str, int]:
    """/ready's kv_cache as flat counters: hits.ram, hits.disk, hits.s3, misses, saves, ..."""
    out = {f"hits.{tier}": int(n) for tier, n in (kv.get("hits") or {}).items()}
    for key in ("misses", "saves", "corrupt", "stale", "demoted", "errors"):
        if key in kv:
            out[key] = int(kv[key])
    return out


def _turn_tier(before: dict[str, Any] | None, after: dict[str, Any] | None) -> str | None:
    if before is None or after is None:
        return None
    b, a = _flat_counters(before), _flat_counters(after)
    changed = [k for k in a if k.startswith("hits.") and a[k] > b.get(k, 0)]
    if a.get("misses", 0) > b.get("misses", 0):
        changed.append("miss")
    return "+".join(k.removeprefix("hits.") for k in changed) or "none"


# --------------------------------------------------------------------------- servers


@dataclass(slots=True)
class BenchConfig:
    bundled: str
    model: Path
    rounds: int
    turns: int
    max_tokens: int
    think_s: float
    threads: int | None
    context_size: int
    parallel: int
    ready_timeout: float
    work_dir: Path
    peer: str | None = None


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """One server to start: a HelixFlow instance (with its RAM tier or without) or the peer."""

    name: str
    modes: tuple[str, ...]
    """The conversations to run on it, in round 1's order (alternating in later rounds)."""
    ram_bytes: int | None = None
    """HelixFlow's kv_cache.ram_bytes; None for the peer."""

    @property
    def is_helixflow(self) -> bool:
        return self.ram_bytes is not None

    @property
    def ready_path(self) -> str:
        return "/ready" if self.is_helixflow else "/v1/models"


SERVERS: tuple[ServerSpec, ...] = (
    ServerSpec("helixflow-ram", ("cold", "ram"), ram_bytes=RAM_TIER_BYTES),
    ServerSpec("helixflow-disk", ("cold", "disk"), ram_bytes=0),
)
PEER_SPECS = {"llama-cpp-python": ServerSpec("llama-cpp-python", ("llama-cpp-python",))}


def helixflow_command(
    spec: ServerSpec, cfg: BenchConfig, port: int, run_dir: Path
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of one HelixFlow instance; writes its config file."""
    assert spec.ram_bytes is not None
    model: dict[str, Any] = {
        "id": MODEL_NAME,
        "bundled": cfg.bundled,
        "parallel": cfg.parallel,
        "context_size": cfg.context_size,
        # Off: a cold request really recomputes its prompt, and a restore is the only reuse.
        "prefix_cache": False,
    }
    if cfg.threads is not None:
        model["threads"] = cfg.threads
    config = {"models": [model], "kv_cache": {"ram_bytes": spec.ram_bytes}}
    config_file = run_dir / "config.yaml"
    config_file.write_text(json.dumps(config, indent=2))  # JSON is valid YAML
    script = Path(sys.executable).with_name("helixflow")
    launcher = [str(script)] if script.exists() else [sys.executable, "-m", "helixflow"]
    cmd = [*launcher, "serve", "--port", str(port), "--config", str(config_file)]
    env = helixflow_env()
    env["HELIXFLOW_DATA_DIR"] = str(run_dir / "data")
    return cmd, env


def peer_command(cfg: BenchConfig, port: int) -> list[str]:
    cmd = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(cfg.model),
        "--model_alias", MODEL_NAME, "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", str(cfg.context_size // cfg.parallel),
        # Its prompt cache: states kept on disk (diskcache, under the working directory).
        "--cache", "true", "--cache_type", "disk",
        "--interrupt_requests", "False",
    ]  # fmt: skip
    if cfg.threads is not None:
        cmd += ["--n_threads", str(cfg.threads), "--n_threads_batch", str(cfg.threads)]
    return cmd


def peer_missing() -> str | None:
    absent = [m for m in ("sse_starlette", "starlette_context") if not _has_module(m)]
    if absent:
        return (
            f"python modules {', '.join(absent)} missing: `{sys.executable} -m pip install "
            "sse-starlette starlette-context` (llama-cpp-python[server]'s extras)"
        )
    return None


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


@dataclass(slots=True)
class RunningServer:
    spec: ServerSpec
    proc: subprocess.Popen[bytes]
    base_url: str
    log_file: Path
    command: list[str]


@contextlib.contextmanager
def running_server(spec: ServerSpec, cfg: BenchConfig, round_no: int) -> Iterator[RunningServer]:
    """Start ``spec`` on a free port with its own directory under the work directory."""
    port = free_port()
    run_dir = cfg.work_dir / f"{spec.name}-round{round_no}"
    run_dir.mkdir(parents=True)
    if spec.is_helixflow:
        cmd, env = helixflow_command(spec, cfg, port, run_dir)
    else:
        cmd, env = peer_command(cfg, port), dict(os.environ)
    log_file = cfg.work_dir / f"{spec.name}-round{round_no}.log"
    with server_process(cmd, log_file=log_file, cwd=run_dir, env=env) as proc:
        yield RunningServer(spec, proc, f"http://127.0.0.1:{port}", log_file, cmd)


# --------------------------------------------------------------------------- client


def request_body(messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
    return {
        "model": MODEL_NAME,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        # llama-cpp-python defaults to 1.1, HelixFlow to 1.0; both accept the field.
        "repeat_penalty": 1.0,
    }


async def stream_turn(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
    result: TurnResult,
) -> None:
    """Send one streamed chat completion; fill ``result`` with its timing, text and usage."""
    start = time.perf_counter()
    parts: list[str] = []
    try:
        async with session.post(url, json=body, headers=headers) as resp:
            if resp.status != 200:
                result.error = f"HTTP {resp.status}: {(await resp.text())[:160]}"
                return
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
    if result.error is None and result.ttft_s is None:
        result.error = "no content streamed"
    result.ok = result.error is None


def _take_chunk(chunk: dict[str, Any], result: TurnResult, parts: list[str], start: float) -> None:
    if chunk.get("error"):
        result.error = f"error chunk: {str(chunk['error'])[:160]}"
        return
    usage = chunk.get("usage")
    if usage:
        result.prompt_tokens = _int_or_none(usage.get("prompt_tokens"))
        result.completion_tokens = _int_or_none(usage.get("completion_tokens"))
        details = usage.get("prompt_tokens_details") or {}
        result.cached_tokens = _int_or_none(details.get("cached_tokens"))
    for choice in chunk.get("choices") or ():
        content = (choice.get("delta") or {}).get("content")
        if content:
            if result.ttft_s is None:
                result.ttft_s = time.perf_counter() - start
            parts.append(content)
        if choice.get("finish_reason"):
            result.finish_reason = choice["finish_reason"]


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


async def kv_stats(session: aiohttp.ClientSession, server: RunningServer) -> dict[str, Any] | None:
    """``/ready``'s ``kv_cache`` object (None for the peer, or when the server has none)."""
    if not server.spec.is_helixflow:
        return None
    async with session.get(server.base_url + "/ready") as resp:
        body = await resp.json(loads=orjson.loads)
    kv = body.get("kv_cache")
    return kv if isinstance(kv, dict) else None


async def settled_kv_stats(
    session: aiohttp.ClientSession, server: RunningServer, limit_s: float = 10.0
) -> dict[str, Any] | None:
    """``kv_cache`` once it stops changing: saves run in the background after a reply."""
    last = await kv_stats(session, server)
    deadline = time.monotonic() + limit_s
    while last is not None and time.monotonic() < deadline:
        await asyncio.sleep(0.3)
        now = await kv_stats(session, server)
        if now is not None and _flat_counters(now) == _flat_counters(last):
            return now
        last = now
    return last


async def run_conversation(
    session: aiohttp.ClientSession, server: RunningServer, conv: Conversation, cfg: BenchConfig
) -> None:
    url = server.base_url + "/v1/chat/completions"
    headers = {SESSION_HEADER: conv.session_id} if conv.session_id else {}
    messages: list[dict[str, str]] = [{"role": "system", "content": SYSTEM_PROMPT}]
    conv.kv_before = await settled_kv_stats(session, server)
    before = conv.kv_before
    for number, question in enumerate(QUESTIONS[: cfg.turns], start=1):
        if number > 1 and cfg.think_s > 0:
            await asyncio.sleep(cfg.think_s)
        messages.append({"role": "user", "content": question})
        result = TurnResult(turn=number)
        await stream_turn(session, url, request_body(messages, cfg.max_tokens), headers, result)
        conv.turns.append(result)
        if not result.ok:
            conv.error = f"turn {number}: {result.error}"
            break
        # Restores are looked up before the first token: this turn's counters are in by now.
        after = await kv_stats(session, server)
        result.tier = _turn_tier(before, after)
        before = after
        usage = ""
        if result.prompt_tokens is not None:
            usage = f"{result.prompt_tokens} prompt, {result.cached_tokens} cached "
            usage += f"({result.tier or '-'}), "
        console.print(
            f"    {conv.server} {conv.mode} turn {number}: {usage}TTFT {_ms(result.ttft_s)} ms",
            style="dim",
            highlight=False,
        )
        messages.append({"role": "assistant", "content": result.text})
    conv.kv_after = await settled_kv_stats(session, server)


async def bench_server(
    server: RunningServer, cfg: BenchConfig, round_no: int, run_id: str
) -> list[Conversation]:
    url = server.base_url + server.spec.ready_path
    await wait_ready(server.proc, url, cfg.ready_timeout, server.spec.name)
    # A new connection per request, as the house benchmarks do (llama-cpp-python's server and
    # llama-server do not always keep a streamed connection usable).
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        warm = TurnResult(turn=0)
        body = request_body([{"role": "user", "content": WARMUP_PROMPT}], 16)
        await stream_turn(session, server.base_url + "/v1/chat/completions", body, {}, warm)
        if not warm.ok:
            raise RuntimeError(f"warm-up failed: {warm.error}")
        modes = server.spec.modes if round_no % 2 else tuple(reversed(server.spec.modes))
        conversations = []
        for mode in modes:
            warm_mode = mode in ("ram", "disk")
            sid = f"session-ttft-{run_id}-round{round_no}-{mode}" if warm_mode else None
            conv = Conversation(
                mode=mode, server=server.spec.name, round_no=round_no, session_id=sid
            )
            start = time.perf_counter()
            await run_conversation(session, server, conv, cfg)
            conversations.append(conv)
            last = conv.turns[-1] if conv.turns else None
            last_ttft = f"{last.ttft_s * 1000:.0f} ms" if last and last.ttft_s else "-"
            status = "ok" if conv.complete else f"[red]{escape(conv.error or 'failed')}[/red]"
            console.print(
                f"  {server.spec.name} {mode}: {len(conv.turns)} turns, {status}, "
                f"last turn TTFT {last_ttft} ({time.perf_counter() - start:.1f} s)"
            )
        return conversations


# --------------------------------------------------------------------------- the run


@dataclass(slots=True)
class ServerRun:
    name: str
    round_no: int
    command: list[str]
    conversations: list[Conversation] = field(default_factory=list)
    failed: str | None = None
    log_file: str | None = None
    wall_s: float = 0.0


@dataclass(slots=True)
class Results:
    servers: list[str]
    skipped: dict[str, str]
    runs: list[ServerRun] = field(default_factory=list)

    def conversations(self, server: str, mode: str) -> dict[int, Conversation]:
        """round -> the conversation of ``mode`` on ``server`` (complete or not)."""
        return {
            c.round_no: c
            for run in self.runs
            if run.name == server
            for c in run.conversations
            if c.mode == mode
        }

    def failures(self) -> list[ServerRun]:
        return [run for run in self.runs if run.failed]


def rotated(names: Sequence[ServerSpec], round_index: int) -> list[ServerSpec]:
    k = round_index % len(names) if names else 0
    return [*names[k:], *names[:k]]


def run_rounds(specs: Sequence[ServerSpec], cfg: BenchConfig) -> Results:
    results = Results(servers=[s.name for s in specs], skipped={})
    run_id = uuid.uuid4().hex[:8]
    for index in range(cfg.rounds):
        round_no = index + 1
        order = rotated(specs, index)
        console.rule(f"round {round_no}/{cfg.rounds}: {', '.join(s.name for s in order)}")
        for spec in order:
            start = time.perf_counter()
            with running_server(spec, cfg, round_no) as server:
                run = ServerRun(spec.name, round_no, server.command, log_file=str(server.log_file))
                try:
                    run.conversations = asyncio.run(bench_server(server, cfg, round_no, run_id))
                except (RuntimeError, aiohttp.ClientError, TimeoutError) as exc:
                    run.failed = str(exc)
                    console.print(
                        f"[red]{spec.name} failed:[/red] {escape(str(exc))} "
                        f"(log: {server.log_file})"
                    )
            run.wall_s = time.perf_counter() - start
            results.runs.append(run)
    return results


# --------------------------------------------------------------------------- reporting


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def _span(values: Sequence[int]) -> str:
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _ratio_text(by_round: dict[int, float], rounds: int) -> str:
    if not by_round:
        return "-"
    values = list(by_round.values())
    text = f"{statistics.median(values):.1f}x"
    if rounds > 1:
        text += f" ({min(values):.1f}-{max(values):.1f})"
    return text


def mode_source(mode: str) -> tuple[str, str]:
    """(server, mode) of a column: cold on the RAM instance, cold on the disk instance, ..."""
    return {
        "cold@ram": ("helixflow-ram", "cold"),
        "ram": ("helixflow-ram", "ram"),
        "cold@disk": ("helixflow-disk", "cold"),
        "disk": ("helixflow-disk", "disk"),
        "llama-cpp-python": ("llama-cpp-python", "llama-cpp-python"),
    }[mode]


def ttft_by_round(results: Results, column: str, turn: int) -> dict[int, float]:
    server, mode = mode_source(column)
    out = {}
    for round_no, conv in results.conversations(server, mode).items():
        t = conv.turn(turn)
        if t is not None and t.ttft_s is not None:
            out[round_no] = t.ttft_s
    return out


def ratio_by_round(results: Results, warm: str, turn: int) -> dict[int, float]:
    """cold TTFT / warm TTFT on the same server in the same round."""
    cold = ttft_by_round(results, f"cold@{warm}", turn)
    hot = ttft_by_round(results, warm, turn)
    return {r: cold[r] / hot[r] for r in cold.keys() & hot.keys() if hot[r] > 0}


def turn_values(results: Results, server: str, mode: str, turn: int, attr: str) -> list[Any]:
    values = []
    for conv in results.conversations(server, mode).values():
        t = conv.turn(turn)
        if t is not None and getattr(t, attr) is not None:
            values.append(getattr(t, attr))
    return values


def cached_cell(results: Results, mode: str, turn: int) -> str:
    """Cached tokens (the tier that served them); ``!`` where they are not what the previous
    turn's prompt leaves (HelixFlow saves each turn's prompt KV)."""
    server, _ = mode_source(mode)
    convs = results.conversations(server, mode)
    cached: list[int] = []
    tiers: list[str] = []
    wrong = False
    for conv in convs.values():
        t = conv.turn(turn)
        if t is None or t.cached_tokens is None:
            continue
        cached.append(t.cached_tokens)
        if t.tier:
            tiers.append(t.tier)
        prev = conv.turn(turn - 1)
        expected = prev.prompt_tokens if prev is not None else 0
        if expected is not None and t.cached_tokens != expected:
            wrong = True
    if not cached:
        return "-"
    tier_text = "/".join(sorted(set(tiers)))
    text = _span(cached) + (f" {tier_text}" if tier_text else "")
    return text + (" !" if wrong else "")


def columns(results: Results) -> list[str]:
    cols = ["cold@ram", "ram", "cold@disk", "disk"]
    cols += [p for p in PEERS if p in results.servers]
    return cols


def turn_rows(results: Results, cfg: BenchConfig) -> tuple[list[str], list[list[str]]]:
    peers = [p for p in PEERS if p in results.servers]
    headers = [
        "turn", "prompt", "cached ram", "cached disk",
        "cold@ram", "ram", "cold/ram", "cold@disk", "disk", "cold/disk", *peers,
    ]  # fmt: skip
    rows = []
    for turn in range(1, cfg.turns + 1):
        prompt = turn_values(results, "helixflow-ram", "cold", turn, "prompt_tokens")
        prompt += turn_values(results, "helixflow-disk", "cold", turn, "prompt_tokens")
        row = [str(turn), _span(prompt), cached_cell(results, "ram", turn)]
        row.append(cached_cell(results, "disk", turn))
        for warm in ("ram", "disk"):
            for column in (f"cold@{warm}", warm):
                row.append(_ms(_median(list(ttft_by_round(results, column, turn).values()))))
            row.append(_ratio_text(ratio_by_round(results, warm, turn), cfg.rounds))
        for peer in peers:
            row.append(_ms(_median(list(ttft_by_round(results, peer, turn).values()))))
        rows.append(row)
    return headers, rows


KV_KEYS = ("hits.ram", "hits.disk", "hits.s3", "misses", "saves", "corrupt", "stale", "errors")


def kv_rows(results: Results) -> tuple[list[str], list[list[str]]]:
    """Per HelixFlow instance and mode: /ready's kv_cache counters before -> after each
    conversation (added up over rounds), the hit rate per tier, and whether the changes are
    the expected ones."""
    headers = ["server", "mode", *(k.removeprefix("hits.") + " hits" for k in KV_KEYS[:3])]
    headers += [*KV_KEYS[3:], "hit rate ram/disk/s3", "as expected"]
    rows = []
    for spec in SERVERS:
        for mode in spec.modes:
            convs = [c for c in results.conversations(spec.name, mode).values() if c.kv_delta()]
            if not convs:
                continue
            before = _sum_counters(_flat_counters(c.kv_before or {}) for c in convs)
            after = _sum_counters(_flat_counters(c.kv_after or {}) for c in convs)
            change = {k: after.get(k, 0) - before.get(k, 0) for k in KV_KEYS}
            lookups = sum(change[k] for k in KV_KEYS[:3]) + change["misses"]
            rates = "/".join(
                f"{100 * change[k] / lookups:.0f}" if lookups else "-" for k in KV_KEYS[:3]
            )
            expected = _expected_kv(mode, spec, [len(c.turns) for c in convs])
            wrong = [
                f"{k} {change[k]:+d} (expected {expected.get(k, 0):+d})"
                for k in KV_KEYS
                if change[k] != expected.get(k, 0)
            ]
            row = [spec.name, mode]
            row += [f"{before.get(k, 0)} -> {after.get(k, 0)}" for k in KV_KEYS]
            row += [f"{rates} %" if lookups else "-", "yes" if not wrong else "; ".join(wrong)]
            rows.append(row)
    return headers, rows


def _sum_counters(items: Iterator[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for item in items:
        for k, v in item.items():
            total[k] = total.get(k, 0) + v
    return total


def _expected_kv(mode: str, spec: ServerSpec, turns: list[int]) -> dict[str, int]:
    """A cold conversation changes nothing; a warm one misses on turn 1, saves every turn and
    restores turns 2..N from its instance's top tier."""
    if mode == "cold":
        return {}
    tier = "hits.ram" if spec.ram_bytes else "hits.disk"
    return {
        tier: sum(n - 1 for n in turns),
        "misses": len(turns),
        "saves": sum(turns),
    }


def reply_mismatches(results: Results) -> list[str]:
    """Turns whose warm reply differs from the cold one on the same server and round: a
    restore should make a reply faster, never different."""
    notes = []
    for spec in SERVERS:
        cold = results.conversations(spec.name, "cold")
        for mode in spec.modes[1:]:
            for round_no, conv in results.conversations(spec.name, mode).items():
                ref = cold.get(round_no)
                if ref is None:
                    continue
                for t in conv.turns:
                    r = ref.turn(t.turn)
                    if t.ok and r is not None and (t.text != r.text):
                        notes.append(f"{spec.name} round {round_no} turn {t.turn}: {mode} reply")
                        break
    return notes


def last_turn_goal(results: Results, cfg: BenchConfig) -> list[str]:
    lines = []
    for warm in ("ram", "disk"):
        by_round = ratio_by_round(results, warm, cfg.turns)
        if not by_round:
            lines.append(f"turn {cfg.turns} cold/{warm}: no data")
            continue
        median = statistics.median(by_round.values())
        text = f"turn {cfg.turns} cold/{warm}: {_ratio_text(by_round, cfg.rounds)}"
        if warm == "disk":
            met = "met" if median >= GOAL_RATIO else "MISSED"
            text += f"; goal >= {GOAL_RATIO:.0f}x lower TTFT restored from disk: {met}"
        lines.append(text)
    return lines


def print_tables(results: Results, cfg: BenchConfig) -> None:
    console.rule("[bold]results")
    headers, rows = turn_rows(results, cfg)
    caption = (
        f"TTFT in ms, median of {cfg.rounds} round(s); cold@ram, cold@disk: no session key "
        "on the instance with / without a RAM tier; cold/ram, cold/disk: cold TTFT / warm TTFT "
        "on the same server and round (median, min-max). prompt, cached: usage prompt_tokens "
        "and cached_tokens (with the tier that served the turn, per /ready); ! = cached is "
        "not the previous turn's prompt tokens."
    )
    table = Table(title="Time to first token per turn", caption=caption)
    for h in headers:
        table.add_column(h, justify="right", no_wrap=True, min_width=len(h))
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for line in last_turn_goal(results, cfg):
        console.print(line, style="bold")
    headers, rows = kv_rows(results)
    table = Table(
        title="/ready kv_cache before -> after each conversation (summed over rounds)",
        caption="hit rate: hits of the tier / lookups (hits + misses) over the conversation; "
        "expected: cold changes nothing, warm misses on turn 1, restores every later turn "
        "from the instance's top tier and saves every turn",
    )
    for h in headers:
        table.add_column(h, justify="left" if h in ("server", "mode", "as expected") else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for note in reply_mismatches(results):
        console.print(f"[yellow]reply differs from cold:[/yellow] {note}")
    for run in results.failures():
        console.print(
            f"[red]round {run.round_no}: {run.name} failed:[/red] {escape(run.failed or '')}"
        )
    for name, why in results.skipped.items():
        console.print(f"[yellow]skipped {name}:[/yellow] {escape(why)}")


# --------------------------------------------------------------------------- JSON


def to_json(results: Results, cfg: BenchConfig, meta: dict[str, Any]) -> dict[str, Any]:
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
    runs = []
    for run in results.runs:
        runs.append(
            {
                "server": run.name,
                "round": run.round_no,
                "command": run.command,
                "failed": run.failed,
                "wall_s": round(run.wall_s, 1),
                "conversations": [
                    {
                        "mode": c.mode,
                        "session_id": c.session_id,
                        "error": c.error,
                        "kv_before": c.kv_before,
                        "kv_after": c.kv_after,
                        "kv_change": c.kv_delta(),
                        "turns": [asdict(t) for t in c.turns],
                    }
                    for c in run.conversations
                ],
            }
        )
    summary = []
    for turn in range(1, cfg.turns + 1):
        entry: dict[str, Any] = {"turn": turn}
        for column in columns(results):
            ttft = ttft_by_round(results, column, turn)
            entry[f"ttft_ms.{column}"] = (
                round(statistics.median(ttft.values()) * 1000, 1) if ttft else None
            )
        for warm in ("ram", "disk"):
            ratios = ratio_by_round(results, warm, turn)
            entry[f"cold_over_{warm}"] = (
                {
                    "median": round(statistics.median(ratios.values()), 2),
                    "min": round(min(ratios.values()), 2),
                    "max": round(max(ratios.values()), 2),
                }
                if ratios
                else None
            )
        summary.append(entry)
    return {
        "meta": meta,
        "settings": settings,
        "goal": f"turn {cfg.turns}: cold / disk TTFT >= {GOAL_RATIO}",
        "goal_lines": last_turn_goal(results, cfg),
        "skipped": results.skipped,
        "summary": summary,
        "runs": runs,
        "reply_mismatches": reply_mismatches(results),
    }


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="session_ttft.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--rounds", type=int, default=3, help="rounds; TTFT is the median (default: 3)")
    add(
        "--turns",
        type=int,
        default=len(QUESTIONS),
        help=f"turns of the conversation, at most {len(QUESTIONS)} (default: %(default)s)",
    )
    add("--max-tokens", type=int, default=48, help="max_tokens of every turn (default: 48)")
    add(
        "--think-s",
        type=float,
        default=1.0,
        help="pause between a reply and the next turn, seconds (default: 1.0)",
    )
    add(
        "--peer",
        choices=PEERS,
        default=None,
        help="also run the conversation on this peer (llama-cpp-python's server, with its disk "
        "prompt cache)",
    )
    add(
        "--bundled",
        default="smollm2-135m",
        help="bundled model for every server (default: %(default)s)",
    )
    add(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for every server (default: each server's own)",
    )
    add(
        "--context-size",
        type=int,
        default=8192,
        help="HelixFlow's context_size (2 parallel slots share it; the peer gets one slot's "
        "share as n_ctx) (default: %(default)s)",
    )
    add(
        "--ready-timeout",
        type=float,
        default=300.0,
        help="seconds to wait for a server to be ready (default: 300)",
    )
    add(
        "--json-out",
        type=Path,
        default=DEFAULT_JSON_OUT,
        help="machine-readable results (default: benchmarks/results/session_ttft.json)",
    )
    add(
        "--keep-logs",
        action="store_true",
        help="keep the temporary directory (server logs, data directories) after a good run",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be positive")
    if not 2 <= args.turns <= len(QUESTIONS):
        parser.error(f"--turns must be between 2 and {len(QUESTIONS)}")
    if args.max_tokens < 1:
        parser.error("--max-tokens must be positive")
    if args.think_s < 0:
        parser.error("--think-s must not be negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup on SIGTERM too
    from helixflow.engine.bundled import resolve_bundled

    model = Path(resolve_bundled(args.bundled)).resolve()
    work_dir = Path(tempfile.mkdtemp(prefix="helixflow-session-ttft-"))
    cfg = BenchConfig(
        bundled=args.bundled,
        model=model,
        rounds=args.rounds,
        turns=args.turns,
        max_tokens=args.max_tokens,
        think_s=args.think_s,
        threads=args.threads,
        context_size=args.context_size,
        parallel=2,
        ready_timeout=args.ready_timeout,
        work_dir=work_dir,
        peer=args.peer,
    )
    meta = run_metadata(REPO_ROOT, ("helixflow", "llama_cpp_python", "aiohttp"))
    meta["model"] = str(cfg.model)
    console.print(f"model {model}; servers' logs and data in {work_dir}", style="dim")
    specs = list(SERVERS)
    skipped: dict[str, str] = {}
    if args.peer:
        why = peer_missing()
        if why is None:
            specs.append(PEER_SPECS[args.peer])
        else:
            skipped[args.peer] = why
            console.print(f"[yellow]skipping {args.peer}:[/yellow] {escape(why)}")
    try:
        results = run_rounds(specs, cfg)
    except KeyboardInterrupt:  # the server was stopped on the way out of running_server()
        console.print(f"[yellow]interrupted[/yellow]; logs in {work_dir}")
        return 130
    results.skipped = skipped
    print_tables(results, cfg)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_bytes(
            orjson.dumps(to_json(results, cfg, meta), option=orjson.OPT_INDENT_2) + b"\n"
        )
        console.print(f"wrote {args.json_out}")
    failed = results.failures() or [
        run for run in results.runs for c in run.conversations if not c.complete
    ]
    if failed:
        console.print(f"[red]some runs failed; logs in {work_dir}[/red]")
        return 1
    if args.keep_logs:
        console.print(f"logs and data kept in {work_dir}")
    else:
        shutil.rmtree(work_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
