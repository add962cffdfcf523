"""The web console's static files at ``/console/`` (DESIGN.md, "Console").

The console is a client like the SDK: every byte of cryptography runs in the
browser, so this module only serves files, with the headers that keep the
page to its own origin: the Content-Security-Policy below (no inline script
or style, WebAssembly for libsodium, no other origin, no framing), no
referrer, no MIME sniffing, its own browsing-context group. Assets have
content-hashed names and are cached for a year as immutable; ``index.html``
is never cached, so a new build is picked up at the next load.

The files are built from ``console/`` into ``app/console_dist/`` (package
data) by ``cd console && npm ci && npm run build``; ``./dev serve`` does it
when the sources changed. Without a build, ``/console/`` says how to make one.

The interactive API reference at ``/docs/`` (Swagger UI from the npm package
``swagger-ui-dist``, built by the same step into ``docs.html`` and
``assets/docs-*``; its start-up script is a file and its icons are files, so
it runs under the same policy) reads ``/openapi.json``. ``/redoc`` leads there.
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse, Response

from app import errors

router = APIRouter(include_in_schema=False)

DIST = Path(__file__).resolve().parent.parent / "console_dist"

CSP = (
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; "
    "img-src 'self'; connect-src 'self'; font-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""The page's policy: DESIGN.md's ``default-src 'self'; script-src 'self'
'wasm-unsafe-eval'`` and ``frame-ancestors 'none'``, every fetch directive
spelled out to ``'self'`` (no ``'unsafe-inline'`` anywhere), plugins, ``<base>``
and form submission off (the console posts with ``fetch``)."""

PAGE_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "x-frame-options": "DENY",
}
IMMUTABLE = "public, max-age=31536000, immutable"
_ASSET = re.compile(r"^[A-Za-z0-9_.-]+-[A-Z0-9]{8}\.(js|css|txt|svg|png|jpg)$")
_TYPES = {"js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8",
          "txt": "text/plain; charset=utf-8", "svg": "image/svg+xml", "png": "image/png",
          "jpg": "image/jpeg"}

NOT_BUILT = (
    "The refgate console has not been built on this server. Build it once (needs Node.js 20 "
    "or newer) with: cd console && npm ci && npm run build, then reload this page "
    "(./dev serve does this for you when the console's sources change)."
)
_NO_STORE = {**PAGE_HEADERS, "cache-control": "no-store"}


@router.get("/console")
async def console_root() -> RedirectResponse:
    return RedirectResponse("/console/", status_code=308)


@router.get("/console/")
async def console_index() -> Response:
    index = DIST / "index.html"
    if not index.is_file():
        raise errors.ServiceUnavailable(NOT_BUILT, slug="console/not-built", headers=_NO_STORE)
    return FileResponse(index, media_type="text/html; charset=utf-8", headers=_NO_STORE)


@router.get("/console/assets/{name}")
async def console_asset(name: str) -> Response:
    return _asset(name)


DOCS_NOT_BUILT = (
    "The API reference (/docs/) is built with the console and has not been built on this "
    "server. Build it once (needs Node.js 20 or newer) with: cd console && npm ci && npm run "
    "build. Meanwhile the OpenAPI document is at /openapi.json."
)


@router.get("/docs")
@router.get("/redoc")
async def docs_root() -> RedirectResponse:
    return RedirectResponse("/docs/", status_code=308)


@router.get("/docs/")
async def docs_index() -> Response:
    page = DIST / "docs.html"
    if not page.is_file():
        raise errors.ServiceUnavailable(DOCS_NOT_BUILT, slug="docs/not-built", headers=_NO_STORE)
    return FileResponse(page, media_type="text/html; charset=utf-8", headers=_NO_STORE)


@router.get("/docs/assets/{name}")
async def docs_asset(name: str) -> Response:
    return _asset(name)


def _asset(name: str) -> Response:
    match = _ASSET.fullmatch(name)
    path = DIST / "assets" / name
    if match is None or not path.is_file():
        raise errors.NotFound("No such console file. Reload the console to get the current "
                              "version.", slug="console/not-found", headers=_NO_STORE)
    return FileResponse(path, media_type=_TYPES[match.group(1)],
                        headers={**PAGE_HEADERS, "cache-control": IMMUTABLE})
