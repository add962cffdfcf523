"""``refgate``: the command-line client of a refgate gateway (on the SDK).

Global flags come before the command: ``--key-file PATH`` (or
``REFGATE_KEY_FILE``), ``--server URL`` (overrides the key file's),
``--json`` (machine-readable output), ``--passphrase-env VAR`` (the name of
the environment variable holding a sealed key file's passphrase; without it
the passphrase is prompted for on a terminal), ``--log-key KEY`` (or
``REFGATE_LOG_KEY``: the audit log's verifier key to pin).

Pinning: the log key and the newest verified checkpoint are pinned beside the
key file (``<key file>.pins.json``, see ``app.client.transparency``). Every
command that talks to the server first verifies the server's checkpoint
against the pin and advances it, and refuses (exit 3) on a mismatch, before
anything is sent. Without a configured key, the first use trusts the server's
and says so; ``refgate configure --log-key KEY [--witness V ...] [--quorum K]``
pins on purpose.

Exit codes: 0 ok, 1 usage or input error, 2 the server refused (4xx),
3 verification failure (signature, hash, commitment, key transparency, audit
log), 4 network error or server failure (5xx), 130 interrupted
(``EXIT_CODES_HELP``, shown by ``refgate --help``). Errors go to stderr with
the problem's title and detail.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

import httpx

from app import vocab
from app.client import directory_cli, webhook_listen
from app.client.help_topics import describe_options, roles_text
from app.client.keyfile import (
    KeyFile,
    KeyFileError,
    PassphraseRequired,
    update_settings,
)
from app.client.outbox import Outbox, OutboxError, checked_referral_id, post_saved
from app.client.people import agency_labels, plural, verified_agencies
from app.client.sdk import RefgateClient, RefgateError, ServerUnreachable, VerificationError
from app.client.transparency import Pins, pins_path
from app.crypto import envelope as env
from app.crypto.passphrase import PassphraseError
from app.crypto.wire import GrantValue
from app.vocab import Service, Urgency

EXIT_OK = 0
EXIT_USAGE = 1
EXIT_REFUSED = 2
EXIT_VERIFY = 3
EXIT_NETWORK = 4

EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """\
exit codes:
  0    done
  1    usage or input error (a flag, a file, the key file or its passphrase); nothing was sent
  2    the server refused (4xx): the message says why
  3    verification failed (a signature, hash, commitment, the key directory or the audit
       log does not verify): do not trust the answer, report it to the task force
  4    network error or server failure (5xx): retry later; an unsent referral waits in the
       outbox (refgate send --retry REFERRAL_ID)
  130  interrupted (Ctrl-C); for send, the message says how to retry without a duplicate

roles: refgate roles explains caseworker, liaison, auditor and admin"""

AUDIT_STATE_SUFFIX = ".audit-state.json"
"""``audit verify`` keeps its state beside the key file, like the pins."""


class UsageError(Exception):
    """The command line or its input is wrong (exit code 1)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


# ---------------------------------------------------------------- output


def _emit(args: argparse.Namespace, data: Any, human: Callable[[TextIO], object]) -> None:
    if args.json:
        json.dump(data, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        human(sys.stdout)


def _table(out: TextIO, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(h) for h in headers], *[["" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


# ---------------------------------------------------------------- input parsing


def _pairs(values: Sequence[str] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"{what} must look like name=value, got {item!r}")
        if name in out:
            raise UsageError(f"{what} {name!r} given twice")
        out[name] = value
    return out


def _consents(values: Sequence[str] | None) -> dict[str, dict[str, str]]:
    """``field:agency-id:purpose`` items -> ``{field: {agency id: purpose}}``."""
    out: dict[str, dict[str, str]] = {}
    for item in values or []:
        field, sep, rest = item.partition(":")
        agency, sep2, purpose = rest.rpartition(":")
        if not (sep and sep2 and field and agency and purpose):
            raise UsageError(f"--consent must look like field:AGENCY:purpose, got {item!r}")
        if agency in out.setdefault(field, {}):
            raise UsageError(f"consent for {field!r} to {agency} given twice")
        out[field][agency] = purpose
    return out


def _passphrase(args: argparse.Namespace, *, confirm: bool = False) -> bytes:
    if args.passphrase_env:
        value = os.environ.get(args.passphrase_env)
        if not value:
            raise UsageError(f"the environment variable {args.passphrase_env} is empty or unset")
        return value.encode()
    if not sys.stdin.isatty():
        raise UsageError("a passphrase is needed: give --passphrase-env VAR (no terminal to ask)")
    value = getpass.getpass("Key file passphrase: ")
    if confirm and getpass.getpass("Repeat the passphrase: ") != value:
        raise UsageError("the passphrases differ")
    if not value:
        raise UsageError("the passphrase must not be empty")
    return value.encode()


def _user_path(value: str) -> Path:
    return Path(value).expanduser()


def _key_path(args: argparse.Namespace) -> Path:
    value = args.key_file or os.environ.get("REFGATE_KEY_FILE")
    if not value:
        raise UsageError("no key file: give --key-file PATH or set REFGATE_KEY_FILE")
    return Path(value).expanduser()


def _load_key(args: argparse.Namespace) -> KeyFile:
    path = _key_path(args)
    try:
        return KeyFile.load(path)
    except PassphraseRequired:
        return KeyFile.load(path, _passphrase(args))


def _announce_first_use(key: str) -> None:
    bar = "!" * 72
    print(f"{bar}\nNo audit log key is pinned for this key file; trusting the server's on first "
          f"use:\n    {key}\nCompare it with the log key the task force published. If it "
          "differs, stop and report it.\nIt is pinned from now on (to pin on purpose: refgate "
          f"configure --log-key KEY).\n{bar}", file=sys.stderr)


def _client(args: argparse.Namespace) -> RefgateClient:
    log_key = args.log_key or os.environ.get("REFGATE_LOG_KEY") or None
    return RefgateClient(_load_key(args), base_url=args.server, log_key=log_key,
                         pins=pins_path(_key_path(args)), announce=_announce_first_use)


# ---------------------------------------------------------------- local commands


def cmd_keygen(args: argparse.Namespace) -> int:
    path = Path(args.out).expanduser() if args.out else _key_path(args)
    kf = KeyFile.generate(server=args.server, agency_id=args.agency_id,
                          client_id=args.client_id, role=args.role)
    passphrase = _passphrase(args, confirm=True) if args.passphrase else None
    kf.save(path, passphrase=passphrase)
    pub = kf.public_keys()
    data = {"key_file": str(path), "sealed": passphrase is not None, "enc_key": pub.enc_key,
            "sign_key": pub.sign_key, "auth_key": pub.auth_key}

    def human(out: TextIO) -> None:
        out.write(f"Wrote {path} (mode 0600{', sealed with a passphrase' if passphrase else ''}).\n"
                  "Keep it private: it holds the agency's private keys.\n\n"
                  "Public keys to register:\n"
                  f"  encryption  (X25519)   {pub.enc_key}\n"
                  f"  signing     (Ed25519)  {pub.sign_key}\n"
                  f"  client auth (Ed25519)  {pub.auth_key}\n\n"
                  "A task-force administrator registers them:\n"
                  # "=" because a base64url key may begin with "-", which argparse
                  # would take for an option
                  f'  refgate-server create-agency --name "AGENCY NAME" --kind KIND '
                  f"--enc-key={pub.enc_key} --sign-key={pub.sign_key}\n"
                  f"  refgate-server create-client --agency AGENCY_ID --role "
                  f"{args.role or 'caseworker'} --auth-key={pub.auth_key}\n\n"
                  "Then record the ids they print in the key file:\n"
                  f"  refgate --key-file {path} configure --agency-id AGENCY_ID "
                  f"--client-id CLIENT_ID --server {args.server or 'https://REFGATE_URL'}\n")

    _emit(args, data, human)
    return EXIT_OK


def cmd_roles(args: argparse.Namespace) -> int:
    from app.client.help_topics import ROLE_SCOPES, ROLE_TEXT

    _emit(args, {r: {"description": t, "scopes": list(ROLE_SCOPES[r])}
                 for r, t in ROLE_TEXT.items()}, lambda out: out.write(roles_text()))
    return EXIT_OK


def cmd_configure(args: argparse.Namespace) -> int:
    changes = {name: value for name, value in (
        ("server", args.set_server or args.server), ("agency_id", args.agency_id),
        ("client_id", args.client_id), ("role", args.role),
    ) if value is not None}
    path = _key_path(args)
    if args.pin_log_key or args.witness or args.quorum is not None:
        return _configure_pins(args, path)
    if not changes:
        raise UsageError("nothing to configure: give --agency-id, --client-id, --server, --role "
                         "or --log-key")
    settings = update_settings(path, **changes)
    _emit(args, {"key_file": str(path), **settings}, lambda out: out.write(
        "".join(f"{k:<10} {v if v is not None else '-'}\n" for k, v in settings.items())
    ))
    return EXIT_OK


def _configure_pins(args: argparse.Namespace, path: Path) -> int:
    pins = Pins.load(pins_path(path))
    key = args.pin_log_key or pins.log_key
    if key is None:
        raise UsageError("give --log-key: witnesses and a quorum belong to a pinned log key")
    pins.repin(key.strip(), args.witness, args.quorum)
    _emit(args, pins.as_json(), lambda out: out.write(
        f"pinned in {pins.path}:\n  log key   {pins.log_key}\n"
        f"  witnesses {', '.join(pins.witnesses) or '-'} (quorum {pins.quorum})\n"
        "The next command verifies the server's checkpoint with this key.\n"
    ))
    return EXIT_OK


# ---------------------------------------------------------------- server commands


async def cmd_token(rc: RefgateClient, args: argparse.Namespace) -> int:
    token = await rc.access_token()
    _emit(args, {"access_token": token, "token_type": "Bearer"},
          lambda out: out.write(token + "\n"))
    return EXIT_OK


async def cmd_agencies(rc: RefgateClient, args: argparse.Namespace) -> int:
    items = await verified_agencies(rc)

    def human(out: TextIO) -> None:
        _table(out, ["NAME", "KIND", "STATUS", "ENC KID", "SIG KID", "KEYS VERIFIED", "ID"],
               [(a["name"], a["kind"], a["status"], a["enc_kid"], a["sig_kid"], a["verified"],
                 a["id"]) for a in items])
        out.write(f"{plural(len(items), 'agency', 'agencies')}; keys verified against the key "
                  "directory of the pinned checkpoint\n")

    _emit(args, items, human)
    return EXIT_OK


def _send_input(args: argparse.Namespace) -> dict[str, Any]:
    """Fields, consent and per-recipient requests from the flags or ``--from-file``."""
    if args.retry:
        if args.to or args.field or args.consent or args.request or args.from_file:
            raise UsageError("--retry re-sends the saved envelope as it is: give no --to, "
                             "--field, --consent, --request or --from-file with it")
        checked_referral_id(args.retry)
        return {}
    if args.from_file:
        if args.to or args.field or args.consent or args.request:
            raise UsageError("--from-file excludes --to, --field, --consent and --request")
        try:
            data = json.loads(Path(args.from_file).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read {args.from_file}: {exc}") from None
        if not isinstance(data, dict) or set(data) != {"fields", "consent", "requests"}:
            raise UsageError(
                'the file must hold {"fields": {name: value}, "consent": {field: {agency: '
                'purpose}}, "requests": {agency: {"services": [...], "urgency": ..., '
                '"case_ref": ...}}}'
            )
        return data
    fields = _pairs(args.field, "--field")
    consent = _consents(args.consent)
    recipients = list(dict.fromkeys(args.to or []))
    for recipient in (r for per in consent.values() for r in per):
        if recipient not in recipients:
            recipients.append(recipient)
    if not recipients:
        raise UsageError("a referral needs at least one recipient (--to AGENCY; "
                         "refgate find shows who can take her)")
    own = _pairs(args.request, "--request")
    default = list(args.service or [])
    requests: dict[str, dict[str, Any]] = {}
    for recipient in recipients:
        services = own[recipient].split(",") if recipient in own else default
        if not services:
            raise UsageError(
                f"say what {recipient} is asked for: --service SERVICE, or "
                f"--request {recipient}=SERVICE[,SERVICE]"
            )
        requests[recipient] = {"services": services, "urgency": args.urgency or "routine",
                               "case_ref": args.case_ref}
    unknown = sorted(set(own) - set(recipients))
    if unknown:
        raise UsageError(f"--request names {unknown[0]}, which is not a recipient (--to)")
    return {"fields": fields, "consent": consent, "requests": requests}


def _granted_fields(body: dict[str, Any], fields_of: dict[str, str]) -> dict[str, list[str]]:
    """Recipient -> the field names granted to it, from a sealed body's grant disclosures."""
    out: dict[str, list[str]] = {}
    for item in body.get("disclosures") or []:
        value = env.parse_disclosure(item).value
        if isinstance(value, GrantValue) and value.fid in fields_of:
            out.setdefault(value.recipient, []).append(fields_of[value.fid])
    return out


async def cmd_send(rc: RefgateClient, args: argparse.Namespace) -> int:
    # The referral id is chosen here and the sealed envelope saved in the outbox
    # before anything is posted; the Idempotency-Key derives from the id, so
    # `refgate send --retry ID` after an interruption never makes a duplicate.
    box = Outbox.of_key_file(_key_path(args))
    if args.retry:
        sealed = box.load(args.retry)
        print(f"re-sending referral {sealed.referral_id} (saved in {box.directory})",
              file=sys.stderr)
    else:
        data = await directory_cli.resolve_send_input(rc, _send_input(args))
        sealed = await rc.seal_referral(
            data["fields"], data["consent"], data["requests"],
            expires_in_days=args.days, release_ref=args.release_ref,
        )
        box.save(sealed)
        print(f"sending referral {sealed.referral_id} (if interrupted: "
              f"refgate send --retry {sealed.referral_id})", file=sys.stderr, flush=True)
    label = await agency_labels(rc, args.ids or args.json)  # before: nothing may fail after
    summary = await post_saved(rc, box, sealed, sys.stderr)
    fields_of = {fid: name for name, fid in sealed.fids.items()}

    def human(out: TextIO) -> None:
        out.write(f"sent referral {summary['referral_id']} to "
                  f"{plural(len(summary['statuses']), 'agency', 'agencies')}\n")
        granted = _granted_fields(sealed.body, fields_of)
        for recipient, expires in sorted(summary["expires_at"].items()):
            names = ", ".join(sorted(granted.get(recipient, ())))
            out.write(f"  {label(recipient)}: {names} until {expires}\n")

    _emit(args, summary, human)
    return EXIT_OK


async def cmd_inbox(rc: RefgateClient, args: argparse.Namespace) -> int:
    query = rc.sent if args.sent else rc.inbox
    page = await query(status=args.status, urgency=args.urgency, limit=args.limit,
                       cursor=args.cursor)
    label = await agency_labels(rc, args.ids or args.json)

    def human(out: TextIO) -> None:
        rows = []
        for item in page.items:
            request = item.request
            statuses = item.statuses
            shown = ", ".join(s.status if not args.sent
                              else f"{label(s.recipient)}: {s.status}" for s in statuses)
            who = (", ".join(label(s.recipient) for s in statuses) if args.sent
                   else label(item.sender_agency))
            rows.append((item.referral_id, item.created_at, who,
                         request.urgency if request else "",
                         ",".join(request.services) if request else "",
                         (request.case_ref if request else None) or "", shown))
        _table(out, ["REFERRAL", "CREATED", "TO" if args.sent else "FROM", "URGENCY",
                     "SERVICES", "CASE", "STATUS"], rows)
        out.write(f"{plural(len(page.items), 'referral')}"
                  f"{' (this page)' if page.next_cursor else ''}\n")
        if page.next_cursor:
            out.write(f"more: --cursor {page.next_cursor}\n")

    _emit(args, {"items": [i.to_json() for i in page.items], "next_cursor": page.next_cursor},
          human)
    return EXIT_OK


async def cmd_show(rc: RefgateClient, args: argparse.Namespace) -> int:
    opened = await rc.open_referral(args.referral_id)
    data = {"referral_id": opened.referral_id, "sender_agency": opened.sender_agency,
            "created_at": opened.manifest["created_at"], "version": opened.manifest["version"],
            "fields": opened.fields, "fids": opened.fids, "grants": opened.grants,
            "requests": {r: q.to_json() for r, q in opened.requests.items()},
            "statuses": [s.to_json() for s in opened.statuses], "notes": opened.notes,
            "unreadable_notes": list(opened.unreadable_notes)}
    label = await agency_labels(rc, args.ids or args.json)

    def human(out: TextIO) -> None:
        out.write(f"referral  {opened.referral_id} (version {opened.manifest['version']})\n"
                  f"from      {label(opened.sender_agency)}\n"
                  f"created   {opened.manifest['created_at']}\n")
        for recipient, request in sorted(opened.requests.items()):
            case = f", case {request.case_ref}" if request.case_ref else ""
            out.write(f"request   {label(recipient)}: {', '.join(request.services)} "
                      f"({request.urgency}{case})\n")
        out.write("\nfields (signature, digests, hashes and commitments verified):\n")
        for name, text in sorted(opened.fields.items()):
            out.write(f"  {name}: {text}\n")
        if not opened.fields:
            out.write("  (none shared with this agency)\n")
        out.write("\nconsent:\n")
        for g in sorted(opened.grants, key=lambda g: (g["recipient"], g["fid"])):
            if g["purpose"] == "sender":
                continue
            name = opened.field_of(g["fid"]) or g["fid"]
            out.write(f"  {label(g['recipient'])} may read {name} for {g['purpose']} "
                      f"until {g['expires_at']}\n")
        out.write("\nstatus:\n")
        for s in opened.statuses:
            extra = f" reason={s.reason}" if s.reason else ""
            note = opened.notes.get(s.recipient)
            if note is not None:
                extra += f" note: {note}"
            elif s.recipient in opened.unreadable_notes:
                extra += " note: (does not open with this agency's key)"
            signed = " (signature verified)" if s.verified else " (set by the server)"
            out.write(f"  {label(s.recipient)}  {s.status}  {s.updated_at}{signed}"
                      f"{extra}\n")

    _emit(args, data, human)
    return EXIT_OK


async def cmd_status(rc: RefgateClient, args: argparse.Namespace) -> int:
    result = await rc.update_status(args.referral_id, args.state, reason=args.reason,
                                    note=args.note)
    _emit(args, result.to_json(), lambda out: out.write(
        f"{args.referral_id}: {result.status}\n"
    ))
    return EXIT_OK


def _grant_input(
    args: argparse.Namespace,
) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, Any]]]:
    consent = _consents(args.consent)
    if not consent:
        raise UsageError("give at least one --consent field:AGENCY:purpose "
                         "(AGENCY: a name from `refgate find`, or an id)")
    own = _pairs(args.request, "--request")
    requests = {r: {"services": services.split(","), "urgency": args.urgency or "routine",
                    "case_ref": args.case_ref} for r, services in own.items()}
    return consent, requests


async def cmd_grant(rc: RefgateClient, args: argparse.Namespace) -> int:
    consent, requests = _grant_input(args)
    named = await directory_cli.resolve_send_input(
        rc, {"fields": {}, "consent": consent, "requests": requests}
    )
    result = await rc.grant(args.referral_id, named["consent"], named["requests"],
                            expires_in_days=args.days, release_ref=args.release_ref)
    _emit(args, result, lambda out: out.write("".join(
        f"granted {name} to {recipient} for {purpose} until {result['expires_at']}\n"
        for name, per in consent.items() for recipient, purpose in per.items()
    ) + f"referral {args.referral_id} is now at version {result['version']}\n"))
    return EXIT_OK


def _revoke_input(args: argparse.Namespace) -> list[tuple[str, str]]:
    if len(args.field) != len(args.recipient):
        raise UsageError("give one --recipient for each --field")
    return list(zip(args.field, args.recipient, strict=True))


async def cmd_revoke(rc: RefgateClient, args: argparse.Namespace) -> int:
    named = _revoke_input(args)
    ids = await directory_cli.resolve_agencies(rc, [r for _, r in named])
    pairs = [(f, ids[r]) for f, r in named]
    result = await rc.revoke(args.referral_id, pairs)
    _emit(args, result, lambda out: out.write("".join(
        f"revoked {f} for {r}\n" for f, r in pairs
    )))
    return EXIT_OK


async def cmd_withdraw(rc: RefgateClient, args: argparse.Namespace) -> int:
    statuses = await rc.withdraw(args.referral_id)
    _emit(args, [s.to_json() for s in statuses], lambda out: out.write(
        f"withdrew {args.referral_id}: {plural(len(statuses), 'recipient')} cancelled\n"
    ))
    return EXIT_OK


# ----- audit verify: implemented in app.client.audit_verify (imported when used)


def _audit_witnesses(args: argparse.Namespace) -> dict[str, Any]:
    """``--witness``/``--quorum``, else the witnesses and quorum pinned beside the key file."""
    if args.witness:
        return {"witnesses": args.witness,
                "quorum": len(set(args.witness)) if args.quorum is None else args.quorum}
    pins = Pins.load(pins_path(_key_path(args)))
    return {"witnesses": pins.witnesses,
            "quorum": pins.quorum if args.quorum is None else args.quorum}


async def cmd_audit_verify(rc: RefgateClient, args: argparse.Namespace) -> int:
    from app.client.audit_verify import main_verify

    state_file = args.state_file or _key_path(args).with_name(
        _key_path(args).name + AUDIT_STATE_SUFFIX
    )
    code = await main_verify(
        rc,
        state_file=state_file,
        checkpoint_file=args.checkpoint_file,
        full=args.full,
        # the key pinned beside the key file (checked before this command ran)
        log_key=args.audit_log_key or await rc.trusted_log_key(),
        **_audit_witnesses(args),
        out=sys.stdout,
        grace=args.grace,
    )
    return EXIT_OK if code == 0 else EXIT_VERIFY


async def cmd_audit_report(rc: RefgateClient, args: argparse.Namespace) -> int:
    from app.client.access_report import access_report, render

    cp, rows = await access_report(rc, args.referral_id)
    render(sys.stdout, rows, "json" if args.json else "csv" if args.csv else "table", cp)
    if any(r["proof"] == "NOT PROVEN" for r in rows):
        print("verification failed: some events are not in the signed log (NOT PROVEN): the "
              "server's record of this referral was changed. Report it to the task force.",
              file=sys.stderr)
        return EXIT_VERIFY
    return EXIT_OK


# ---------------------------------------------------------------- wiring


def parser() -> argparse.ArgumentParser:
    """The ``refgate`` parser: global flags, then one builder per command group (in the
    order ``refgate --help`` lists them)."""
    p = _Parser(prog="refgate", description="Client of a refgate referral gateway.",
                epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_global_flags(p)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_setup_commands(sub)
    directory_cli.add_commands(sub)
    _add_send_command(sub)
    _add_recipient_commands(sub)
    _add_sender_commands(sub)
    _add_audit_commands(sub)
    _add_webhook_commands(sub)
    describe_options(p)
    return p


def _add_global_flags(p: argparse.ArgumentParser) -> None:
    """The flags that come before the command."""
    p.add_argument("--key-file", help="agency key file (default: $REFGATE_KEY_FILE)")
    p.add_argument("--server", help="gateway URL (overrides the key file's)")
    p.add_argument("--json", action="store_true",
                   help="machine-readable output (agencies by id)")
    p.add_argument("--ids", action="store_true",
                   help="show agencies by id instead of by name")
    p.add_argument("--passphrase-env", metavar="VAR",
                   help="environment variable holding the key file passphrase")
    p.add_argument("--log-key", help="audit log verifier key to pin (default: $REFGATE_LOG_KEY, "
                                     "else trust the server's on first use)")


def _add_setup_commands(sub: argparse._SubParsersAction[_Parser]) -> None:
    """keygen, configure, roles, token and agencies: the key file and who is who."""
    sp = sub.add_parser("keygen", help="create a key file with fresh agency and client keys")
    sp.add_argument("--out", help="where to write it (default: --key-file)")
    sp.add_argument("--passphrase", action="store_true", help="seal it with a passphrase")
    sp.add_argument("--agency-id")
    sp.add_argument("--client-id")
    sp.add_argument("--role", choices=["caseworker", "liaison", "auditor", "admin"])
    sp.set_defaults(local=cmd_keygen)

    sp = sub.add_parser("configure", help="set the server, agency id and client id of a key file")
    sp.add_argument("--agency-id")
    sp.add_argument("--client-id")
    sp.add_argument("--server", dest="set_server")
    sp.add_argument("--role", choices=["caseworker", "liaison", "auditor", "admin"])
    sp.add_argument("--log-key", dest="pin_log_key",
                    help="pin this audit log key on purpose (forgets the pinned checkpoint "
                         "if the key changes)")
    sp.add_argument("--witness", action="append", metavar="VKEY",
                    help="witness verifier key to pin (repeatable)")
    sp.add_argument("--quorum", type=int, help="witness cosignatures required")
    sp.set_defaults(local=cmd_configure)

    sub.add_parser("roles", help="what the four roles (caseworker, liaison, auditor, admin) "
                   "may do").set_defaults(local=cmd_roles)
    sub.add_parser("token", help="print an access token").set_defaults(remote=cmd_token)
    sub.add_parser("agencies", help="list the directory").set_defaults(remote=cmd_agencies)


def _add_send_command(sub: argparse._SubParsersAction[_Parser]) -> None:
    """send: encrypt and send a referral, or re-send one saved in the outbox."""
    sp = sub.add_parser("send", help="encrypt and send a referral")
    sp.add_argument("--to", action="append", metavar="AGENCY",
                    help="recipient: its id or the start of its name, as refgate find shows it "
                         "(repeatable)")
    sp.add_argument("--field", action="append", metavar="NAME=VALUE")
    sp.add_argument("--consent", action="append", metavar="FIELD:AGENCY:PURPOSE")
    sp.add_argument("--urgency", choices=[u.value for u in Urgency],
                    help="for every recipient (default routine)")
    sp.add_argument("--service", action="append", choices=[v.value for v in Service],
                    metavar="SERVICE",
                    help="what every recipient is asked for (repeatable): "
                         + ", ".join(v.value for v in Service))
    sp.add_argument("--request", action="append", metavar="AGENCY=SERVICE[,SERVICE]",
                    help="what one recipient is asked for, instead of --service")
    sp.add_argument("--case-ref", help="your opaque case reference (letters, digits, . _ -)")
    sp.add_argument("--days", type=int, default=90,
                    help="consent lifetime in days (default 90; the server's maximum applies)")
    sp.add_argument("--release-ref", help="reference of the signed release form")
    sp.add_argument("--from-file", metavar="JSON",
                    help="{fields, consent, requests} instead of the flags")
    sp.add_argument("--retry", metavar="REFERRAL_ID",
                    help="re-send the envelope saved in the outbox (<key file>.outbox/) by an "
                         "interrupted or failed send; never creates a second referral")
    sp.set_defaults(remote=cmd_send)


def _add_recipient_commands(sub: argparse._SubParsersAction[_Parser]) -> None:
    """inbox, show and status: what was sent to (or by) this agency, and answering it."""
    sp = sub.add_parser("inbox", help="list received (or --sent) referrals")
    sp.add_argument("--sent", action="store_true")
    sp.add_argument("--status")
    sp.add_argument("--urgency", choices=[u.value for u in Urgency])
    sp.add_argument("--limit", type=int, default=50)
    sp.add_argument("--cursor")
    sp.set_defaults(remote=cmd_inbox)

    sp = sub.add_parser("show", help="verify and decrypt a referral")
    sp.add_argument("referral_id")
    sp.set_defaults(remote=cmd_show)

    sp = sub.add_parser("status", help="post this agency's status on a referral")
    sp.add_argument("referral_id")
    sp.add_argument("state", choices=["received", "accepted", "rejected", "in-progress",
                                      "on-hold", "completed", "failed"])
    sp.add_argument("--reason", help="reason code, required for rejected: "
                    + ", ".join(vocab.REASON_EXAMPLES) + " or your own (lower case, _ . -)")
    sp.add_argument("--note", help="note for the sender (encrypted to the sender)")
    sp.set_defaults(remote=cmd_status)


def _add_sender_commands(sub: argparse._SubParsersAction[_Parser]) -> None:
    """grant, revoke and withdraw: the sender changing a referral it sent."""
    sp = sub.add_parser("grant", help="widen consent on a referral you sent")
    sp.add_argument("referral_id")
    sp.add_argument("--consent", action="append", metavar="FIELD:AGENCY_ID:PURPOSE")
    sp.add_argument("--request", action="append", metavar="AGENCY_ID=SERVICE[,SERVICE]",
                    help="what a recipient new to the referral is asked for")
    sp.add_argument("--urgency", choices=[u.value for u in Urgency])
    sp.add_argument("--case-ref")
    sp.add_argument("--days", type=int, default=90,
                    help="consent lifetime in days (default 90; the server's maximum applies)")
    sp.add_argument("--release-ref")
    sp.set_defaults(remote=cmd_grant)

    sp = sub.add_parser("revoke", help="revoke consent for a field and recipient")
    sp.add_argument("referral_id")
    sp.add_argument("--field", action="append", required=True)
    sp.add_argument("--recipient", action="append", required=True, metavar="AGENCY",
                    help="its id or the start of its name")
    sp.set_defaults(remote=cmd_revoke)

    sp = sub.add_parser("withdraw", help="withdraw a referral you sent")
    sp.add_argument("referral_id")
    sp.set_defaults(remote=cmd_withdraw)


def _add_audit_commands(sub: argparse._SubParsersAction[_Parser]) -> None:
    """audit verify and audit report: the audit log checked from outside the server."""
    audit = sub.add_parser("audit", help="audit log tools")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, parser_class=_Parser)
    sp = audit_sub.add_parser("verify", help="verify checkpoints, proofs and (--full) every event")
    sp.add_argument("--checkpoint-file", type=_user_path,
                    help="an earlier checkpoint the log must extend")
    sp.add_argument("--state-file", type=_user_path,
                    help=f"pinned log key and last checkpoint (default <key file>"
                         f"{AUDIT_STATE_SUFFIX})")
    sp.add_argument("--full", action="store_true", help="also rebuild the tree from every event")
    sp.add_argument("--log-key", dest="audit_log_key", help="log verifier key to pin")
    sp.add_argument("--grace", type=float, default=300.0, metavar="SECONDS",
                    help="with --full: fail on a committed event still outside the tree this "
                         "long after it was recorded (default 300)")
    sp.add_argument("--witness", action="append", default=[], metavar="VKEY",
                    help="a trusted witness's verifier key (repeatable; default: the "
                         "witnesses pinned with `refgate configure --witness`)")
    sp.add_argument("--quorum", type=int, metavar="K",
                    help="cosignatures required from those witnesses (default: all given "
                         "with --witness, else the pinned quorum)")
    sp.set_defaults(remote=cmd_audit_verify)
    sp = audit_sub.add_parser("report", help="access report of a referral you sent, proven")
    sp.add_argument("referral_id")
    sp.add_argument("--csv", action="store_true", help="CSV instead of a table")
    sp.set_defaults(remote=cmd_audit_report)


def _add_webhook_commands(sub: argparse._SubParsersAction[_Parser]) -> None:
    """webhook listen: receive and verify webhooks locally."""
    wh = sub.add_parser("webhook", help="webhook tools").add_subparsers(
        dest="webhook_command", required=True, parser_class=_Parser
    )
    sp = wh.add_parser("listen", help="receive, verify and print webhooks locally")
    sp.add_argument("--port", type=int, default=8787)
    sp.add_argument("--secret", required=True, help="the whsec_ secret shown when subscribing")
    sp.set_defaults(local=lambda a: webhook_listen.listen(a.port, a.secret, sys.stdout))


async def _run_remote(
    rc: RefgateClient,
    args: argparse.Namespace,
    handler: Callable[[RefgateClient, argparse.Namespace], Awaitable[int]],
) -> int:
    async with rc:
        # every command checks the server's log against the pins and advances them
        # before it does anything else (app.client.transparency)
        await rc.check_log()
        return await handler(rc, args)


_INPUT_CHECKS: dict[str, Callable[[argparse.Namespace], object]] = {
    "send": _send_input, "grant": _grant_input, "revoke": _revoke_input,
    "capacity": directory_cli.capacity_input,
}


def _fail(code: int, message: str) -> int:
    print(message, file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if hasattr(args, "local"):
            code: int = args.local(args)
            return code
        # Bad input is refused before the pins are checked or anything is sent.
        if args.command in _INPUT_CHECKS:
            _INPUT_CHECKS[args.command](args)
        # The key file is opened before the event loop starts: Argon2id and a
        # passphrase prompt block.
        return asyncio.run(_run_remote(_client(args), args, args.remote))
    except RefgateError as exc:
        code = EXIT_NETWORK if exc.status >= 500 else EXIT_REFUSED
        return _fail(code, f"error: {exc.status} {exc.title}: {exc.detail}")
    except VerificationError as exc:
        return _fail(EXIT_VERIFY, f"verification failed: {exc}")
    except httpx.TransportError as exc:  # ServerUnreachable names the URL and what to check
        return _fail(EXIT_NETWORK, f"error: {exc}" if isinstance(exc, ServerUnreachable)
                     else f"error: cannot reach the server: {exc or type(exc).__name__}")
    except (UsageError, KeyFileError, PassphraseError, OutboxError, ValueError) as exc:
        return _fail(EXIT_USAGE, f"error: {exc}")
    except KeyboardInterrupt:
        return _fail(EXIT_INTERRUPTED, "interrupted")


if __name__ == "__main__":
    sys.exit(main())
