"""``pip install refgate`` alone, in a fresh virtual environment, talks to a live gateway.

The project is built into a wheel, installed *without* the ``server`` extra
into a new venv (no system site-packages: it sees only what the wheel
declares), and that venv's Python runs the README's integration example as
written (``from refgate_client import RefgateClient``: the shelter seals,
sends and polls) against ``refgate-server serve --demo``, while a second
script in the same venv answers as legal aid (inbox, open, accept). FastAPI,
Starlette, uvicorn, SQLAlchemy, SQLModel, asyncpg and Alembic must be absent
from that environment.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.demo_server import demo_server

ROOT = Path(__file__).resolve().parents[2]
SERVER_MODULES = ("fastapi", "starlette", "uvicorn", "sqlalchemy", "sqlmodel", "asyncpg",
                  "alembic", "aiosqlite", "pydantic_settings")

LEGAL = '''
import asyncio, sys
from pathlib import Path

from refgate_client import OpenedReferral, RefgateClient


async def main() -> None:
    async with RefgateClient.from_key_file(Path("legal-aid.key.json")) as rc:
        for _ in range(240):
            page = await rc.inbox()
            waiting = [i for i in page.items if all(s.status == "requested" for s in i.statuses)]
            if waiting:
                opened = await rc.open_referral(waiting[0].referral_id)
                assert isinstance(opened, OpenedReferral)
                print("OPENED", opened.referral_id, sorted(opened.fields.items()), flush=True)
                await rc.update_status(opened.referral_id, "accepted", note="Intake Tuesday")
                print("ACCEPTED", opened.referral_id, flush=True)
                return
            await asyncio.sleep(0.25)
    sys.exit("nothing arrived")

asyncio.run(main())
'''


def _readme_example() -> str:
    section = (ROOT / "README.md").read_text().split("## For integrators", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's integration example is missing"
    return match.group(1)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Path]:
    """``refgate-server serve --demo`` in the project's environment; yields the key files' dir."""
    with demo_server(tmp_path, timeout=90) as server:
        yield server.keys


@pytest.fixture
def client_venv(tmp_path: Path) -> Path:
    """A fresh venv holding the wheel of this checkout without the ``server`` extra."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "node_modules")
    for name in ("app", "migrations", "refgate_client"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(wheels), str(src)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = wheels.glob("refgate-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile",
         "--disable-pip-version-check", str(wheel)],
        check=True, capture_output=True, timeout=300,
    )
    return venv


@pytest.mark.client_install
def test_the_sdk_installs_alone_and_runs_the_readme_example(
    client_venv: Path, demo: Path
) -> None:
    python = str(client_venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    present = subprocess.run(
        [python, "-c", "import importlib.util as u, sys; "
         f"print(' '.join(m for m in {SERVER_MODULES!r} if u.find_spec(m)))"],
        env=env, cwd=demo, capture_output=True, text=True, check=True,
    ).stdout.split()
    assert present == [], f"the client's venv holds server packages: {present}"
    where = subprocess.run(
        [python, "-c", "import refgate_client, app.client.sdk; print(refgate_client.__file__)"],
        env=env, cwd=demo, capture_output=True, text=True, check=True,
    ).stdout
    assert str(client_venv) in where  # the installed wheel, not this checkout
    cli = subprocess.run([str(client_venv / "bin" / "refgate"), "--help"], env=env, cwd=demo,
                         capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    assert "exit codes" in cli.stdout.lower()
    server = subprocess.run([str(client_venv / "bin" / "refgate-server"), "serve"], env=env,
                            cwd=demo, capture_output=True, text=True)
    assert server.returncode == 1
    assert "pip install 'refgate[server]'" in server.stderr
    assert "Traceback" not in server.stderr

    (demo / "example.py").write_text(_readme_example())
    (demo / "legal.py").write_text(LEGAL)
    legal = subprocess.Popen([python, "legal.py"], cwd=demo, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        example = subprocess.run([python, "example.py"], cwd=demo, env=env, text=True,
                                 capture_output=True, timeout=180)
    finally:
        legal_out, legal_err = legal.communicate(timeout=120)
    assert legal.returncode == 0, legal_err
    assert example.returncode == 0, example.stderr
    assert "Traceback" not in example.stderr + legal_err
    opened = re.search(r"OPENED ([0-9a-f-]{36}) (.*)", legal_out)
    assert opened, legal_out
    rid = opened.group(1)
    assert "('narrative', 'Recruited with a false job offer.')" in opened.group(2)
    assert "('full_name', 'Maria Example')" in opened.group(2)
    # the example prints the referral id it sent and the statuses once one changed
    assert example.stdout.startswith(rid), example.stdout
    assert "accepted" in example.stdout
