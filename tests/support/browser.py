"""Headless Chromium for end-to-end tests, driven by Playwright's sync API.

Why Debian's Chromium and not ``playwright install``: the machine has no way out to
Playwright's download servers, so the tests launch ``/usr/bin/chromium`` (``apt-get
install chromium``) through Playwright with flags that keep it off the network (no
component updates, no sync, no background fetches: the closed network would refuse
them and slow every start-up).

Each browser session gets a fresh user-data directory (no cookies, cache or
permissions carried over between users or tests). When Chromium or the ``playwright``
package is missing, :func:`require_browser_tools` skips the test when run by hand and
fails it when ``RELAYDESK_REQUIRE_TOOLS=1`` (as in CI), so a missing install step
cannot hide behind a green run.

Playwright's sync API keeps an asyncio loop running on the test thread, which makes
Django refuse ORM calls there (``SynchronousOnlyOperation``). The ``playwright_driver``
fixture sets ``DJANGO_ALLOW_ASYNC_UNSAFE`` only while the driver runs: the ORM is
still used from one thread at a time, so this is safe here. Code that itself runs an
event loop (the DNS checks use ``asyncio.run``) cannot run on that thread while the
driver is up: call it through :func:`off_the_event_loop`.

Usage in a test module::

    from tests.support.browser import browser_session  # noqa: F401 - fixture
    from tests.support.browser import playwright_driver  # noqa: F401 - fixture

    @pytest.mark.browser
    @pytest.mark.django_db(transaction=True)
    def test_x(live_server, browser_session):
        page = browser_session()
        page.goto(live_server.url)
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any
from typing import ParamSpec
from typing import TypeVar

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext
    from playwright.sync_api import Page
    from playwright.sync_api import Playwright

__all__ = (
    "CHROMIUM",
    "CHROMIUM_ARGS",
    "SCREENSHOT_DIR",
    "BrowserSession",
    "browser_session",
    "log_in",
    "playwright_driver",
    "off_the_event_loop",
    "require_browser_tools",
    "screenshot",
)

CHROMIUM = os.environ.get("RELAYDESK_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS: tuple[str, ...] = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
#: Where screenshots go: ``var/`` is gitignored.
SCREENSHOT_DIR = Path(__file__).resolve().parents[2] / "var" / "screenshots"
#: Milliseconds Playwright waits for an element or a navigation before failing.
DEFAULT_TIMEOUT_MS = 10_000
VIEWPORT = {"width": 1280, "height": 900}

BrowserSession = Callable[..., "Page"]
P = ParamSpec("P")
R = TypeVar("R")


def require_browser_tools() -> None:
    """Skip (by hand) or fail (``RELAYDESK_REQUIRE_TOOLS=1``) without Chromium or Playwright."""
    missing = []
    try:
        import playwright.sync_api  # noqa: F401 - only probing that it imports
    except ImportError:
        missing.append("the Python package playwright (pip install playwright)")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    if not missing:
        return
    reason = "browser tests need " + " and ".join(missing)
    if os.environ.get("RELAYDESK_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{reason}; RELAYDESK_REQUIRE_TOOLS=1 makes this an error", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def playwright_driver() -> Iterator[Playwright]:
    """One Playwright driver per test module (the browsers themselves are per session)."""
    require_browser_tools()
    from playwright.sync_api import sync_playwright

    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as driver:
            yield driver
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def browser_session(playwright_driver: Playwright) -> Iterator[BrowserSession]:
    """A factory: each call starts Chromium with a fresh profile and returns its page.

    Call it once per person in the story (requester, approver...): profiles share
    nothing, as two people on two machines would. Everything is closed at teardown.
    """
    contexts: list[BrowserContext] = []
    profiles: list[str] = []

    def start(**context_options: Any) -> Page:
        profile = tempfile.mkdtemp(prefix="relaydesk-chromium-")
        profiles.append(profile)
        options: dict[str, Any] = {"viewport": VIEWPORT, "locale": "en-GB"}
        options.update(context_options)
        context = playwright_driver.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=list(CHROMIUM_ARGS),
            **options,
        )
        contexts.append(context)
        context.set_default_timeout(DEFAULT_TIMEOUT_MS)
        page = context.pages[0] if context.pages else context.new_page()
        return page

    yield start
    for context in contexts:
        context.close()
    for profile in profiles:
        shutil.rmtree(profile, ignore_errors=True)


def off_the_event_loop(func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run ``func`` on a short-lived thread with no asyncio loop, and return its result.

    For test set-up that runs DNS checks (``asyncio.run``) while Playwright's loop is
    running on the test thread. The thread's database connection is closed after use;
    tests that use this need ``django_db(transaction=True)`` so the data is committed
    where the browser's server and the test thread see it.
    """
    from django.db import connections

    def call() -> R:
        try:
            return func(*args, **kwargs)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(call).result()


def log_in(page: Page, base_url: str, username: str, password: str) -> None:
    """Log in through the real login form, as a person would, and wait for the list."""
    page.goto(f"{base_url}/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{base_url}/requests/")


def screenshot(page: Page, name: str) -> Path:
    """Save a full-page PNG to ``var/screenshots/NAME.png`` and return its path."""
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOT_DIR / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
