"""The directory commands of the ``refgate`` CLI: ``find``, ``services``, ``capacity``,
and the resolution of agency names (``send --to "Eastside Legal"``).

``app.client.cli`` wires these in; they use its output helpers and exit codes.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from app import langtags
from app.client.directory import UNSET, match_agency
from app.client.sdk import RefgateClient
from app.vocab import Accepting, CapacityUnit, Population, Service

SERVICE_FIELDS = ("name", "description", "categories", "languages", "populations",
                  "eligibility", "service_area", "hours", "intake", "accepting", "capacity")


def _cli() -> Any:
    from app.client import cli  # the wiring module imports this one: import it late

    return cli


def age(updated_at: str, now: datetime | None = None) -> str:
    """How long ago ``updated_at`` (RFC 3339) was, in a caseworker's words."""
    try:
        then = datetime.fromisoformat(updated_at.replace("Z", "+00:00"))
    except ValueError:
        return "?"
    seconds = max(0, int(((now or datetime.now(UTC)) - then).total_seconds()))
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"


def _capacity(item: Mapping[str, Any]) -> str:
    capacity = item.get("capacity") or {}
    available = capacity.get("available")
    unit = capacity.get("unit", "")
    if available is None:
        return f"{unit}: not counted"
    return f"{available} {unit.removesuffix('s') if available == 1 else unit}"  # 1 bed, 2 beds


def _language(value: str) -> str:
    try:
        return langtags.normalize(value)
    except langtags.LanguageTagError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# ---------------------------------------------------------------- find


async def cmd_find(rc: RefgateClient, args: argparse.Namespace) -> int:
    cli = _cli()
    page = await rc.find_services(
        category=args.service, language=args.language, population=args.population,
        accepting="yes" if args.accepting else None, q=args.text, limit=args.limit,
        cursor=args.cursor,
    )

    def human(out: TextIO) -> None:
        if not page.items:
            out.write("no service matches; try fewer filters (for instance without "
                      "--accepting or --language)\n")
            return
        cli._table(out, ["AGENCY", "SERVICE", "ACCEPTING", "CAPACITY", "UPDATED", "LANGUAGES"], [
            (s["agency_name"], s["name"], s["accepting"], _capacity(s),
             age(s["capacity"]["updated_at"]), ",".join(s["languages"]))
            for s in page.items
        ])
        if page.next_cursor:
            out.write(f"more: --cursor {page.next_cursor}\n")
        out.write('send to one with: refgate send --to "AGENCY NAME" …\n')

    cli._emit(args, {"items": page.items, "next_cursor": page.next_cursor}, human)
    return int(cli.EXIT_OK)


# ---------------------------------------------------------------- services


def _service_body(args: argparse.Namespace) -> dict[str, Any]:
    cli = _cli()
    if args.from_file:
        try:
            data = json.loads(Path(args.from_file).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise cli.UsageError(f"cannot read {args.from_file}: {exc}") from None
        if not isinstance(data, dict):
            raise cli.UsageError("the file must hold one service object: "
                                 + ", ".join(SERVICE_FIELDS))
        return data
    if not args.name or not args.category or not args.accepting:
        raise cli.UsageError("a service needs --name, --category (repeatable) and --accepting, "
                             "or --from-file JSON")
    body: dict[str, Any] = {
        "name": args.name, "description": args.description or "",
        "categories": list(dict.fromkeys(args.category)),
        "languages": list(dict.fromkeys(args.language or [])),
        "populations": list(dict.fromkeys(args.population or [])),
        "accepting": args.accepting,
        "capacity": {"available": args.available, "unit": args.unit},
    }
    for name in ("eligibility", "service_area", "hours", "intake"):
        value = getattr(args, name)
        if value is not None:
            body[name] = value
    return body


async def cmd_services(rc: RefgateClient, args: argparse.Namespace) -> int:
    cli = _cli()
    action = args.services_command or "list"
    if action == "delete":
        await rc.delete_service(args.service_id)
        cli._emit(args, {"deleted": args.service_id},
                  lambda out: out.write(f"deleted service {args.service_id}\n"))
        return int(cli.EXIT_OK)
    if action in ("add", "replace"):
        body = _service_body(args)
        item = (await rc.create_service(body) if action == "add"
                else await rc.replace_service(args.service_id, body))
        verb = "published" if action == "add" else "replaced"
        cli._emit(args, item, lambda out: out.write(
            f"{verb} {item['name']} ({item['id']}): {item['accepting']}, {_capacity(item)}\n"
            f"update its capacity with: refgate capacity {item['id']} --available N\n"
        ))
        return int(cli.EXIT_OK)
    items = await rc.my_services()

    def human(out: TextIO) -> None:
        if not items:
            out.write("your agency publishes no service yet: refgate services add --help\n")
            return
        cli._table(out, ["ID", "SERVICE", "CATEGORIES", "ACCEPTING", "CAPACITY", "UPDATED"], [
            (s["id"], s["name"], ",".join(s["categories"]), s["accepting"], _capacity(s),
             age(s["capacity"]["updated_at"]))
            for s in items
        ])

    cli._emit(args, items, human)
    return int(cli.EXIT_OK)


def capacity_input(args: argparse.Namespace) -> Any:
    """The ``available`` to post (``UNSET`` to leave it); refuses a change of nothing."""
    cli = _cli()
    if args.available is not None and args.unknown:
        raise cli.UsageError("give --available N or --unknown, not both")
    available: Any = None if args.unknown else (UNSET if args.available is None
                                                 else args.available)
    if available is UNSET and args.accepting is None and args.unit is None:
        raise cli.UsageError("say what changed: --available N, --accepting yes|waitlist|no, "
                             "--unit or --unknown")
    return available


async def cmd_capacity(rc: RefgateClient, args: argparse.Namespace) -> int:
    cli = _cli()
    available = capacity_input(args)
    item = await rc.set_capacity(args.service_id, accepting=args.accepting, available=available,
                                 unit=args.unit)
    cli._emit(args, item, lambda out: out.write(
        f"{item['name']}: {item['accepting']}, {_capacity(item)} "
        f"(as of {item['capacity']['updated_at']})\n"
    ))
    return int(cli.EXIT_OK)


# ---------------------------------------------------------------- agency names


async def resolve_agencies(rc: RefgateClient, references: list[str]) -> dict[str, str]:
    """{reference: agency id} for ids or unique name prefixes (one directory read).
    Unknown or ambiguous names raise ``ValueError`` saying how to find the agency."""
    if not references:
        return {}
    directory = await rc.agencies()
    resolved = {ref: match_agency(ref, directory).id for ref in dict.fromkeys(references)}
    seen: dict[str, str] = {}
    for ref, agency_id in resolved.items():
        if agency_id in seen:
            raise _cli().UsageError(f"{seen[agency_id]!r} and {ref!r} name the same agency")
        seen[agency_id] = ref
    return resolved


async def resolve_send_input(rc: RefgateClient, data: dict[str, Any]) -> dict[str, Any]:
    """``send``'s fields, consent and requests with every agency named by its id."""
    consent: dict[str, dict[str, str]] = data["consent"]
    requests: dict[str, Any] = data["requests"]
    ids = await resolve_agencies(rc, [*requests, *(r for per in consent.values() for r in per)])
    return {
        "fields": data["fields"],
        "consent": {f: {ids[r]: p for r, p in per.items()} for f, per in consent.items()},
        "requests": {ids[r]: spec for r, spec in requests.items()},
    }


# ---------------------------------------------------------------- wiring


def _service_flags(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--name")
    sp.add_argument("--description")
    sp.add_argument("--category", action="append", choices=[s.value for s in Service],
                    metavar="SERVICE", help="repeatable: " + ", ".join(s.value for s in Service))
    sp.add_argument("--language", action="append", type=_language, metavar="BCP47",
                    help="a language spoken at intake (repeatable): en, es, fa-AF …")
    sp.add_argument("--population", action="append", choices=[p.value for p in Population])
    sp.add_argument("--eligibility")
    sp.add_argument("--area", dest="service_area", help="service area (never a street address)")
    sp.add_argument("--hours")
    sp.add_argument("--intake", help="how a professional reaches intake (never an address)")
    sp.add_argument("--accepting", choices=[a.value for a in Accepting])
    sp.add_argument("--available", type=int, help="units free now (leave out if not counted)")
    sp.add_argument("--unit", choices=[u.value for u in CapacityUnit], default="slots")
    sp.add_argument("--from-file", metavar="JSON", help="the service as a JSON object instead")


def add_commands(sub: Any) -> None:
    """Register ``find``, ``services`` and ``capacity`` on the CLI's subparsers."""
    sp = sub.add_parser("find", help="find services in the directory (who can take her tonight)")
    sp.add_argument("--service", choices=[s.value for s in Service], metavar="SERVICE",
                    help="one of: " + ", ".join(s.value for s in Service))
    sp.add_argument("--language", type=_language, metavar="BCP47",
                    help="spoken at intake; es also finds es-MX")
    sp.add_argument("--population", choices=[p.value for p in Population])
    sp.add_argument("--accepting", action="store_true", help="only services accepting now")
    sp.add_argument("--text", help="words in the service's name or description")
    sp.add_argument("--limit", type=int, default=50)
    sp.add_argument("--cursor")
    sp.set_defaults(remote=cmd_find)

    services = sub.add_parser("services", help="list, add, replace or delete your services")
    verbs = services.add_subparsers(dest="services_command", parser_class=services.__class__)
    verbs.add_parser("list", help="your agency's services (the default)")
    _service_flags(verbs.add_parser("add", help="publish a service"))
    sp = verbs.add_parser("replace", help="replace one of your services")
    sp.add_argument("service_id")
    _service_flags(sp)
    verbs.add_parser("delete", help="delete one of your services").add_argument("service_id")
    services.set_defaults(remote=cmd_services)

    sp = sub.add_parser("capacity", help="post a service's capacity now")
    sp.add_argument("service_id")
    sp.add_argument("--available", type=int, help="units free now")
    sp.add_argument("--unknown", action="store_true", help="this agency does not count them")
    sp.add_argument("--accepting", choices=[a.value for a in Accepting])
    sp.add_argument("--unit", choices=[u.value for u in CapacityUnit])
    sp.set_defaults(remote=cmd_capacity)
