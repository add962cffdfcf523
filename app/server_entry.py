"""The ``refgate-server`` console script: says which install it needs when the
server's dependencies are missing (``pip install refgate`` is the SDK alone)."""

from __future__ import annotations

import importlib.util
import sys

SERVER_MODULES = ("fastapi", "sqlalchemy", "sqlmodel", "alembic", "uvicorn", "pydantic_settings")


def main() -> None:
    missing = [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        sys.stderr.write(
            f"refgate-server needs the gateway's dependencies ({', '.join(missing)} "
            "missing): this is the SDK-only install. Install the server with "
            "pip install 'refgate[server]' (from a checkout: pip install '.[server]')\n"
        )
        sys.exit(1)
    from app.server_cli import main as server_main

    sys.exit(server_main())
