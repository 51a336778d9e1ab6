"""Helpers shared by the benchmark scripts: ports, server processes, run metadata."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
from pathlib import Path

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
