"""Auth overhead: what authentication plus rate limits cost per request, in-process and with
Redis, against no auth, in one run.

One run starts ``benchmarks/stub_upstream.py`` (an OpenAI-compatible server that answers at
once with a fixed small reply, in its own process) and then, one after the other (never two at
once), three ``helixflow serve`` processes (the project's venv) in front of it, each in a fresh
temporary ``HELIXFLOW_DATA_DIR`` and configured with ``providers: [{name: stub, base_url:
<stub>/v1, models: [bench-model]}]`` and the defaults otherwise (telemetry on, into SQLite):

* **noauth**: ``security.auth: off`` (loopback), no key: the baseline;
* **auth-memory**: ``security.auth: required``, ``security.limits.backend: memory``, and an API
  key created before the start with ``helixflow keys create --rpm N --tpm N --json`` (N from
  ``--key-limit``, default 10,000,000: high enough never to refuse, so every limit check runs
  and none refuses); every request sends ``Authorization: Bearer <key>``;
* **auth-redis**: the same with ``security.limits.backend: redis`` and ``HELIXFLOW_REDIS_URL``
  (``--redis-url``), under a ``security.limits.key_prefix`` unique to the run; the keys under
  that prefix are counted (none would mean the limits never reached Redis) and deleted after.

Before the load, each auth configuration is checked: a request without a key and one with a
wrong key must get 401 (auth really enforced), the real key must get 200 with the
``x-ratelimit-remaining-requests`` header (limits really applied).

The load: non-streamed ``/v1/chat/completions`` for ``model: "bench-model"`` (one short user
message) from a closed-loop aiohttp load generator (keep-alive, uvloop where installed): N
workers keep N requests in flight, each sending its next request when the last one ends, for
``--duration`` seconds per concurrency level (default 8 s at 1 and 16), or ``--requests``
requests per level; before the levels, ``--warmup`` requests at concurrency 16 (not measured).
Every reply is checked: HTTP 200 and the stub's exact text, and in the auth configurations the
``x-ratelimit-remaining-requests`` header; anything else counts as an error, with the first
messages kept.

Reported per configuration and level: requests/s, latency p50 / p99 in ms, errors, the
gateway's CPU per request (its whole process group, from /proc) and, for auth-redis, the Redis
server's CPU per request (``INFO cpu``: the whole server, every client's commands) and its
commands per request (``INFO stats``); then per auth configuration and level the cost over
noauth at the same concurrency: added p50 and p99 in ms, added gateway CPU in µs per request,
added CPU including Redis's, and requests/s relative to noauth. Each server's log is scanned
for errors and warnings, which are printed.

Fairness on a small machine: nothing is pinned; the load generator, the stub, the gateway and
Redis share the machine's cores (``nproc`` is printed and stored). Differences of a few tens
of microseconds at p50 are within run-to-run noise: repeat the run before trusting them. The
CPU per request is the steadier figure.

Examples (the default run takes about 1.5 minutes):
  .venv/bin/python benchmarks/auth_overhead.py
  .venv/bin/python benchmarks/auth_overhead.py --duration 15 --concurrency 1,16,64 \\
      --markdown-out /tmp/auth.md
  .venv/bin/python benchmarks/auth_overhead.py --configs noauth,auth-memory   # no Redis
  .venv/bin/python benchmarks/auth_overhead.py --redis-url redis://10.0.0.5:6379/3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import redis
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from _common import (
    REPO_ROOT,
    NotReady,
    clean_up,
    fmt,
    free_port,
    int_list,
    markdown_table,
    run_async,
    run_metadata,
    save_results,
    server_process,
    wait_ready,
)
from _load import (
    WARMUP_CONCURRENCY,
    ChatClient,
    LoadLevel,
    LoadRun,
    LoadSettings,
    Stub,
    Watched,
    add_load_arguments,
    add_run_arguments,
    busy_levels,
    busy_note,
    chat_call,
    helixflow_command,
    helixflow_config,
    helixflow_data_env,
    load_session,
    markdown_preamble,
    probe_chat,
    run_level,
    stub_upstream,
)

DEFAULT_JSON_OUT = REPO_ROOT / "benchmarks" / "results" / "auth_overhead.json"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
BASELINE = "noauth"
CONFIGS = ("noauth", "auth-memory", "auth-redis")
LIMITS_BACKEND = {"noauth": None, "auth-memory": "memory", "auth-redis": "redis"}
"""Each configuration's ``security.limits.backend`` (None: auth off, no key)."""
REMAINING_HEADER = "x-ratelimit-remaining-requests"
LOG_RECORD = re.compile(r"^(?:\[[^\]]*\])?\s*(DEBUG|INFO|WARNING|ERROR|CRITICAL)\s")
"""The first line of a record in a server's log (rich's handler: ``[time] LEVEL  logger: ...``)."""
PROBLEM_LEVELS = frozenset({"WARNING", "ERROR", "CRITICAL"})
MAX_LOG_RECORDS = 12
MAX_RECORD_LINES = 30
BOX_CHARS = str.maketrans(dict.fromkeys("╭╮╰╯│─┃━", " "))

console = Console(width=max(140, shutil.get_terminal_size().columns))


# --------------------------------------------------------------------------- measurements


def _per_req_ms(cpu_s: float | None, n: int) -> float | None:
    return None if cpu_s is None or not n else round(1000 * cpu_s / n, 4)


@dataclass(slots=True)
class Level(LoadLevel):
    """One concurrency level of one configuration: every request's outcome."""

    min_remaining: int | None = None
    """The lowest ``x-ratelimit-remaining-requests`` seen (auth configurations)."""
    redis_cpu_s: float | None = None
    redis_commands: int | None = None

    @property
    def side_cpu_s(self) -> float:
        """Redis's CPU (auth-redis)."""
        return self.redis_cpu_s or 0.0

    def summary(self) -> dict[str, Any]:
        pct = self.cpu_pct
        return {
            **self.load_summary(),
            "gateway_cpu_ms_per_req": _per_req_ms(self.gateway_cpu_s, self.ok),
            "gateway_cpu_pct": pct(self.gateway_cpu_s),
            "redis_cpu_ms_per_req": _per_req_ms(self.redis_cpu_s, self.ok),
            "redis_commands_per_req": (
                round(self.redis_commands / self.ok, 2)
                if self.redis_commands is not None and self.ok
                else None
            ),
            "stub_cpu_pct": pct(self.stub_cpu_s),
            "redis_cpu_pct": pct(self.redis_cpu_s),
            "client_cpu_pct": pct(self.client_cpu_s),
            "other_cpu_pct": pct(self.other_cpu_s),
            "min_ratelimit_remaining_requests": self.min_remaining,
        }


@dataclass(slots=True)
class ConfigRun(LoadRun[Level]):
    """One HelixFlow configuration: how it was started, what was checked and measured."""

    limits_backend: str | None = field(kw_only=True)
    checks: list[str] = field(default_factory=list)
    """Pre-flight checks passed (auth enforced, limit headers present)."""
    key_id: str | None = None
    key_prefix: str | None = None
    redis_keys_deleted: int | None = None
    log_problems: list[str] = field(default_factory=list)
    """Warning and error records of the server's log (the first MAX_LOG_RECORDS)."""

    @property
    def auth(self) -> bool:
        return self.limits_backend is not None

    def level(self, concurrency: int) -> Level | None:
        return next((lv for lv in self.levels if lv.concurrency == concurrency), None)


@dataclass(slots=True, kw_only=True)
class Settings(LoadSettings):
    configs: list[str]
    key_limit: int
    redis_url: str


# --------------------------------------------------------------------------- Redis


def redact_url(url: str) -> str:
    """``url`` without its password (for output and logs)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (
        f":{parts.port}" if parts.port else ""
    )
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


class RedisProbe:
    """The Redis server the limits live in: its CPU and command counters, and the keys under
    one prefix."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)

    def check(self) -> str:
        """Ping it; its version, or an exception when it does not answer."""
        self.client.ping()
        return str(self.client.info("server").get("redis_version", "?"))

    def counters(self) -> tuple[float, int] | None:
        """(user + system CPU seconds, commands processed) since it started; None if away."""
        try:
            cpu = self.client.info("cpu")
            stats = self.client.info("stats")
        except redis.RedisError:
            return None
        seconds = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
        return seconds, int(stats["total_commands_processed"])

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix``; how many there were."""
        pattern = prefix.replace("*", r"\*").replace("?", r"\?").replace("[", r"\[") + "*"
        keys = list(self.client.scan_iter(match=pattern, count=1000))
        for start in range(0, len(keys), 500):
            self.client.delete(*keys[start : start + 500])
        return len(keys)

    def close(self) -> None:
        self.client.close()


# --------------------------------------------------------------------------- load generator


class Client(ChatClient[Level]):
    """Closed-loop load against one base URL (``.../v1``), with or without an API key; with
    one, every reply must carry the remaining-requests header."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, api_key: str | None) -> None:
        super().__init__(session, base_url, api_key)
        self.check_limits = api_key is not None

    def accept(self, headers: Mapping[str, str], level: Level) -> str | None:
        if self.check_limits:
            remaining = headers.get(REMAINING_HEADER)
            if remaining is None:
                return f"no {REMAINING_HEADER} header"
            value = int(remaining)
            if level.min_remaining is None or value < level.min_remaining:
                level.min_remaining = value
        return None


@dataclass(frozen=True, slots=True)
class Meters:
    """What a level's accounting looks at: the processes' CPU, and Redis (auth-redis)."""

    processes: Watched
    redis: RedisProbe | None


async def run_metered(
    client: Client, level: Level, duration_s: float | None, requests: int | None, meters: Meters
) -> Level:
    """:func:`run_level` with ``client.chat``, and Redis's CPU and commands meanwhile."""
    redis0 = meters.redis.counters() if meters.redis else None
    await run_level(client.chat, level, duration_s, requests, meters.processes)
    if redis0 is not None and meters.redis and (redis1 := meters.redis.counters()):
        level.redis_cpu_s = redis1[0] - redis0[0]
        level.redis_commands = redis1[1] - redis0[1]
    return level


async def measure(
    run: ConfigRun, base_url: str, api_key: str | None, settings: Settings, meters: Meters
) -> None:
    async with load_session(settings.pool_size, settings.timeout_s) as session:
        client = Client(session, base_url, api_key)
        await run.load(partial(run_metered, client, meters=meters), Level, settings, _progress)


def _progress(name: str, level: Level) -> None:
    s = level.summary()
    errors = f", [red]{s['errors']} errors[/red]" if s["errors"] else ""
    console.print(
        f"  {name} {level.label}: {s['ok']:,} ok in {s['wall_s']:.1f} s, "
        f"{s['rps']:,.0f} req/s, p50 {s['latency_p50_ms']} ms, "
        f"gateway CPU {fmt(s['gateway_cpu_ms_per_req'], 3)} ms/req{errors}"
    )


# --------------------------------------------------------------------------- servers


def preflight(run: ConfigRun, base_url: str, api_key: str | None) -> None:
    """The configuration does what it claims: NotReady otherwise."""
    if run.auth:
        for label, key in (("no key", None), ("a wrong key", "sk-wrong-" + secrets.token_hex(16))):
            code, _, text = chat_call(base_url, key)
            run.sent += 1
            if code != 401:
                raise NotReady(f"auth not enforced: {label} got HTTP {code}, not 401: {text[:200]}")
        run.checks.append("no key and a wrong key get 401")
    run.sent += 1
    headers = probe_chat(base_url, api_key)
    if run.auth:
        if REMAINING_HEADER not in headers:
            raise NotReady(f"limits not applied: the key's reply has no {REMAINING_HEADER} header")
        limit = headers.get("x-ratelimit-limit-requests")
        run.checks.append(f"the key gets 200 with {REMAINING_HEADER} (limit {limit})")
    else:
        run.checks.append("no key gets 200")


def write_config(run: ConfigRun, stub_url: str, settings: Settings) -> Path:
    """The configuration's YAML file (the key prefix, for Redis, set on ``run``)."""
    security: dict[str, Any]
    if run.limits_backend is None:
        security = {"auth": "off"}
    else:
        limits: dict[str, Any] = {"backend": run.limits_backend}
        if run.limits_backend == "redis":
            run.key_prefix = f"helixflow:bench-auth:{secrets.token_hex(6)}:"
            limits["key_prefix"] = run.key_prefix
        security = {"auth": "required", "limits": limits}
    config = helixflow_config(stub_url, security=security)
    config_file = settings.work_dir / f"{run.name}.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    return config_file


def server_env(run: ConfigRun, settings: Settings) -> dict[str, str]:
    env = helixflow_data_env(settings.work_dir / f"{run.name}-data")
    if run.limits_backend == "redis":
        env["HELIXFLOW_REDIS_URL"] = settings.redis_url
    return env


def create_key(run: ConfigRun, config_file: Path, env: dict[str, str], settings: Settings) -> str:
    """A key made with ``helixflow keys create`` in the configuration's database."""
    limit = str(settings.key_limit)
    cmd = helixflow_command("keys", "create", "--name", f"bench-{run.name}")
    cmd += ["--rpm", limit, "--tpm", limit, "--json", "--config", str(config_file)]
    console.print("  " + " ".join(cmd), style="dim", soft_wrap=True, markup=False)
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, env=env, cwd=settings.work_dir, timeout=180
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError("`helixflow keys create` did not finish in 180 s") from None
    if done.returncode != 0:
        # Typer's error boxes: keep the words, drop the frame.
        text = (done.stderr or done.stdout).translate(BOX_CHARS)
        tail = [" ".join(line.split()) for line in text.splitlines() if line.strip()][-4:]
        raise RuntimeError(
            f"`helixflow keys create` exited with code {done.returncode}: " + " / ".join(tail)
        )
    out = done.stdout
    try:
        created, _ = json.JSONDecoder().raw_decode(out[out.index("{") :])
        key = created["key"]
    except (ValueError, KeyError, TypeError):
        raise RuntimeError(
            f"`helixflow keys create --json` printed no key: {out[:200]!r}"
        ) from None
    if not isinstance(key, str) or not key:
        raise RuntimeError("`helixflow keys create --json` printed an empty key")
    run.key_id = str(created.get("id")) if created.get("id") is not None else None
    return key


def log_problems(log_file: Path) -> list[str]:
    """The log's warning and error records (a record: its first line and the indented lines
    that continue it, a traceback included), verbatim; the first MAX_LOG_RECORDS."""
    try:
        lines = log_file.read_text(errors="replace").splitlines()
    except OSError:
        return []
    records: list[list[str]] = []
    for line in lines:
        if LOG_RECORD.match(line) or not records:
            records.append([line.rstrip()])
        else:
            records[-1].append(line.rstrip())
    problems = []
    for record in records:
        start = LOG_RECORD.match(record[0])
        level = start.group(1) if start else None
        if level in PROBLEM_LEVELS or any("Traceback" in line for line in record):
            shown = record[:MAX_RECORD_LINES]
            if len(record) > MAX_RECORD_LINES:
                shown.append(f"    ... {len(record) - MAX_RECORD_LINES} more lines")
            problems.append("\n".join(shown))
    if len(problems) > MAX_LOG_RECORDS:
        more = len(problems) - MAX_LOG_RECORDS
        problems = [*problems[:MAX_LOG_RECORDS], f"... and {more} more such records"]
    return problems


def run_config(
    run: ConfigRun, stub: Stub, settings: Settings, redis_probe: RedisProbe | None
) -> None:
    """Start the configuration's server, check it, load it, stop it; failures land in ``run``."""
    console.rule(f"[bold]{run.name}")
    log_file = settings.work_dir / f"{run.name}.log"
    run.log_file = str(log_file)
    try:
        config_file = write_config(run, stub.url, settings)
        env = server_env(run, settings)
        api_key = create_key(run, config_file, env, settings) if run.auth else None
        port = free_port()
        run.command = helixflow_command("serve", "--config", str(config_file), "--port", str(port))
        console.print("  " + " ".join(run.command), style="dim", soft_wrap=True, markup=False)
        url = f"http://127.0.0.1:{port}"
        with server_process(run.command, log_file=log_file, cwd=settings.work_dir, env=env) as proc:
            run_async(wait_ready(proc, url + "/ready", settings.ready_timeout_s, run.name))
            preflight(run, url + "/v1", api_key)
            console.print(f"  checks: {'; '.join(run.checks)}", style="dim")
            probe = redis_probe if run.limits_backend == "redis" else None
            meters = Meters(Watched(proc.pid, stub.pid), probe)
            run_async(measure(run, url + "/v1", api_key, settings, meters))
    except Exception as exc:  # report it and go on with the next configuration
        run.failed = f"{type(exc).__name__}: {exc}"
        console.print(f"[red]{run.name} failed:[/red] {escape(run.failed)}; log: {log_file}")
    finally:
        if run.key_prefix and redis_probe is not None:
            try:
                run.redis_keys_deleted = redis_probe.delete_prefix(run.key_prefix)
            except redis.RedisError as exc:
                console.print(f"[yellow]could not delete {run.key_prefix}*: {exc}[/yellow]")
        run.log_problems = log_problems(log_file)
    if run.limits_backend == "redis" and not run.failed and run.redis_keys_deleted == 0:
        run.failed = f"no Redis keys under {run.key_prefix}: the limits never reached Redis"
        console.print(f"[red]{run.name}:[/red] {escape(run.failed)}")
    time.sleep(1)  # let the CPU settle before the next configuration


def run_all(settings: Settings) -> dict[str, ConfigRun]:
    runs = {name: ConfigRun(name, limits_backend=LIMITS_BACKEND[name]) for name in settings.configs}
    redis_probe: RedisProbe | None = None
    if "auth-redis" in runs:
        redis_probe = RedisProbe(settings.redis_url)
        try:
            ver = redis_probe.check()
            console.print(f"Redis {ver} at {redact_url(settings.redis_url)}", style="dim")
        except redis.RedisError as exc:
            runs["auth-redis"].failed = (
                f"Redis at {redact_url(settings.redis_url)} does not answer: {exc} "
                "(start one, pass --redis-url, or leave auth-redis out with --configs)"
            )
            console.print(f"[red]{escape(runs['auth-redis'].failed)}[/red]")
            redis_probe.close()
            redis_probe = None
    try:
        with stub_upstream(settings.work_dir) as stub:
            for run in runs.values():
                if run.failed is None:
                    run_config(run, stub, settings, redis_probe)
    finally:
        if redis_probe is not None:
            redis_probe.close()
    return runs


# --------------------------------------------------------------------------- comparisons


def _diff(a: float | None, b: float | None, scale: float = 1.0) -> float | None:
    return None if a is None or b is None else round((a - b) * scale, 3)


def comparison(runs: dict[str, ConfigRun], name: str, c: int) -> dict[str, Any] | None:
    """What configuration ``name`` adds over noauth at concurrency ``c`` (None: not both)."""
    mine, base = runs.get(name), runs.get(BASELINE)
    a = mine.level(c) if mine else None
    b = base.level(c) if base else None
    if a is None or b is None:
        return None
    x, y = a.summary(), b.summary()
    gw_added = _diff(x["gateway_cpu_ms_per_req"], y["gateway_cpu_ms_per_req"], 1000)
    redis_us = x["redis_cpu_ms_per_req"]
    return {
        "added_p50_ms": _diff(x["latency_p50_ms"], y["latency_p50_ms"]),
        "added_p99_ms": _diff(x["latency_p99_ms"], y["latency_p99_ms"]),
        "added_gateway_cpu_us_per_req": gw_added,
        "added_cpu_with_redis_us_per_req": (
            None if gw_added is None else round(gw_added + 1000 * (redis_us or 0.0), 3)
        ),
        "rps_vs_noauth_pct": (
            round(100 * (a.rps / b.rps - 1), 1) if b.rps > 0 and a.rps > 0 else None
        ),
    }


# --------------------------------------------------------------------------- reporting

LEVEL_HEADERS = [
    "config", "conc", "requests", "errors", "req/s", "p50 ms", "p99 ms", "gateway CPU ms/req",
    "Redis CPU ms/req", "Redis cmds/req", "gateway CPU %", "client CPU %", "other CPU %",
]  # fmt: skip
ADDED_HEADERS = [
    "config", "conc", "added p50 ms", "added p99 ms", "added gateway CPU µs/req",
    "added CPU incl. Redis µs/req", "req/s vs noauth",
]  # fmt: skip
CPU_NOTE = (
    "CPU % is of one core over the level's wall time: the gateway's process group, the load "
    'generator, and every other process ("other": not the stub or Redis; the JSON has theirs); '
    "Redis CPU and commands are the whole Redis server's (every client's)"
)


def level_rows(runs: dict[str, ConfigRun], settings: Settings) -> list[list[str]]:
    rows = []
    for name, run in runs.items():
        for c in settings.concurrency:
            level = run.level(c)
            if level is None:
                continue
            s = level.summary()
            rows.append(
                [
                    name,
                    str(c),
                    f"{s['requests']:,}",
                    str(s["errors"]),
                    fmt(s["rps"]),
                    fmt(s["latency_p50_ms"], 3),
                    fmt(s["latency_p99_ms"], 3),
                    fmt(s["gateway_cpu_ms_per_req"], 3),
                    fmt(s["redis_cpu_ms_per_req"], 3),
                    fmt(s["redis_commands_per_req"], 2),
                    fmt(s["gateway_cpu_pct"]),
                    fmt(s["client_cpu_pct"]),
                    fmt(s["other_cpu_pct"]),
                ]
            )
    return rows


def added_rows(runs: dict[str, ConfigRun], settings: Settings) -> list[list[str]]:
    rows = []
    for name in runs:
        if name == BASELINE:
            continue
        for c in settings.concurrency:
            comp = comparison(runs, name, c)
            if comp is None:
                continue
            rps = comp["rps_vs_noauth_pct"]
            rows.append(
                [
                    name,
                    str(c),
                    _signed(comp["added_p50_ms"], 3),
                    _signed(comp["added_p99_ms"], 3),
                    _signed(comp["added_gateway_cpu_us_per_req"], 0),
                    _signed(comp["added_cpu_with_redis_us_per_req"], 0),
                    "—" if rps is None else f"{rps:+.1f} %",
                ]
            )
    return rows


def _signed(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:+,.{digits}f}"


def _table(title: str, headers: list[str], rows: list[list[str]], caption: str = "") -> Table:
    table = Table(title=title, caption=caption or None)
    for i, header in enumerate(headers):
        if i == 0:  # the configuration's name: never cut
            table.add_column(header, no_wrap=True, min_width=max(len(c) for c in CONFIGS))
        else:
            table.add_column(header, justify="right")
    for row in rows:
        table.add_row(*row)
    return table


def _load_note(settings: Settings) -> str:
    return (
        f"{settings.load_note()} at concurrency {WARMUP_CONCURRENCY}; key limits "
        f"{settings.key_limit:,} RPM and TPM"
    )


def notes(runs: dict[str, ConfigRun]) -> list[str]:
    """Per configuration: checks, Redis keys, errors, failures (plain text)."""
    out = []
    for name, run in runs.items():
        if run.checks:
            out.append(f"{name}: {'; '.join(run.checks)}")
        if run.key_prefix is not None:
            out.append(
                f"{name}: {fmt(run.redis_keys_deleted)} Redis keys under {run.key_prefix} "
                "deleted after the run"
            )
        for level in run.levels:
            if level.min_remaining is not None:
                out.append(
                    f"{name} c={level.concurrency}: lowest {REMAINING_HEADER} "
                    f"{level.min_remaining:,}"
                )
            for msg, n in level.errors.most_common(3):
                out.append(f"{name} c={level.concurrency} ERRORS: {n} x {msg}")
        if run.failed:
            out.append(f"{name} FAILED: {run.failed} (log: {run.log_file})")
    return out


def print_report(runs: dict[str, ConfigRun], settings: Settings, meta: dict[str, Any]) -> None:
    console.rule("[bold]results")
    console.print(
        f"{meta['cpus']} CPUs (nproc), shared by the load generator, the stub, the gateway and "
        f"Redis (nothing pinned); {_load_note(settings)}",
        style="dim",
    )
    title = "per configuration (non-streamed chat completions)"
    console.print(_table(title, LEVEL_HEADERS, level_rows(runs, settings), CPU_NOTE))
    if rows := added_rows(runs, settings):
        console.print(_table("cost of auth + limits over noauth", ADDED_HEADERS, rows))
    if busy := busy_levels(runs):
        console.print(
            f"[yellow]{busy_note(busy)}:[/yellow] those figures are noisier; run again when it "
            "is quiet"
        )
    for line in notes(runs):
        style = "red" if " FAILED: " in line or " ERRORS: " in line else "dim"
        console.print(escape(line), style=style)
    for name, run in runs.items():
        if run.log_problems:
            console.print(f"[yellow]{name}: errors and warnings in {run.log_file}:[/yellow]")
            for line in run.log_problems:
                console.print("  " + line, markup=False, highlight=False, soft_wrap=True)


def markdown(runs: dict[str, ConfigRun], settings: Settings, meta: dict[str, Any]) -> str:
    out = markdown_preamble(
        meta,
        "the load generator, the stub, the gateway and Redis",
        f"{_load_note(settings)}. One HelixFlow process per configuration, telemetry into SQLite.",
    )
    out += markdown_table(LEVEL_HEADERS, level_rows(runs, settings))
    out += [CPU_NOTE + ".", ""]
    if rows := added_rows(runs, settings):
        out += ["Cost of authentication + limits over noauth at the same concurrency:", ""]
        out += markdown_table(ADDED_HEADERS, rows)
    out += [f"- {line}" for line in notes(runs)]
    if busy := busy_levels(runs):
        out.append(f"- {busy_note(busy)}")
    return "\n".join(out) + "\n"


def to_json(runs: dict[str, ConfigRun], settings: Settings, meta: dict[str, Any]) -> dict[str, Any]:
    configs = {
        name: {
            "auth": "required" if run.auth else "off",
            "limits_backend": run.limits_backend,
            "command": run.command,
            "checks": run.checks,
            "key_id": run.key_id,
            "redis_key_prefix": run.key_prefix,
            "redis_keys_deleted": run.redis_keys_deleted,
            "failed": run.failed,
            "requests_sent": run.sent,
            "log_problems": run.log_problems,
            "levels": [lv.summary() for lv in run.levels],
        }
        for name, run in runs.items()
    }
    comparisons = {
        name: {str(c): comparison(runs, name, c) for c in settings.concurrency}
        for name in runs
        if name != BASELINE
    }
    return {
        "meta": meta,
        "settings": {
            "configs": settings.configs,
            "concurrency": settings.concurrency,
            "duration_s": settings.duration_s,
            "requests": settings.requests,
            "warmup": settings.warmup,
            "warmup_concurrency": WARMUP_CONCURRENCY,
            "key_rpm": settings.key_limit,
            "key_tpm": settings.key_limit,
            "redis_url": redact_url(settings.redis_url) if "auth-redis" in runs else None,
            "timeout_s": settings.timeout_s,
        },
        "configs": configs,
        "comparisons": comparisons,
        "busy_levels": busy_levels(runs),
    }


# --------------------------------------------------------------------------- CLI


def config_list(text: str) -> list[str]:
    """An argparse type: configuration names separated by commas, run in the usual order."""
    names = {v.strip() for v in text.split(",") if v.strip()}
    unknown = names - set(CONFIGS)
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown configuration(s) {', '.join(sorted(unknown)) or '(none)'}; "
            f"choose from {', '.join(CONFIGS)}"
        )
    return [c for c in CONFIGS if c in names]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="auth_overhead.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--concurrency",
        type=int_list,
        default=[1, 16],
        help="concurrency levels, comma separated (default: 1,16)",
    )
    add_load_arguments(parser, unit="configuration", duration_s=8.0)
    add(
        "--configs",
        type=config_list,
        default=list(CONFIGS),
        help=f"configurations to run, comma separated (default: {','.join(CONFIGS)}); the "
        f"comparisons need {BASELINE}",
    )
    add(
        "--redis-url",
        default=os.environ.get("HELIXFLOW_REDIS_URL") or DEFAULT_REDIS_URL,
        help="Redis for auth-redis's limits (default: $HELIXFLOW_REDIS_URL, else "
        f"{DEFAULT_REDIS_URL}); only keys under a prefix unique to the run are written, and "
        "they are deleted after",
    )
    add(
        "--key-limit",
        type=int,
        default=10_000_000,
        help="the bench key's RPM and TPM: high enough never to refuse, so every check runs "
        "and none refuses (default: 10,000,000)",
    )
    add_run_arguments(
        parser,
        ready="each HelixFlow server",
        json_out=DEFAULT_JSON_OUT,
        work_dir="servers' logs, configs, data directories",
    )
    args = parser.parse_args(argv)
    if args.requests is not None and args.requests < 1:
        parser.error("--requests must be positive")
    if args.duration <= 0:
        parser.error("--duration must be positive")
    if args.warmup < 0:
        parser.error("--warmup must not be negative")
    if args.key_limit < 1:
        parser.error("--key-limit must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup on SIGTERM too
    work_dir = Path(tempfile.mkdtemp(prefix="helixflow-auth-"))
    settings = Settings.from_args(
        args,
        work_dir,
        configs=args.configs,
        key_limit=args.key_limit,
        redis_url=args.redis_url,
    )
    console.print(
        f"configurations {', '.join(settings.configs)}; {os.cpu_count()} CPUs, nothing pinned; "
        f"{_load_note(settings)}; logs in {work_dir}",
        style="dim",
    )
    meta = run_metadata(
        REPO_ROOT,
        ("helixflow", "aiohttp", "uvloop", "redis"),
        loadavg_1m=round(os.getloadavg()[0], 2),
    )
    try:
        runs = run_all(settings)
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted[/yellow]; logs in {work_dir}")
        return 130
    print_report(runs, settings, meta)
    save_results(
        console,
        json_out=args.json_out,
        data=lambda: to_json(runs, settings, meta),
        markdown_out=args.markdown_out,
        text=lambda: markdown(runs, settings, meta),
    )
    failed = any(run.failed for run in runs.values())
    errors = any(level.errors for run in runs.values() for level in run.levels)
    if failed or errors:
        console.print(f"[red]some configurations failed or had errors; logs in {work_dir}[/red]")
        return 1
    clean_up(console, work_dir, keep=args.keep_logs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
