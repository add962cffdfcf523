"""``refgate audit verify``: check the audit log from outside the server.

What a successful run proves, trusting only the log's verifier key:

1. The latest checkpoint is signed by that key (``open_checkpoint``).
2. It extends every checkpoint this verifier saw before (the one saved in the
   state file and/or a note given with ``--checkpoint-file``): a smaller size
   is a *rollback*, an equal size with another root a *fork*, and a larger one
   needs a consistency proof (RFC 9162 §2.1.4) that verifies.
3. With ``full``: the export (NDJSON, log order) holds every position from 0
   up to the checkpoint's size exactly once and in order; each event's leaf
   hash, recomputed from its RFC 8785 bytes, equals the served one; and the
   Merkle root of the first ``size`` recomputed leaves equals the signed root.
   When the root differs although every served leaf hash agreed with its event
   (both were rewritten), the first event that is not in the signed tree is
   located by bisection with consistency proofs against the signed root:
   ``O(log n)`` requests, each proving that a prefix of the events the
   verifier holds is the one that was signed.
4. With ``full``: the key events among the first ``size`` events, replayed
   (``app.crypto.keydir``), give exactly the key directory the checkpoint's
   ``directory`` line commits to; and no committed event is still outside the
   tree ``grace`` seconds after it was recorded (an event held out of the log
   is named by its ``event_id``).
5. With witness keys: at least ``quorum`` of those witnesses cosigned the
   checkpoint (C2SP tlog-cosignature v1), and the report names which did. A
   log that shows this verifier a tree other witnesses have not seen cannot
   meet the quorum.

The verifier key comes from ``log_key``, else the state file, else the server
(trust on first use, announced loudly). It is pinned in the state file; the
new checkpoint is saved there only when every check held, so a failed run never
moves the baseline. Every failure prints a ``FAIL:`` line naming what failed
and, where there is one, the log position (``at seq N``).
"""

from __future__ import annotations

import hmac
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol, TextIO

import httpx

from app.crypto import keydir, merkle
from app.crypto.canonical import CanonicalizationError, canonical_json
from app.crypto.checkpoint import Checkpoint, CheckpointError, open_checkpoint, parse_verifier_key
from app.crypto.cosignature import CosignatureError, verify_cosignatures
from app.crypto.encoding import EncodingError, b64_decode, b64_encode

__all__ = ["VerifyReport", "main_verify", "verify_log"]

STATE_VERSION = 1


class _HasHttp(Protocol):
    @property
    def http(self) -> httpx.AsyncClient: ...


@dataclass
class VerifyReport:
    """Outcome of one verification run; ``ok`` only if every check held."""

    failures: list[str] = field(default_factory=list)
    tree_size: int | None = None
    root: bytes | None = None
    events_checked: int = 0
    log_key: str | None = None
    key_trusted_on_first_use: bool = False
    state_saved: bool = False
    cosigned_by: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures and self.tree_size is not None


class _Failed(Exception):
    """A check failed in a way that makes the remaining checks meaningless."""


class _Run:
    def __init__(
        self, http: httpx.AsyncClient, out: TextIO, report: VerifyReport, grace: float = 300.0
    ) -> None:
        self.http = http
        self.out = out
        self.report = report
        self.grace = grace
        # events recorded after this (the verifier's own reads) are never "held out"
        self.started = datetime.now(UTC)

    def say(self, line: str) -> None:
        self.out.write(line + "\n")

    def fail(self, what: str, seq: int | None = None) -> None:
        line = f"FAIL: {what}" + (f" at seq {seq}" if seq is not None else "")
        self.report.failures.append(line)
        self.say(line)

    def abort(self, what: str, seq: int | None = None) -> _Failed:
        self.fail(what, seq)
        return _Failed(what)

    async def get(self, path: str, params: dict[str, Any] | None = None) -> httpx.Response:
        try:
            r = await self.http.get(path, params=params)
        except httpx.HTTPError as exc:
            raise self.abort(f"could not fetch {path}: {type(exc).__name__}: {exc}") from None
        if r.status_code != 200:
            raise self.abort(f"{path} answered {r.status_code}: {_problem_detail(r)}")
        return r

    async def proof_hashes(self, path: str, params: dict[str, Any]) -> list[bytes]:
        r = await self.get(path, params)
        try:
            return [b64_decode(h, length=merkle.HASH_SIZE) for h in r.json()["hashes"]]
        except (ValueError, KeyError, TypeError, EncodingError):
            raise self.abort(f"{path} answered a malformed proof") from None


def _problem_detail(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return r.text[:200]
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return str(body["detail"])
    return r.text[:200]


# ----------------------------------------------------------------- state file


@dataclass(frozen=True)
class _State:
    log_key: str | None
    checkpoint: str | None


def _load_state(path: Path) -> _State:
    if not path.exists():
        return _State(None, None)
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("state file is not a JSON object")
    key, note = data.get("log_key"), data.get("checkpoint")
    if not (key is None or isinstance(key, str)) or not (note is None or isinstance(note, str)):
        raise ValueError("state file members log_key and checkpoint must be strings")
    return _State(key, note)


def _read_note(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _save_state(path: Path, log_key: str, note: str) -> None:
    """Write atomically: a crash leaves either the old state or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"version": STATE_VERSION, "log_key": log_key, "checkpoint": note}, indent=2)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(body + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------ the checks


async def _resolve_key(run: _Run, state: _State, log_key: str | None) -> str:
    if log_key is not None:
        key = log_key.strip()
        if state.log_key is not None and state.log_key != key:
            raise run.abort(
                f"the given log key {key} differs from the one pinned in the state file "
                f"({state.log_key}); refusing to continue (remove the state file to re-pin)"
            )
    elif state.log_key is not None:
        key = state.log_key
    else:
        key = (await run.get("/v1/audit/log-key")).text.strip()
        run.report.key_trusted_on_first_use = True
        bar = "!" * 72
        run.say(bar)
        run.say("WARNING: no log key was given or pinned; trusting the server's key on first use:")
        run.say(f"WARNING:   {key}")
        run.say("WARNING: compare it with the key published out of band; it is pinned from now on.")
        run.say(bar)
    try:
        parse_verifier_key(key)
    except CheckpointError as exc:
        raise run.abort(f"log key is not a valid verifier key: {exc}") from None
    run.report.log_key = key
    return key


async def _check_extends(run: _Run, label: str, old: Checkpoint, new: Checkpoint) -> None:
    if old.size > new.size:
        run.fail(
            f"rollback: the server's checkpoint (size {new.size}) is older than the {label} "
            f"(size {old.size}); the log lost entries from",
            new.size,
        )
        return
    if old.size == new.size:
        if not hmac.compare_digest(old.root, new.root):
            run.fail(
                f"fork: the {label} and the server's checkpoint both have size {new.size} "
                f"but different roots ({b64_encode(old.root)} vs {b64_encode(new.root)})"
            )
        else:
            run.say(f"ok: checkpoint equals the {label} (size {new.size})")
        return
    hashes = await run.proof_hashes(
        "/v1/audit/proof/consistency", {"first": old.size, "second": new.size}
    )
    if merkle.verify_consistency(old.size, new.size, hashes, old.root, new.root):
        run.say(f"ok: checkpoint (size {new.size}) extends the {label} (size {old.size})")
    else:
        run.fail(
            f"consistency: the server's checkpoint (size {new.size}) does not extend the "
            f"{label} (size {old.size}); the log was rewritten before",
            old.size,
        )


class _LeafStore:
    """Leaf hashes of the first ``size`` positions, spilled to disk past 32 MiB.

    Only read back to bisect a root mismatch, so memory stays bounded however
    long the log is.
    """

    def __init__(self) -> None:
        self._file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=32 * 1024 * 1024)
        self.count = 0

    def append(self, leaf: bytes) -> None:
        self._file.write(leaf)
        self.count += 1

    def prefix_root(self, k: int) -> bytes:
        builder = merkle.RootBuilder()
        self._file.seek(0)
        remaining = k
        while remaining:
            chunk = self._file.read(min(remaining, 4096) * merkle.HASH_SIZE)
            for i in range(0, len(chunk), merkle.HASH_SIZE):
                builder.append(chunk[i : i + merkle.HASH_SIZE])
            remaining -= len(chunk) // merkle.HASH_SIZE
        self._file.seek(0, os.SEEK_END)
        return builder.root()

    def close(self) -> None:
        self._file.close()


async def _bisect(run: _Run, cp: Checkpoint, leaves: _LeafStore) -> int:
    """Largest ``k`` whose first ``k`` leaves provably are the signed tree's prefix.

    ``P(k)``: the server's consistency proof links the root of our first ``k``
    leaves to the signed root. ``P(0)`` holds by definition and ``P(size)`` is
    known to fail, so the answer ``k`` is the first position not in the signed
    tree (or, if the server cannot prove an honest prefix, the first it cannot).
    """
    lo, hi = 0, cp.size
    while hi - lo > 1:
        mid = (lo + hi) // 2
        hashes = await run.proof_hashes(
            "/v1/audit/proof/consistency", {"first": mid, "second": cp.size}
        )
        if merkle.verify_consistency(mid, cp.size, hashes, leaves.prefix_root(mid), cp.root):
            lo = mid
        else:
            hi = mid
    return lo


def _held_out(run: _Run, event: Any, now: datetime) -> None:
    """FAIL for a committed event still outside the tree after the grace period."""
    if not isinstance(event, dict):
        return
    try:
        ts = datetime.strptime(str(event.get("ts")), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        run.fail(f"event {event.get('event_id')} outside the tree has no valid time")
        return
    age = (now - ts).total_seconds()
    if age >= run.grace and ts < run.started:
        run.fail(
            f"event {event.get('event_id')} ({event.get('action')} by "
            f"{event.get('actor_agency') or event.get('actor')}, outcome "
            f"{event.get('outcome')}, recorded {event.get('ts')}) is committed but still "
            f"outside the tree after {age:.0f}s (grace {run.grace:.0f}s): the log is being "
            "held back or the event was taken out of the sequencing queue"
        )


def _check_directory(run: _Run, cp: Checkpoint, state: dict[str, dict[str, Any]]) -> None:
    if cp.directory is None:
        run.fail(f"the checkpoint of size {cp.size} commits to no key directory")
        return
    size, root = keydir.root_of(keydir.sorted_leaves(state))
    if size == cp.directory[0] and hmac.compare_digest(root, cp.directory[1]):
        run.say(f"ok: the key events replayed give the signed key directory ({size} agencies)")
        return
    run.fail(
        f"key directory: the checkpoint of size {cp.size} commits to a directory of "
        f"{cp.directory[0]} agencies, root {b64_encode(cp.directory[1])}, but its key events "
        f"give {size} agencies, root {b64_encode(root)}: an agency's keys or status were "
        "changed outside the log, or a key event was left out"
    )


@dataclass
class _Scan:
    """What reading the export gathered, position by position, for the verdict."""

    cp: Checkpoint
    leaves: _LeafStore
    builder: merkle.RootBuilder = field(default_factory=merkle.RootBuilder)
    # the key directory replayed from the key events of the first ``cp.size`` positions
    directory: dict[str, dict[str, Any]] = field(default_factory=dict)
    root_at_size: bytes | None = None
    expected: int = 0
    first_leaf_mismatch: int | None = None
    order_broken: bool = False


async def _check_events(run: _Run, cp: Checkpoint) -> None:
    """Full check (module docstring, 3 and 4): read the whole export, then judge the tree."""
    scan = _Scan(cp=cp, leaves=_LeafStore())
    if cp.size == 0:
        scan.root_at_size = merkle.EMPTY_ROOT
    try:
        await _read_export(run, scan)
        run.report.events_checked = scan.expected
        if not scan.order_broken:
            await _judge_tree(run, scan)
    except httpx.HTTPError as exc:
        run.fail(f"export failed: {type(exc).__name__}: {exc}", scan.expected)
    finally:
        scan.leaves.close()


async def _read_export(run: _Run, scan: _Scan) -> None:
    """Stream the NDJSON export, checking and recording each position in turn; stops at
    the first gap or out-of-order position (``order_broken``)."""
    async with run.http.stream("GET", "/v1/audit/export", params={"format": "ndjson"}) as r:
        if r.status_code != 200:
            await r.aread()
            raise run.abort(f"/v1/audit/export answered {r.status_code}: {_problem_detail(r)}")
        async for line in r.aiter_lines():
            if not line.strip():
                continue
            seq, event, served = _log_item(run, line, scan.expected)
            if seq is None:  # not sequenced yet: no position to check, but not for long
                _held_out(run, event, run.started)
                continue
            if not _in_order(run, scan, seq):
                scan.order_broken = True
                return
            _record(run, scan, seq, event, served)
            scan.expected += 1


def _log_item(run: _Run, line: str, expected: int) -> tuple[int | None, Any, Any]:
    """(seq, event, served leaf hash) of one export line; seq is None for an event the
    sequencer has not placed yet."""
    try:
        item = json.loads(line)
        seq, event, served = item["seq"], item["event"], item["leaf_hash"]
    except (ValueError, KeyError, TypeError):
        raise run.abort("export line is not a log item", expected) from None
    if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool)):
        raise run.abort("export line has a non-integer seq", expected)
    return seq, event, served


def _in_order(run: _Run, scan: _Scan, seq: int) -> bool:
    """Whether ``seq`` is the next position; a gap or a step back FAILs."""
    expected = scan.expected
    if seq == expected:
        return True
    if seq > expected:
        run.fail(f"gap in the log: seq {expected} missing (next served is {seq})", expected)
    else:
        run.fail(f"log out of order: seq {seq} served after seq {expected - 1}", seq)
    return False


def _record(run: _Run, scan: _Scan, seq: int, event: Any, served: Any) -> None:
    """Recompute the leaf hash of the event at ``seq``, compare it with the served one
    (the first mismatch FAILs) and, inside the checkpoint, add it to the tree and replay
    it into the key directory."""
    try:
        leaf = merkle.leaf_hash(canonical_json(event))
    except CanonicalizationError as exc:
        raise run.abort(f"event has no canonical form ({exc})", seq) from None
    try:
        served_leaf = b64_decode(served, length=merkle.HASH_SIZE)
    except (EncodingError, TypeError):
        served_leaf = b""
    if not hmac.compare_digest(served_leaf, leaf) and scan.first_leaf_mismatch is None:
        scan.first_leaf_mismatch = seq
        run.fail("event does not match its served leaf hash (event rewritten)", seq)
    if seq < scan.cp.size:
        scan.builder.append(leaf)
        scan.leaves.append(leaf)
        keydir.apply_event(scan.directory, seq, event)
        if scan.builder.size == scan.cp.size:
            scan.root_at_size = scan.builder.root()


async def _judge_tree(run: _Run, scan: _Scan) -> None:
    """After a complete, ordered export: every position present, the rebuilt root the
    signed one (then the key directory), else name the first event not in the tree."""
    cp = scan.cp
    if scan.expected < cp.size:
        run.fail(
            f"missing events: the checkpoint covers {cp.size} events but the export "
            f"serves {scan.expected}; first missing",
            scan.expected,
        )
        return
    if scan.root_at_size is not None and hmac.compare_digest(scan.root_at_size, cp.root):
        run.say(f"ok: {cp.size} events rebuild the signed root; {scan.expected} events checked")
        _check_directory(run, cp, scan.directory)
        return
    if scan.first_leaf_mismatch is not None:
        run.fail(f"root of the first {cp.size} events differs from the signed root")
        return
    bad = await _bisect(run, cp, scan.leaves)
    run.fail(
        "event is not the one the signed tree holds (event and leaf hash both rewritten)",
        bad,
    )


def _check_witnesses(run: _Run, note: str, witnesses: Sequence[str], quorum: int) -> None:
    try:
        names = verify_cosignatures(note, witnesses, quorum)
    except CosignatureError as exc:
        raise run.abort(f"witness cosignatures: {exc}") from None
    run.report.cosigned_by = names
    run.say(
        f"ok: cosigned by {len(names)} of {len(set(witnesses))} trusted witness(es) "
        f"(quorum {quorum}): {', '.join(names) if names else 'none'}"
    )


async def _run_checks(
    run: _Run,
    *,
    state_file: Path,
    checkpoint_file: Path | None,
    full: bool,
    log_key: str | None,
    witnesses: Sequence[str],
    quorum: int,
) -> None:
    try:
        state = _load_state(state_file)
    except (OSError, ValueError) as exc:
        raise run.abort(f"cannot read state file {state_file}: {exc}") from None
    key = await _resolve_key(run, state, log_key)
    if not 0 <= quorum <= len(set(witnesses)):
        raise run.abort(
            f"a quorum of {quorum} needs at least {quorum} distinct --witness keys "
            f"({len(set(witnesses))} given)"
        )

    params = {"cosigned": quorum} if quorum else None
    note = (await run.get("/v1/audit/checkpoint", params)).text
    try:
        cp = open_checkpoint(note, key)
    except CheckpointError as exc:
        raise run.abort(f"checkpoint signature: {exc}") from None
    run.report.tree_size, run.report.root = cp.size, cp.root
    run.say(f"ok: checkpoint signed by {key.split('+', 1)[0]}: size {cp.size}, "
            f"root {b64_encode(cp.root)}")
    if witnesses:
        _check_witnesses(run, note, witnesses, quorum)

    previous: list[tuple[str, str]] = []
    if state.checkpoint is not None:
        previous.append((f"checkpoint saved in {state_file}", state.checkpoint))
    if checkpoint_file is not None:
        try:
            previous.append((f"checkpoint in {checkpoint_file}", _read_note(checkpoint_file)))
        except OSError as exc:
            raise run.abort(f"cannot read {checkpoint_file}: {exc}") from None
    for label, old_note in previous:
        try:
            old = open_checkpoint(old_note, key)
        except CheckpointError as exc:
            run.fail(f"{label} does not verify with the log key: {exc}")
            continue
        await _check_extends(run, label, old, cp)

    if full:
        await _check_events(run, cp)

    if not run.report.failures:
        _save_state(state_file, key, cp.note)
        run.report.state_saved = True


async def verify_log(
    http: httpx.AsyncClient,
    *,
    state_file: Path,
    checkpoint_file: Path | None = None,
    full: bool = False,
    log_key: str | None = None,
    witnesses: Sequence[str] = (),
    quorum: int = 0,
    out: TextIO,
    grace: float = 300.0,
) -> VerifyReport:
    """Verify the audit log served at ``http`` (see the module docstring).

    ``http`` must have its ``base_url`` set to the gateway and authenticate
    its requests (an ``Authorization`` header, or an ``httpx.Auth`` that sets
    one). Checkpoints and proofs are open to any caller with an audit scope;
    ``full`` needs the auditor role, since an agency-scoped caller's export
    holds only its own events, which the full check reports as gaps. Never
    raises for a failed check: the report's ``failures`` list the ``FAIL:``
    lines that were printed. With ``witnesses`` (their verifier keys) it reports
    which cosigned the checkpoint and fails unless at least ``quorum`` did; the
    checkpoint is then fetched with ``?cosigned=quorum``.
    """
    report = VerifyReport()
    run = _Run(http, out, report, grace)
    try:
        await _run_checks(
            run, state_file=state_file, checkpoint_file=checkpoint_file, full=full,
            log_key=log_key, witnesses=witnesses, quorum=quorum,
        )
    except _Failed:
        pass
    if report.ok and report.root is not None:
        run.say(
            f"OK: audit log verified: tree size {report.tree_size}, root "
            f"{b64_encode(report.root)}, "
            + (f"{report.events_checked} events checked" if full else "events not checked "
               "(use --full)")
            + f"; checkpoint saved to {state_file}"
        )
    else:
        run.say(f"audit log verification FAILED ({len(report.failures)} problem(s))")
    return report


async def main_verify(
    client: _HasHttp,
    *,
    state_file: Path,
    checkpoint_file: Path | None,
    full: bool,
    log_key: str | None,
    witnesses: Sequence[str] = (),
    quorum: int = 0,
    out: TextIO,
    grace: float = 300.0,
) -> int:
    """Entry point of ``refgate audit verify``; returns the process exit code.

    Contract with the SDK: ``client.http`` is the SDK's authenticated
    ``httpx.AsyncClient`` (``base_url`` = the gateway; a bearer token set as a
    header or refreshed by an ``httpx.Auth``). Exit code 0 only if every check
    held, 1 otherwise.
    """
    report = await verify_log(
        client.http, state_file=state_file, checkpoint_file=checkpoint_file, full=full,
        log_key=log_key, witnesses=witnesses, quorum=quorum, out=out, grace=grace,
    )
    return 0 if report.ok else 1
