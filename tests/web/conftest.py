"""Fixtures of the web page tests: the real server (uvicorn in a thread, as
in tests/service) on a repository of folded models, and headless Chromium.

The browser tests are skipped, saying why, only where Chromium or its
driver is not installed; .ci/run installs both.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

# the service tests' harness and model builders, and what they import from tests/
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))

from browser import chrome, missing
from service_harness import RunningServer, base_settings, run_server
from web_models import web_repo


@pytest.fixture(scope="session")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return web_repo(tmp_path_factory.mktemp("web-models"))


@pytest.fixture(scope="session")
def server(repo: Path) -> Iterator[RunningServer]:
    """The server with an API token set (base_settings), as a guarded deployment runs."""
    with run_server(base_settings(repo)) as running:
        yield running


@pytest.fixture(scope="session")
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    why = missing()
    if why:
        pytest.skip(f"browser tests need headless Chromium: {why}")
    driver = chrome()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture()
def page(browser: Any) -> Any:
    """The browser with its cache cleared and its network log on."""
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.clearBrowserCache", {})
    return browser
