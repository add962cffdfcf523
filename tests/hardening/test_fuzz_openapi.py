"""Fuzzing against openapi/openapi.json with schemathesis, the app in-process (ASGI).

Every operation of the exported document gets, with a valid token of a role that
may call it (caseworker; admin for the admin routes; auditor for the audit log;
the shelter's caseworker on its own directory services):

- schemathesis' coverage phase: deterministic boundary and schema-violating values
  of every parameter and body property (strings at ``maxLength`` and one past it,
  broken formats such as a number where a date-time is due, swapped types, missing
  required parts), the valid ones aimed at known ids so they get past the 404s;
- then Hypothesis-generated requests: valid ones, schema-violating ones, and valid
  ones aimed at the known ids (``CI_EXAMPLES`` per strategy and operation).

Checks on every response:

- ``not_a_server_error``: no 5xx, and no unhandled exception in the app;
- ``response_schema_conformance``: the body matches the documented schema;
- ``negative_data_rejection``: a schema-violating request is refused with a 4xx
  (except where the request does not carry the violation: the token header is
  always sent, unknown query parameters are ignored by design; a 413 is a refusal);
- ``unsupported_method``: an undocumented method is a 405 that names the path's methods;
- an error (4xx) is ``application/problem+json``.

CI runs a derandomized pass on SQLite: 4,329 cases (about 1,950 of them from the
coverage phase) over 40 operations in about 50 s on the shared 2-core machine.
Run against the code before issue 19's fixes, the same checks with 8 examples
found the audit filters' 500s, dates given as numbers accepted, and the key
rotation's 500 (fixed since). The long run is a command::

    .venv/bin/python -m tests.hardening.test_fuzz_openapi --long [--examples 500]
        [--database-url postgresql+asyncpg://…/db_already_migrated] [--seed N]

or, through pytest, ``REFGATE_FUZZ_EXAMPLES=500 pytest tests/hardening/test_fuzz_openapi.py``
(``REFGATE_FUZZ_BACKENDS=sqlite,postgresql`` adds PostgreSQL).

Not done: schemathesis' stateful phase. The document has no OpenAPI links, so its
state machine would only chain what it infers from ``Location`` headers; the seeded
ids above play that part (a referral, a webhook, a delivery, a service, a key).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi as schemathesis_asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from app.config import Settings
from app.main import create_app
from app.migrate import upgrade
from app.models.webhook_tables import WebhookDelivery
from tests.directory import service as directory_service
from tests.hardening import PROBLEM_JSON, quiet_settings
from tests.taskforce import TaskForce

pytestmark = pytest.mark.slow  # thousands of generated requests (about a minute)


OPENAPI = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"
CI_EXAMPLES = 25
FUZZ_EXAMPLES = int(os.environ.get("REFGATE_FUZZ_EXAMPLES", CI_EXAMPLES))
FUZZ_BACKENDS = os.environ.get("REFGATE_FUZZ_BACKENDS", "sqlite").split(",")

ADMIN_OPERATIONS = ("POST /v1/agencies",)


@dataclass
class Seeded:
    tokens: dict[str, str]
    ids: dict[str, str]


@dataclass
class FuzzReport:
    cases: int = 0
    by_operation: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


async def _seed(settings: Settings) -> Seeded:
    """A task force, a referral, a webhook with a dead delivery, a sequenced log; tokens."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            tf = await TaskForce.create(app, client)
            body = tf.seal(
                "shelter",
                {"full_name": "Fuzz Target", "narrative": "n"},
                {"full_name": {"legal": "service_provision"}},
            )
            r = await client.post("/v1/referrals", json=body, headers=await tf.headers("shelter"))
            assert r.status_code == 201, r.text
            hook = await client.post(
                "/v1/webhooks",
                json={"url": "https://hooks.example.org/f", "event_types": ["grant.added"]},
                headers=await tf.headers("shelter"),
            )
            assert hook.status_code == 201, hook.text
            delivery = f"msg_{uuid.uuid4().hex}"
            now = datetime.now(UTC)
            async with app.state.sessionmaker() as db, db.begin():
                db.add(
                    WebhookDelivery(
                        id=delivery,
                        webhook_id=hook.json()["id"],
                        event_type="grant.added",
                        payload="{}",
                        status="dead",
                        attempts=12,
                        next_attempt_at=now,
                        created_at=now,
                    )
                )
            r = await client.post(
                f"/v1/agencies/{tf['shelter'].agency_id}/services",
                json=directory_service(),
                headers=await tf.headers("shelter"),
            )
            assert r.status_code == 201, r.text
            service_id = r.json()["id"]
            await tf.sequence()
            spare = await tf.add("spare", "ngo", [])
            return Seeded(
                tokens={
                    "caseworker": await tf.token("shelter", "caseworker"),
                    "auditor": await tf.token("office", "auditor"),
                    "admin": await tf.token("office", "admin"),
                },
                ids={
                    "referral_id": body["manifest"]["referral_id"],
                    "agency_id": spare.agency_id,
                    "kid": tf["shelter"].keys.sig_kid,
                    "seq": "3",
                    "webhook_id": hook.json()["id"],
                    "delivery_id": delivery,
                    "service_id": service_id,
                    "own_agency_id": tf["shelter"].agency_id,
                },
            )


def _role_for(label: str) -> str:
    method, path = label.split(" ", 1)
    if path.startswith("/v1/audit"):
        return "auditor"
    if "/services" in path:
        return "caseworker"  # the shelter's own services
    if label in ADMIN_OPERATIONS or (path.startswith("/v1/agencies/") and method == "POST"):
        return "admin"
    return "caseworker"


CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    negative_data_rejection,  # schema-violating input (a number for a date) must be a 4xx
    unsupported_method,  # an undocumented method is a 405 naming the path's methods
]
STRICT_CHECKS = [*CHECKS, status_code_conformance, content_type_conformance]


def run_fuzz(
    settings: Settings,
    examples: int,
    *,
    derandomize: bool,
    seed: int | None = None,
    checks: list[Any] = CHECKS,
) -> FuzzReport:
    """Fuzz every operation of openapi/openapi.json against an app on ``settings``."""
    seeded = asyncio.run(_seed(settings))
    app = create_app(settings)
    schema = schemathesis.openapi.from_dict(json.loads(OPENAPI.read_text()))
    schema.app = app  # what from_asgi sets: requests go to the app in-process
    report = FuzzReport()
    started = time.monotonic()
    refgate_log = logging.getLogger("refgate")
    was_disabled = refgate_log.disabled
    refgate_log.disabled = True  # thousands of access lines would drown the report
    try:
        for result in schema.get_all_operations():
            operation = result.ok()
            label = operation.label
            known_ids = {
                p.name: seeded.ids[p.name]
                for p in operation.path_parameters
                if p.name in seeded.ids
            }
            if "/services" in label and "agency_id" in known_ids:
                known_ids["agency_id"] = seeded.ids["own_agency_id"]  # the caller's agency
            strategies = [
                operation.as_strategy(schemathesis.GenerationMode.POSITIVE),
                operation.as_strategy(schemathesis.GenerationMode.NEGATIVE),
            ]
            if known_ids:
                strategies.append(
                    operation.as_strategy(
                        schemathesis.GenerationMode.POSITIVE, path_parameters=known_ids
                    )
                )
            headers = {"Authorization": f"Bearer {seeded.tokens[_role_for(label)]}"}
            for case in _coverage_cases(operation, known_ids):
                _check_case(label, case, headers, report, checks)
            _fuzz_operation(
                label,
                st.one_of(strategies),
                headers,
                report,
                checks=checks,
                examples=examples * len(strategies),
                derandomize=derandomize,
                seed=seed,
            )
    finally:
        refgate_log.disabled = was_disabled
        schemathesis_asgi.shutdown_lifespans()  # disposes the app's engine
    report.seconds = time.monotonic() - started
    return report


def _describe(failure: BaseException) -> str:
    title = getattr(failure, "title", None) or type(failure).__name__
    message = (getattr(failure, "message", None) or str(failure)).strip().replace("\n", " ")
    return f"{title}: {message[:240]}"


def _invalid_only_where_replaced(case: Any) -> bool:
    """Whether every schema violation of a negative case is one the request does not carry.

    The token header replaces a dropped or mangled ``Authorization``; unknown query
    parameters are ignored and an empty one is an absent one, by design (DESIGN.md):
    such a case is a valid request, and its 2xx is no failure of
    ``negative_data_rejection``.
    """
    meta = case.meta
    if meta is None or not meta.generation.mode.is_negative:
        return False
    data = meta.phase.data
    mutations = getattr(data, "mutations", ()) or ()
    if not mutations:
        parameter = getattr(data, "parameter", None) or ""
        return parameter.lower() == "authorization"
    for m in mutations:
        location = m.parameter_location.name.lower()
        if location == "header" and (m.parameter or "").lower() == "authorization":
            continue
        if location == "query" and "additionalProperties" in m.keywords:
            continue
        if location == "query" and (case.query or {}).get(m.parameter) in ("", [""]):
            continue  # an empty query parameter is an absent one (DESIGN.md, Wire format)
        return False
    return True


def _check_case(
    label: str, case: Any, headers: dict[str, str], report: FuzzReport, checks: list[Any]
) -> None:
    """Send one case and record every problem with its answer."""
    report.cases += 1
    report.by_operation[label] = report.by_operation.get(label, 0) + 1
    problems = []
    try:
        response = case.call(headers=headers)
    except Exception as exc:  # an unhandled exception in the app (it would be a 500)
        problems.append(f"unhandled {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    else:
        if response.status_code == 413 or _invalid_only_where_replaced(case):
            # 413: a body over the size limit is refused before it is parsed
            checks = [c for c in checks if c is not negative_data_rejection]
        try:
            case.validate_response(response, checks=checks)
        except BaseExceptionGroup as group:  # schemathesis' FailureGroup of check failures
            problems += [_describe(f) for f in group.exceptions]
        if response.status_code >= 400:
            ctype = (response.headers.get("content-type") or [""])[0].split(";")[0]
            if ctype != PROBLEM_JSON:
                problems.append(f"{response.status_code} answered as {ctype!r}")
    for problem in problems:
        report.failures.append(f"{label}: {problem} | {case.as_curl_command()[-200:]}")


def _coverage_cases(operation: Any, known_ids: dict[str, str]) -> list[Any]:
    """Schemathesis' coverage phase for one operation: deterministic boundary and
    schema-violating values of every parameter and body property (each string at its
    ``maxLength`` and one past it, each format broken, each type swapped, required
    parts dropped); the valid ones aimed at the known ids."""
    from schemathesis.generation.drivers import CoverageGenerator
    from schemathesis.generation.feedback import FeedbackSources
    from schemathesis.generation.overrides import Override

    config = operation.schema.config.generation_for(operation=operation, phase="coverage")
    cases: list[Any] = []
    for mode, override in (
        (schemathesis.GenerationMode.POSITIVE, Override(path_parameters=known_ids)),
        (schemathesis.GenerationMode.NEGATIVE, Override()),  # its invalid ids stay invalid
    ):
        cases += CoverageGenerator(
            operation=operation,
            generation_modes=[mode],
            generation_config=config,
            auth_storage=None,
            override=override,
            feedback=FeedbackSources(),
        )
    return cases


def _fuzz_operation(
    label: str,
    strategy: Any,
    headers: dict[str, str],
    report: FuzzReport,
    *,
    checks: list[Any],
    examples: int,
    derandomize: bool,
    seed: int | None,
) -> None:
    @hypothesis_settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=derandomize,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        _check_case(label, case, headers, report, checks)

    if seed is not None:
        from hypothesis import seed as hypothesis_seed

        run = hypothesis_seed(seed)(run)
    run()


@pytest.mark.parametrize("backend", FUZZ_BACKENDS)
def test_fuzz_openapi_no_server_errors_and_documented_responses(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = quiet_settings(database_url, tmp_path)
    report = run_fuzz(settings, FUZZ_EXAMPLES, derandomize=FUZZ_EXAMPLES == CI_EXAMPLES)
    with capsys.disabled():
        print(  # noqa: T201 (the case count is part of the report)
            f"\nfuzz: {report.cases} cases over {len(report.by_operation)} operations in "
            f"{report.seconds:.1f} s"
        )
    assert len(report.by_operation) >= 30, sorted(report.by_operation)
    assert report.cases >= 4000, "the coverage phase and the examples ran short"
    unique = sorted(set(report.failures))
    assert not unique, "\n".join(unique[:40])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fuzz refgate against openapi/openapi.json")
    parser.add_argument("--long", action="store_true", help="500 examples per strategy")
    parser.add_argument("--examples", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--strict",
        action="store_true",
        help="also require documented status codes and content types",
    )
    parser.add_argument(
        "--database-url", default=None, help="a migrated database (default: a fresh SQLite)"
    )
    args = parser.parse_args(argv)
    examples = args.examples or (500 if args.long else CI_EXAMPLES)
    with tempfile.TemporaryDirectory() as tmp:
        if args.database_url:
            settings = quiet_settings(args.database_url, Path(tmp))
        else:
            (Path(tmp) / "data").mkdir()
            url = f"sqlite+aiosqlite:///{Path(tmp) / 'data' / 'refgate.db'}"
            settings = quiet_settings(url, Path(tmp))
            upgrade(settings)
        checks = STRICT_CHECKS if args.strict else CHECKS
        report = run_fuzz(settings, examples, derandomize=False, seed=args.seed, checks=checks)
    for line in sorted(set(report.failures)):
        print("FAIL", line)  # noqa: T201 (command-line report)
    print(  # noqa: T201 (command-line report)
        f"{report.cases} cases, {len(report.by_operation)} operations, {report.seconds:.0f} s, "
        f"{len(set(report.failures))} distinct failures"
    )
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
