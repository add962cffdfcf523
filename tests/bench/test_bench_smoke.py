"""The benchmark harness keeps working: its smoke mode runs every scenario (issue 5).

No timing is asserted here: numbers are the harness's job, not the tests'. What
is asserted is that every scenario ran, got answers, and had no failed request.
The smoke run needs PostgreSQL (skipped when none is reachable, unless
``REFGATE_REQUIRE_POSTGRES=1`` or ``CI`` is set) and not wrk: without wrk the
harness drives the load from Python.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from bench import dataset, load

ROOT = Path(__file__).resolve().parents[2]
ADMIN_URL = os.environ.get(
    "REFGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
MUST_RUN = os.environ.get("REFGATE_REQUIRE_POSTGRES") == "1" or bool(os.environ.get("CI"))
HTTP_SCENARIOS = {
    "baseline_insert",
    "baseline_read",
    "create",
    "inbox",
    "open",
    "status",
    "audit_query",
    "audit_query_probe",
    "inclusion_proof",
    "inclusion_proof_probe",
}


def test_smoke_run_measures_every_scenario_without_failures(tmp_path: Path) -> None:
    if not dataset.postgres_reachable(ADMIN_URL):
        if MUST_RUN:
            pytest.fail(f"the benchmark smoke run needs PostgreSQL at {ADMIN_URL}")
        pytest.skip("PostgreSQL is not reachable")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    (run_dir,) = tmp_path.iterdir()
    results = json.loads((run_dir / "results.json").read_text())
    rows = {r["key"]: r for r in results["rows"]}
    assert set(rows) == HTTP_SCENARIOS | {"sequencer"}
    for key in HTTP_SCENARIOS:
        assert rows[key]["requests"] > 0, rows[key]
        assert rows[key]["failures"] == 0, rows[key]
        assert rows[key]["verdict"] in {"pass", "short", "info", "-"}
    assert rows["create"]["ratio"] is not None
    assert rows["sequencer"]["events"] == results["meta"]["backlog"]
    assert len(results["rss"]["workers"]) == results["meta"]["workers"]
    table = (run_dir / "results.md").read_text()
    assert "| create referral |" in table
    assert not (run_dir / "requests").exists()


class _Echo(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        status = 404 if self.path == "/missing" else 200
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A load driver stopping mid-request resets its connections: not an error here."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@pytest.fixture
def echo_server() -> Iterator[str]:
    server = _QuietServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("driver", ["python", "wrk"])
def test_load_driver_counts_every_non_2xx_as_a_failure(
    driver: str, echo_server: str, tmp_path: Path
) -> None:
    if driver == "wrk" and not load.wrk_available():
        if os.environ.get("CI"):
            pytest.fail("CI installs wrk (apt-get install -y wrk)")
        pytest.skip("wrk is not installed")
    path = load.write_requests(
        tmp_path / "r.tsv",
        [
            load.Request("GET", "/ok", "t0k"),
            load.Request("GET", "/missing"),
            load.Request("GET", "/"),
        ],
    )
    result = load.run_load(driver, echo_server, path, connections=2, duration=1)
    assert result.requests > 0
    assert set(result.statuses) == {"200", "404"}
    assert result.failures == result.statuses["404"] > 0
    assert result.latency_ms["p50"] <= result.latency_ms["p99"]


def test_once_mode_sends_each_request_at_most_once(echo_server: str, tmp_path: Path) -> None:
    path = load.write_requests(tmp_path / "r.tsv", [load.Request("GET", f"/{i}") for i in range(5)])
    result = load.run_load("python", echo_server, path, connections=2, duration=5, once=True)
    assert result.requests == 5
    assert result.exhausted
