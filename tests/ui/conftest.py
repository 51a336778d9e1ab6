"""Browser tests of the dashboard: Playwright driving Debian's Chromium against a real server.

The server has a bootstrap admin (sessions on, cookies without ``Secure`` over plain HTTP), a
fake upstream provider ``up`` serving ``m`` (its stream paced, so tokens arrive one by one)
and the local model. Each test gets a fresh browser context (no cookies) and leaves a
screenshot in ``test-artifacts/ui/<test>.png``.

The browser is ``/usr/bin/chromium`` (``apt-get install chromium``), never one Playwright
downloads. Without it the tests skip, unless ``HELIXFLOW_REQUIRE_BROWSER`` is set (CI), when
they fail.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.fake_upstream import FakeUpstream, chunk_delay

CHROMIUM = Path("/usr/bin/chromium")
REQUIRE_BROWSER = "HELIXFLOW_REQUIRE_BROWSER"
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "ui"
STATIC_INDEX = ROOT / "src" / "helixflow" / "api" / "ui" / "static" / "index.html"

ADMIN = "admin"
ADMIN_PASSWORD = "correct horse battery staple"
UPSTREAM_MODEL = "m"
LOCAL_MODEL = "smollm2-135m"
REPLY_TOKENS = [
    "Streaming",
    " tokens",
    " from",
    " the",
    " fake",
    " upstream",
    ",",
    " one",
    " by",
    " one",
    ".",
]
REPLY = "".join(REPLY_TOKENS)
CHUNK_DELAY_S = 0.08
HEADER_SECRET = "ui-test-header-secret"


def browser_missing() -> bool:
    return not CHROMIUM.exists()


@pytest.fixture(scope="session")
def chromium_path() -> str:
    if browser_missing():
        pytest.fail(
            f"{CHROMIUM} is missing and {REQUIRE_BROWSER} is set: install Debian's chromium "
            "(apt-get install -y chromium)."
        )
    if not STATIC_INDEX.is_file():
        pytest.fail(f"The dashboard is not built ({STATIC_INDEX} is missing): run `make ui`.")
    return str(CHROMIUM)


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream("up", reply_tokens=REPLY_TOKENS, models=[UPSTREAM_MODEL]) as fake:
        fake.default = chunk_delay(CHUNK_DELAY_S)
        yield fake


def server_config(upstream: FakeUpstream, workdir: Path) -> dict[str, Any]:
    password = workdir / "admin-password"
    password.write_text(ADMIN_PASSWORD)
    secret = workdir / "secret"
    secret.write_text("u" * 48)
    secret.chmod(0o600)
    return {
        "models": [
            {"id": LOCAL_MODEL, "bundled": "smollm2-135m", "parallel": 2, "context_size": 2048}
        ],
        "providers": [
            {
                "name": "up",
                "base_url": upstream.base_url,
                "models": [{"name": UPSTREAM_MODEL}],
                # A credential in the configuration: the Settings view must show it masked.
                "headers": {"X-Upstream-Token": HEADER_SECRET},
            }
        ],
        "router": {"probe_interval_s": 3600},
        "telemetry": {"flush_interval_ms": 100},
        "security": {
            "secret_env": None,
            "secret_file": str(secret),
            "bootstrap_admin": {"password_env": None, "password_file": str(password)},
            "cookie_secure": False,
            "login_attempts_per_minute": 200,
        },
    }


@pytest.fixture(scope="module")
def server(
    chromium_path: str, upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("ui")
    proc = ServerProcess(server_config(upstream, workdir), workdir, "ui")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def admin_token(server: ServerProcess) -> str:
    response = httpx.post(
        f"{server.base_url}/api/v1/auth/login",
        json={"username": ADMIN, "password": ADMIN_PASSWORD},
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


@pytest.fixture(scope="module")
def admin_http(server: ServerProcess, admin_token: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.base_url,
        headers={"Authorization": f"Bearer {admin_token}"},
        timeout=60,
    ) as client:
        yield client


@pytest.fixture(scope="module")
def browser(chromium_path: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path, headless=True)
        yield browser
        browser.close()


class PageProblems:
    """What a page reported that a test should fail on: uncaught exceptions and CSP
    violations (a script or style the page's Content-Security-Policy refused)."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def on_console(self, message: Any) -> None:
        if message.type == "error" and "Content Security Policy" in message.text:
            self.errors.append(f"CSP: {message.text}")

    def on_page_error(self, error: Any) -> None:
        self.errors.append(f"uncaught: {error}")


@pytest.fixture
def context(browser: Any, server: ServerProcess) -> Iterator[Any]:
    context = browser.new_context(
        base_url=server.base_url,
        viewport={"width": 1360, "height": 900},
        permissions=["clipboard-read", "clipboard-write"],
    )
    context.set_default_timeout(20_000)
    yield context
    context.close()


@pytest.fixture
def problems() -> PageProblems:
    return PageProblems()


@pytest.fixture
def page(context: Any, problems: PageProblems, request: pytest.FixtureRequest) -> Iterator[Any]:
    page = context.new_page()
    page.on("console", problems.on_console)
    page.on("pageerror", problems.on_page_error)
    yield page
    screenshot(page, request.node.name)
    assert not problems.errors, problems.errors


def screenshot(page: Any, name: str) -> Path:
    """Save the whole page as ``test-artifacts/ui/<name>.png``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def login(page: Any, username: str = ADMIN, password: str = ADMIN_PASSWORD) -> None:
    """Sign in through the login form; ends on the overview."""
    page.goto("/ui/")
    page.get_by_test_id("login-form").wait_for()
    page.get_by_test_id("login-username").fill(username)
    page.get_by_test_id("login-password").fill(password)
    page.get_by_test_id("login-submit").click()
    page.get_by_test_id("view-overview").wait_for()


def skip_without_browser() -> None:
    """At the top of a browser test module: skip it when there is no Chromium, unless CI
    requires one (then the ``chromium_path`` fixture fails with what to install)."""
    if browser_missing() and not os.environ.get(REQUIRE_BROWSER):
        pytest.skip(
            f"{CHROMIUM} is missing (apt-get install -y chromium; set {REQUIRE_BROWSER} to fail "
            "instead)",
            allow_module_level=True,
        )
