"""refgate's Python SDK: ``from refgate_client import RefgateClient``.

Installed alone with ``pip install refgate`` (the gateway's own dependencies
are the ``server`` extra). Everything here is re-exported from
``app.client`` and ``app.crypto``, which import nothing of the server::

    import asyncio
    from pathlib import Path

    from refgate_client import RefgateClient

    async def main() -> None:
        async with RefgateClient.from_key_file(Path("shelter.key.json")) as rc:
            legal = await rc.resolve_agency("Eastside Legal")
            sent = await rc.send_referral(
                {"full_name": "Maria Example"},
                {"full_name": {legal: "service_provision"}},
                {legal: {"services": ["legal"], "urgency": "urgent"}},
            )
            print(sent["referral_id"])

    asyncio.run(main())

See ``RefgateClient``'s docstrings for every call, and the README's
"For integrators" section.
"""

from __future__ import annotations

from app import __version__
from app.client.directory import AgencyNotFound, AmbiguousAgency
from app.client.errors import (
    AgencyKeyError,
    KeyTransparencyError,
    LogConsistencyError,
    PinMismatchError,
    RefgateSDKError,
    ServerUnreachable,
    VerificationError,
    WitnessQuorumError,
)
from app.client.keyfile import KeyFile
from app.client.results import Agency, AgencyKey, InboxItem, Page, ReferralRequest, Status
from app.client.sdk import (
    OpenedReferral,
    RefgateClient,
    RefgateError,
    SealedReferral,
    idempotency_key_for,
)
from app.client.transparency import Pins
from app.client.webhook_verify import WebhookVerificationError, verify_webhook

__all__ = [
    "Agency",
    "AgencyKey",
    "AgencyKeyError",
    "AgencyNotFound",
    "AmbiguousAgency",
    "KeyFile",
    "InboxItem",
    "KeyTransparencyError",
    "LogConsistencyError",
    "OpenedReferral",
    "Page",
    "PinMismatchError",
    "Pins",
    "ReferralRequest",
    "RefgateClient",
    "RefgateError",
    "RefgateSDKError",
    "SealedReferral",
    "ServerUnreachable",
    "Status",
    "VerificationError",
    "WebhookVerificationError",
    "WitnessQuorumError",
    "__version__",
    "idempotency_key_for",
    "verify_webhook",
]
