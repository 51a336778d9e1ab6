"""Liveness, readiness, the model list and the OpenAPI document."""

from __future__ import annotations

import httpx

from helixflow import __version__
from tests.conftest import CHAT_MODELS, EMBEDDING_MODEL, QUEUE_MODEL, SMALL_KV_MODEL

CONFIGURED = [*CHAT_MODELS, QUEUE_MODEL, SMALL_KV_MODEL, EMBEDDING_MODEL]


def test_health(http: httpx.Client) -> None:
    first = http.get("/health")
    assert first.status_code == 200
    body = first.json()
    assert body["status"] == "ok"
    assert body["version"] == __version__
    assert isinstance(body["uptime_s"], float | int)
    assert body["uptime_s"] >= 0
    later = http.get("/health").json()
    assert later["uptime_s"] >= body["uptime_s"]


def test_ready_lists_every_model_as_loaded(http: httpx.Client) -> None:
    response = http.get("/ready")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert [m["id"] for m in body["models"]] == CONFIGURED
    for model in body["models"]:
        assert model["loaded"] is True, model
        assert model["kv_cells_total"] > 0, model
        assert 0 <= model["kv_cells_used"] <= model["kv_cells_total"], model
        assert model["active_sequences"] >= 0, model
        assert model["queued_requests"] >= 0, model


def test_models_list(http: httpx.Client) -> None:
    response = http.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    cards = {card["id"]: card for card in body["data"]}
    groups = {name: card for name, card in cards.items() if card["kind"] == "group"}
    assert sorted(groups) == ["auto"]  # the default group spans the generation models
    assert set(groups["auto"]["targets"]) == {
        f"local/{model}" for model in CONFIGURED if model != EMBEDDING_MODEL
    }
    cards = {name: card for name, card in cards.items() if name not in groups}
    assert sorted(cards) == sorted(CONFIGURED)
    for card in cards.values():
        assert card["object"] == "model"
        assert isinstance(card["created"], int)
        assert isinstance(card["owned_by"], str)
        assert card["owned_by"]
        assert isinstance(card["context_window"], int)
        assert card["context_window"] > 0
    assert cards["smollm2-135m"]["aliases"] == ["smollm2"]
    # context_size 256 over 4 parallel sequences: each may still use 256 (rounded up to 256)
    assert cards[SMALL_KV_MODEL]["context_window"] == 256


def test_model_by_alias(http: httpx.Client) -> None:
    by_alias = http.get("/v1/models/smollm2")
    assert by_alias.status_code == 200
    card = by_alias.json()
    assert card["id"] == "smollm2-135m"
    assert card == http.get("/v1/models/smollm2-135m").json()


def test_openapi_document(http: httpx.Client) -> None:
    response = http.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    document = response.json()
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/ready"):
        assert path in paths, sorted(paths)
    assert "post" in paths["/v1/chat/completions"]
    assert "post" in paths["/v1/completions"]
    assert "get" in paths["/v1/models"]
