"""Every operation and parameter of openapi/openapi.json is described (issue 18)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.errors import PROBLEM_BASE

DOC = Path(__file__).resolve().parent.parent / "openapi" / "openapi.json"
METHODS = ("get", "post", "put", "patch", "delete")


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    doc = json.loads(DOC.read_text())
    return [(m, p, op) for p, item in doc["paths"].items() for m, op in item.items()
            if m in METHODS]


def test_every_operation_has_a_summary_and_a_description() -> None:
    ops = _operations()
    assert len(ops) >= 40
    missing = [f"{m.upper()} {p}" for m, p, op in ops
               if not op.get("summary") or len(op.get("description", "")) < 40]
    assert missing == []


def test_every_parameter_has_a_description() -> None:
    missing = [f"{m.upper()} {p} {q['name']}" for m, p, op in _operations()
               for q in op.get("parameters", []) if not q.get("description")]
    assert missing == []


def test_descriptions_name_the_problem_types_an_operation_can_answer() -> None:
    for method, path, op in _operations():
        errors = [s for s in op["responses"] if s[0] in "45"]
        if errors:
            assert "Problem types it can answer" in op["description"], (method, path)
        for status in errors:
            assert op["responses"][status]["description"], (method, path, status)
    [send] = [op for m, p, op in _operations() if (m, p) == ("post", "/v1/referrals")]
    for slug in ("idempotency-key-reused", "referral-exists", "envelope/stale-kid"):
        assert PROBLEM_BASE + slug in send["description"]
    [status] = [op for m, p, op in _operations()
                if (m, p) == ("post", "/v1/referrals/{referral_id}/status")]
    assert PROBLEM_BASE + "reason-required" in status["description"]
