"""Request and response schemas of the service directory (DESIGN.md, "Service directory
and capacity"). Categories, populations, accepting and units come from ``app.vocab``."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    StrictInt,
    StrictStr,
    model_validator,
)
from pydantic_core import PydanticCustomError

from app import langtags
from app.models.schemas import Model, Timestamp
from app.vocab import Accepting, CapacityUnit, Population, Service

ADDRESS_REFUSED = (
    "a service must not carry an address: confidential sites' street addresses never go in "
    "the directory. Say where intake happens in general terms (service_area, intake), and "
    "send where to bring her in an encrypted field or a status note"
)
# members that would put a site's location in the directory, whatever they are called
_ADDRESS_MEMBERS = ("address", "street_address", "physical_address", "postal_address")


def _unique(values: list[Any]) -> list[Any]:
    if len(set(values)) != len(values):
        raise ValueError("values must be unique")
    return values


def _language(tag: str) -> str:
    try:
        return langtags.normalize(tag)
    except langtags.LanguageTagError as exc:
        raise ValueError(str(exc)) from None


LanguageTag = Annotated[StrictStr, Field(min_length=2, max_length=langtags.MAX_LENGTH),
                        AfterValidator(_language)]
ShortText = Annotated[StrictStr, Field(max_length=1000)]
Available = Annotated[StrictInt, Field(ge=0, le=1_000_000)]


class _NoAddress(Model):
    """Refuses an ``address`` member with the reason, before the generic unknown-member error."""

    @model_validator(mode="before")
    @classmethod
    def _refuse_address(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(m in data for m in _ADDRESS_MEMBERS):
            raise PydanticCustomError("address_refused", ADDRESS_REFUSED)
        return data


class CapacityIn(Model):
    available: Available | None = Field(
        None, description="units free now; null when the agency does not count them"
    )
    unit: CapacityUnit


class ServiceIn(_NoAddress):
    """A service as its agency publishes it (``POST``/``PUT``): no id, agency or times."""

    name: StrictStr = Field(min_length=1, max_length=200)
    description: StrictStr = Field("", max_length=4000)
    categories: Annotated[list[Service], AfterValidator(_unique)] = Field(
        min_length=1, max_length=len(Service)
    )
    languages: Annotated[list[LanguageTag], AfterValidator(_unique)] = Field(
        default_factory=list, max_length=32, description="BCP 47 language tags"
    )
    populations: Annotated[list[Population], AfterValidator(_unique)] = Field(
        default_factory=list, max_length=len(Population)
    )
    eligibility: ShortText | None = None
    service_area: ShortText | None = None
    hours: ShortText | None = None
    intake: ShortText | None = Field(
        None, description="how a professional reaches intake (never a confidential address)"
    )
    accepting: Accepting
    capacity: CapacityIn = Field(
        default_factory=lambda: CapacityIn(available=None, unit=CapacityUnit.SLOTS)
    )


class CapacityPatch(_NoAddress):
    """``PATCH …/capacity``: any of the three members; ``available`` may be null."""

    accepting: Accepting | None = None
    available: Available | None = None
    unit: CapacityUnit | None = None

    @model_validator(mode="after")
    def _something(self) -> CapacityPatch:
        if not self.model_fields_set:
            raise ValueError("give at least one of accepting, available, unit")
        if "accepting" in self.model_fields_set and self.accepting is None:
            raise ValueError("accepting must be yes, waitlist or no")
        if "unit" in self.model_fields_set and self.unit is None:
            raise ValueError("unit must be beds, slots or appointments")
        return self


class CapacityOut(BaseModel):
    available: int | None
    unit: CapacityUnit
    updated_at: Timestamp
    updated_by: str | None = Field(
        description="the API client that set it (null when seeded by the server)"
    )


class ServiceOut(BaseModel):
    id: str
    agency: str
    agency_name: str
    name: str
    description: str
    categories: list[Service]
    languages: list[str]
    populations: list[Population]
    eligibility: str | None
    service_area: str | None
    hours: str | None
    intake: str | None
    accepting: Accepting
    capacity: CapacityOut


class ServiceList(BaseModel):
    items: list[ServiceOut]
    next_cursor: str | None = None


class HsdsExport(BaseModel):
    """The directory as Open Referral HSDS 3 objects (``organizations`` with their
    ``services``), for 211 and resource-directory systems."""

    hsds_version: str
    generated_at: Timestamp
    organizations: list[dict[str, Any]]
