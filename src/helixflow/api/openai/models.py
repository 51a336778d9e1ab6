"""GET /v1/models and /v1/models/{model}: every name a caller may send as ``model``.

Local models (once loaded), each upstream model by its own name and as ``provider/model``, and
the router's groups.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends

from helixflow.api.auth import current_principal
from helixflow.api.deps import get_engines, get_router
from helixflow.api.openai.protocol import ErrorResponse, ModelCard, ModelList
from helixflow.engine.registry import EngineRegistry
from helixflow.errors import ModelNotFoundError
from helixflow.router.catalogue import Target
from helixflow.router.router import Router
from helixflow.security.identity import Principal

router = APIRouter()


def _cards(routing: Router, engines: EngineRegistry) -> dict[str, ModelCard]:
    """Cards by name, in catalogue order: local models, upstream models, groups."""
    cards: dict[str, ModelCard] = {}
    served_at: dict[str, list[Target]] = {}
    for target in routing.catalogue:
        if target.local:
            engine = engines.lookup(target.model)
            if not engine.ready:
                continue
            info = engine.info
            cards[target.model] = ModelCard(
                id=target.model,
                created=info.created,
                owned_by=engine.config.owned_by,
                context_window=info.context_size,
                aliases=list(target.aliases),
                targets=[target.id],
            )
        else:
            served_at.setdefault(target.model, []).append(target)
    created = int(time.time())
    for name, targets in served_at.items():
        if name not in cards:
            cards[name] = _upstream_card(name, targets, created)
        for target in targets:
            cards[target.id] = _upstream_card(target.id, [target], created)
    for group in routing.catalogue.groups.values():
        cards[group.name] = ModelCard(
            id=group.name,
            created=created,
            owned_by="helixflow",
            kind="group",
            targets=[t.id for t in group.targets],
        )
    return cards


def _upstream_card(name: str, targets: list[Target], created: int) -> ModelCard:
    windows = [t.context_window for t in targets if t.context_window is not None]
    return ModelCard(
        id=name,
        created=created,
        owned_by=targets[0].provider if len(targets) == 1 else "helixflow",
        context_window=min(windows) if windows else None,
        aliases=sorted({a for t in targets for a in t.aliases}),
        targets=[t.id for t in targets],
    )


@router.get("/models", response_model=ModelList, summary="List the models a caller may use")
async def list_models(
    routing: Annotated[Router, Depends(get_router)],
    engines: Annotated[EngineRegistry, Depends(get_engines)],
    principal: Annotated[Principal, Depends(current_principal)],
) -> ModelList:
    cards = _cards(routing, engines)
    return ModelList(data=[card for name, card in cards.items() if principal.may_use(name)])


@router.get(
    "/models/{model:path}",
    response_model=ModelCard,
    responses={404: {"model": ErrorResponse, "description": "Unknown model"}},
    summary="Describe one model",
)
async def get_model(
    model: str,
    routing: Annotated[Router, Depends(get_router)],
    engines: Annotated[EngineRegistry, Depends(get_engines)],
    principal: Annotated[Principal, Depends(current_principal)],
) -> ModelCard:
    if not principal.may_use(model):
        raise ModelNotFoundError(model)
    cards = _cards(routing, engines)
    card = cards.get(model)
    if card is None:
        for candidate in cards.values():
            if model in candidate.aliases:
                return candidate
        raise ModelNotFoundError(model)
    return card
