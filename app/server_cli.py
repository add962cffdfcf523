"""``refgate-server``: run, migrate and administer a refgate gateway."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from app import errors
from app.config import Settings, get_settings
from app.crypto.checkpoint import verifier_key
from app.db import create_engine, sessionmaker
from app.migrate import upgrade
from app.services import agencies, demo, retention, sequencer, witnesses
from app.services.audit import Actor
from app.services.server_keys import load_server_keys
from app.vocab import AgencyKind, Role
from app.witness import cli as witness_cli
from app.witness import demo as local_witness

T = TypeVar("T")
ADMIN_CLI = Actor(client_id="refgate-server", agency_id=None, role=Role.ADMIN.value)


def _in_transaction(settings: Settings, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    async def run() -> T:
        engine = create_engine(settings)
        try:
            async with sessionmaker(engine)() as db, db.begin():
                return await work(db)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def cmd_migrate(settings: Settings, _args: argparse.Namespace) -> int:
    upgrade(settings)
    print("database is at the latest schema")
    return 0


def cmd_create_agency(settings: Settings, args: argparse.Namespace) -> int:
    agency = _in_transaction(
        settings,
        lambda db: agencies.create(
            db,
            ADMIN_CLI,
            name=args.name,
            kind=args.kind,
            enc_key=args.enc_key,
            sign_key=args.sign_key,
        ),
    )
    _print(agency.model_dump(mode="json"))
    return 0


def cmd_create_client(settings: Settings, args: argparse.Namespace) -> int:
    client = _in_transaction(
        settings,
        lambda db: agencies.create_client(
            db, ADMIN_CLI, args.agency, role=args.role, auth_key=args.auth_key
        ),
    )
    _print(client.model_dump(mode="json"))
    return 0


def cmd_revoke_client(settings: Settings, args: argparse.Namespace) -> int:
    client = _in_transaction(
        settings, lambda db: agencies.revoke_client(db, ADMIN_CLI, args.agency, args.client)
    )
    _print(client.model_dump(mode="json"))
    return 0


def _server_url(args: argparse.Namespace, settings: Settings) -> str:
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host  # noqa: S104
    return settings.public_url or f"http://{host}:{args.port}"


def _seed_demo(
    settings: Settings, args: argparse.Namespace, witnesses: list[str] | None = None
) -> dict[str, Any]:
    upgrade(settings)

    async def run() -> dict[str, Any]:
        engine = create_engine(settings)
        try:
            return await demo.seed(
                sessionmaker(engine), settings.data_dir, _server_url(args, settings),
                log_key=verifier_key(
                    settings.audit.log_origin, load_server_keys(settings).log_public
                ),
                witnesses=witnesses,
            )
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _demo_instructions(summary: dict[str, Any], url: str) -> str:
    lines = [f"refgate demo task force (server {url}):"]
    for m in summary["members"]:
        lines.append(f"  {m['role']:<10} {m['name']:<32} key file {m['key_file']}")
    shelter = summary["members"][0]["key_file"]
    lines += [
        "Get a token:  refgate --key-file " + shelter + " token",
        "Walkthrough:  see README.md, 'Five minutes with the demo'.",
    ]
    return "\n".join(lines)


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    summary = _seed_demo(settings, args)
    print(_demo_instructions(summary, _server_url(args, settings)))
    return 0


def _port_in_use(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on, or None when it can."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return f"cannot use the address {host}: {exc.strerror or exc}"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            return f"port {port} on {host} is already in use ({exc.strerror or exc})"
    return None


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    busy = _port_in_use(args.host, args.port)
    if busy:
        print(
            f"refgate-server: {busy}. Is refgate already running? Stop it, or choose another "
            f"port: ./dev serve --port {args.port + 1}",
            file=sys.stderr,
        )
        return 2
    load_server_keys(settings)  # create the keys once, before workers race to
    witness = None
    if args.demo and not args.no_witness and not settings.audit.witnesses:
        # started first, so that the demo's key files pin its key with a quorum of one
        witness = local_witness.start(settings, args.port)
        get_settings.cache_clear()  # the gateway reads REFGATE_AUDIT__WITNESSES afresh
    try:
        if args.demo:
            summary = _seed_demo(settings, args, [witness.vkey] if witness else None)
            print(_demo_instructions(summary, _server_url(args, settings)), flush=True)
        if witness is not None:
            auditor = settings.data_dir / "demo" / "auditor.key.json"
            print(f"local witness at {witness.url}, verifier key {witness.vkey}\n"
                  "  the demo key files pin it with a quorum of 1: every command needs its "
                  f"cosignature\n  verify with:  refgate --key-file {auditor} audit verify "
                  "--full", flush=True)
        print(f"refgate listening on http://{args.host}:{args.port}", flush=True)
        _multiprocess_metrics(settings, args.workers)
        _run_uvicorn(args)
    finally:
        if witness is not None:
            witness.stop()
    return 0


def _multiprocess_metrics(settings: Settings, workers: int) -> None:
    """Several workers: ``prometheus_client``'s multiprocess mode (``app.metrics``).

    ``PROMETHEUS_MULTIPROC_DIR`` (``<data_dir>/prometheus`` unless already set) is emptied
    of the last run's files and exported before uvicorn starts the workers, which read
    it when they first import ``prometheus_client``. One worker keeps its metrics in
    memory (no variable, no files) unless the variable is set.
    """
    from app.metrics import MULTIPROC_ENV

    given = os.environ.get(MULTIPROC_ENV)
    if workers <= 1 and not given:
        return
    directory = Path(given) if given else settings.data_dir / "prometheus"
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(directory)


def _run_uvicorn(args: argparse.Namespace) -> None:
    import uvicorn

    uvicorn.run(
        "app.main:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        proxy_headers=True,
        server_header=False,
        log_level="warning",
        access_log=False,  # refgate writes its own access line (app.middleware), without queries
        timeout_graceful_shutdown=10,
    )


def cmd_sequence(settings: Settings, _args: argparse.Namespace) -> int:
    async def run() -> tuple[int, int]:
        engine = create_engine(settings)
        try:
            maker = sessionmaker(engine)
            done = await sequencer.run_once(maker, settings, load_server_keys(settings))
            asked = 0
            if settings.audit.witnesses:  # and ask the witnesses to cosign it now
                async with witnesses.http_client(settings.audit) as http:
                    asked = await witnesses.witness_once(maker, settings, http, force=True)
            return done, asked
        finally:
            await engine.dispose()

    done, asked = asyncio.run(run())
    print(f"sequenced {done} events" + (f"; submitted to {asked} witness(es)" if asked else ""))
    return 0


def cmd_purge(settings: Settings, args: argparse.Namespace) -> int:
    async def run() -> retention.PurgeReport:
        engine = create_engine(settings)
        try:
            return await retention.run(engine, settings, dry_run=args.dry_run, actor=ADMIN_CLI)
        finally:
            await engine.dispose()

    _print(asyncio.run(run()).as_dict())
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="refgate-server", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def serve_flags(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--host", default="127.0.0.1", help="address to listen on")
        sp.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")

    sp = sub.add_parser("serve", help="run the gateway (uvicorn)")
    serve_flags(sp)
    sp.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    sp.add_argument(
        "--demo", action="store_true", help="migrate and seed the demo task force first"
    )
    sp.add_argument(
        "--no-witness", action="store_true",
        help="with --demo: do not start the local witness on port + 100",
    )
    sp.set_defaults(func=cmd_serve)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)
    sp = sub.add_parser("demo", help="migrate and seed the demo task force")
    serve_flags(sp)
    sp.set_defaults(func=cmd_demo)
    sp = sub.add_parser("create-agency", help="register an agency and its public keys")
    sp.add_argument("--name", required=True)
    sp.add_argument("--kind", required=True, choices=list(AgencyKind))
    sp.add_argument("--enc-key", required=True, help="base64url X25519 public key")
    sp.add_argument("--sign-key", required=True, help="base64url Ed25519 public key")
    sp.set_defaults(func=cmd_create_agency)
    sp = sub.add_parser("create-client", help="register an API client of an agency")
    sp.add_argument("--agency", required=True)
    sp.add_argument("--role", required=True, choices=list(Role))
    sp.add_argument("--auth-key", required=True, help="base64url Ed25519 public key")
    sp.set_defaults(func=cmd_create_client)
    sp = sub.add_parser("revoke-client", help="revoke one API client of an agency for good")
    sp.add_argument("--agency", required=True)
    sp.add_argument("--client", required=True, help="the client id")
    sp.set_defaults(func=cmd_revoke_client)
    sub.add_parser(
        "sequence", help="integrate pending audit events now and sign a checkpoint"
    ).set_defaults(func=cmd_sequence)
    sp = sub.add_parser(
        "purge",
        help="delete ciphertexts and wrapped keys past their retention period, and the "
        "wrapped keys of expired consents; prints the counts",
    )
    sp.add_argument("--dry-run", action="store_true", help="count what would go; change nothing")
    sp.set_defaults(func=cmd_purge)
    witness_cli.add_parser(sub)
    return p


KEY_FLAGS = ("--enc-key", "--sign-key", "--auth-key")


def _join_key_values(argv: list[str]) -> list[str]:
    """base64url keys may start with "-", which argparse takes for an option:
    rewrite ``--auth-key VALUE`` as ``--auth-key=VALUE``."""
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg in KEY_FLAGS:
            out.append(f"{arg}={next(it, '')}")
        else:
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(_join_key_values(sys.argv[1:] if argv is None else argv))
    settings = get_settings()
    try:
        code: int = args.func(settings, args)
    except errors.AppError as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
