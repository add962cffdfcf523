"""Logs, metrics and HTTP hygiene.

- The JSON access log of a referral's create and read carries the request id,
  the client and the agency, and never a plaintext, a field name, a ciphertext,
  a wrapped key, a disclosure, a signature, an assertion or a token.
- ``GET /metrics`` is Prometheus text for the bearer secret only; request counts
  and latency by route template and status, sequencer lag, checkpoint age and
  webhook queue depth; counters add up across workers.
- Security headers on every answer, no ``server`` header, no CORS unless origins
  are configured, and an explicit timeout on every outgoing HTTP client in ``app/``.
"""

from __future__ import annotations

import ast
import asyncio
import io
import json
import logging
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError
from sqlalchemy import text

import app.metrics as metrics_module
from app.config import CorsSettings, MetricsSettings, Settings
from app.crypto import envelope as env
from app.logging import JsonFormatter
from app.main import create_app
from tests.hardening import assert_problem, quiet_settings
from tests.taskforce import TaskForce, rfc3339

METRICS_TOKEN = "s3cret-metrics-bearer-token-0123456789"
APP_DIR = Path(__file__).resolve().parents[2] / "app"
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return quiet_settings(database_url, tmp_path, metrics=MetricsSettings(token=METRICS_TOKEN))


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """The refgate loggers' output, formatted as in production, for this test only."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("refgate")
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)


# ------------------------------------------------------------------ logs


async def test_access_log_names_request_client_and_agency_and_never_content(
    client: httpx.AsyncClient, tf: TaskForce, log_lines: io.StringIO
) -> None:
    plaintext = {"full_name": "Maria Example", "narrative": "Recruited with a false job offer."}
    body = tf.seal("shelter", plaintext, {"full_name": {"legal": "service_provision"}})
    rid = body["manifest"]["referral_id"]
    shelter_token = await tf.token("shelter", "caseworker")
    legal_token = await tf.token("legal", "caseworker")
    r = await client.post(
        "/v1/referrals",
        json=body,
        headers={"Authorization": f"Bearer {shelter_token}", "X-Request-Id": "obs-create-1"},
    )
    assert r.status_code == 201, r.text
    r = await client.get(
        f"/v1/referrals/{rid}",
        headers={"Authorization": f"Bearer {legal_token}", "X-Request-Id": "obs-read-1"},
    )
    assert r.status_code == 200, r.text
    read_back = r.json()
    r = await client.get(f"/v1/referrals/{rid}", headers=await tf.headers("ngo"))
    assert r.status_code == 404

    text_out = log_lines.getvalue()
    records = [json.loads(line) for line in text_out.splitlines()]
    by_id = {rec.get("client_request_id"): rec for rec in records if rec.get("msg") == "request"}
    create, read = by_id["obs-create-1"], by_id["obs-read-1"]
    assert create["route"] == "/v1/referrals"
    assert create["status"] == 201
    assert create["client_id"] == tf["shelter"].clients["caseworker"][0]
    assert create["agency_id"] == tf["shelter"].agency_id
    assert read["route"] == "/v1/referrals/{referral_id}"
    assert read["client_id"] == tf["legal"].clients["caseworker"][0]
    assert read["agency_id"] == tf["legal"].agency_id
    assert all(isinstance(rec["duration_ms"], float | int) for rec in by_id.values())

    secrets = [
        *plaintext.values(),
        *plaintext,  # field names: the server never sees one
        *body["disclosures"],
        *body["ciphertexts"].values(),
        *(w["wrapped_key"] for w in body["wrapped_keys"]),
        *(w["wrapped_key"] for w in read_back["wrapped_keys"]),
        body["signature"],
        shelter_token,
        legal_token,
        *(t for t in (m._tokens.get(r) for m in tf.members.values() for r in m.clients) if t),
        rid,  # the raw path is not logged either: only the route template
    ]
    for secret in secrets:
        assert secret not in text_out, f"the log shows {secret[:24]}…"


# ------------------------------------------------------------------ metrics

_SAMPLE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*",?)*\})? '
    r"([-+]?[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?|[-+]?Inf|NaN)$"
)


def _le_last(key: str) -> str:
    """Label order carries no meaning; the keys below name a bucket's ``le`` last."""
    name, brace, rest = key.partition("{")
    if not brace:
        return key
    labels = re.findall(r'[a-zA-Z_][a-zA-Z0-9_]*="(?:\\.|[^"\\])*"', rest[:-1])
    labels.sort(key=lambda label: label.startswith("le="))
    return name + "{" + ",".join(labels) + "}"


def _parse(exposition: str) -> dict[str, float]:
    """Samples by their full ``name{labels}``; every line must be valid text format."""
    samples: dict[str, float] = {}
    for line in exposition.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        assert _SAMPLE.match(line), f"not Prometheus text format: {line!r}"
        key, value = line.rsplit(" ", 1)
        samples[_le_last(key)] = float(value)
    return samples


async def _scrape(client: httpx.AsyncClient) -> dict[str, float]:
    r = await client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == metrics_module.CONTENT_TYPE
    return _parse(r.text)


async def test_metrics_need_the_bearer_secret(client: httpx.AsyncClient, tf: TaskForce) -> None:
    assert_problem(await client.get("/metrics"), 401)
    wrong = {"Authorization": "Bearer " + "x" * len(METRICS_TOKEN)}
    assert_problem(await client.get("/metrics", headers=wrong), 401)
    jwt = await tf.headers("office", "admin")  # an API token is not the metrics secret
    assert_problem(await client.get("/metrics", headers=jwt), 401)


async def test_metrics_are_not_served_without_a_configured_secret(
    database_url: str, tmp_path: Path
) -> None:
    app = create_app(quiet_settings(database_url, tmp_path))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            r = await c.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert_problem(r, 404)


async def test_metrics_count_requests_by_route_template_and_show_the_log_state(
    app: FastAPI, client: httpx.AsyncClient, tf: TaskForce
) -> None:
    body = tf.seal("shelter", {"full_name": "M"}, {"full_name": {"legal": "service_provision"}})
    rid = body["manifest"]["referral_id"]
    shelter = await tf.headers("shelter")
    assert (await client.post("/v1/referrals", json=body, headers=shelter)).status_code == 201
    for _ in range(2):
        r = await client.get(f"/v1/referrals/{rid}", headers=await tf.headers("legal"))
        assert r.status_code == 200
    assert (await client.get("/no/such/path")).status_code == 404
    hook = await client.post(
        "/v1/webhooks",
        json={"url": "https://hooks.example.org/m", "event_types": ["referral.status_changed"]},
        headers=shelter,
    )
    assert hook.status_code == 201, hook.text
    legal = tf["legal"]
    status = env.sign_status(
        referral_id=rid, recipient=legal.agency_id, status="received", reason=None, note=None,
        signed_at=rfc3339(datetime.now(UTC)), sig_seed=legal.keys.sig_seed,
    )
    r = await client.post(
        f"/v1/referrals/{rid}/status", json=status, headers=await tf.headers("legal")
    )
    assert r.status_code == 200, r.text

    m = await _scrape(client)
    created = 'refgate_http_requests_total{method="POST",route="/v1/referrals",status="201"}'
    read = (
        'refgate_http_requests_total{method="GET",route="/v1/referrals/{referral_id}",status="200"}'
    )
    assert m[created] == 1
    assert m[read] == 2
    assert m['refgate_http_requests_total{method="GET",route="unmatched",status="404"}'] == 1
    assert not any(rid in key for key in m), "a raw id became a label"
    bucket = (
        'refgate_http_request_duration_seconds_bucket{method="GET",'
        'route="/v1/referrals/{referral_id}",status="200",le="+Inf"}'
    )
    assert m[bucket] == 2
    count = (
        'refgate_http_request_duration_seconds_count{method="GET",'
        'route="/v1/referrals/{referral_id}",status="200"}'
    )
    assert m[count] == 2

    async with app.state.engine.connect() as conn:
        pending = (await conn.execute(text("SELECT count(*) FROM audit_pending"))).scalar_one()
        queued = (
            await conn.execute(
                text("SELECT count(*) FROM webhook_delivery WHERE status = 'pending'")
            )
        ).scalar_one()
    assert pending > 0
    assert m["refgate_audit_pending_events"] == pending
    assert m["refgate_webhook_queue_depth"] == queued == 1
    assert m["refgate_database_up"] == 1
    assert "refgate_audit_checkpoint_age_seconds" not in m  # nothing signed yet

    await tf.sequence()
    m = await _scrape(client)
    assert m["refgate_audit_pending_events"] == 0
    assert m["refgate_audit_tree_size"] == m["refgate_audit_checkpoint_tree_size"] > 0
    assert 0 <= m["refgate_audit_checkpoint_age_seconds"] < 60


_WORKER = """
import sys
from app.metrics import Metrics
m = Metrics()
for _ in range(int(sys.argv[1])):
    m.observe("GET", "/health/live", 200, 0.002)
m.rate_limited("api-anonymous")
"""


async def test_metrics_add_up_across_workers(
    app: FastAPI, client: httpx.AsyncClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several workers (prometheus_client's multiprocess mode): two worker processes
    count requests into PROMETHEUS_MULTIPROC_DIR and exit; a scrape adds both up,
    so a dead worker's counts are kept."""
    import subprocess
    import sys

    directory = tmp_path / "prometheus"
    directory.mkdir()
    env = {**os.environ, metrics_module.MULTIPROC_ENV: str(directory)}
    for count in (3, 1):
        await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", _WORKER, str(count)], env=env, check=True,
            timeout=60,
        )
    assert len(list(directory.glob("*.db"))) >= 2, "each worker wrote its own file"
    monkeypatch.setenv(metrics_module.MULTIPROC_ENV, str(directory))
    m = await _scrape(client)
    key = 'refgate_http_requests_total{method="GET",route="/health/live",status="200"}'
    assert m[key] == 4
    bucket = ('refgate_http_request_duration_seconds_bucket{method="GET",'
              'route="/health/live",status="200",le="0.005"}')
    assert m[bucket] == 4
    assert m['refgate_rate_limited_total{limit="api-anonymous"}'] == 2
    assert m["refgate_database_up"] == 1  # the database gauges are read as before


def test_serve_uses_multiprocess_metrics_only_with_several_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.server_cli import _multiprocess_metrics

    monkeypatch.setenv(metrics_module.MULTIPROC_ENV, "")  # restored (unset) afterwards
    monkeypatch.delenv(metrics_module.MULTIPROC_ENV)
    settings = Settings(env="test", data_dir=tmp_path / "data")
    _multiprocess_metrics(settings, 1)
    assert metrics_module.MULTIPROC_ENV not in os.environ
    stale = settings.data_dir / "prometheus" / "counter_123.db"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"last run")
    _multiprocess_metrics(settings, 2)
    assert os.environ[metrics_module.MULTIPROC_ENV] == str(stale.parent)
    assert not stale.exists(), "the last run's files are removed at start"


async def test_rate_limited_requests_are_counted(database_url: str, tmp_path: Path) -> None:
    from app.config import RateLimitSettings

    settings = quiet_settings(
        database_url,
        tmp_path,
        metrics=MetricsSettings(token=METRICS_TOKEN),
        ratelimit=RateLimitSettings(backend="memory", anonymous_per_address=1),
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            await c.get("/v1/referrals")
            assert_problem(await c.get("/v1/referrals"), 429)
            m = await _scrape(c)
    assert m['refgate_rate_limited_total{limit="api-anonymous"}'] >= 1


# ------------------------------------------------------------------ HTTP hygiene


async def test_every_answer_has_security_headers_and_no_server_header(
    client: httpx.AsyncClient, tf: TaskForce
) -> None:
    answers = [
        await client.get("/health/live"),
        await client.get("/v1/referrals"),
        await client.get("/v1/referrals", headers=await tf.headers("shelter")),
        await client.get("/nowhere"),
        await client.post(
            "/v1/referrals",
            content=b"x" * (2 * 1024 * 1024),
            headers={**await tf.headers("shelter"), "Content-Type": "application/json"},
        ),
    ]
    assert [a.status_code for a in answers] == [200, 401, 200, 404, 413]
    for answer in answers:
        for name, value in SECURITY_HEADERS.items():
            assert answer.headers.get(name) == value, (answer.status_code, name)
        assert "strict-transport-security" in answer.headers
        assert "server" not in answer.headers
        assert answer.headers["x-request-id"]


async def test_an_unexpected_error_is_a_500_problem_with_headers_and_request_id(
    database_url: str, tmp_path: Path
) -> None:
    app = create_app(quiet_settings(database_url, tmp_path))

    async def boom() -> None:
        raise RuntimeError("boom")

    app.add_api_route("/boom", boom)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            r = await c.get("/boom", headers={"X-Request-Id": "boom-1"})
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/problem+json"
    # the request id is the server's own, never the caller's X-Request-ID
    assert r.json()["request_id"] != "boom-1"
    assert r.headers.get("x-request-id") == r.json()["request_id"]
    for name, value in SECURITY_HEADERS.items():
        assert r.headers.get(name) == value, name


async def test_no_cors_headers_unless_configured(client: httpx.AsyncClient) -> None:
    preflight = await client.options(
        "/v1/referrals",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    plain = await client.get("/health/live", headers={"Origin": "https://evil.example"})
    for answer in (preflight, plain):
        assert not [h for h in answer.headers if h.startswith("access-control-")], answer.headers


async def test_cors_answers_only_the_configured_origins(database_url: str, tmp_path: Path) -> None:
    allowed = "https://console.example.org"
    settings = quiet_settings(database_url, tmp_path, cors=CorsSettings(allow_origins=[allowed]))
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            ok = await c.options(
                "/v1/referrals",
                headers={"Origin": allowed, "Access-Control-Request-Method": "GET"},
            )
            other = await c.get("/health/live", headers={"Origin": "https://evil.example"})
            mine = await c.get("/health/live", headers={"Origin": allowed})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == allowed
    assert "access-control-allow-credentials" not in ok.headers
    assert "access-control-allow-origin" not in other.headers
    assert mine.headers["access-control-allow-origin"] == allowed


@pytest.mark.parametrize(
    "origin", ["*", "https://*.example.org", "https://console.example.org/path", "null"]
)
def test_cors_origins_must_be_explicit(origin: str) -> None:
    with pytest.raises(ValidationError):
        CorsSettings(allow_origins=[origin])


# Calls that open an outgoing connection, and the keyword that bounds them.
_OUTGOING = {
    ("httpx", "AsyncClient"),
    ("httpx", "Client"),
    ("httpx", "get"),
    ("httpx", "post"),
    ("httpx", "put"),
    ("httpx", "patch"),
    ("httpx", "delete"),
    ("httpx", "request"),
    ("httpx", "stream"),
    ("requests", "get"),
    ("requests", "post"),
    ("requests", "request"),
    ("request", "urlopen"),
    ("socket", "create_connection"),
}


def _outgoing_calls() -> list[tuple[str, int, ast.Call]]:
    found = []
    for path in sorted(APP_DIR.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and (node.func.value.id, node.func.attr) in _OUTGOING
            ):
                found.append((str(path.relative_to(APP_DIR.parent)), node.lineno, node))
    return found


def test_every_outgoing_http_client_in_app_has_an_explicit_timeout() -> None:
    calls = _outgoing_calls()
    assert calls, "expected the webhook dispatcher's and the SDK's httpx clients"
    missing = []
    for where, line, call in calls:
        timeout = next((k.value for k in call.keywords if k.arg == "timeout"), None)
        if timeout is None or (isinstance(timeout, ast.Constant) and timeout.value is None):
            missing.append(f"{where}:{line}")
    assert not missing, f"outgoing calls without an explicit timeout: {missing}"


def test_the_sdk_timeout_default_is_bounded() -> None:
    """The SDK passes its ``timeout`` argument through; its default must not be None."""
    import inspect

    from app.client.sdk import RefgateClient

    default = inspect.signature(RefgateClient.__init__).parameters["timeout"].default
    assert default is not None
    assert default is not inspect.Parameter.empty


async def test_refusals_are_warnings_naming_the_client_agency_and_problem_type(
    client: httpx.AsyncClient, tf: TaskForce, log_lines: io.StringIO
) -> None:
    from app.client.assertion import client_assertion, token_form
    from app.crypto import keys

    client_id, _ = tf["shelter"].clients["caseworker"]
    wrong = keys.generate_signing_key()  # another key file's key
    r = await client.post(
        "/oauth/token", data=token_form(client_assertion(client_id, wrong.seed, "http://test/oauth/token"))
    )
    assert r.status_code == 401
    assert f"not signed by the key registered for client {client_id}" in r.json()["detail"]
    assert "is this the key file of that client?" in r.json()["detail"]
    r = await client.get("/v1/referrals/nope", headers=await tf.headers("ngo"))
    assert r.status_code == 404

    lines = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    requests = [rec for rec in lines if rec.get("msg") == "request"]
    refused_token = next(rec for rec in requests if rec["route"] == "/oauth/token"
                         and rec["status"] == 401)
    assert refused_token["level"] == "warning"
    assert refused_token["client_id"] == client_id
    assert refused_token["agency_id"] == tf["shelter"].agency_id
    assert refused_token["problem"]
    missing = next(rec for rec in requests if rec["status"] == 404)
    assert missing["level"] == "warning"
    assert missing["problem"] == "not-found"
    assert missing["agency_id"] == tf["ngo"].agency_id
    assert all(rec["level"] == "info" for rec in requests if rec["status"] < 400)
    assert wrong.seed.hex() not in log_lines.getvalue()
