"""The outbox: sealed referrals saved before they are sent, removed once acknowledged.

``refgate send`` seals a referral (``RefgateClient.seal_referral``: the client
chooses the referral id), saves it here, prints the id, and only then posts
it. If the send is interrupted (Ctrl-C, a crash, a lost network) the saved
envelope stays, and ``refgate send --retry <referral id>`` posts exactly the
same bytes again with the same ``Idempotency-Key``: the server answers like
the first time, so there is never a second referral.

The outbox is a directory beside the key file, ``<key file>.outbox/`` (mode
0700), holding one ``<referral id>.json`` per unsent referral (mode 0600,
written atomically). A sealed envelope holds only ciphertext and salted
disclosures, what the server itself stores, but it is still kept private.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any, TextIO

from app.client.sdk import RefgateClient, RefgateError, SealedReferral

OUTBOX_SUFFIX = ".outbox"


class OutboxError(ValueError):
    """An outbox entry is missing or unreadable (a usage error: exit 1)."""


def outbox_path(key_file: Path) -> Path:
    """Where the outbox of a key file lives: beside it, ``<key file>.outbox/``."""
    return key_file.with_name(key_file.name + OUTBOX_SUFFIX)


def checked_referral_id(referral_id: str) -> str:
    try:
        return str(uuid.UUID(referral_id))
    except ValueError:
        raise OutboxError(
            f"{referral_id!r} is not a referral id (a UUID, as `refgate send` printed it)"
        ) from None


class Outbox:
    """The unsent referrals of one key file."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    @classmethod
    def of_key_file(cls, key_file: Path) -> Outbox:
        return cls(outbox_path(key_file))

    def entry(self, referral_id: str) -> Path:
        return self.directory / f"{checked_referral_id(referral_id)}.json"

    def save(self, sealed: SealedReferral) -> Path:
        """Write ``sealed`` (mode 0600, atomically) before it is posted."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        path = self.entry(sealed.referral_id)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".", suffix=".tmp")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(sealed.as_json(), fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def load(self, referral_id: str) -> SealedReferral:
        """The saved envelope of ``referral_id``; :class:`OutboxError` when there is none."""
        path = self.entry(referral_id)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            sealed = SealedReferral.from_json(data)
        except FileNotFoundError:
            waiting = ", ".join(self.pending()) or "none"
            raise OutboxError(
                f"no unsent referral {referral_id} in {self.directory} (it was acknowledged "
                f"and removed, or sent with another key file); unsent referrals: {waiting}. "
                "`refgate inbox --sent` shows what the server has"
            ) from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise OutboxError(f"cannot read {path}: {exc}") from None
        if sealed.referral_id != checked_referral_id(referral_id):
            raise OutboxError(f"{path} holds referral {sealed.referral_id}, not {referral_id}")
        return sealed

    def remove(self, referral_id: str) -> None:
        """Forget ``referral_id`` once the server acknowledged it."""
        self.entry(referral_id).unlink(missing_ok=True)

    def pending(self) -> list[str]:
        """Referral ids saved and not yet acknowledged, oldest first."""
        if not self.directory.is_dir():
            return []
        files = sorted(self.directory.glob("*.json"), key=lambda p: p.stat().st_mtime)
        return [p.stem for p in files]


KEEP_ON = frozenset({401, 408, 429})
"""Refusals worth a retry of the same envelope (expired token, timeout, rate
limit); any other 4xx answer is final, and the entry is removed."""


def retry_hint(referral_id: str) -> str:
    return (f"The envelope is saved; to send it again (never a duplicate): "
            f"refgate send --retry {referral_id}")


async def post_saved(rc: RefgateClient, outbox: Outbox, sealed: SealedReferral,
                     note: TextIO) -> dict[str, Any]:
    """Post a saved envelope; remove it once the server acknowledged it (or refused it
    for good). On anything else (Ctrl-C, network, 5xx) it stays, and ``note`` is told
    how to retry."""
    try:
        summary = await rc.post_referral(sealed)
    except RefgateError as exc:
        if exc.status < 500 and exc.status not in KEEP_ON:
            outbox.remove(sealed.referral_id)
            note.write(f"referral {sealed.referral_id} was refused; removed from the outbox\n")
        else:
            note.write(f"referral {sealed.referral_id} was not acknowledged. "
                       f"{retry_hint(sealed.referral_id)}\n")
        raise
    except BaseException:
        # Ctrl-C (CancelledError inside the event loop), a network failure, a crash:
        # the request may or may not have reached the server.
        note.write(f"\nreferral {sealed.referral_id} may or may not have reached the server. "
                   f"{retry_hint(sealed.referral_id)}\n")
        note.flush()
        raise
    outbox.remove(sealed.referral_id)
    return summary
