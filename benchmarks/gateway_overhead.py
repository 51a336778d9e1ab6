"""Gateway overhead: HelixFlow's router against LiteLLM's proxy, in front of a fast stub upstream.

One run starts ``benchmarks/stub_upstream.py`` (an OpenAI-compatible server that answers at
once with a fixed small reply, in its own process) and sends the same load to it three ways,
one target at a time (never two gateways at once):

* **direct**: straight to the stub (the floor: the load generator's and the stub's own cost);
* **helixflow**: through ``helixflow serve`` (the project's venv), configured with
  ``providers: [{name: stub, base_url: <stub>/v1, models: [bench-model]}]`` and its defaults
  otherwise: telemetry on, recording every request into the embedded SQLite database (the
  production path), in a fresh temporary ``HELIXFLOW_DATA_DIR``; one process. Its default local
  model is loaded too (a config needs one) but idles;
* **litellm**: through LiteLLM's proxy (``litellm --config ... --num_workers 1``: one worker,
  like HelixFlow's single process), from its own venv (``--litellm-venv``, created with
  ``python -m venv`` + ``pip install 'litellm[proxy]'`` when missing), with ``model_list: [{
  model_name: bench-model, litellm_params: {model: openai/bench-model, api_base: <stub>/v1}}]``,
  ``LITELLM_LOCAL_MODEL_COST_MAP=True`` and a random master key (``LITELLM_MASTER_KEY``); no
  database, so it records nothing (HelixFlow does).

The load: non-streamed ``/v1/chat/completions`` for ``model: "bench-model"`` (one short user
message) from a closed-loop aiohttp load generator (one ClientSession per target, keep-alive,
a connection pool as large as the highest concurrency, uvloop where installed): N workers keep
N requests in flight, each sending its next request when the last one ends, for
``--duration`` seconds per concurrency level (default 10 s at 1, 16 and 64), or
``--requests`` requests per level. Before the levels, ``--warmup`` requests at concurrency 16
(not measured). Then a streamed variant at ``--stream-concurrency`` (default 16; 0 skips it)
for ``--stream-duration`` seconds: ``stream_options.include_usage``, time to first token
(first non-empty content delta), whole-stream latency. Every reply is checked: HTTP 200 and the
stub's exact text (streamed: every token once, in order, a finish reason and ``[DONE]``);
anything else counts as an error, with the first messages kept.

Reported per target and level: requests/s (successful replies / wall time), latency p50 / p90 /
p99 in ms, errors, the overhead over direct at p50 (the target's p50 minus direct's at the
same concurrency), the gateway's CPU per request and CPU % (its whole process group, from
/proc), the stub's and the load generator's CPU %; per concurrency the requests/s ratio
HelixFlow / LiteLLM. The issue's targets are marked met / MISSED (only reported; nothing fails
the run): HelixFlow adds at most 1 ms at p50 for a single request (concurrency 1), and sustains
at least 5x LiteLLM's requests/s at concurrency 64 with no errors.

Fairness on a small machine: nothing is pinned. The load generator, the stub and the gateway
share the machine's cores (``nproc`` is printed and stored), so every figure includes the
others' CPU use; "direct" shows what the load generator and the stub reach alone, and the
CPU columns show who used what. Run-to-run variation on a shared 2-core machine is about
+-15 %: repeat the run before trusting a small difference.

Examples (the default run takes 2-3 minutes, plus LiteLLM's one-time install):
  .venv/bin/python benchmarks/gateway_overhead.py
  .venv/bin/python benchmarks/gateway_overhead.py --skip-litellm --duration 5
  .venv/bin/python benchmarks/gateway_overhead.py --concurrency 1,64 --requests 2000 \\
      --json-out benchmarks/results/gateway.json --markdown-out /tmp/gateway.md
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from _common import (
    REPO_ROOT,
    clean_up,
    fmt,
    free_port,
    int_list,
    markdown_table,
    percentile,
    run_async,
    run_metadata,
    save_results,
    server_process,
    wait_ready,
)
from _load import (
    REQUEST_ERRORS,
    WARMUP_CONCURRENCY,
    ChatClient,
    LoadLevel,
    LoadRun,
    LoadSettings,
    Watched,
    add_load_arguments,
    add_run_arguments,
    busy_levels,
    busy_note,
    chat_request,
    helixflow_command,
    helixflow_config,
    helixflow_data_env,
    load_session,
    markdown_preamble,
    ms,
    probe_chat,
    run_level,
    stub_upstream,
)
from stub_upstream import MODEL, REPLY_TEXT

DEFAULT_JSON_OUT = REPO_ROOT / "benchmarks" / "results" / "gateway_overhead.json"
DEFAULT_LITELLM_VENV = Path.home() / ".cache" / "helixflow" / "bench-venvs" / "litellm"
TARGETS = ("direct", "helixflow", "litellm")
GATEWAYS = ("helixflow", "litellm")
# The targets: HelixFlow's p50 overhead at concurrency 1, and its requests/s over
# LiteLLM's at concurrency 64 (with no errors).
MAX_OVERHEAD_MS = 1.0
OVERHEAD_CONCURRENCY = 1
MIN_RATIO = 5.0
RATIO_CONCURRENCY = 64

console = Console(width=max(150, shutil.get_terminal_size().columns))


# --------------------------------------------------------------------------- measurements


@dataclass(slots=True)
class Level(LoadLevel):
    """One concurrency level of one target: every request's outcome."""

    mode: str = "chat"  # "chat" (non-streamed) or "stream"
    ttfts: list[float] = field(default_factory=list)
    no_usage: int = 0

    @property
    def label(self) -> str:
        return f"{self.mode} c={self.concurrency}"

    def summary(self) -> dict[str, Any]:
        lat, ttft, pct = self.latencies, self.ttfts, self.cpu_pct
        return {
            "mode": self.mode,
            **self.load_summary(),
            "latency_max_ms": ms(max(lat)) if lat else None,
            "ttft_p50_ms": ms(percentile(ttft, 50)),
            "ttft_p99_ms": ms(percentile(ttft, 99)),
            "stream_without_usage": self.no_usage if self.mode == "stream" else None,
            "client_cpu_pct": pct(self.client_cpu_s),
            "gateway_cpu_pct": pct(self.gateway_cpu_s),
            "gateway_cpu_ms_per_req": (
                round(1000 * self.gateway_cpu_s / self.ok, 3)
                if self.gateway_cpu_s is not None and self.ok
                else None
            ),
            "stub_cpu_pct": pct(self.stub_cpu_s),
            "other_cpu_pct": pct(self.other_cpu_s),
        }


@dataclass(slots=True)
class TargetRun(LoadRun[Level]):
    version: str | None = None
    skipped: str | None = None
    recorded: dict[str, int] | None = None
    """HelixFlow: rows in its telemetry tables after it stopped (every request recorded?)."""

    def level(self, mode: str, concurrency: int) -> Level | None:
        return next(
            (lv for lv in self.levels if lv.mode == mode and lv.concurrency == concurrency), None
        )


@dataclass(slots=True, kw_only=True)
class Settings(LoadSettings):
    stream_concurrency: int
    stream_duration_s: float
    litellm_venv: Path
    install_litellm: bool

    @property
    def pool_size(self) -> int:
        return max([*self.concurrency, self.stream_concurrency, WARMUP_CONCURRENCY])


# --------------------------------------------------------------------------- load generator


class Client(ChatClient[Level]):
    """Closed-loop load against one base URL (``.../v1``), non-streamed and streamed."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, api_key: str) -> None:
        super().__init__(session, base_url, api_key)
        self.stream_body = chat_request(stream=True, stream_options={"include_usage": True})

    async def stream(self, level: Level) -> None:
        start = time.perf_counter()
        ttft: float | None = None
        parts: list[str] = []
        finish = None
        done = usage = False
        try:
            async with self.session.post(
                self.url, data=self.stream_body, headers=self.headers
            ) as resp:
                if resp.status != 200:
                    raw = await resp.read()
                    level.errors[f"HTTP {resp.status}: {raw[:100].decode(errors='replace')}"] += 1
                    return
                async for line in resp.content:
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        done = True
                        break
                    chunk = orjson.loads(payload)
                    if chunk.get("usage"):
                        usage = True
                    for choice in chunk.get("choices") or ():
                        text = (choice.get("delta") or {}).get("content")
                        if text:
                            if ttft is None:
                                ttft = time.perf_counter() - start
                            parts.append(text)
                        finish = choice.get("finish_reason") or finish
            elapsed = time.perf_counter() - start
        except REQUEST_ERRORS as exc:
            level.errors[f"{type(exc).__name__}: {exc}"[:120]] += 1
            return
        text = "".join(parts)
        if not done or finish is None or text != REPLY_TEXT or ttft is None:
            level.errors[f"bad stream: done={done} finish={finish} text={text[:40]!r}"] += 1
            return
        level.latencies.append(elapsed)
        level.ttfts.append(ttft)
        level.no_usage += not usage


async def measure(
    run: TargetRun, base_url: str, api_key: str, settings: Settings, watched: Watched
) -> None:
    async with load_session(settings.pool_size, settings.timeout_s) as session:
        client = Client(session, base_url, api_key)
        await run.load(partial(run_level, client.chat, watched=watched), Level, settings, _progress)
        if settings.stream_concurrency:
            level = await run_level(
                client.stream,
                Level(settings.stream_concurrency, mode="stream"),
                settings.stream_duration_s,
                None,
                watched,
            )
            run.add(level)
            _progress(run.name, level)


def _progress(name: str, level: Level) -> None:
    s = level.summary()
    errors = f", [red]{s['errors']} errors[/red]" if s["errors"] else ""
    console.print(
        f"  {name} {level.label}: {s['ok']} ok in {s['wall_s']:.1f} s, "
        f"{s['rps']:,.0f} req/s, p50 {s['latency_p50_ms']} ms{errors}"
    )


# --------------------------------------------------------------------------- servers


def helixflow_target(stub_url: str, settings: Settings) -> tuple[list[str], dict[str, str], str]:
    """(command, environment, readiness URL) of ``helixflow serve`` with the stub as provider."""
    port = free_port()
    config_file = settings.work_dir / "helixflow.yaml"
    config_file.write_text(yaml.safe_dump(helixflow_config(stub_url), sort_keys=False))
    cmd = helixflow_command("serve", "--config", str(config_file), "--port", str(port))
    env = helixflow_data_env(settings.work_dir / "helixflow-data")
    return cmd, env, f"http://127.0.0.1:{port}"


def count_rows(db_file: Path, tables: Sequence[str]) -> dict[str, int] | None:
    """Rows per table of a SQLite file (tables that do not exist are left out)."""
    if not db_file.exists():
        return None
    out: dict[str, int] = {}
    with contextlib.closing(sqlite3.connect(f"file:{db_file}?mode=ro", uri=True)) as conn:
        for table in tables:
            with contextlib.suppress(sqlite3.Error):
                out[table] = int(conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])
    return out


def ensure_litellm(settings: Settings) -> Path | None:
    """LiteLLM's ``litellm`` script, installing it into its own venv if missing (None: absent
    and not to be installed)."""
    venv = settings.litellm_venv
    script = venv / "bin" / "litellm"
    if script.exists():
        return script
    if not settings.install_litellm:
        return None
    log = settings.work_dir / "litellm-install.log"
    console.print(
        f"installing LiteLLM's proxy into {venv} (once; a few minutes; log: {log})", style="bold"
    )
    venv.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        for cmd in (
            [sys.executable, "-m", "venv", str(venv)],
            [str(venv / "bin" / "pip"), "install", "--quiet", "litellm[proxy]"],
        ):
            subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=True)
    return script


def litellm_version(script: Path) -> str | None:
    code = "import importlib.metadata as m; print(m.version('litellm'))"
    try:
        out = subprocess.run(
            [str(script.with_name("python")), "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def litellm_target(
    script: Path, stub_url: str, settings: Settings, master_key: str
) -> tuple[list[str], dict[str, str], str]:
    port = free_port()
    config = {
        "model_list": [
            {
                "model_name": MODEL,
                "litellm_params": {
                    "model": f"openai/{MODEL}",
                    "api_base": stub_url + "/v1",
                    "api_key": "dummy",
                },
            }
        ]
    }
    config_file = settings.work_dir / "litellm.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [str(script), "--config", str(config_file), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--num_workers", "1"]
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env |= {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MASTER_KEY": master_key}
    return cmd, env, f"http://127.0.0.1:{port}"


def run_gateway(
    run: TargetRun,
    cmd: list[str],
    env: dict[str, str],
    url: str,
    ready_path: str,
    api_key: str,
    settings: Settings,
    stub_pid: int,
) -> None:
    run.command = cmd
    console.print("  " + " ".join(cmd), style="dim", soft_wrap=True, markup=False)
    log_file = settings.work_dir / f"{run.name}.log"
    with server_process(cmd, log_file=log_file, cwd=settings.work_dir, env=env) as proc:
        run.log_file = str(log_file)
        try:
            run_async(wait_ready(proc, url + ready_path, settings.ready_timeout_s, run.name))
            run.sent += 1
            probe_chat(url + "/v1", api_key)
            run_async(measure(run, url + "/v1", api_key, settings, Watched(proc.pid, stub_pid)))
        except Exception as exc:  # report it and go on with the next target
            run.failed = f"{type(exc).__name__}: {exc}"
            console.print(f"[red]{run.name} failed:[/red] {escape(run.failed)}; log: {log_file}")
    time.sleep(1)  # let the CPU settle before the next target


def run_all(targets: Sequence[str], settings: Settings) -> dict[str, TargetRun]:
    runs: dict[str, TargetRun] = {}
    with stub_upstream(settings.work_dir) as stub:
        for name in targets:
            run = runs[name] = TargetRun(name)
            console.rule(f"[bold]{name}")
            if name == "direct":
                run.command = stub.command
                watched = Watched(None, stub.pid)
                try:
                    run_async(measure(run, stub.url + "/v1", "unused", settings, watched))
                except Exception as exc:
                    run.failed = f"{type(exc).__name__}: {exc}"
                    console.print(
                        f"[red]direct failed:[/red] {escape(run.failed)}; log: {stub.log_file}"
                    )
            elif name == "helixflow":
                cmd, env, url = helixflow_target(stub.url, settings)
                with contextlib.suppress(PackageNotFoundError):
                    run.version = version("helixflow")
                run_gateway(run, cmd, env, url, "/ready", "unused", settings, stub.pid)
                run.recorded = count_rows(
                    settings.work_dir / "helixflow-data" / "helixflow.db",
                    ("inference_requests", "routing_decisions"),
                )
            else:
                try:
                    script = ensure_litellm(settings)
                except (OSError, subprocess.CalledProcessError) as exc:
                    run.failed = f"installing LiteLLM failed: {exc}"
                    console.print(f"[red]{escape(run.failed)}[/red]")
                    continue
                if script is None:
                    run.skipped = f"{settings.litellm_venv} has no litellm (--no-install)"
                    console.print(f"[yellow]skipping litellm:[/yellow] {escape(run.skipped)}")
                    continue
                run.version = litellm_version(script)
                key = "sk-bench-" + secrets.token_hex(16)
                cmd, env, url = litellm_target(script, stub.url, settings, key)
                run_gateway(run, cmd, env, url, "/health/readiness", key, settings, stub.pid)
    return runs


# --------------------------------------------------------------------------- reporting


def overhead_ms(runs: dict[str, TargetRun], name: str, mode: str, c: int, key: str) -> float | None:
    """``key`` (a latency in ms) of target ``name`` minus direct's at the same level."""
    mine, base = runs.get(name), runs.get("direct")
    a = mine.level(mode, c) if mine else None
    b = base.level(mode, c) if base else None
    if a is None or b is None:
        return None
    x, y = a.summary()[key], b.summary()[key]
    return None if x is None or y is None else round(x - y, 3)


def ratio(runs: dict[str, TargetRun], c: int) -> float | None:
    hf, ll = runs.get("helixflow"), runs.get("litellm")
    a = hf.level("chat", c) if hf else None
    b = ll.level("chat", c) if ll else None
    if a is None or b is None or b.rps <= 0:
        return None
    return a.rps / b.rps


def verdicts(runs: dict[str, TargetRun], settings: Settings) -> list[dict[str, Any]]:
    out = []
    if OVERHEAD_CONCURRENCY in settings.concurrency:
        value = overhead_ms(runs, "helixflow", "chat", OVERHEAD_CONCURRENCY, "latency_p50_ms")
        out.append(
            {
                "target": f"HelixFlow adds <= {MAX_OVERHEAD_MS:g} ms at p50, concurrency "
                f"{OVERHEAD_CONCURRENCY}",
                "value": None if value is None else f"{value:+.3f} ms",
                "met": None if value is None else value <= MAX_OVERHEAD_MS,
            }
        )
    if RATIO_CONCURRENCY in settings.concurrency:
        value = ratio(runs, RATIO_CONCURRENCY)
        hf = runs.get("helixflow")
        level = hf.level("chat", RATIO_CONCURRENCY) if hf else None
        errors = sum(level.errors.values()) if level else None
        out.append(
            {
                "target": f"HelixFlow >= {MIN_RATIO:g}x LiteLLM's req/s at concurrency "
                f"{RATIO_CONCURRENCY}, no errors",
                "value": None if value is None else f"{value:.2f}x, {errors} errors",
                "met": None if value is None else value >= MIN_RATIO and errors == 0,
            }
        )
    return out


CHAT_HEADERS = [
    "target", "conc", "requests", "errors", "req/s", "p50 ms", "p90 ms", "p99 ms",
    "p50 over direct ms", "gateway CPU ms/req", "gateway CPU %", "stub CPU %", "client CPU %",
    "other CPU %",
]  # fmt: skip
STREAM_HEADERS = [
    "target", "conc", "requests", "errors", "req/s", "TTFT p50 ms", "TTFT p99 ms",
    "TTFT p50 over direct ms", "latency p50 ms", "no usage", "gateway CPU ms/req", "other CPU %",
]  # fmt: skip
CPU_NOTE = (
    "CPU % is of one core, over the level's wall time: the gateway's process group, the stub, "
    'the load generator, and every other process on the machine ("other")'
)
RATIO_HEADERS = [
    "conc", "HelixFlow req/s", "LiteLLM req/s", "HelixFlow / LiteLLM",
    "HelixFlow p50 over direct ms", "LiteLLM p50 over direct ms",
]  # fmt: skip


def _level_rows(
    runs: dict[str, TargetRun], mode: str, concurrency: Sequence[int], over_key: str
) -> Iterator[tuple[list[str], dict[str, Any], float | None]]:
    """Every measured level of ``mode``, target by target: the row's first cells (target,
    concurrency, requests, errors, req/s), the level's summary, and ``over_key`` over direct's
    (None for direct)."""
    for name, run in runs.items():
        for c in concurrency:
            level = run.level(mode, c)
            if level is None:
                continue
            s = level.summary()
            over = overhead_ms(runs, name, mode, c, over_key) if name != "direct" else None
            yield [name, str(c), str(s["requests"]), str(s["errors"]), fmt(s["rps"])], s, over


def chat_rows(runs: dict[str, TargetRun], settings: Settings) -> list[list[str]]:
    return [
        [
            *cells,
            fmt(s["latency_p50_ms"], 2),
            fmt(s["latency_p90_ms"], 2),
            fmt(s["latency_p99_ms"], 2),
            fmt(over, 2),
            fmt(s["gateway_cpu_ms_per_req"], 2),
            fmt(s["gateway_cpu_pct"]),
            fmt(s["stub_cpu_pct"]),
            fmt(s["client_cpu_pct"]),
            fmt(s["other_cpu_pct"]),
        ]
        for cells, s, over in _level_rows(runs, "chat", settings.concurrency, "latency_p50_ms")
    ]


def stream_rows(runs: dict[str, TargetRun], settings: Settings) -> list[list[str]]:
    levels = _level_rows(runs, "stream", [settings.stream_concurrency], "ttft_p50_ms")
    return [
        [
            *cells,
            fmt(s["ttft_p50_ms"], 2),
            fmt(s["ttft_p99_ms"], 2),
            fmt(over, 2),
            fmt(s["latency_p50_ms"], 2),
            str(s["stream_without_usage"]),
            fmt(s["gateway_cpu_ms_per_req"], 2),
            fmt(s["other_cpu_pct"]),
        ]
        for cells, s, over in levels
    ]


def ratio_rows(runs: dict[str, TargetRun], settings: Settings) -> list[list[str]]:
    rows = []
    for c in settings.concurrency:
        cells = [str(c)]
        for name in GATEWAYS:
            run = runs.get(name)
            level = run.level("chat", c) if run else None
            cells.append("—" if level is None else fmt(level.rps))
        value = ratio(runs, c)
        cells.append("—" if value is None else f"{value:.2f}x")
        cells += [fmt(overhead_ms(runs, name, "chat", c, "latency_p50_ms"), 2) for name in GATEWAYS]
        rows.append(cells)
    return rows


def _table(title: str, headers: list[str], rows: list[list[str]], caption: str = "") -> Table:
    table = Table(title=title, caption=caption or None)
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def _mark(met: bool | None) -> str:
    return "—" if met is None else ("met" if met else "MISSED")


def print_report(runs: dict[str, TargetRun], settings: Settings, meta: dict[str, Any]) -> None:
    console.rule("[bold]results")
    console.print(
        f"{meta['cpus']} CPUs (nproc), shared by the load generator, the stub and the gateway "
        "(nothing pinned); " + _load_note(settings),
        style="dim",
    )
    console.print(
        _table("non-streamed chat completions", CHAT_HEADERS, chat_rows(runs, settings), CPU_NOTE)
    )
    if any(run.level("stream", settings.stream_concurrency) for run in runs.values()):
        console.print(
            _table(
                "streamed chat completions (include_usage)",
                STREAM_HEADERS,
                stream_rows(runs, settings),
            )
        )
    if all(name in runs for name in GATEWAYS):
        console.print(_table("HelixFlow / LiteLLM", RATIO_HEADERS, ratio_rows(runs, settings)))
    busy = busy_levels(runs)
    if busy:
        console.print(
            f"[yellow]{busy_note(busy)}:[/yellow] those figures are lower than on an idle machine; "
            "run again when it is quiet"
        )
    for v in verdicts(runs, settings):
        style = {True: "green", False: "red", None: "yellow"}[v["met"]]
        console.print(
            f"target: {v['target']}: [{style}]{_mark(v['met'])}[/{style}] ({v['value'] or 'n/a'})"
        )
    for name, run in runs.items():
        for level in run.levels:
            for msg, n in level.errors.most_common(3):
                console.print(f"  [red]{name} {level.label}:[/red] {n} x {escape(msg)}")
        if run.recorded is not None:
            console.print(f"{name}: {recorded_note(run)}")
        if run.failed:
            console.print(f"[red]{name} failed:[/red] {escape(run.failed)} (log: {run.log_file})")
        if run.skipped:
            console.print(f"[yellow]{name} skipped:[/yellow] {escape(run.skipped)}")


def recorded_note(run: TargetRun) -> str:
    rows = ", ".join(f"{n:,} rows in {table}" for table, n in (run.recorded or {}).items())
    return f"{rows or 'no telemetry tables'} after {run.sent:,} requests sent (warm-up included)"


def _load_note(settings: Settings) -> str:
    text = settings.load_note()
    if settings.stream_concurrency:
        text += f"; streamed: {settings.stream_duration_s:g} s at c={settings.stream_concurrency}"
    return text


def markdown(runs: dict[str, TargetRun], settings: Settings, meta: dict[str, Any]) -> str:
    out = markdown_preamble(
        meta,
        "the load generator, the stub and the gateway",
        f"{_load_note(settings)}. LiteLLM: one worker (`--num_workers 1`), no database; "
        "HelixFlow: one process, telemetry into SQLite.",
    )
    out += markdown_table(CHAT_HEADERS, chat_rows(runs, settings))
    out += [CPU_NOTE + ".", ""]
    if settings.stream_concurrency:
        out += ["Streamed (include_usage):", ""]
        out += markdown_table(STREAM_HEADERS, stream_rows(runs, settings))
    if all(name in runs for name in GATEWAYS):
        out += markdown_table(RATIO_HEADERS, ratio_rows(runs, settings))
    out += [f"- {v['target']}: {_mark(v['met'])} ({v['value']})" for v in verdicts(runs, settings)]
    if busy := busy_levels(runs):
        out.append(f"- {busy_note(busy)}")
    for name, run in runs.items():
        if run.recorded is not None:
            out.append(f"- {name} telemetry: {recorded_note(run)}")
        if run.failed:
            out.append(f"- {name} failed: {run.failed}")
        if run.skipped:
            out.append(f"- {name} skipped: {run.skipped}")
    return "\n".join(out) + "\n"


def to_json(runs: dict[str, TargetRun], settings: Settings, meta: dict[str, Any]) -> dict[str, Any]:
    targets = {
        name: {
            "command": run.command,
            "version": run.version,
            "failed": run.failed,
            "skipped": run.skipped,
            "requests_sent": run.sent,
            "telemetry_rows": run.recorded,
            "levels": [lv.summary() for lv in run.levels],
        }
        for name, run in runs.items()
    }
    comparisons = {
        str(c): {
            "helixflow_p50_over_direct_ms": overhead_ms(
                runs, "helixflow", "chat", c, "latency_p50_ms"
            ),
            "litellm_p50_over_direct_ms": overhead_ms(runs, "litellm", "chat", c, "latency_p50_ms"),
            "helixflow_over_litellm_rps": None if (r := ratio(runs, c)) is None else round(r, 3),
        }
        for c in settings.concurrency
    }
    return {
        "meta": meta,
        "settings": {
            "concurrency": settings.concurrency,
            "duration_s": settings.duration_s,
            "requests": settings.requests,
            "warmup": settings.warmup,
            "stream_concurrency": settings.stream_concurrency,
            "stream_duration_s": settings.stream_duration_s,
            "timeout_s": settings.timeout_s,
            "litellm_num_workers": 1,
        },
        "targets": targets,
        "comparisons": comparisons,
        "verdicts": verdicts(runs, settings),
        "busy_levels": busy_levels(runs),
    }


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="gateway_overhead.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--concurrency",
        type=int_list,
        default=[1, 16, 64],
        help="concurrency levels of the non-streamed load, comma separated (default: 1,16,64)",
    )
    add_load_arguments(parser, unit="target", duration_s=10.0)
    add(
        "--stream-concurrency",
        type=int,
        default=16,
        help="concurrency of the streamed variant (TTFT); 0 skips it (default: 16)",
    )
    add(
        "--stream-duration",
        type=float,
        default=5.0,
        help="seconds of the streamed variant per target (default: 5)",
    )
    add("--skip-helixflow", action="store_true", help="leave HelixFlow out (direct and LiteLLM)")
    add("--skip-litellm", action="store_true", help="leave LiteLLM out (direct and HelixFlow)")
    add(
        "--litellm-venv",
        type=Path,
        default=DEFAULT_LITELLM_VENV,
        help="LiteLLM's own venv, created with `pip install 'litellm[proxy]'` when it has no "
        "`litellm` script (default: %(default)s)",
    )
    add(
        "--no-install",
        action="store_true",
        help="skip LiteLLM (with a note) instead of installing it when its venv is missing",
    )
    add_run_arguments(
        parser,
        ready="a gateway",
        json_out=DEFAULT_JSON_OUT,
        work_dir="servers' logs, configs, HelixFlow's data",
    )
    args = parser.parse_args(argv)
    if args.requests is not None and args.requests < 1:
        parser.error("--requests must be positive")
    if args.duration <= 0 or args.stream_duration <= 0:
        parser.error("durations must be positive")
    if args.stream_concurrency < 0 or args.warmup < 0:
        parser.error("--stream-concurrency and --warmup must not be negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup on SIGTERM too
    work_dir = Path(tempfile.mkdtemp(prefix="helixflow-gateway-"))
    settings = Settings.from_args(
        args,
        work_dir,
        stream_concurrency=args.stream_concurrency,
        stream_duration_s=args.stream_duration,
        litellm_venv=args.litellm_venv.expanduser(),
        install_litellm=not args.no_install,
    )
    targets = [
        t
        for t in TARGETS
        if not (t == "helixflow" and args.skip_helixflow)
        and not (t == "litellm" and args.skip_litellm)
    ]
    console.print(
        f"targets {', '.join(targets)}; {os.cpu_count()} CPUs, nothing pinned; "
        f"{_load_note(settings)}; logs in {work_dir}",
        style="dim",
    )
    # loadavg_1m: how busy the machine was at the start.
    meta = run_metadata(
        REPO_ROOT, ("helixflow", "aiohttp", "uvloop"), loadavg_1m=round(os.getloadavg()[0], 2)
    )
    try:
        runs = run_all(targets, settings)
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted[/yellow]; logs in {work_dir}")
        return 130
    if (litellm := runs.get("litellm")) and litellm.version:
        meta["versions"]["litellm"] = litellm.version
    print_report(runs, settings, meta)
    save_results(
        console,
        json_out=args.json_out,
        data=lambda: to_json(runs, settings, meta),
        markdown_out=args.markdown_out,
        text=lambda: markdown(runs, settings, meta),
    )
    if any(run.failed for run in runs.values()):
        console.print(f"[red]some targets failed; logs in {work_dir}[/red]")
        return 1
    clean_up(console, work_dir, keep=args.keep_logs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
