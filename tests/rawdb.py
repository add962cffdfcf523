"""Read a test database the way an attacker with the disk or a dump would."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from app.config import Settings


def _sqlite_files(path: Path) -> bytes:
    wal = path.with_name(path.name + "-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


async def raw_database(settings: Settings) -> bytes:
    """The SQLite file and its WAL, or a ``pg_dump --data-only`` of PostgreSQL."""
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        return await asyncio.to_thread(_sqlite_files, Path(url.split("///", 1)[1]))
    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        pytest.skip("pg_dump is not installed")
    proc = await asyncio.create_subprocess_exec(
        pg_dump,
        "--data-only",
        url.replace("postgresql+asyncpg://", "postgresql://"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out
