"""The SDK imports nothing of the server: ``pip install refgate`` (no ``server`` extra) works.

Every import statement of ``refgate_client`` and ``app/client`` (top level,
inside functions and under ``TYPE_CHECKING`` alike) is followed through the
``app`` modules it reaches; the closure may hold only the client, the shared
crypto and the pure vocabularies, and third-party imports only the packages
``pyproject.toml`` declares as the base dependencies.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# what the closure may contain besides the standard library
SHARED = {"app", "app.vocab", "app.langtags"}
SERVER_PACKAGES = {
    "fastapi", "starlette", "uvicorn", "sqlalchemy", "sqlmodel", "asyncpg", "aiosqlite",
    "alembic", "pydantic_settings", "multipart", "python_multipart",
}
# import name of each base dependency (the distribution names of pyproject.toml)
IMPORT_NAMES = {"pynacl": "nacl", "authlib": "authlib", "joserfc": "joserfc", "httpx": "httpx",
                "rfc8785": "rfc8785", "pydantic": "pydantic"}


def _module_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(module: str, path: Path) -> set[str]:
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = str(node.module)
            found.add(name)
            # ``from app.client import errors`` imports the module app.client.errors
            found.update(f"{name}.{alias.name}" for alias in node.names
                         if _module_file(f"{name}.{alias.name}") is not None)
    return found


def _closure(roots: list[str]) -> tuple[set[str], set[str]]:
    """(first-party modules reached, top-level third-party/stdlib names imported)."""
    seen: set[str] = set()
    external: set[str] = set()
    todo = list(roots)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        path = _module_file(module)
        if path is None:
            external.add(module.partition(".")[0])
            continue
        seen.add(module)
        # a submodule import runs its packages' __init__ first
        parent = module.rpartition(".")[0]
        if parent:
            todo.append(parent)
        todo.extend(_imports(module, path))
    return seen, external


def _client_modules() -> list[str]:
    mods = ["refgate_client"]
    mods += [f"app.client.{p.stem}" for p in (ROOT / "app" / "client").glob("*.py")]
    return mods


def test_client_closure_has_no_server_module() -> None:
    first_party, external = _closure(_client_modules())
    assert "app.client.sdk" in first_party
    assert "app.crypto.envelope" in first_party
    allowed = {m for m in first_party
               if m in SHARED or m.startswith(("app.client", "app.crypto", "refgate_client"))}
    assert first_party - allowed == set(), "the client reaches server modules"
    assert external & SERVER_PACKAGES == set()


def test_client_third_party_imports_are_the_base_dependencies() -> None:
    _, external = _closure(_client_modules())
    third_party = {name for name in external if name not in sys.stdlib_module_names}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {req.split(">")[0].split("[")[0].split("=")[0].strip().lower()
                for req in project["dependencies"]}
    assert declared == set(IMPORT_NAMES), "a base dependency changed: update IMPORT_NAMES"
    assert third_party <= set(IMPORT_NAMES.values()), third_party - set(IMPORT_NAMES.values())
    # the server's packages are only in the extra
    server = {req.split(">")[0].split("[")[0].strip().lower()
              for req in project["optional-dependencies"]["server"]}
    assert {"fastapi", "sqlalchemy", "asyncpg", "alembic", "sqlmodel"} <= server
    assert declared & server == set()


def test_closure_walker_sees_server_imports() -> None:
    """The walker is not vacuous: the server's app module reaches FastAPI and SQLAlchemy."""
    first_party, external = _closure(["app.main"])
    assert "app.services.referrals" in first_party or "app.routers.referrals" in first_party
    assert {"fastapi", "sqlalchemy"} <= external
