"""The SDK's typed results: frozen, slotted, built strictly, ``to_json`` gives the JSON back."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from app.client.errors import VerificationError
from app.client.results import Agency, InboxItem, ReferralRequest, Status
from refgate_client import OpenedReferral

AGENCY: dict[str, Any] = {
    "id": "0b6c0d1e-0000-4000-8000-000000000001", "name": "Eastside Legal Aid Clinic",
    "kind": "legal_aid", "status": "active",
    "keys": [{"kid": "k_enc", "use": "enc", "public_key": "A" * 43, "status": "current",
              "created_at": "2026-12-01T09:00:00Z"},
             {"kid": "k_old", "use": "enc", "public_key": "B" * 43, "status": "retired",
              "created_at": "2026-11-01T09:00:00Z"},
             {"kid": "k_sig", "use": "sig", "public_key": "C" * 43, "status": "current",
              "created_at": "2026-12-01T09:00:00Z"}],
}
ITEM: dict[str, Any] = {
    "referral_id": "5e0f0000-0000-4000-8000-000000000002", "sender_agency": "9a1d",
    "created_at": "2026-12-07T09:58:00Z", "version": 1, "withdrawn": False,
    "statuses": [{"recipient": AGENCY["id"], "status": "requested",
                  "updated_at": "2026-12-07T09:58:00Z", "reason": None, "note": None,
                  "signed_at": None, "signature": None}],
    "request": {"recipient": AGENCY["id"], "services": ["legal", "immigration_legal"],
                "urgency": "urgent", "case_ref": "c-77"},
}


def test_agency_entry_is_typed_and_round_trips() -> None:
    agency = Agency.from_json(AGENCY)
    assert agency.name == "Eastside Legal Aid Clinic"
    assert agency.current_kid("enc") == "k_enc"
    assert agency.current_kid("sig") == "k_sig"
    assert [k.status for k in agency.keys] == ["current", "retired", "current"]
    assert agency.to_json() == AGENCY


def test_inbox_item_is_typed_and_round_trips() -> None:
    item = InboxItem.from_json(ITEM)
    assert item.request == ReferralRequest(recipient=AGENCY["id"],
                                           services=("legal", "immigration_legal"),
                                           urgency="urgent", case_ref="c-77")
    assert item.statuses == (Status(recipient=AGENCY["id"], status="requested",
                                    updated_at="2026-12-07T09:58:00Z"),)
    assert item.statuses[0].verified is None
    assert item.to_json() == ITEM
    sent = InboxItem.from_json({**ITEM, "request": None})
    assert sent.request is None


@pytest.mark.parametrize("cls", [Agency, InboxItem, Status, ReferralRequest, OpenedReferral])
def test_results_are_frozen_slotted_dataclasses(cls: type) -> None:
    assert dataclasses.is_dataclass(cls)
    assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert "__slots__" in cls.__dict__
    assert cls.__doc__ is not None
    assert "Example" in cls.__doc__


def test_result_cannot_be_changed() -> None:
    item = InboxItem.from_json(ITEM)
    with pytest.raises(dataclasses.FrozenInstanceError):
        item.version = 2  # type: ignore[misc]


@pytest.mark.parametrize(("cls", "bad"), [
    (Agency, {**AGENCY, "name": None}),
    (Agency, {**AGENCY, "keys": "none"}),
    (Agency, [AGENCY]),
    (InboxItem, {**ITEM, "version": "1"}),
    (InboxItem, {**ITEM, "statuses": [{"recipient": "x"}]}),
    (InboxItem, {**ITEM, "request": {**ITEM["request"], "services": [1]}}),
    (Status, {"recipient": "x", "status": "accepted", "note": 5}),
])
def test_a_malformed_answer_is_a_verification_error(cls: Any, bad: object) -> None:
    with pytest.raises(VerificationError, match="malformed"):
        cls.from_json(bad)
