"""``/console/``: the page's headers exactly, hashed assets cached as immutable,
``index.html`` never cached, and a plain explanation when the console is not built."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from app.routers import console

EXPECTED_CSP = (
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; "
    "img-src 'self'; connect-src 'self'; font-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@pytest.fixture
def dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A built console in a temporary directory (what ``npm run build`` writes)."""
    root = tmp_path / "console_dist"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text('<!doctype html><script type="module" '
                                     'src="assets/main-ABCD1234.js"></script>')
    (root / "assets" / "main-ABCD1234.js").write_text("export {};\n")
    (root / "assets" / "style-ZZZZ9999.css").write_text("body{}\n")
    monkeypatch.setattr(console, "DIST", root)
    return root


def _page_headers(r: httpx.Response) -> None:
    assert r.headers["content-security-policy"] == EXPECTED_CSP
    assert len(r.headers.get_list("content-security-policy")) == 1
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["cross-origin-opener-policy"] == "same-origin"


async def test_console_page_has_exactly_its_csp_and_is_never_cached(
    client: httpx.AsyncClient, dist: Path
) -> None:
    r = await client.get("/console/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    _page_headers(r)
    assert r.headers["cache-control"] == "no-store"
    assert "'unsafe-inline'" not in r.headers["content-security-policy"]


async def test_hashed_assets_are_immutable_and_typed(
    client: httpx.AsyncClient, dist: Path
) -> None:
    js = await client.get("/console/assets/main-ABCD1234.js")
    assert js.status_code == 200
    assert js.headers["content-type"].startswith("text/javascript")
    assert js.headers["cache-control"] == "public, max-age=31536000, immutable"
    _page_headers(js)
    css = await client.get("/console/assets/style-ZZZZ9999.css")
    assert css.headers["content-type"].startswith("text/css")


@pytest.mark.parametrize("name", ["main.js", "missing-ABCD1234.js", "..%2Findex.html",
                                  "main-ABCD1234.js.map", "x-ABCD1234.html"])
async def test_unknown_or_unhashed_asset_names_are_404(
    client: httpx.AsyncClient, dist: Path, name: str
) -> None:
    r = await client.get(f"/console/assets/{name}")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["cache-control"] == "no-store"


async def test_console_without_a_build_says_how_to_build_it(
    client: httpx.AsyncClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console, "DIST", tmp_path / "nothing")
    r = await client.get("/console/")
    assert r.status_code == 503
    assert r.headers["content-type"] == "application/problem+json"
    assert "cd console && npm ci && npm run build" in r.json()["detail"]
    _page_headers(r)


async def test_console_path_without_slash_redirects(client: httpx.AsyncClient) -> None:
    r = await client.get("/console")
    assert r.status_code == 308
    assert r.headers["location"] == "/console/"


async def test_api_answers_keep_the_api_policy(client: httpx.AsyncClient) -> None:
    r = await client.get("/health/live")
    assert r.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
    assert r.headers["cache-control"] == "no-store"


async def test_docs_page_and_its_assets_have_the_console_policy(
    client: httpx.AsyncClient, dist: Path
) -> None:
    (dist / "docs.html").write_text('<!doctype html><script type="module" '
                                    'src="assets/docs-ABCD1234.js"></script>')
    (dist / "assets" / "docs-ABCD1234.js").write_text("export {};\n")
    (dist / "assets" / "docsimg-ABCD1234.svg").write_text("<svg/>")
    for path in ("/docs", "/redoc"):
        r = await client.get(path)
        assert r.status_code == 308
        assert r.headers["location"] == "/docs/"
    r = await client.get("/docs/")
    assert r.status_code == 200
    _page_headers(r)
    assert r.headers["cache-control"] == "no-store"
    js = await client.get("/docs/assets/docs-ABCD1234.js")
    assert js.headers["content-type"].startswith("text/javascript")
    _page_headers(js)
    svg = await client.get("/docs/assets/docsimg-ABCD1234.svg")
    assert svg.headers["content-type"] == "image/svg+xml"
    assert svg.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert (await client.get("/docs/assets/docs.html")).status_code == 404


async def test_docs_without_a_build_say_how_and_where_the_document_is(
    client: httpx.AsyncClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console, "DIST", tmp_path / "nothing")
    r = await client.get("/docs/")
    assert r.status_code == 503
    assert r.headers["content-type"] == "application/problem+json"
    assert "npm run build" in r.json()["detail"]
    assert "/openapi.json" in r.json()["detail"]
