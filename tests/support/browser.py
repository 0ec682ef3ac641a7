"""A real browser for tests that look at a web page as a user would: Debian's headless Chromium
driven by Selenium through Debian's chromedriver (scripts/setup --dev installs both).

The machine has no internet: everything Chromium would fetch by itself (updates, sync, field
trials) is off, and Selenium is given both binaries so it never looks for its own.
"""

from __future__ import annotations

import base64
import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--window-size=1600,1000")


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator[Any]:
    """Headless Chromium with its profile in `profile`; quit on exit."""
    binary, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert binary and driver_path, "chromium and chromium-driver are missing: run scripts/setup --dev"
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def basic_auth(driver: Any, user: str, password: str | None) -> None:
    """Send HTTP basic credentials with every request of this browser (CDP), as if typed in;
    `password` None sends none again."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    headers = {"Authorization": f"Basic {token}"} if password is not None else {}
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": headers})


def fetch_status(driver: Any, url: str, headers: dict[str, str]) -> int:
    """The HTTP status the browser gets for `url` with exactly `headers` (a fetch from the page)."""
    script = ("const done = arguments[arguments.length - 1];"
              "fetch(arguments[0], {headers: arguments[1], credentials: 'omit'})"
              ".then(r => done(r.status), e => done(String(e)));")
    status = driver.execute_async_script(script, url, headers)
    assert isinstance(status, int), f"fetch {url} failed: {status}"
    return status


def table_rows(driver: Any, selector: str) -> list[dict[str, str]]:
    """The rows of an HTML table as {header text: cell text} (the text as written, whatever CSS
    does to it: a scrolling table's own header row is hidden).

    The table is read by one script inside the page, so a redraw (Flower's tables refresh
    themselves) cannot swap its elements out half-way through the read, as reading it element by
    element over WebDriver would (a stale element reference)."""
    script = """
        const table = document.querySelector(arguments[0]);
        if (!table) { return null; }
        const text = el => (el.textContent || "").split(/\\s+/).filter(Boolean).join(" ");
        const headers = Array.from(table.querySelectorAll("thead th"), text);
        return [headers, Array.from(table.querySelectorAll("tbody tr"),
                                    tr => Array.from(tr.querySelectorAll("td"), text))];
    """
    found = driver.execute_script(script, selector)
    assert found is not None, f"no table {selector!r} on {driver.current_url}"
    headers, rows = found
    return [dict(zip(headers, cells)) for cells in rows if len(cells) == len(headers)]
