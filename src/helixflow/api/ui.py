"""The web dashboard at ``/ui``: the single-page app that ``make ui`` builds from ``ui/``.

The build (``index.html``, ``favicon.svg`` and ``assets/`` with content-hashed names) lives in
``helixflow/api/ui/static``, inside the package, so it ships in the wheel; it is never
committed. Serving rules:

- a file of the build is sent as is: ``assets/*`` (hashed names, so a new build has new names)
  with ``Cache-Control: public, max-age=31536000, immutable``, everything else with
  ``no-cache`` (revalidated each time: an ``ETag`` and a 304 when it has not changed);
- any other path under ``/ui/`` that does not name a file (``/ui/keys``, ``/ui/router?...``)
  gets ``index.html``: the app routes in the browser (the SPA fallback), so a deep link or a
  reload works; a missing file (``/ui/assets/old.js``, ``/ui/x.png``) is a 404, never HTML;
- without a build, every path is a 404 envelope (``ui_not_built``) saying to run ``make ui``.

Paths are resolved inside the build directory only: ``..``, hidden files and symbolic links
that lead out of it are not served. The dashboard's files are public (the auth middleware lets
``/ui`` through); its data comes from the API, with the session cookie.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from fastapi import APIRouter, Request
from starlette.responses import FileResponse, RedirectResponse, Response

from helixflow.errors import NotFoundError

STATIC_DIR = Path(__file__).resolve().parent / "ui" / "static"
"""Where ``make ui`` (Vite's ``outDir``) writes the build."""
PREFIX = "/ui"
INDEX = "index.html"
ASSETS_DIR = "assets"
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
NOT_BUILT = (
    "The dashboard has not been built: run `make ui` (npm ci && npm run build in ui/), "
    "then reload this page."
)
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".webp": "image/webp",
    ".woff2": "font/woff2",
    ".txt": "text/plain; charset=utf-8",
}
"""Set explicitly: the platform's MIME table may lack some (a module script must be served
as JavaScript, or the browser refuses it)."""


def ui_router(static_dir: Path = STATIC_DIR) -> APIRouter:
    """Routes serving the build in ``static_dir`` at ``/ui`` (not in the OpenAPI schema)."""
    router = APIRouter(include_in_schema=False)
    root = static_dir.resolve()

    @router.api_route(PREFIX, methods=["GET", "HEAD"])
    def ui_root() -> Response:
        return RedirectResponse(f"{PREFIX}/", status_code=308)

    @router.api_route(PREFIX + "/{path:path}", methods=["GET", "HEAD"])
    def ui_file(path: str, request: Request) -> Response:
        # A sync route: the few stat calls run in the thread pool, off the event loop.
        return serve(root, path, request.headers.get("if-none-match"))

    return router


def serve(root: Path, path: str, if_none_match: str | None = None) -> Response:
    """The response for ``/ui/<path>`` from the build in ``root`` (resolved)."""
    index = root / INDEX
    if not index.is_file():
        raise NotFoundError(NOT_BUILT, code="ui_not_built")
    parts = PurePosixPath(path).parts
    found = _file(root, parts)
    if found is not None:
        immutable = len(parts) > 1 and parts[0] == ASSETS_DIR
        return _send(found, IMMUTABLE if immutable else REVALIDATE, if_none_match)
    if _names_a_file(parts):
        raise NotFoundError(f"The dashboard has no file '{path}'.", code="not_found")
    return _send(index, REVALIDATE, if_none_match)


def _file(root: Path, parts: tuple[str, ...]) -> Path | None:
    """The regular file ``parts`` names inside ``root``; None for anything else."""
    if not parts or parts[0] == "/":
        return None
    if any(part.startswith(".") or "\x00" in part for part in parts):
        return None  # "..", hidden files, and names no file system accepts
    candidate = root.joinpath(*parts)
    try:
        resolved = candidate.resolve(strict=True)
    except (OSError, RuntimeError, ValueError):
        return None
    if not resolved.is_relative_to(root) or not resolved.is_file():
        return None
    return resolved


def _names_a_file(parts: tuple[str, ...]) -> bool:
    """Whether a path that matched no file looked like one (an asset, a name with an
    extension) rather than a route of the app (``keys``, ``router``)."""
    if not parts:
        return False
    return parts[0] == ASSETS_DIR or "." in parts[-1]


def _send(file: Path, cache_control: str, if_none_match: str | None) -> Response:
    stat = os.stat(file)
    response = FileResponse(
        file,
        stat_result=stat,
        media_type=MEDIA_TYPES.get(file.suffix.lower()),
        headers={"Cache-Control": cache_control},
    )
    etag = response.headers["etag"]
    if if_none_match is not None and _matches(if_none_match, etag):
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": cache_control})
    return response


def _matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110's weak comparison of ``If-None-Match`` with the file's ETag."""
    if if_none_match.strip() == "*":
        return True
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return etag.removeprefix("W/") in tags


router = ui_router()
"""Include in the app: ``app.include_router(ui.router)``."""
