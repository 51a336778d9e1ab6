"""``helixflow serve --workers N``: several processes behind one port, each in its own slot,
with metrics summed across them and every request recorded once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from helixflow.config import Settings
from helixflow.errors import StartupError
from helixflow.workers import claim_slot, worker_settings
from tests.api.test_telemetry import wait_rows
from tests.conftest import free_port
from tests.fake_upstream import FakeUpstream

REQUESTS = 24


def test_each_worker_claims_its_own_slot(tmp_path: Path) -> None:
    first = claim_slot(tmp_path, 2)
    second = claim_slot(tmp_path, 2)
    assert (first.index, second.index) == (0, 1)
    second.lock.close()  # a worker that exits frees its slot for the next one
    again = claim_slot(tmp_path, 2)
    assert again.index == 1
    held = [claim_slot(tmp_path, 2), claim_slot(tmp_path, 2)]  # room for restarts: 2 x 2
    assert [slot.index for slot in held] == [2, 3]
    with pytest.raises(StartupError, match="no free worker slot"):
        claim_slot(tmp_path, 2)
    settings = worker_settings(Settings(data_dir=tmp_path / "data"), again)
    assert settings.spool_dir == tmp_path / "data" / "spool" / "worker-1"
    assert settings.kv_dir == tmp_path / "data" / "kv" / "worker-1"


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    workdir = tmp_path_factory.mktemp("workers")
    with FakeUpstream("up") as upstream:
        config = {
            "models": [{"id": "smollm2-135m", "bundled": "smollm2-135m", "parallel": 1}],
            "providers": [{"name": "up", "base_url": upstream.base_url, "models": ["m"]}],
            "router": {"probe_interval_s": 3600},
        }
        path = workdir / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HELIXFLOW_", "PROM"))}
        env["HELIXFLOW_DATA_DIR"] = str(workdir / "data")
        log = (workdir / "serve.log").open("wb")
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "helixflow", "serve", "--config", str(path)),
                *("--port", str(port), "--workers", "2"),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                assert proc.poll() is None, (workdir / "serve.log").read_text()
                try:
                    if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.3)
            yield base, workdir / "data"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()


def _inference_total(base: str) -> float:
    text = httpx.get(f"{base}/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("helixflow_inference_requests_total{")
    )


def test_requests_are_counted_once_across_workers(two_workers: tuple[str, Path]) -> None:
    base, data_dir = two_workers
    with httpx.Client(base_url=base, timeout=30) as client:
        ids = []
        for _ in range(REQUESTS):
            response = client.post(
                "/v1/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            )
            assert response.status_code == 200
            ids.append(response.headers["x-request-id"])
    for _ in range(6):  # whichever worker answers the scrape sums every worker's counts
        assert _inference_total(base) == REQUESTS
    assert {p.name for p in (data_dir / "workers").iterdir() if p.is_dir()} == {"0", "1"}
    rows = wait_rows(f"sqlite:///{data_dir / 'helixflow.db'}", count=REQUESTS)
    assert sorted(r["request_id"] for r in rows) == sorted(ids)
