"""requirements.lock and requirements-dev.lock pin what pyproject.toml asks for, and the
test environment is the locked one (``./dev`` installs requirements-dev.lock).

Regenerate both with ``./dev lock`` (``--upgrade`` to move to newer releases).
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def _project() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _pins(name: str) -> dict[str, tuple[str, str | None]]:
    """{package: (version, marker)}; every pin must carry at least one sha256 hash."""
    text = (ROOT / name).read_text()
    pins: dict[str, tuple[str, str | None]] = {}
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text)
    for block in blocks:
        first = block.splitlines()[0] if block.strip() else ""
        match = PIN.match(first)
        if not match:
            continue
        assert "--hash=sha256:" in block, f"{name}: {first} has no hash"
        pins[canonicalize_name(match.group(1))] = (match.group(2), match.group(3))
    return pins


@pytest.mark.parametrize(
    ("lock", "extras"), [("requirements.lock", ()), ("requirements-dev.lock", ("dev",))]
)
def test_every_declared_dependency_is_pinned_within_its_bounds(
    lock: str, extras: tuple[str, ...]
) -> None:
    project = _project()
    declared = list(project["dependencies"])
    for extra in extras:
        declared += project["optional-dependencies"][extra]
    pins = _pins(lock)
    for line in declared:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{lock} does not pin {name}"
        version, _ = pins[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{lock}: {name}=={version} is outside {requirement.specifier}"
        )


def test_the_runtime_lock_agrees_with_the_dev_lock() -> None:
    dev = _pins("requirements-dev.lock")
    for name, (version, _) in _pins("requirements.lock").items():
        assert dev.get(name, (None,))[0] == version, name


def test_the_test_environment_is_the_locked_one() -> None:
    environment = default_environment()
    for name, (version, marker) in _pins("requirements-dev.lock").items():
        if marker and not Requirement(f"x; {marker}").marker.evaluate(environment):
            continue
        installed = metadata.version(name)
        assert installed == version, f"{name} {installed} is installed, the lock says {version}"
