"""GET /v1/models and /v1/models/{model}"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from helixflow.api.deps import get_engines
from helixflow.api.openai.protocol import ErrorResponse, ModelCard, ModelList
from helixflow.engine.registry import EngineRegistry, ServedModel

router = APIRouter()


def _card(engine: ServedModel) -> ModelCard:
    info = engine.info
    return ModelCard(
        id=info.model_id,
        created=info.created,
        owned_by=engine.config.owned_by,
        context_window=info.context_size,
        aliases=engine.config.aliases,
    )


@router.get("/models", response_model=ModelList, summary="List the models this server serves")
async def list_models(engines: Annotated[EngineRegistry, Depends(get_engines)]) -> ModelList:
    return ModelList(data=[_card(e) for e in engines if e.ready])


@router.get(
    "/models/{model:path}",
    response_model=ModelCard,
    responses={404: {"model": ErrorResponse, "description": "Unknown model"}},
    summary="Describe one model",
)
async def get_model(
    model: str, engines: Annotated[EngineRegistry, Depends(get_engines)]
) -> ModelCard:
    return _card(engines.lookup(model))
