"""Risky settings are named at start, in plain words, so an operator sees them."""

from __future__ import annotations

import logging
from pathlib import Path

from app.config import RateLimitSettings, Settings
from app.main import log_risks


def test_a_production_like_setup_has_no_risk(tmp_path: Path) -> None:
    settings = Settings(env="production", public_url="https://refgate.example.org",
                        database_url="postgresql+asyncpg://refgate@db/refgate", data_dir=tmp_path)
    assert settings.risks() == []


def test_each_risky_setting_is_named(tmp_path: Path) -> None:
    settings = Settings(env="production", public_url="https://refgate.example.org",
                        data_dir=tmp_path, ratelimit=RateLimitSettings(enabled=False))
    risks = settings.risks()
    assert any("SQLite" in r and "PostgreSQL" in r for r in risks)
    assert any("rate limits are off" in r for r in risks)
    assert not any("PUBLIC_URL" in r for r in risks)


def test_the_risks_are_logged_as_warnings_at_start(tmp_path: Path) -> None:
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    handler = Keep()
    logger = logging.getLogger("refgate.config")
    logger.addHandler(handler)
    try:
        log_risks(Settings(env="development", data_dir=tmp_path))
    finally:
        logger.removeHandler(handler)
    warnings = [r.getMessage() for r in seen if r.levelno == logging.WARNING]
    assert any("no REFGATE_PUBLIC_URL" in line for line in warnings)
