"""The OpenAI-compatible API under /v1 (the router lives in ``routes``)."""
