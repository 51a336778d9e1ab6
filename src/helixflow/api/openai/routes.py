"""The /v1 router: models, chat completions, completions, embeddings."""

from fastapi import APIRouter

from helixflow.api.openai import chat, completions, embeddings, models

router = APIRouter(prefix="/v1", tags=["openai"])
router.include_router(models.router)
router.include_router(chat.router)
router.include_router(completions.router)
router.include_router(embeddings.router)
