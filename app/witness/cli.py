"""``refgate-server witness``: run the witness service (``app.witness.service``)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from app.crypto.checkpoint import CheckpointError
from app.logging import configure_logging
from app.services.server_keys import load_or_create_key_file
from app.witness import store
from app.witness.service import WitnessConfig, create_witness_app, trusted_logs


def add_parser(sub: Any) -> None:
    """``refgate-server witness``: registered by ``app.server_cli``."""
    sp = sub.add_parser(
        "witness",
        help="run a C2SP tlog-witness that cosigns checkpoints of the logs it trusts",
    )
    sp.add_argument("--name", required=True, help="witness name, e.g. oversight.example/witness")
    sp.add_argument("--key-file", required=True, type=Path,
                    help="its Ed25519 key (created, mode 0600, on first start)")
    sp.add_argument("--log", action="append", default=[], metavar="VKEY",
                    help="verifier key of a log to witness (repeatable)")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=8100)
    sp.add_argument("--database", metavar="URL",
                    help="its state (default: SQLite witness.db beside the key file)")
    sp.add_argument("--print-key", action="store_true", help="print the verifier key and exit")
    sp.set_defaults(func=cmd_witness)


def config_from_args(args: argparse.Namespace) -> WitnessConfig:
    key_file: Path = args.key_file.expanduser()
    seed = load_or_create_key_file(key_file)
    url = args.database or f"sqlite+aiosqlite:///{key_file.resolve().parent / 'witness.db'}"
    try:
        logs = trusted_logs(args.log)
    except CheckpointError as exc:
        raise SystemExit(f"error: --log is not a log verifier key: {exc}") from None
    return WitnessConfig(name=args.name, seed=seed, database_url=url, logs=logs)


def cmd_witness(_settings: object, args: argparse.Namespace) -> int:
    import uvicorn

    config = config_from_args(args)
    try:
        vkey = config.vkey
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    if args.print_key:
        print(vkey)
        return 0
    if not config.logs:
        raise SystemExit("error: give at least one --log VKEY (the logs this witness serves)")
    configure_logging()
    # open once before serving, so a bad database URL fails here, loudly
    try:
        asyncio.run(_check_store(config.database_url))
    except Exception as exc:  # the URL may hold a password: name the kind of failure only
        raise SystemExit(
            f"error: cannot open the witness database ({type(exc).__name__}); check --database"
        ) from None
    print(f"witness {config.name} verifier key: {vkey}", flush=True)
    print(f"witness serving {', '.join(sorted(config.logs))} on http://{args.host}:{args.port}",
          flush=True)
    uvicorn.run(create_witness_app(config), host=args.host, port=args.port, log_level="warning",
                access_log=False, server_header=False)
    return 0


async def _check_store(url: str) -> None:
    engine = await store.open_store(url)
    await engine.dispose()
