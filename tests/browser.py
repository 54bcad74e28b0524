"""Debian's headless Chromium driven through chromedriver (selenium), for the console tests.

``make system-deps`` installs both (packages ``chromium`` and ``chromium-driver``); selenium is
pointed at them, so it never looks for or downloads a browser of its own.
"""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator["object"]:
    """A headless Chromium window (``--headless --no-sandbox --disable-gpu``), closed afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser = CHROMIUM if CHROMIUM.exists() else Path(shutil.which("chromium") or CHROMIUM)
    driver_path = CHROMEDRIVER if CHROMEDRIVER.exists() else Path(shutil.which("chromedriver") or CHROMEDRIVER)
    if not browser.exists() or not driver_path.exists():
        pytest.fail("chromium and chromedriver are not installed: run `make system-deps` "
                    "(apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(browser)
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", f"--window-size={width},{height}",
                "--disable-dev-shm-usage", "--lang=en-GB"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(driver_path)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def log_in(driver, base: str, token: str, next_path: str = "/") -> None:
    """Open ``next_path``, which redirects to the login form; type the token and submit."""
    from selenium.webdriver.common.by import By

    driver.get(base + next_path)
    assert "/login" in driver.current_url, f"expected the login page; got {driver.current_url}"
    driver.find_element(By.NAME, "token").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "form[action='/login'] button[type=submit]").click()
