"""Test fixtures: every database test runs against SQLite and PostgreSQL.

Each test gets a fresh, fully migrated database: SQLite copies a migrated
template file; PostgreSQL clones a migrated template database
(``CREATE DATABASE … TEMPLATE``). Migrations run once per session, for real.

PostgreSQL comes from ``REFGATE_TEST_POSTGRES_URL`` (an admin URL; default
``postgresql://postgres@127.0.0.1:5432/postgres``). Where none is reachable its
tests skip, unless ``REFGATE_REQUIRE_POSTGRES=1`` (CI), where they fail.

``REFGATE_TEST_BACKENDS=sqlite|postgres|both`` (default ``both``; CI runs both)
picks the backends: a test parametrized with a backend that is not picked is
deselected, whether the ``backend`` comes from the fixture below or from the
test's own ``parametrize``. Long tests carry ``@pytest.mark.slow``;
``-m "not slow"`` leaves them out of a quick local run.

Parallel runs (pytest-xdist, ``./dev test``): every worker is its own process
with its own ``tmp_path`` tree, its own PostgreSQL template (named for the
worker's pid) and per-test databases with random names, and the live servers
take free ports. A test that must not run beside any other is marked
``@pytest.mark.serial``: a run spread over more than one worker leaves it out,
and ``--serial=only`` runs just those tests, on their own (``./dev test``
does both passes). ``--serial=exclude`` leaves them out of any run. Tests that
may run beside others but not beside each other share an ``xdist_group``
(``-n`` runs ``--dist loadgroup`` here, which keeps a group on one worker).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from app.config import AuditSettings, Settings, WebhookSettings, get_settings
from app.main import create_app
from app.migrate import upgrade
from tests.taskforce import TaskForce

PG_ADMIN_URL = os.environ.get(
    "REFGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REQUIRE_PG = os.environ.get("REFGATE_REQUIRE_POSTGRES") == "1"
_BACKEND_CHOICES = {
    "both": ["sqlite", "postgresql"],
    "sqlite": ["sqlite"],
    "postgres": ["postgresql"],
    "postgresql": ["postgresql"],
}


def _selected_backends() -> list[str]:
    choice = os.environ.get("REFGATE_TEST_BACKENDS", "both").strip().lower() or "both"
    if choice not in _BACKEND_CHOICES:
        raise pytest.UsageError(
            f"REFGATE_TEST_BACKENDS={choice!r}: use sqlite, postgres or both"
        )
    return _BACKEND_CHOICES[choice]


BACKENDS = _selected_backends()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--serial", choices=("auto", "exclude", "only"), default="auto",
        help="tests marked serial (they must run alone): 'auto' runs them unless the run is "
        "spread over more than one xdist worker; 'exclude' leaves them out; 'only' runs just "
        "them (the first pass of ./dev test)",
    )


def _distributed(config: pytest.Config) -> bool:
    """The session runs on several xdist workers side by side (asked in the controller or in
    one of the workers)."""
    workerinput: dict[str, object] | None = getattr(config, "workerinput", None)
    if workerinput is not None:
        return int(str(workerinput["workercount"])) > 1
    return len(getattr(config.option, "tx", None) or []) > 1


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "serial: must not run beside any other test (e.g. it restarts the shared PostgreSQL): "
        "left out of a run on several xdist workers, run by --serial=only",
    )
    # xdist's own marker, known here too so that --strict-markers accepts it with -p no:xdist
    config.addinivalue_line("markers", "xdist_group(name): run the group's tests on one worker")
    if config.getoption("serial") == "only" and _distributed(config):
        raise pytest.UsageError("--serial=only runs tests that must run alone: use -n 0")
    # -n alone means --dist load, which ignores xdist_group: loadgroup is load that keeps
    # a group on one worker (tests/deploy/test_db_roles.py: cluster-wide roles)
    if getattr(config.option, "dist", None) == "load":
        config.option.dist = "loadgroup"


def _deselected_by_serial(config: pytest.Config, item: pytest.Item) -> bool:
    mode = config.getoption("serial")
    marked = item.get_closest_marker("serial") is not None
    if mode == "only":
        return not marked
    return marked and (mode == "exclude" or _distributed(config))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the tests parametrized with a backend ``REFGATE_TEST_BACKENDS`` leaves out,
    and the tests that ``--serial`` (or a run on several workers) leaves out."""
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    serial_left_out = 0
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("backend") if callspec is not None else None
        if backend is not None and backend not in BACKENDS:
            dropped.append(item)
        elif _deselected_by_serial(config, item):
            dropped.append(item)
            serial_left_out += config.getoption("serial") == "auto"
        else:
            keep.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
    workeroutput: dict[str, object] | None = getattr(config, "workeroutput", None)
    if workeroutput is not None:  # for the controller's summary below
        workeroutput["serial_left_out"] = serial_left_out


_SERIAL_LEFT_OUT: list[int] = []


@pytest.hookimpl(optionalhook=True)  # an xdist hook: absent with -p no:xdist
def pytest_testnodedown(node: object, error: object) -> None:
    """xdist controller: note how many serial tests a worker left out (each sees them all)."""
    output: dict[str, object] = getattr(node, "workeroutput", {})
    _SERIAL_LEFT_OUT.append(int(str(output.get("serial_left_out", 0))))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    left_out = max(_SERIAL_LEFT_OUT, default=0)
    if left_out:
        terminalreporter.write_line(
            f"{left_out} test(s) marked serial were left out of this run on several workers: "
            "they must run alone (pytest --serial=only -n 0, the first pass of ./dev test)",
            yellow=True,
        )


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


def _asyncpg_url(url: str, database: str) -> str:
    base = _plain(url).rsplit("/", 1)[0]
    return f"{base.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{database}"


async def _pg_admin(sql: str) -> None:
    conn = await asyncpg.connect(_plain(PG_ADMIN_URL), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _pg_reachable() -> bool:
    try:
        asyncio.run(_pg_admin("SELECT 1"))
        return True
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str | None]:
    if not _pg_reachable():
        if REQUIRE_PG:
            pytest.fail(
                f"PostgreSQL is required (REFGATE_REQUIRE_POSTGRES=1) but {PG_ADMIN_URL} "
                "is not reachable"
            )
        yield None
        return
    name = f"refgate_tpl_{os.getpid()}"
    asyncio.run(_pg_admin(f"DROP DATABASE IF EXISTS {name}"))
    asyncio.run(_pg_admin(f"CREATE DATABASE {name}"))
    upgrade(Settings(env="test", database_url=_asyncpg_url(PG_ADMIN_URL, name)))
    yield name
    asyncio.run(_pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("sqlite-template")
    upgrade(Settings(env="test", data_dir=data_dir))
    return data_dir / "refgate.db"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        target = tmp_path / "data" / "refgate.db"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, target)
        yield f"sqlite+aiosqlite:///{target}"
        return
    pg_name: str | None = request.getfixturevalue("pg_template")
    if pg_name is None:
        pytest.skip("PostgreSQL is not reachable")
    name = f"refgate_t_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_admin(f"CREATE DATABASE {name} TEMPLATE {pg_name} STRATEGY FILE_COPY"))
    yield _asyncpg_url(PG_ADMIN_URL, name)
    asyncio.run(_pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        env="test",
        data_dir=tmp_path / "data",
        database_url=database_url,
        audit=AuditSettings(sequencer_enabled=False, checkpoint_interval=0),
        webhooks=WebhookSettings(dispatcher_enabled=False),
    )


@pytest.fixture
def server_cli_env(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """The environment ``refgate-server`` reads, for calling ``app.server_cli.main``."""
    monkeypatch.setenv("REFGATE_DATABASE_URL", database_url)
    monkeypatch.setenv("REFGATE_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[object]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: object) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


@pytest.fixture
async def tf(app: object, client: httpx.AsyncClient) -> TaskForce:
    """A seeded task force: shelter, legal aid, police (LE), an unrelated NGO, auditor, admin."""
    return await TaskForce.create(app, client)
