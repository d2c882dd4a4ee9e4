"""A real browser for the dashboard's tests: Debian's Chromium driven by its chromedriver through
Selenium 4, headless, offline, one fresh profile per test.

Why these choices: the dashboard's promises that matter to a person (the live regions update
without a reload, no script is blocked by the Content-Security-Policy, a page fits a phone) can
only be seen in a browser. Nothing may be downloaded here (the network is closed and CI must not
depend on it): the driver and the browser are the system's, named by path, so Selenium Manager is
never asked for anything (it is made to fail loudly if it ever is); Chromium's own calls home
(component updates, sync, background networking, QUIC probes) are switched off by flags.

Sizes are switched with the DevTools protocol's device-metrics override rather than window
resizing, so one browser serves both the 1280x800 desk and the 390x844 phone (as a mobile
viewport: the page's `<meta name="viewport">` is honoured, as on a real phone).

When Chromium or chromedriver is missing the test skips with the reason, unless
ORCHESTRA_REQUIRE_BROWSER=1 (CI sets it once it installed them: .ci/run), then it fails.
"""
from __future__ import annotations

import base64
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SIZES: dict[str, tuple[int, int]] = {"desktop": (1280, 800), "phone": (390, 844)}
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
         "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-extensions", "--disable-default-apps",
         "--metrics-recording-only", "--hide-scrollbars", "--mute-audio")
WAIT = 30.0  # seconds a condition may take before a wait fails (never a fixed sleep)


def unavailable(reason: str) -> None:
    """Skip the browser test, or fail it where a browser is required (CI)."""
    if os.environ.get("ORCHESTRA_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (ORCHESTRA_REQUIRE_BROWSER=1: the browser tests must run)", pytrace=False)
    pytest.skip(reason)


def missing() -> str | None:
    """Why no browser can start here, or None."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (path.is_file() and os.access(path, os.X_OK)):
            return f"{path} is missing: apt-get install chromium chromium-driver (package {package})"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install -e '.[test]'"
    return None


def _forbid_selenium_manager() -> None:
    """Selenium Manager downloads drivers and browsers: with both paths given it is never needed,
    and if a Selenium upgrade ever called it anyway, the test must say so, not hang on the network."""
    from selenium.webdriver.common import selenium_manager

    def refuse(self: object, args: list[str]) -> dict[str, str]:
        raise RuntimeError(f"Selenium Manager was invoked ({args}); tests/web/browser.py names both paths")

    selenium_manager.SeleniumManager.binary_paths = refuse  # type: ignore[method-assign]


@dataclass
class Browser:
    """One headless Chromium, with the checks every dashboard page must pass."""

    driver: Any  # selenium.webdriver.Chrome (imported lazily: selenium may be absent)
    screenshots: Path
    shots: list[Path] = field(default_factory=list)
    size: str = "desktop"

    # ----------------------------------------------------------------------------- navigation
    def resize(self, size: str) -> None:
        """The viewport of `size` ("desktop" 1280x800, "phone" 390x844 as a mobile device)."""
        width, height = SIZES[size]
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": size == "phone"})
        self.size = size

    def as_user(self, user: str | None) -> None:
        """Send the reverse proxy's X-Forwarded-User on every request from now on (the test's server
        trusts 127.0.0.1 as its proxy, tests/web/conftest.py), or stop sending it."""
        self.driver.execute_cdp_cmd("Network.enable", {})
        self.driver.execute_cdp_cmd("Network.setExtraHTTPHeaders",
                                    {"headers": {"X-Forwarded-User": user} if user else {}})

    def open(self, url: str) -> None:
        """Load `url` and wait until the document (and its deferred script) has run."""
        self.driver.get(url)
        self.wait(lambda d: d.execute_script("return document.readyState") == "complete", f"{url} to load")

    def click_link(self, css: str) -> str:
        """Follow the first link matching `css`; returns the URL it went to."""
        from selenium.webdriver.common.by import By

        def follow(driver: Any) -> str:  # in one go: a live update may replace the link meanwhile (stale: retried)
            link = driver.find_element(By.CSS_SELECTOR, css)
            target = link.get_attribute("href")
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", link)
            link.click()
            return str(target)

        href = self.wait(follow, f"a link {css!r} to follow")
        self.wait(lambda d: d.current_url == href and d.execute_script("return document.readyState") == "complete",
                  f"{href} to load after the click")
        return str(href)

    def wait(self, condition: Any, what: str, timeout: float = WAIT) -> Any:
        """WebDriverWait on `condition(driver)`; the failure names `what` and the current page."""
        from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        waiter = WebDriverWait(self.driver, timeout, poll_frequency=0.1,
                               ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))
        try:
            return waiter.until(condition)
        except Exception as exc:
            name = self.screenshot(f"failed-{uuid.uuid4().hex[:6]}")
            raise AssertionError(f"waited {timeout:.0f} s for {what} on {self.driver.current_url} "
                                 f"(screenshot {name}): {type(exc).__name__}") from None

    def attribute(self, element_id: str, name: str) -> str | None:
        return self.driver.execute_script(
            "var e = document.getElementById(arguments[0]); return e ? e.getAttribute(arguments[1]) : null;",
            element_id, name)

    def text(self, element_id: str) -> str:
        return self.driver.execute_script(
            "var e = document.getElementById(arguments[0]); return e ? e.textContent : '';", element_id)

    # ----------------------------------------------------------------------------- reload detection
    def mark(self) -> str:
        """Put a marker on `window`: it survives live updates and vanishes with any reload."""
        token = uuid.uuid4().hex
        self.driver.execute_script("window.__orchestraMarker = arguments[0];", token)
        return token

    def still_marked(self, token: str) -> bool:
        return self.driver.execute_script("return window.__orchestraMarker || null;") == token

    # ----------------------------------------------------------------------------- checks
    def console_errors(self) -> list[str]:
        """SEVERE browser-console entries since the last call (a CSP refusal, a failed fetch, a JS error)."""
        return [f"{e.get('source', '?')}: {e.get('message', '')}" for e in self.driver.get_log("browser")
                if e.get("level") == "SEVERE"]

    def overflow(self) -> tuple[int, int]:
        """(document.body.scrollWidth, the layout viewport's width): the body must not be wider than
        the viewport; wide tables scroll inside their .table-wrap instead. On an emulated phone a too
        wide page makes Chromium zoom out, which widens window.innerWidth to the page: the layout
        viewport (documentElement.clientWidth, the device's 390 px) is the honest measure."""
        width, inner = self.driver.execute_script(
            "return [document.body.scrollWidth, Math.min(window.innerWidth, document.documentElement.clientWidth)];")
        return int(width), int(inner)

    def screenshot(self, name: str) -> Path:
        """The whole page (beyond the viewport) as PNG under the screenshots directory."""
        path = self.screenshots / f"{name}-{self.size}.png"
        try:
            metrics = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
            content = metrics.get("cssContentSize") or metrics["contentSize"]
            width, height = SIZES[self.size]
            shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": max(width, content["width"]),
                         "height": min(max(height, content["height"]), 8000), "scale": 1}})
            path.write_bytes(base64.b64decode(shot["data"]))
        except Exception:  # a page mid-navigation: the viewport is still worth having
            self.driver.save_screenshot(str(path))
        self.shots.append(path)
        return path

    def check_page(self, name: str) -> list[str]:
        """Screenshot the current page and return its problems: console errors, and a body wider
        than a phone's viewport. Call after `open`/`click_link`; the caller asserts the list is empty."""
        problems = [f"{name} ({self.size}): console: {e}" for e in self.console_errors()]
        title = self.driver.title
        if re.match(r"\d{3} ", title):  # app.py's error page: "404 · Orchestra"
            problems.append(f"{name} ({self.size}): an error page at {self.driver.current_url}: {title}")
        if self.size == "phone":
            width, inner = self.overflow()
            if width > inner:
                problems.append(f"{name} (phone): the body is {width}px wide in a {inner}px viewport")
        self.screenshot(name)
        return problems


def start(tmp_path: Path) -> Browser:
    """A fresh headless Chromium (its own profile under tmp_path), or a skip/fail saying why not."""
    reason = missing()
    if reason:
        unavailable(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    _forbid_selenium_manager()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument("--window-size={},{}".format(*SIZES["desktop"]))
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    try:
        driver = webdriver.Chrome(service=service, options=options)
    except Exception as exc:  # a broken install: name it (the driver's log has the details)
        unavailable(f"chromium did not start ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                    f"see {tmp_path / 'chromedriver.log'}")
        raise
    driver.set_page_load_timeout(WAIT)
    screenshots = tmp_path / "screenshots"
    screenshots.mkdir(exist_ok=True)
    browser = Browser(driver, screenshots)
    browser.resize("desktop")
    print(f"\nscreenshots: {screenshots}")
    return browser


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    """A headless Chromium for one test; quit afterwards, its profile removed."""
    running = start(tmp_path)
    try:
        yield running
    finally:
        running.driver.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)
