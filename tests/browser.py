"""Debian's headless chromium driven by Selenium, for tests of pages streamscore writes."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# The machine's network is closed and the browser must not try it: no sandbox (root in CI),
# no GPU, no background traffic, a fresh profile each time.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,2000",
)


def browser_paths() -> tuple[str, str]:
    """Chromium and chromedriver, which `make system-deps` installs; fails loudly without them."""
    chromium = shutil.which("chromium") or CHROMIUM
    driver = shutil.which("chromedriver") or CHROMEDRIVER
    for path in (chromium, driver):
        assert Path(path).exists(), f"{path} is missing: run `make system-deps`"
    return chromium, driver


@contextmanager
def chromium(profile_parent: Path) -> Iterator[webdriver.Chrome]:
    """A headless Chromium with a fresh profile under `profile_parent`; quit on exit."""
    binary, driver_path = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in FLAGS:
        options.add_argument(flag)
    profile = profile_parent / "chromium-profile"
    profile.mkdir(exist_ok=True)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        driver.quit()


def wait_for_charts(driver: webdriver.Chrome, count: int, timeout_s: float = 60) -> None:
    """Wait until `count` plotly charts have drawn their SVG."""
    WebDriverWait(driver, timeout_s).until(
        lambda d: (
            d.execute_script(
                "return document.querySelectorAll('.js-plotly-plot svg.main-svg').length > 0 && "
                "[...document.querySelectorAll('.plotly-graph-div')]"
                ".filter(g => g.querySelector('svg.main-svg') && g._fullLayout).length"
            )
            >= count
        )
    )


def screenshot_report(driver: webdriver.Chrome, page: Path, out: Path) -> None:
    """Open a report, wait for its first charts, and save a screenshot of the top of it."""
    driver.set_window_size(1280, 1500)
    driver.get(page.resolve().as_uri())
    wait_for_charts(driver, 4)
    out.parent.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(out)), f"could not write {out}"
