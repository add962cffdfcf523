"""Finding services: each filter, combined filters, order, cursor paging, statement budget."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from app.config import Settings
from app.db import create_engine, sessionmaker
from app.identity import Principal, Role
from app.models.directory_schemas import CapacityIn, ServiceIn
from app.models.tables import Agency
from app.services import directory
from app.vocab import Accepting, CapacityUnit, Population, Service
from tests.directory import find, publish, service
from tests.hardening import assert_problem
from tests.taskforce import SYSTEM, TaskForce
from tests.test_statement_budget import count_statements


async def _seed(client: httpx.AsyncClient, tf: TaskForce) -> dict[str, str]:
    """A small directory; the ids by nickname."""
    specs = {
        "beds_es": ("shelter", service(name="Harbor beds", languages=["en", "es-MX"])),
        "beds_full": ("shelter", service(
            name="Family rooms", populations=["families"], accepting="no",
            capacity={"available": 0, "unit": "beds"}, languages=["en"],
        )),
        "tvisa": ("legal", service(
            name="T-visa clinic", description="Immigration relief: T and U visas, 100% free",
            categories=["immigration_legal", "legal"], languages=["es", "fa-AF"],
            populations=["foreign_nationals", "adults"], accepting="waitlist",
            capacity={"available": None, "unit": "appointments"},
        )),
        "investigation": ("police", service(
            name="Trafficking investigations", description="Detectives of the unit",
            categories=["investigation", "safety_planning"], languages=["en"],
            populations=["adults", "minors"], capacity={"available": None, "unit": "slots"},
        )),
        "clinic": ("ngo", service(
            name="Walk-in clinic", description="Medical care_and screening",
            categories=["medical"], languages=["zh-Hant-TW"], populations=["women"],
            capacity={"available": 5, "unit": "appointments"},
        )),
    }
    ids = {}
    for nick, (member, body) in specs.items():
        ids[nick] = (await publish(client, tf, member, body))["id"]
    return ids


def _nicks(found: list[dict[str, Any]], ids: dict[str, str]) -> list[str]:
    by_id = {v: k for k, v in ids.items()}
    return [by_id[s["id"]] for s in found]


async def test_each_filter_and_their_combinations(
    client: httpx.AsyncClient, tf: TaskForce
) -> None:
    ids = await _seed(client, tf)
    cases: list[tuple[dict[str, str], set[str]]] = [
        ({}, set(ids)),
        ({"category": "shelter"}, {"beds_es", "beds_full"}),
        ({"category": "legal"}, {"tvisa"}),
        ({"category": "investigation"}, {"investigation"}),
        ({"category": "housing"}, set()),
        ({"population": "women"}, {"beds_es", "clinic"}),
        ({"population": "minors"}, {"investigation"}),
        ({"accepting": "yes"}, {"beds_es", "investigation", "clinic"}),
        ({"accepting": "waitlist"}, {"tvisa"}),
        ({"accepting": "no"}, {"beds_full"}),
        ({"language": "es"}, {"beds_es", "tvisa"}),  # es matches es-MX (RFC 4647)
        ({"language": "ES-mx"}, {"beds_es"}),
        ({"language": "es-ES"}, set()),
        ({"language": "fa"}, {"tvisa"}),
        ({"language": "zh-Hant"}, {"clinic"}),
        ({"language": "zh"}, {"clinic"}),
        ({"q": "VISA"}, {"tvisa"}),
        ({"q": "100%"}, {"tvisa"}),  # a literal %, not a wildcard
        ({"q": "0%"}, {"tvisa"}),
        ({"q": "%"}, {"tvisa"}),
        ({"q": "care_and"}, {"clinic"}),
        ({"q": "care and"}, set()),  # _ is literal too
        ({"category": "shelter", "accepting": "yes"}, {"beds_es"}),
        ({"category": "shelter", "language": "es", "population": "women", "accepting": "yes"},
         {"beds_es"}),
        ({"category": "shelter", "population": "families", "accepting": "yes"}, set()),
        ({"language": "es", "population": "foreign_nationals", "q": "clinic"}, {"tvisa"}),
        ({"category": "", "language": "", "population": "", "accepting": "", "q": "",
          "cursor": ""}, set(ids)),  # empty parameters are absent ones
    ]
    for params, expected in cases:
        assert set(_nicks(await find(client, tf, **params), ids)) == expected, params


async def test_accepting_first_then_freshest_capacity(
    client: httpx.AsyncClient, tf: TaskForce
) -> None:
    ids = await _seed(client, tf)
    order = _nicks(await find(client, tf), ids)
    assert order == ["clinic", "investigation", "beds_es", "tvisa", "beds_full"]
    r = await client.patch(
        f"/v1/agencies/{tf['shelter'].agency_id}/services/{ids['beds_es']}/capacity",
        json={"available": 1}, headers=await tf.headers("shelter"),
    )
    assert r.status_code == 200, r.text
    assert _nicks(await find(client, tf), ids)[0] == "beds_es"
    r = await client.patch(
        f"/v1/agencies/{tf['shelter'].agency_id}/services/{ids['beds_full']}/capacity",
        json={"accepting": "yes", "available": 2}, headers=await tf.headers("shelter"),
    )
    assert _nicks(await find(client, tf), ids)[:2] == ["beds_full", "beds_es"]


async def test_bad_filters_and_cursors_are_4xx(client: httpx.AsyncClient, tf: TaskForce) -> None:
    headers = await tf.headers("ngo")
    for query, status in (
        ("category=spa", 422), ("population=all", 422), ("accepting=maybe", 422),
        ("language=e", 422), ("language=en_US", 422), ("language=" + "a" * 64, 422),
        ("q=" + "x" * 101, 422), ("limit=0", 422), ("limit=201", 422),
        ("cursor=%%%", 400), ("cursor=bm90IGEgY3Vyc29y", 400), ("cursor=" + "A" * 600, 422),
        ("cursor=MnwyMDI2LTEyLTA3VDAwOjAwOjAwfGE", 400),  # a time without a zone
    ):
        r = await client.get(f"/v1/directory/services?{query}", headers=headers)
        problem = assert_problem(r, status)
        assert problem["detail"], query


async def test_a_search_is_one_statement_whatever_the_number_of_services(
    app: FastAPI, client: httpx.AsyncClient, tf: TaskForce
) -> None:
    async with app.state.sessionmaker() as db, db.begin():
        for member in ("shelter", "legal", "police", "ngo"):
            bodies = [ServiceIn.model_validate(service(name=f"{member} {i}")) for i in range(30)]
            await directory.publish(db, SYSTEM, tf[member].agency_id, bodies)
    headers = await tf.headers("legal")
    with count_statements(app) as seen:
        r = await client.get(
            "/v1/directory/services?category=shelter&language=es&population=women"
            "&accepting=yes&q=emergency&limit=100",
            headers=headers,
        )
    assert r.status_code == 200
    assert len(r.json()["items"]) == 100
    pages = [s for s in seen if "FROM DIRECTORY_SERVICE" in s]
    assert len(pages) == 1, seen
    # authentication (when the caller is not cached), the page, and the audit event
    # (one statement on PostgreSQL, two on SQLite)
    pg = app.state.engine.dialect.name == "postgresql"
    assert len(seen) <= (3 if pg else 4), [s[:60] for s in seen]


# ------------------------------------------------------------------ paging, as a property

BASE = datetime(2026, 12, 1, 22, 0, tzinfo=UTC)
_spec = st.tuples(
    st.sampled_from(list(Accepting)),
    st.sampled_from([Service.SHELTER, Service.LEGAL, Service.MEDICAL]),
    st.integers(min_value=0, max_value=2),  # minutes after BASE: many ties on purpose
)


async def _page_through(
    settings: Settings, specs: list[tuple[Accepting, Service, int]], limit: int,
    category: Service | None, accepting: Accepting | None,
) -> tuple[list[str], list[str]]:
    """(the ids paged through, the ids expected in order) for one generated directory."""
    engine = create_engine(settings)
    maker = sessionmaker(engine)
    try:
        async with maker() as db, db.begin():
            agency = await db.get(Agency, "paging-agency")
            if agency is None:
                db.add(Agency(id="paging-agency", name="Paging", kind="ngo", status="active"))
                await db.flush()
            await db.execute(directory.DirectoryService.__table__.delete())
            rows = []
            for state, category_of, minute in specs:
                body = ServiceIn(
                    name=f"s{uuid.uuid4().hex[:6]}", categories=[category_of], accepting=state,
                    capacity=CapacityIn(available=1, unit=CapacityUnit.BEDS),
                    populations=[Population.ADULTS],
                )
                rows += await directory.publish(
                    db, SYSTEM, "paging-agency", [body], now=BASE + timedelta(minutes=minute)
                )
        who = Principal("paging", "paging-agency", "ngo", Role.CASEWORKER, frozenset())
        seen: list[str] = []
        cursor = None
        for _ in range(len(specs) + 2):
            async with maker() as db, db.begin():
                page = json.loads(await directory.search(
                    db, who, category=category, language=None, population=None,
                    accepting=accepting, q=None, limit=limit, cursor=cursor,
                ))
            assert len(page["items"]) <= limit
            seen += [item["id"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        wanted = sorted(
            (r for r, (state, category_of, _) in zip(rows, specs, strict=True)
             if category in (None, category_of) and accepting in (None, state)),
            key=lambda r: (r["accepting_rank"], r["capacity_updated_at"], r["id"]),
            reverse=True,
        )
        return seen, [r["id"] for r in wanted]
    finally:
        await engine.dispose()


@hypothesis_settings(
    max_examples=25, deadline=None, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    specs=st.lists(_spec, max_size=14),
    limit=st.integers(min_value=1, max_value=5),
    category=st.none() | st.sampled_from([Service.SHELTER, Service.LEGAL]),
    accepting=st.none() | st.sampled_from(list(Accepting)),
)
def test_pages_have_no_duplicates_and_no_gaps(
    settings: Settings, specs: list[tuple[Accepting, Service, int]], limit: int,
    category: Service | None, accepting: Accepting | None,
) -> None:
    seen, wanted = asyncio.run(_page_through(settings, specs, limit, category, accepting))
    assert len(seen) == len(set(seen)), "a service was listed twice"
    assert seen == wanted
