"""A real headless Chromium for tests, driven by Selenium through Debian's chromedriver.

Needs the Debian packages `chromium` and `chromium-driver` (/usr/bin/chromium,
/usr/bin/chromedriver) and the `selenium` package.  The driver path is given,
so Selenium Manager never downloads anything, and Chromium's own background
traffic (component updates, sync, QUIC probes) is switched off: the machine has
no network, and a test must see only what the page itself asks for.
"""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars"]
INSTALL = "apt-get install -y chromium chromium-driver, and the test extra (selenium)"


@contextmanager
def chromium(width: int = 1280, height: int = 1000) -> Iterator:
    """A Selenium driver on a fresh headless Chromium profile, quit (and removed) after."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail(f"selenium is not installed: {INSTALL}")
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail(f"no {CHROMIUM} or {CHROMEDRIVER}: {INSTALL}")
    profile = tempfile.mkdtemp(prefix="tally-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS + [f"--user-data-dir={profile}", f"--window-size={width},{height}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console(driver) -> list[dict]:
    """Console messages (and page errors) since the last call."""
    return driver.get_log("browser")


def requested_urls(driver) -> list[str]:
    """Every URL the page asked the network stack for since the last call (DevTools log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def full_page_png(driver) -> bytes:
    """A screenshot of the whole page, beyond the window's height."""
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics["cssContentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}})
    return base64.b64decode(shot["data"])


COLOURS_JS = """
const [data, done] = arguments;
const image = new Image();
image.onload = () => {
  const canvas = document.createElement('canvas');
  canvas.width = image.width; canvas.height = image.height;
  const context = canvas.getContext('2d');
  context.drawImage(image, 0, 0);
  const pixels = context.getImageData(0, 0, image.width, image.height).data;
  const seen = new Set();
  for (let i = 0; i < pixels.length; i += 4)
    seen.add((pixels[i] << 16) | (pixels[i + 1] << 8) | pixels[i + 2]);
  done({width: image.width, height: image.height, colours: seen.size});
};
image.onerror = () => done(null);
image.src = 'data:image/png;base64,' + data;
"""


def png_facts(driver, png: bytes) -> dict | None:
    """Width, height and distinct colours of a PNG, decoded by the browser in a new blank tab
    (the page under test stays open in its own)."""
    page = driver.current_window_handle
    driver.switch_to.new_window("tab")
    try:
        return driver.execute_async_script(COLOURS_JS, base64.b64encode(png).decode())
    finally:
        driver.close()
        driver.switch_to.window(page)
