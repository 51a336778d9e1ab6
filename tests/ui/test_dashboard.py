"""The dashboard at /ui in a real browser (Debian's Chromium through Playwright, headless)
against a real server: signing in, the playground's token stream, API keys, the live charts,
the router and analytics views, sessions, escaping; and how the server serves the build."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from playwright.sync_api import expect

from tests.conftest import ServerProcess
from tests.fake_upstream import FakeUpstream, status
from tests.ui.conftest import (
    ADMIN,
    ADMIN_PASSWORD,
    CHUNK_DELAY_S,
    HEADER_SECRET,
    LOCAL_MODEL,
    REPLY,
    REPLY_TOKENS,
    UPSTREAM_MODEL,
    login,
    screenshot,
    server_config,
    skip_without_browser,
)

skip_without_browser()

MESSAGES = [{"role": "user", "content": "Say hello."}]


def chat(http: httpx.Client, model: str, **extra: Any) -> httpx.Response:
    return http.post(
        "/v1/chat/completions", json={"model": model, "messages": MESSAGES, **extra}, timeout=120
    )


def number(text: str) -> float:
    return float(text.replace(",", "").replace("\u202f", "").split()[0])


# --- signing in ------------------------------------------------------------------------------


def test_login_shows_the_dashboard(page: Any) -> None:
    page.goto("/ui/keys")
    # Not signed in: the app asks for credentials first, then goes where it was asked to.
    expect(page.get_by_test_id("login-form")).to_be_visible()
    page.get_by_test_id("login-username").fill(ADMIN)
    page.get_by_test_id("login-password").fill(ADMIN_PASSWORD)
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("view-keys")).to_be_visible()
    assert page.url.endswith("/ui/keys")
    expect(page.get_by_test_id("user-name")).to_have_text(ADMIN)
    expect(page.get_by_test_id("user-role")).to_have_text("admin")

    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["helixflow_session"]["httpOnly"]
    assert not cookies["helixflow_csrf"]["httpOnly"]  # the scripts echo it in X-CSRF-Token

    # Every view opens from the navigation; the later ones are there, disabled.
    for route in ("overview", "playground", "router", "analytics", "keys", "settings"):
        page.get_by_test_id(f"nav-{route}").click()
        expect(page.get_by_test_id(f"view-{route}")).to_be_visible()
        expect(page.get_by_test_id(f"nav-{route}")).to_have_attribute("aria-current", "page")
    for later in ("experiments", "versions", "workflows", "training"):
        item = page.get_by_test_id(f"nav-{later}")
        expect(item).to_have_attribute("aria-disabled", "true")
        assert item.evaluate("el => el.tagName") != "A"

    # A deep link reloads into the same view (the server's SPA fallback), still signed in.
    page.goto("/ui/router")
    expect(page.get_by_test_id("view-router")).to_be_visible()
    page.get_by_test_id("nav-overview").click()
    expect(page.get_by_test_id("view-overview")).to_be_visible()


def test_failed_login_shows_an_error(page: Any) -> None:
    page.goto("/ui/")
    page.get_by_test_id("login-username").fill(ADMIN)
    page.get_by_test_id("login-password").fill("not the password")
    page.get_by_test_id("login-submit").click()
    error = page.get_by_test_id("login-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("Incorrect username or password")
    screenshot(page, "test_failed_login_shows_an_error-message")
    expect(page.get_by_test_id("login-form")).to_be_visible()
    assert "helixflow_session" not in {c["name"] for c in page.context.cookies()}
    # And the right password still works from the same form.
    page.get_by_test_id("login-password").fill(ADMIN_PASSWORD)
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("view-overview")).to_be_visible()


def test_logout_ends_the_session(page: Any) -> None:
    login(page)
    page.get_by_test_id("logout").click()
    expect(page.get_by_test_id("login-form")).to_be_visible()
    page.goto("/ui/keys")
    expect(page.get_by_test_id("login-form")).to_be_visible()


def test_an_expired_session_is_refreshed_once_then_ends(page: Any) -> None:
    login(page)
    # The access token's cookie expires: the next call is a 401, the app refreshes the
    # session with the refresh cookie and carries on.
    page.context.clear_cookies(name="helixflow_session")
    page.get_by_test_id("nav-keys").click()
    expect(page.get_by_test_id("keys-table")).to_be_visible()
    assert "helixflow_session" in {c["name"] for c in page.context.cookies()}
    # With no refresh cookie either, it goes back to the login form, saying why.
    page.context.clear_cookies()
    page.get_by_test_id("nav-analytics").click()
    expect(page.get_by_test_id("login-form")).to_be_visible()
    expect(page.get_by_test_id("login-notice")).to_be_visible()


# --- playground ------------------------------------------------------------------------------

RECORD_UPDATES = """() => {
  window.__updates = [];
  const conversation = document.querySelector('[data-testid="playground-conversation"]');
  new MutationObserver(() => {
    const out = document.querySelector('[data-testid="playground-output"]');
    const state = document.querySelector('[data-testid="playground-status"]').dataset.status;
    if (out) window.__updates.push({t: performance.now(), text: out.textContent, state});
  }).observe(conversation, {subtree: true, childList: true, characterData: true});
}"""


def send_in_playground(
    page: Any, model: str, message: str, max_tokens: int
) -> list[dict[str, Any]]:
    page.get_by_test_id("nav-playground").click()
    page.wait_for_function(
        "() => document.querySelector('[data-testid=\"playground-model\"]').options.length > 0"
    )
    page.get_by_test_id("playground-model").select_option(model)
    page.get_by_test_id("playground-max-tokens").fill(str(max_tokens))
    page.get_by_test_id("playground-temperature").fill("0")
    expect(page.get_by_test_id("playground-stream")).to_be_checked()
    page.evaluate(RECORD_UPDATES)
    page.get_by_test_id("playground-input").fill(message)
    page.get_by_test_id("playground-send").click()
    expect(page.get_by_test_id("playground-status")).to_have_attribute(
        "data-status", "done", timeout=120_000
    )
    updates: list[dict[str, Any]] = page.evaluate("window.__updates")
    return updates


def test_playground_streams_tokens_as_they_arrive(page: Any, upstream: FakeUpstream) -> None:
    login(page)
    updates = send_in_playground(page, UPSTREAM_MODEL, "Tell me something.", 64)
    output = page.get_by_test_id("playground-output")
    expect(output).to_have_text(REPLY)
    # The reply grew in the page while it streamed: one visible update per token, each a
    # prefix of the next, spread over the upstream's pacing rather than all at the end.
    partial = [u for u in updates if u["state"] == "streaming" and u["text"]]
    texts = [u["text"] for u in partial]
    assert len(set(texts)) >= len(REPLY_TOKENS) - 2, texts
    assert all(REPLY.startswith(t) for t in texts), texts
    assert any(t != REPLY for t in texts)
    spread_ms = partial[-1]["t"] - partial[0]["t"]
    assert spread_ms >= (len(REPLY_TOKENS) - 3) * CHUNK_DELAY_S * 1000 * 0.5, spread_ms
    # The request went upstream as a stream, with the chosen sampling parameters.
    sent = [r for r in upstream.requests if r.path == "/v1/chat/completions"][-1].body
    assert sent["stream"] is True
    assert sent["temperature"] == 0
    assert sent["max_tokens"] == 64
    meta = page.get_by_test_id("playground-meta")
    expect(meta).to_contain_text("target up/m")
    expect(meta).to_contain_text("request ")


def test_playground_streams_from_the_local_model(page: Any) -> None:
    login(page)
    updates = send_in_playground(page, LOCAL_MODEL, "Count from one to ten.", 24)
    final = page.get_by_test_id("playground-output").text_content()
    assert final.strip()
    partial = {u["text"] for u in updates if u["state"] == "streaming" and u["text"]}
    assert len(partial) >= 3, partial  # several DOM updates before the end
    expect(page.get_by_test_id("playground-meta")).to_contain_text(f"target local/{LOCAL_MODEL}")


def test_playground_sends_json_mode_and_tools(page: Any, upstream: FakeUpstream) -> None:
    login(page)
    page.get_by_test_id("nav-playground").click()
    page.wait_for_function(
        "() => document.querySelector('[data-testid=\"playground-model\"]').options.length > 0"
    )
    page.get_by_test_id("playground-model").select_option(UPSTREAM_MODEL)
    page.get_by_test_id("playground-tools").fill("not json")
    page.get_by_test_id("playground-input").fill("Hi")
    page.get_by_test_id("playground-send").click()
    expect(page.get_by_test_id("error")).to_contain_text("Tools must be JSON")
    tool = (
        '[{"type": "function", "function": {"name": "lookup", "parameters": '
        '{"type": "object", "properties": {"q": {"type": "string"}}}}}]'
    )
    page.get_by_test_id("playground-tools").fill(tool)
    page.get_by_test_id("playground-json").check()
    page.get_by_test_id("playground-send").click()
    expect(page.get_by_test_id("playground-status")).to_have_attribute("data-status", "done")
    sent = [r for r in upstream.requests if r.path == "/v1/chat/completions"][-1].body
    assert sent["response_format"] == {"type": "json_object"}
    assert sent["tools"][0]["function"]["name"] == "lookup"


# --- keys ------------------------------------------------------------------------------------


def test_create_a_key_and_use_it_from_the_openai_client(page: Any, server: ServerProcess) -> None:
    login(page)
    page.get_by_test_id("nav-keys").click()
    page.get_by_test_id("key-name").fill("ui-created")
    page.get_by_test_id("key-rpm").fill("100")
    page.get_by_test_id("key-create").click()
    created = page.get_by_test_id("created-key")
    expect(created).to_be_visible()
    key = created.input_value()
    assert key.startswith("hf-")
    page.get_by_test_id("copy-key").click()
    expect(page.get_by_test_id("copy-status")).to_have_text("Copied.")
    assert page.evaluate("navigator.clipboard.readText()") == key

    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0)
    reply = client.chat.completions.create(model=UPSTREAM_MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == REPLY

    row = page.get_by_test_id("key-row").filter(has_text="ui-created")
    expect(row).to_contain_text(key[:12])
    expect(row).to_contain_text("100 rpm")
    expect(row).to_contain_text("active")
    # Shown once: after a reload, only its prefix is on the page.
    page.reload()
    expect(page.get_by_test_id("keys-table")).to_contain_text("ui-created")
    expect(page.get_by_test_id("created-key")).to_have_count(0)
    assert key not in page.content()

    # Revoked from the dashboard (two clicks, no native dialog): the key stops working.
    page.get_by_test_id("revoke-ui-created").click()
    page.get_by_test_id("revoke-ui-created").click()
    expect(row).to_contain_text("revoked")
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model=UPSTREAM_MODEL, messages=MESSAGES)  # type: ignore[arg-type]

    # The audit log shows both actions.
    page.reload()
    audit = page.get_by_test_id("audit-table")
    expect(audit).to_contain_text("key.create")
    expect(audit).to_contain_text("key.revoke")


def test_admins_create_users(page: Any, admin_http: httpx.Client) -> None:
    login(page)
    page.get_by_test_id("nav-keys").click()
    page.get_by_test_id("user-username").fill("ui-viewer")
    page.get_by_test_id("user-password").fill("a long enough password")
    page.get_by_test_id("user-role-select").select_option("viewer")
    page.get_by_test_id("user-create").click()
    expect(page.get_by_test_id("users-table")).to_contain_text("ui-viewer")
    users = admin_http.get("/api/v1/users").json()["data"]
    assert any(u["username"] == "ui-viewer" and u["role"] == "viewer" for u in users)


def test_server_data_is_shown_as_text_never_as_markup(page: Any, admin_http: httpx.Client) -> None:
    payload = '<img src=x onerror="window.__xss=1">'
    response = admin_http.post("/api/v1/keys", json={"name": payload})
    assert response.status_code == 201, response.text
    response = admin_http.post(
        "/api/v1/users",
        json={"username": "ui-xss", "display_name": "<script>window.__xss=2</script>"},
    )
    assert response.status_code == 201, response.text
    login(page)
    page.get_by_test_id("nav-keys").click()
    expect(page.get_by_test_id("keys-table")).to_contain_text(payload)
    expect(page.get_by_test_id("users-table")).to_contain_text("<script>window.__xss=2</script>")
    assert page.locator("[data-testid=keys-table] img").count() == 0
    assert page.locator("[data-testid=users-table] script").count() == 0
    page.wait_for_timeout(300)
    assert page.evaluate("window.__xss") is None


# --- overview, router, analytics, settings ----------------------------------------------------


def test_overview_charts_render_with_data(
    page: Any, admin_http: httpx.Client, upstream: FakeUpstream
) -> None:
    for _ in range(3):
        assert chat(admin_http, UPSTREAM_MODEL).status_code == 200
    assert chat(admin_http, LOCAL_MODEL, max_tokens=8).status_code == 200
    upstream.enqueue(status(400))  # passed back as is: an error in the series
    assert chat(admin_http, UPSTREAM_MODEL).status_code == 400
    login(page)
    charts = ("chart-requests", "chart-latency", "chart-tokens", "chart-errors")
    for chart in charts:
        page.wait_for_function(
            f"() => Number(document.querySelector('[data-testid={chart}]')?.dataset.max) > 0",
            timeout=30_000,
        )
        series = page.locator(f"[data-testid={chart}] path.series")
        assert series.count() >= 2  # all models, and per model
        assert series.first.get_attribute("d").count("L") >= 1 or chart == "chart-latency"
    # The per-model series name the models that served.
    legend = page.get_by_test_id("chart-requests").locator(".legend")
    expect(legend).to_contain_text(UPSTREAM_MODEL)
    expect(legend).to_contain_text(LOCAL_MODEL)
    expect(page.get_by_test_id("overview-models-table")).to_contain_text(UPSTREAM_MODEL)
    targets = page.get_by_test_id("overview-targets-table")
    expect(targets).to_contain_text("up/m")
    expect(targets).to_contain_text(f"local/{LOCAL_MODEL}")

    # Live: a new request shows up at the next refresh, without reloading the page.
    before = number(page.get_by_test_id("stat-requests").locator(".tile-value").text_content())
    assert chat(admin_http, UPSTREAM_MODEL).status_code == 200
    page.wait_for_function(
        """(before) => {
            const el = document.querySelector('[data-testid=stat-requests] .tile-value');
            return Number(el.textContent.replace(/[^0-9.]/g, '')) > before;
        }""",
        arg=before,
        timeout=20_000,
    )


def test_router_view_shows_targets_and_decisions_with_reasons(
    page: Any, admin_http: httpx.Client
) -> None:
    assert chat(admin_http, UPSTREAM_MODEL).status_code == 200
    assert chat(admin_http, "auto", max_tokens=8).status_code == 200
    login(page)
    page.get_by_test_id("nav-router").click()
    targets = page.get_by_test_id("router-targets-table")
    expect(targets).to_contain_text("up/m")
    expect(targets).to_contain_text("closed")
    expect(page.get_by_test_id("router-groups-table")).to_contain_text("auto")
    expect(page.get_by_test_id("router-models-table")).to_contain_text(UPSTREAM_MODEL)

    rows = page.get_by_test_id("decision-row")
    expect(rows.first).to_be_visible()
    reasons = page.get_by_test_id("decision-reason").all_text_contents()
    assert all(r.strip() and r != "—" for r in reasons), reasons
    auto = rows.filter(has_text="auto").first
    expect(auto).to_be_visible()
    auto.get_by_test_id("decision-candidates").locator("summary").click()
    expect(auto.get_by_test_id("decision-candidates")).to_contain_text("score")

    # Filter by the chosen target.
    page.get_by_test_id("decisions-target").select_option("up/m")
    page.wait_for_function(
        """() => [...document.querySelectorAll('[data-testid=decision-row]')]
            .every(r => r.children[3].textContent === 'up/m')"""
    )
    assert rows.count() >= 1
    page.get_by_test_id("decisions-target").select_option("")
    page.get_by_test_id("decisions-model").fill("no-such-model")
    page.get_by_test_id("decisions-apply").click()
    expect(rows).to_have_count(0)
    expect(page.get_by_test_id("decisions-table")).to_contain_text("No decision")
    page.get_by_test_id("decisions-model").fill("auto")
    page.get_by_test_id("decisions-apply").click()
    expect(rows.first).to_contain_text("auto")
    rows.first.get_by_test_id("decision-candidates").locator("summary").click()


def test_analytics_shows_the_series_and_usage_per_key_and_user(
    page: Any, server: ServerProcess, admin_http: httpx.Client
) -> None:
    key = admin_http.post("/api/v1/keys", json={"name": "analytics-key"}).json()["key"]
    with httpx.Client(
        base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60
    ) as as_key:
        for _ in range(2):
            assert chat(as_key, UPSTREAM_MODEL).status_code == 200
    assert chat(admin_http, UPSTREAM_MODEL).status_code == 200
    time.sleep(0.5)  # the telemetry writer flushes every 100 ms
    login(page)
    page.get_by_test_id("nav-analytics").click()
    page.wait_for_function(
        "() => Number(document.querySelector('[data-testid=analytics-requests]')?.dataset.max) > 0"
    )
    by_key = page.get_by_test_id("usage-keys-table")
    expect(by_key).to_contain_text("analytics-key")
    expect(page.get_by_test_id("usage-users-table")).to_contain_text(ADMIN)
    expect(page.get_by_test_id("analytics-routing-table")).to_contain_text("up/m")
    page.get_by_test_id("analytics-window").select_option("7d")
    expect(by_key).to_contain_text("analytics-key")


def test_settings_view_shows_the_configuration_with_secrets_masked(page: Any) -> None:
    login(page)
    page.get_by_test_id("nav-settings").click()
    body = page.get_by_test_id("settings-body")
    expect(body.locator(".tree-node").first).to_be_visible()
    expect(body).to_contain_text("security")
    page.get_by_test_id("settings-filter").fill("cookie_secure")
    expect(body.locator(".tree-leaf").filter(has_text="cookie_secure")).to_contain_text("false")
    page.get_by_test_id("settings-filter").fill("X-Upstream-Token")
    leaf = body.locator(".tree-leaf").filter(has_text="X-Upstream-Token")
    expect(leaf).to_have_count(1)
    expect(leaf.locator(".tree-value")).to_have_text('"***"')
    expect(leaf.locator(".tree-value")).to_have_class(re.compile(r"\bmasked\b"))
    assert HEADER_SECRET not in page.content()


def test_settings_view_says_so_when_the_server_has_no_settings_endpoint(page: Any) -> None:
    envelope = {
        "error": {
            "message": "Not Found",
            "type": "invalid_request_error",
            "param": None,
            "code": "not_found",
        }
    }
    page.route("**/api/v1/settings", lambda route: route.fulfill(status=404, json=envelope))
    login(page)
    page.get_by_test_id("nav-settings").click()
    expect(page.get_by_test_id("settings-unavailable")).to_be_visible()
    expect(page.get_by_test_id("error")).to_be_hidden()


def test_with_authentication_off_the_dashboard_opens_without_login(
    page: Any, upstream: FakeUpstream, tmp_path: Path
) -> None:
    config = server_config(upstream, tmp_path)
    del config["security"]  # no bootstrap admin: no user, no key, loopback: auth is off
    config["models"][0]["parallel"] = 1
    server = ServerProcess(config, tmp_path, "open")
    try:
        page.goto(f"{server.base_url}/ui/")
        expect(page.get_by_test_id("view-overview")).to_be_visible()
        expect(page.get_by_test_id("auth-off")).to_be_visible()
        expect(page.get_by_test_id("user-role")).to_have_text("admin")
        page.get_by_test_id("nav-keys").click()
        expect(page.get_by_test_id("auth-off-notice")).to_be_visible()
        expect(page.get_by_test_id("keys-table")).to_contain_text("No API key yet")
    finally:
        server.stop()


# --- how the server serves the build ------------------------------------------------------------


def test_the_build_is_served_with_caching_and_spa_fallback(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        redirect = http.get("/ui")
        assert redirect.status_code == 308
        assert redirect.headers["location"] == "/ui/"
        index = http.get("/ui/")
        assert index.status_code == 200
        assert index.headers["content-type"].startswith("text/html")
        assert index.headers["cache-control"] == "no-cache"
        assert "default-src 'self'" in index.headers["content-security-policy"]
        # Deep links get the app; files that do not exist are 404s, not HTML.
        for route in ("/ui/keys", "/ui/router?target=up/m", "/ui/some/deep/route"):
            deep = http.get(route)
            assert deep.status_code == 200
            assert deep.text == index.text
        asset = next(
            part.split('"')[0]
            for part in index.text.split('src="')[1:]
            if part.startswith("/ui/assets/")
        )
        script = http.get(asset)
        assert script.status_code == 200
        assert script.headers["content-type"].startswith("text/javascript")
        assert script.headers["cache-control"] == "public, max-age=31536000, immutable"
        head = http.head(asset)
        assert head.status_code == 200
        assert head.headers["content-length"] == script.headers["content-length"]
        again = http.get("/ui/", headers={"If-None-Match": index.headers["etag"]})
        assert again.status_code == 304
        for missing in ("/ui/assets/index-gone.js", "/ui/logo.png"):
            response = http.get(missing)
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "not_found"
        for sneaky in (
            "/ui/../pyproject.toml",
            "/ui/%2e%2e/%2e%2e/app.py",
            "/ui/..%2f..%2fapp.py",
            "/ui//etc/passwd",
            "/ui/a%00b.js",
            "/ui/.gitignore",
        ):
            response = http.get(sneaky)
            # Outside /ui once normalized (401: not a public path), a 404, or the app itself.
            assert response.status_code in (200, 401, 404), (sneaky, response.status_code)
            assert response.status_code != 200 or response.text == index.text, sneaky
            for secret in ("[build-system]", "create_app", "root:", "static/"):
                assert secret not in response.text, sneaky
        # The files are public: no credential needed to load the login page.
        assert http.get("/ui/favicon.svg").status_code == 200


def test_without_a_build_every_path_says_to_run_make_ui(tmp_path: Path) -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from helixflow.api.errors import install_error_handlers
    from helixflow.api.ui import ui_router

    app = FastAPI()
    install_error_handlers(app)
    app.include_router(ui_router(tmp_path / "static"))
    with TestClient(app) as client:
        for path in ("/ui/", "/ui/keys", "/ui/assets/index.js"):
            response = client.get(path)
            assert response.status_code == 404
            error = response.json()["error"]
            assert error["code"] == "ui_not_built"
            assert "make ui" in error["message"]
