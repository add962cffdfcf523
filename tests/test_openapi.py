"""openapi/openapi.json is the exported document; it must match what the app serves."""

from __future__ import annotations

import json

from app import openapi_export


def test_exported_openapi_matches_the_app() -> None:
    on_disk = json.loads(openapi_export.OUTPUT.read_text())
    assert on_disk == openapi_export.document(), "run ./dev openapi and commit the result"


def test_every_route_has_a_summary_a_response_model_and_problem_errors() -> None:
    doc = openapi_export.document()
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert op.get("summary"), f"{method} {path} has no summary"
            ok = [s for s in op["responses"] if s.startswith("2")]
            assert ok, f"{method} {path} declares no success response"
            errors = [s for s in op["responses"] if s[0] in "45"]
            if path.startswith("/v1/"):
                assert "401" in errors, f"{method} {path} does not declare 401"
            for status in errors:
                content = op["responses"][status]["content"]
                assert list(content) == ["application/problem+json"], (method, path, status)
