"""Headless Chromium for the site's tests and screenshots: the system's browser and driver, no download.

Selenium would fetch a browser and a driver through Selenium Manager when none is given; here the
paths are always given (``/usr/bin/chromium`` and ``/usr/bin/chromedriver`` from the Debian packages
``chromium`` and ``chromium-driver``, or ``$XLPREF_CHROMIUM`` / ``$XLPREF_CHROMEDRIVER``), so nothing
is downloaded and a machine without them says so.

Example::

    from harness.results.browser import chromium
    with chromium(width=1400, height=900) as driver:
        driver.get("file:///.../results/site/index.html")
        driver.save_screenshot("docs/img/leaderboard.png")
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def chromium_paths() -> tuple[Path, Path] | None:
    """(browser, driver) when both are installed, else None."""
    browser = os.environ.get("XLPREF_CHROMIUM") or next(
        (found for name in CHROMIUM_CANDIDATES if (found := shutil.which(name))), None)
    driver = os.environ.get("XLPREF_CHROMEDRIVER") or shutil.which("chromedriver")
    if not browser or not driver:
        return None
    return Path(browser), Path(driver)


@contextlib.contextmanager
def chromium(*, width: int = 1400, height: int = 900) -> Iterator:
    """A headless Chromium WebDriver on the system's browser and driver; quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    paths = chromium_paths()
    if paths is None:
        raise RuntimeError("no chromium and chromedriver on PATH (apt-get install chromium chromium-driver)")
    browser, driver_path = paths
    options = webdriver.ChromeOptions()
    options.binary_location = str(browser)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={width},{height}", "--allow-file-access-from-files"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=str(driver_path)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
