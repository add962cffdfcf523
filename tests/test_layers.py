"""The layers stay apart: only the HTTP layer knows the web framework, and the
services never reach up into it (issue 19; README "What is where").

Two checks. The AST one reads every module under ``app/`` and fails on a
``fastapi``/``starlette`` import outside the HTTP layer, or on an
``app.services`` module importing the HTTP layer (anywhere in the module, a
function-level import included). The import one loads the domain modules in a
fresh interpreter and fails if that loaded FastAPI or Starlette at all, which
also catches an import that goes through a module in between.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app"

HTTP_LAYER = {
    # routes
    "app.routers",
    # the app factory, and the witness's own small app
    "app.main",
    "app.witness.service",
    # middleware (pure ASGI) and request dependencies
    "app.middleware",
    "app.ratelimit",
    "app.auth",
    "app.deps",
    "app.jsonbody",
    # the CLI's local webhook receiver (a Starlette app the client runs)
    "app.client.webhook_listen",
}
"""Modules (or packages) that may import ``fastapi``/``starlette``."""

FRAMEWORKS = ("fastapi", "starlette")
UPWARD = ("app.routers", "app.auth", "app.main", "app.deps", "app.middleware", "app.ratelimit",
          "app.jsonbody")
"""What ``app.services`` never imports: the HTTP layer."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _within(name: str, prefixes: set[str] | tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _imports(tree: ast.AST, module: str) -> list[tuple[int, str]]:
    """(line, imported module) of every import in ``tree``, ``from . import x`` resolved."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")[: -node.level]
                base = ".".join([*package, base] if base else package)
            found.append((node.lineno, base))
            # ``from app import auth`` imports the module app.auth
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def _modules() -> list[tuple[str, Path]]:
    return sorted((_module_name(p), p) for p in APP.rglob("*.py"))


def test_the_walk_sees_the_code() -> None:
    names = {name for name, _ in _modules()}
    assert {"app.main", "app.auth", "app.identity", "app.services.referrals"} <= names
    # and the check does see an import of the framework where there is one
    main = ast.parse((APP / "main.py").read_text())
    assert any(_within(m, FRAMEWORKS) for _, m in _imports(main, "app.main"))


def test_only_the_http_layer_imports_the_web_framework() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {imported}"
        for name, path in _modules()
        if not _within(name, HTTP_LAYER)
        for line, imported in _imports(ast.parse(path.read_text()), name)
        if _within(imported, FRAMEWORKS)
    ]
    assert not offenders, "outside the HTTP layer:\n" + "\n".join(offenders)


def test_services_do_not_import_the_http_layer() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {imported}"
        for name, path in _modules()
        if _within(name, ("app.services",))
        for line, imported in _imports(ast.parse(path.read_text()), name)
        if _within(imported, UPWARD)
    ]
    assert not offenders, "services reaching up into the HTTP layer:\n" + "\n".join(offenders)


def test_the_domain_loads_without_the_web_framework() -> None:
    domain = [
        name
        for name, _ in _modules()
        if _within(name, ("app.services", "app.crypto", "app.models"))
        or name in {"app.identity", "app.tokens", "app.vocab", "app.dialect", "app.db",
                    "app.authz", "app.errors", "app.config", "app.migrate", "app.metrics"}
    ]
    code = (
        "import importlib, json, sys\n"
        f"for name in {domain!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS!r})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert len(domain) > 40
    assert json.loads(out.stdout) == []
