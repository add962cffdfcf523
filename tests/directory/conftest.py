from __future__ import annotations

from pathlib import Path

import pytest

from app.config import Settings
from tests.hardening import quiet_settings


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    """No rate limits (the paging tests make many requests); webhook targets not resolved."""
    return quiet_settings(database_url, tmp_path)
