"""The /v1 router: models, chat completions, completions."""

from fastapi import APIRouter

from helixflow.api.openai import chat, completions, models

router = APIRouter(prefix="/v1", tags=["openai"])
router.include_router(models.router)
router.include_router(chat.router)
router.include_router(completions.router)
