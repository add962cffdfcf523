"""Node.js for the console's tests: skipped where Node is absent, mandatory in CI.

``REFGATE_REQUIRE_NODE=1`` (set by ``.ci/run``) turns "Node.js not found"
into a failure. Dependencies come from ``console/package-lock.json``
(``npm ci``), installed here when ``node_modules`` is missing.

The console's outputs are shared by every test of a checkout, on every xdist
worker: ``node_modules/``, ``dist-test/`` (``npm test``, ``build --tests``) and
``app/console_dist/`` (``npm run build``, served by every gateway the tests
start). Whatever writes them holds ``exclusive()``, a file lock, and the site is
rebuilt only when its sources changed (``built_console``, the stamp ``./dev``
writes), so a build never deletes the files a test beside it is serving.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CONSOLE = Path(__file__).resolve().parents[2] / "console"
REQUIRE_NODE = os.environ.get("REFGATE_REQUIRE_NODE") == "1"
CHROMIUM = os.environ.get("REFGATE_CHROMIUM", "/usr/bin/chromium")
DIST = CONSOLE.parent / "app" / "console_dist"
# outside the checkout (nothing to ignore in git), one per checkout
_LOCK = Path(tempfile.gettempdir()) / (
    "refgate-console-" + hashlib.sha256(str(CONSOLE).encode()).hexdigest()[:12] + ".lock"
)
_held = 0  # exclusive() is re-entrant within this process


@contextmanager
def exclusive() -> Iterator[None]:
    """Hold this checkout's console lock: one test at a time, across processes, writes
    ``node_modules/``, ``dist-test/`` or ``app/console_dist/``."""
    global _held
    if _held:
        _held += 1
        try:
            yield
        finally:
            _held -= 1
        return
    with _LOCK.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        _held = 1
        try:
            yield
        finally:
            _held = 0
            fcntl.flock(handle, fcntl.LOCK_UN)


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
    with exclusive():
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


def console_stamp() -> str:
    """The stamp of ``./dev``'s console build: the sources, build script and lockfile
    (``find … -type f | LC_ALL=C sort | xargs sha256sum | sha256sum``, 16 hex digits)."""
    files = sorted(
        str(path.relative_to(CONSOLE))
        for top in ("package-lock.json", "build.mjs", "tsconfig.json", "src")
        for path in ([CONSOLE / top] if top != "src" else (CONSOLE / "src").rglob("*"))
        if path.is_file()
    )
    listing = "".join(
        f"{hashlib.sha256((CONSOLE / name).read_bytes()).hexdigest()}  {name}\n" for name in files
    )
    return hashlib.sha256(listing.encode()).hexdigest()[:16]


def built_console() -> None:
    """``app/console_dist/`` built from the current sources: built here (``npm run build``,
    under the lock) only when the stamp ``./dev`` leaves is missing."""
    npm_bin = npm()
    with exclusive():
        stamp = DIST / f".stamp-{console_stamp()}"
        if not stamp.exists():
            run([npm_bin, "run", "--silent", "build"])
            stamp.touch()
