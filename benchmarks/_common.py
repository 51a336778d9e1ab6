"""Helpers shared by the benchmark scripts: ports, server processes, event loops, CPU
accounting, percentiles, report formatting, run metadata, result files."""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import datetime as dt
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson
from rich.console import Console

REPO_ROOT = Path(__file__).resolve().parent.parent

T = TypeVar("T")

# --------------------------------------------------------------------------- servers

_LIVE: dict[int, subprocess.Popen[bytes]] = {}
"""Servers started and not yet stopped: stopped at exit, whatever ended the run."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def track(proc: subprocess.Popen[bytes]) -> None:
    """Stop ``proc`` (started with ``start_new_session=True``) at exit if nobody did."""
    _LIVE[proc.pid] = proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group, then SIGKILL it if it lingers."""
    _LIVE.pop(proc.pid, None)
    if proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait_s)
            return


@atexit.register
def _stop_all() -> None:
    for proc in list(_LIVE.values()):
        stop(proc)


@contextlib.contextmanager
def server_process(
    cmd: list[str], *, log_file: Path, cwd: Path, env: Mapping[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    """``cmd`` in a session of its own, its output in ``log_file``; stopped on the way out."""
    with log_file.open("wb") as log:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=cwd, env=env,
        )  # fmt: skip
    track(proc)
    try:
        yield proc
    finally:
        stop(proc)


class NotReady(RuntimeError):
    """A server did not come up (it exited, or did not answer in time)."""


async def wait_ready(proc: subprocess.Popen[bytes], url: str, limit_s: float, name: str) -> None:
    """Poll ``url`` until it answers 200; fail early if the process dies."""
    try:
        async with (
            asyncio.timeout(limit_s),
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        ):
            while True:
                if proc.poll() is not None:
                    raise NotReady(f"{name} exited with code {proc.returncode}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(url) as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.25)
    except TimeoutError:
        raise NotReady(f"{name} not ready after {limit_s:.0f} s") from None


def helixflow_env() -> dict[str, str]:
    """The caller's environment without its HELIXFLOW_* variables, which outrank a server's
    config file."""
    return {k: v for k, v in os.environ.items() if not k.startswith("HELIXFLOW_")}


def helixflow_python() -> Path:
    """The project's venv's Python (HelixFlow installed), else this one."""
    venv_python = REPO_ROOT / ".venv" / "bin" / "python"
    return venv_python if venv_python.exists() else Path(sys.executable)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop where installed (as the servers do), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


# --------------------------------------------------------------------------- CPU accounting


def _proc_stat(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first); None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _cpu_seconds(fields: list[str]) -> float:
    """User + system CPU time from a process's stat fields."""
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int | str) -> float | None:
    """User + system CPU time of one process (all its threads) from /proc; None elsewhere."""
    fields = _proc_stat(pid)
    return None if fields is None else _cpu_seconds(fields)


def group_cpu_seconds(pgid: int) -> float | None:
    """User + system CPU of every live process in process group ``pgid`` (from /proc)."""
    total = 0.0
    found = False
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _proc_stat(entry.name)
        if fields is not None and int(fields[2]) == pgid:
            found = True
            total += _cpu_seconds(fields)
    return total if found else None


def machine_busy_seconds() -> float | None:
    """CPU time the whole machine spent busy since boot (all cores, from /proc/stat): not idle,
    not waiting for I/O, guest time counted once (in user and nice)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default method); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


# --------------------------------------------------------------------------- reports


def fmt(value: Any, digits: int = 1) -> str:
    """A table cell: a dash for None, floats with ``digits`` decimals and thousands commas."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def markdown_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a Markdown table (right-aligned columns), then an empty line."""
    lines = ["| " + " | ".join(headers) + " |", "|" + " ---: |" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


# --------------------------------------------------------------------------- run metadata


def git_commit(repo_root: Path) -> str:
    """The short commit of ``repo_root``, with ``-dirty`` when tracked files changed."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=repo_root, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"

    commit = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return commit + ("-dirty" if dirty and dirty != "unknown" else "")


def run_metadata(repo_root: Path, dists: Sequence[str], **context: Any) -> dict[str, Any]:
    """The run's context: date, command, commit, machine, ``context`` (further entries), and
    the versions of the installed ``dists``."""
    versions: dict[str, str] = {}
    for dist in dists:
        with contextlib.suppress(PackageNotFoundError):
            versions[dist] = version(dist)
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "git_commit": git_commit(repo_root),
        "cpus": os.cpu_count(),
        "machine": f"{platform.system()} {platform.machine()}",
        "python": platform.python_version(),
        **context,
        "versions": versions,
    }


# --------------------------------------------------------------------------- result files


def save_results(
    console: Console,
    *,
    json_out: Path | None,
    data: Callable[[], Any],
    markdown_out: Path | None = None,
    text: Callable[[], str] | None = None,
) -> None:
    """Write ``data()`` to ``json_out`` (indented JSON) and ``text()`` to ``markdown_out``,
    each only when given, making their directories; say what was written."""
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_bytes(orjson.dumps(data(), option=orjson.OPT_INDENT_2) + b"\n")
        console.print(f"wrote {json_out}")
    if markdown_out and text is not None:
        markdown_out.parent.mkdir(parents=True, exist_ok=True)
        markdown_out.write_text(text())
        console.print(f"wrote {markdown_out}")


def clean_up(console: Console, work_dir: Path, *, keep: bool) -> None:
    """Remove a good run's temporary directory (logs, configs, data), unless asked to keep it."""
    if keep:
        console.print(f"logs kept in {work_dir}")
    else:
        shutil.rmtree(work_dir, ignore_errors=True)


# --------------------------------------------------------------------------- CLI


def int_list(text: str) -> list[int]:
    """An argparse type: positive integers separated by commas."""
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("expected positive integers separated by commas")
    return values
