"""Node.js for the console's tests: skipped where Node is absent, mandatory in CI.

``REFGATE_REQUIRE_NODE=1`` (set by ``.ci/run``) turns "Node.js not found"
into a failure. Dependencies come from ``console/package-lock.json``
(``npm ci``), installed here when ``node_modules`` is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CONSOLE = Path(__file__).resolve().parents[2] / "console"
REQUIRE_NODE = os.environ.get("REFGATE_REQUIRE_NODE") == "1"
CHROMIUM = os.environ.get("REFGATE_CHROMIUM", "/usr/bin/chromium")


def _missing(what: str) -> None:
    if REQUIRE_NODE:
        pytest.fail(f"{what} is required here (REFGATE_REQUIRE_NODE=1)")
    pytest.skip(f"{what} not found")


def npm() -> str:
    """The npm executable, with the console's dependencies installed from the lockfile."""
    node, npm_bin = shutil.which("node"), shutil.which("npm")
    if node is None or npm_bin is None:
        _missing("Node.js (node and npm)")
    assert npm_bin is not None
    if not (CONSOLE / "node_modules" / ".package-lock.json").exists():
        subprocess.run([npm_bin, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                       cwd=CONSOLE, check=True, timeout=600)
    return npm_bin


def node() -> str:
    npm()
    path = shutil.which("node")
    assert path is not None
    return path


def chromium() -> str:
    if not Path(CHROMIUM).is_file():
        _missing(f"Chromium ({CHROMIUM}; Debian package 'chromium')")
    return CHROMIUM


def run(args: list[str], *, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run a command in console/ and fail the test with its output if it fails."""
    done = subprocess.run(args, cwd=CONSOLE, capture_output=True, text=True, timeout=timeout,
                          check=False)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done
