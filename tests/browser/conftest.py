"""Browser tests: Playwright drives Debian's chromium against a live gateway (in a thread), whose
providers point at the upstream simulator, so the figures on the pages come from real requests.

`bash tests/browser/install.sh` installs chromium and axe-core (CI runs it before `make test`).
Without chromium the tests are skipped locally, and fail in CI (CI=true).

Screenshots of every page land in `test-artifacts/browser/` (git-ignored), one per page and width.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN_TOKEN
from tests.e2e.conftest import Sim, provider_env
from tests.support.accounts import Seeded, add_token, seed_account
from tests.support.databases import fresh_postgres_database
from tests.support.server import serve_in_thread
from tollgate.app import TollgateApp, create_app
from tollgate.settings import load_settings
from tollgate.sim import create_sim_app

CHROMIUM = Path("/usr/bin/chromium")
HERE = Path(__file__).parent
AXE = HERE / "node_modules" / "axe-core" / "axe.min.js"
ARTIFACTS = HERE.parent.parent / "test-artifacts" / "browser"
READ = frozenset({"read"})
RUN = frozenset({"run"})
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}

if not CHROMIUM.exists() or not AXE.exists():
    message = "Debian chromium or axe-core missing: run `bash tests/browser/install.sh`"
    if os.environ.get("CI"):
        raise RuntimeError(message)
    pytest.skip(message, allow_module_level=True)

from playwright.sync_api import Browser, Page, sync_playwright  # noqa: E402


@dataclass
class Live:
    """A running gateway with one seeded account and a few more tokens."""

    url: str
    app: TollgateApp
    database_url: str
    account: Seeded
    read_only: str
    run_only: str
    other: Seeded

    @property
    def dashboard(self) -> str:
        return f"{self.url}/dashboard"


def off_loop(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call `function` in another thread: Playwright's sync API keeps an event loop running in
    this one, so `asyncio.run` (the seeding helpers) must run elsewhere."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(function, *args, **kwargs).result()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Per module, not per session: while Playwright runs, this thread has a running event loop,
    so every later test on the same worker that calls `asyncio.run` would fail. The browser
    modules form one xdist group (`pytestmark`), so they run back to back on one worker."""
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def sim_server() -> Iterator[Sim]:
    with serve_in_thread(create_sim_app()) as url:
        yield Sim(url)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'dash.db'}"
    else:
        database = fresh_postgres_database()  # created and dropped off Playwright's loop
        url = off_loop(database.__enter__)
        try:
            yield url
        finally:
            off_loop(database.__exit__, None, None, None)


def _start(tmp_path: Path, sim: Sim, database_url: str) -> Iterator[Live]:
    settings = load_settings(
        env={
            "TOLLGATE_DATA_DIR": str(tmp_path / "data"),
            "TOLLGATE_DATABASE_URL": database_url,
            "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN,
            **provider_env(sim.url),
        }
    )
    account = off_loop(seed_account, database_url, name="Acme Research", credits_cents=2_500)
    other = off_loop(seed_account, database_url, name="Someone Else", credits_cents=1_000)
    read_only = off_loop(add_token, database_url, account.account_id, permissions=READ)
    run_only = off_loop(add_token, database_url, account.account_id, permissions=RUN)
    app = create_app(settings)
    with serve_in_thread(app) as url:
        yield Live(url, app, database_url, account, read_only, run_only, other)


@pytest.fixture
def live(tmp_path: Path, sim_server: Sim, database: str) -> Iterator[Live]:
    """A gateway on SQLite and on PostgreSQL (tests whose figures come from the database)."""
    yield from _start(tmp_path, sim_server, database)


@pytest.fixture
def live_sqlite(tmp_path: Path, sim_server: Sim) -> Iterator[Live]:
    """A gateway on SQLite only (tests of sessions and pages, where the engine does not matter)."""
    yield from _start(tmp_path, sim_server, f"sqlite:///{tmp_path / 'dash.db'}")


@pytest.fixture
def new_page(browser: Browser) -> Iterator[Callable[..., Page]]:
    """Pages in fresh browser contexts (separate cookie jars), desktop width unless told."""
    contexts: list[Any] = []

    def make(viewport: dict[str, int] | None = None) -> Page:
        context = browser.new_context(viewport=viewport or DESKTOP)  # type: ignore[arg-type]
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15_000)
        return page

    yield make
    for context in contexts:
        context.close()


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def check_accessibility(page: Page) -> None:
    """Run axe-core (WCAG 2 A/AA rules) in the page; fail on any violation, listing them."""
    page.evaluate(AXE.read_text() + "\n;0")
    result = page.evaluate(
        """async () => {
            const r = await axe.run(document, {runOnly: {type: 'tag',
                values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']}});
            return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))}));
        }"""
    )
    assert result == [], f"accessibility violations on {page.url}: {result}"


def sign_in(page: Page, live: Live, token: str | None = None) -> None:
    page.goto(f"{live.dashboard}/sign-in")
    page.get_by_label("API token").fill(token or live.account.token)
    page.get_by_role("button", name="Sign in").click()
