"""The shared vocabulary of the wire format, one StrEnum per value set.

Pure Python with no dependencies: the server, the SDK/CLI and the console's
generated types all take their choices from here, so a value added or removed
here changes every place that accepts it (DESIGN.md, "Envelope v2" and
"Service directory and capacity").
"""

from __future__ import annotations

from enum import StrEnum


class Service(StrEnum):
    """The service vocabulary: directory categories and the services a request asks for."""

    SHELTER = "shelter"
    HOUSING = "housing"
    LEGAL = "legal"
    IMMIGRATION_LEGAL = "immigration_legal"
    MEDICAL = "medical"
    MENTAL_HEALTH = "mental_health"
    SUBSTANCE_USE = "substance_use"
    CASE_MANAGEMENT = "case_management"
    INTERPRETATION = "interpretation"
    EMPLOYMENT = "employment"
    EDUCATION = "education"
    FINANCIAL = "financial"
    SAFETY_PLANNING = "safety_planning"
    INVESTIGATION = "investigation"
    VICTIM_ADVOCACY = "victim_advocacy"
    BASIC_NEEDS = "basic_needs"
    CHILDCARE = "childcare"
    TRANSPORTATION = "transportation"


REASON_EXAMPLES = (
    "no_capacity", "not_eligible", "out_of_area", "client_declined", "unable_to_contact",
    "duplicate", "referred_elsewhere",
)
"""Reason codes in common use for ``rejected``, ``failed`` and ``on-hold`` (any code of
lower-case letters, digits, ``.``, ``_`` or ``-``, 1 to 64 characters, is accepted)."""


class Urgency(StrEnum):
    ROUTINE = "routine"
    URGENT = "urgent"
    EMERGENCY = "emergency"


class Purpose(StrEnum):
    """Why a recipient may read a field (a grant's ``purpose``)."""

    SERVICE_PROVISION = "service_provision"
    INVESTIGATION = "investigation"
    PROSECUTION = "prosecution"
    SAFETY_PLANNING = "safety_planning"


SENDER_PURPOSE = "sender"
"""The ``purpose`` of the sender's own copies of the field keys."""


class Population(StrEnum):
    """Who a service takes (directory ``populations``)."""

    ADULTS = "adults"
    MINORS = "minors"
    WOMEN = "women"
    MEN = "men"
    LGBTQ = "lgbtq"
    FAMILIES = "families"
    FOREIGN_NATIONALS = "foreign_nationals"


class Accepting(StrEnum):
    YES = "yes"
    WAITLIST = "waitlist"
    NO = "no"


class CapacityUnit(StrEnum):
    BEDS = "beds"
    SLOTS = "slots"
    APPOINTMENTS = "appointments"
