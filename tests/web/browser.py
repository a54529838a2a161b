"""Headless Chromium for the browser tests, Debian's build, driven by Selenium.

Nothing is downloaded: the browser and its driver are the system's
(``apt-get install chromium chromium-driver``, which .ci/run does), named
by path, so Selenium Manager never runs. The performance log records every
request the page makes (``requests_made``). The helpers below are what the
browser tests share: every wait is a ``WebDriverWait`` for something to
appear (60 s guards for a loaded machine), never a sleep.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

CHROMIUM = os.environ.get("BNFOLD_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("BNFOLD_CHROMEDRIVER", "/usr/bin/chromedriver")


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (Path(path).is_file() and os.access(path, os.X_OK)) and not shutil.which(path):
            return f"{path} is not installed (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


def chrome(width: int = 1400, height: int = 1000) -> Any:
    """A headless Chromium session that logs the page's network events."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager, should anything call it
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-sync",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    return driver


def requests_made(driver: Any) -> list[str]:
    """The URLs of every request the browser sent since the last call."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


WAIT_S = 60


def wait(driver: Any) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S)


def visit(driver: Any, url: str, path: str) -> None:
    """Load ``path`` of the server at ``url`` afresh and wait until the page has drawn it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    driver.get("about:blank")
    requests_made(driver)  # start this test's network log empty
    driver.get(f"{url}{path}")
    wait(driver).until(EC.presence_of_element_located((By.CSS_SELECTOR, "body[data-ready]")))


def assert_only_this_server(driver: Any, url: str) -> list[str]:
    urls = requests_made(driver)
    outside = [u for u in urls if not u.startswith((f"{url}/", "data:", "blob:"))]
    assert not outside, f"requests outside the server: {outside}"
    return urls


def css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def value(element: Any) -> float:
    return float(element.get_attribute("data-value"))
