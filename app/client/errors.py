"""Errors the SDK and CLI raise on purpose.

::

    RefgateSDKError
    ├── RefgateError                    the server refused (problem+json): .status, .problem
    ├── ServerUnreachable               no answer from the server (also an httpx.TransportError)
    └── VerificationError               something served does not verify
        ├── KeyTransparencyError        an agency's key or status is not what the log states
        │   └── AgencyKeyError          the log states a suspended agency or another kid
        ├── PinMismatchError            the log key offered is not the pinned one
        ├── LogConsistencyError         a checkpoint does not extend the pinned one
        └── WitnessQuorumError          too few pinned witnesses cosigned the checkpoint

Every message says what happened and what to do about it: a caseworker
reads them at midnight.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

__all__ = [
    "AgencyKeyError",
    "KeyTransparencyError",
    "LogConsistencyError",
    "PinMismatchError",
    "RefgateError",
    "RefgateSDKError",
    "ServerUnreachable",
    "VerificationError",
    "WitnessQuorumError",
]

_REPORT = (
    "Do not send or trust anything from this server until it is explained: report it to the "
    "task-force administrator."
)


class RefgateSDKError(Exception):
    """Base class of every error the SDK raises on purpose."""


class RefgateError(RefgateSDKError):
    """The server answered with an error; ``problem`` is its RFC 9457 body."""

    def __init__(self, status: int, problem: Mapping[str, Any]) -> None:
        self.status = status
        self.problem = dict(problem)
        super().__init__(f"{status} {self.title}: {self.detail}")

    @property
    def title(self) -> str:
        return str(self.problem.get("title") or "error")

    @property
    def detail(self) -> str:
        return str(self.problem.get("detail") or self.problem.get("error_description") or "")

    @property
    def type(self) -> str | None:
        value = self.problem.get("type")
        return value if isinstance(value, str) else None


class ServerUnreachable(RefgateSDKError, httpx.TransportError):
    """The server could not be reached (connection refused, DNS, TLS, timeout).

    Also an ``httpx.TransportError``, so code that catches that keeps working;
    the message names the URL and what to check.
    """

    def __init__(self, base_url: str, cause: httpx.TransportError) -> None:
        reason = str(cause) or type(cause).__name__
        super().__init__(
            f"cannot reach the server at {base_url}: {reason}. Check the URL (refgate "
            "--server URL, or the server in the key file: refgate configure --server URL) "
            "and that the server is running (for a local one: ./dev serve)",
            request=getattr(cause, "_request", None),
        )
        self.base_url = base_url


class VerificationError(RefgateSDKError):
    """Something the server served does not verify."""


class KeyTransparencyError(VerificationError):
    """An agency's key is not the one the audit log shows."""


class AgencyKeyError(KeyTransparencyError):
    """The signed key directory refuses this use of an agency's key."""

    def __init__(self, agency: str, message: str) -> None:
        super().__init__(message)
        self.agency = agency


class PinMismatchError(VerificationError):
    """The log key the server offers (or signs with) is not the pinned one."""

    def __init__(self, expected: str, offered: str | None, pins: str) -> None:
        self.expected = expected
        self.offered = offered
        offer = (
            f"the server offers {offered}"
            if offered
            else "the server's checkpoint is not signed by it"
        )
        super().__init__(
            f"the audit log key pinned in {pins} is {expected}, but {offer}. Either this is "
            "not the task force's server (someone may be standing between you and it), or "
            "the log was reset (a demo reseeded with a new key). Compare the offered key with "
            "the one the task force published; only if they match, re-pin on purpose with "
            "`refgate configure --log-key KEY`. " + _REPORT
        )


class LogConsistencyError(VerificationError):
    """A checkpoint does not extend the newest one this client verified."""

    def __init__(self, message: str, pins: str) -> None:
        super().__init__(
            f"{message}. The server is showing this client a different audit log than before "
            f"(pinned in {pins}): a rollback or fork of the log, or a reset demo. "
            + _REPORT
            + " After a deliberate reset, re-pin with `refgate configure --log-key KEY`."
        )


class WitnessQuorumError(VerificationError):
    """The checkpoint lacks a quorum of cosignatures by the pinned witnesses."""
