"""The web UI in a real browser: headless Chromium (the distribution's package) driven by Selenium through the
distribution's chromedriver, against ``animatediff ui``'s page served on a free loopback port.

Screenshots go to ``test-artifacts/ui/`` (``ANIMATEDIFF_TEST_ARTIFACTS`` elsewhere); docs/ui.png is a copy of
``page-after-generate.png``."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import pytest

from animatediff import bundled

CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"
pytestmark = [
    pytest.mark.skipif(not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()),
                       reason="headless Chromium is not installed (apt-get install chromium chromium-driver; .ci/run does)"),
    pytest.mark.skipif(not bundled.is_available(), reason="the bundled demo model is not installed"),
]
ARTIFACTS = Path(os.environ.get("ANIMATEDIFF_TEST_ARTIFACTS") or Path(__file__).parents[1] / "test-artifacts") / "ui"
# the closed network otherwise stalls Chromium on its own background requests
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1700")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    pytest.importorskip("gradio", reason="the [ui] extra (Gradio) is not installed")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the [ui] extra's test tools)")
    from selenium.webdriver.chrome.service import Service

    from animatediff.ui import make_studio
    from animatediff.ui.app import launch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    studio = make_studio(None, tmp_path_factory.mktemp("browser-outputs"), device="cpu", max_queue=4)
    demo = launch(studio, port=port, block=False)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every request the page makes
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}"):
        options.add_argument(flag)
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never fetch a driver or browser
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        driver.get(demo.local_url)
        yield Page(driver, studio)
    finally:
        driver.quit()
        demo.close()
        studio.close()


class Page:
    def __init__(self, driver, studio):
        self.driver, self.studio = driver, studio

    def find(self, css: str, timeout: float = 30):
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait
        from selenium.webdriver.common.by import By

        return WebDriverWait(self.driver, timeout).until(ec.presence_of_element_located((By.CSS_SELECTOR, css)))

    def value(self, css: str) -> str:
        return self.find(css).get_attribute("value")

    def type(self, css: str, text) -> None:
        from selenium.webdriver.common.keys import Keys

        element = self.find(css)
        element.click()
        element.send_keys(Keys.CONTROL, "a")
        element.send_keys(Keys.DELETE)
        element.send_keys(str(text))
        element.send_keys(Keys.TAB)  # blur: Gradio takes the value on change

    def click(self, css: str) -> None:
        from selenium.common.exceptions import ElementClickInterceptedException
        from selenium.webdriver.common.by import By

        try:
            self.find(css).click()
        except ElementClickInterceptedException:  # an error toast (e.g. the bad-width one) lies over it: close it, as a user would
            for button in self.driver.find_elements(By.CSS_SELECTOR, ".toast-close"):
                if button.is_displayed():
                    button.click()
            time.sleep(0.5)  # the toast's fade-out
            self.find(css).click()

    def status(self) -> str:
        return self.value("#status textarea")

    def wait_status(self, predicate, timeout: float = 120, every: float = 0.05) -> list[str]:
        """Poll the status box until ``predicate(text)``; returns every distinct text seen on the way."""
        seen, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.status()
            if not seen or seen[-1] != text:
                seen.append(text)
            if predicate(text):
                return seen
            time.sleep(every)
        self.shot("status-timeout")
        raise AssertionError(f"status never matched; saw {seen}")

    def shot(self, name: str) -> Path:
        path = ARTIFACTS / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path


def test_generate_see_progress_cancel_and_reload_settings(page):
    # the page opens with the bundled family selected
    assert page.value("#w-model input") == "base (bundled)"
    assert page.value("#w-motion_module input") == "demo (bundled)"
    page.shot("page-loaded")
    from selenium.webdriver.common.by import By  # the control units are tabs of the page (tests/test_ui.py tests them)

    tabs = {t.get_attribute("textContent").strip() for t in page.driver.find_elements(By.CSS_SELECTOR, "button")}
    assert {"Image to video", "SparseCtrl", "IP-Adapter"} <= tabs, tabs  # tabs past the page width are in its overflow menu

    # a bad field: one line naming the widget, no traceback
    page.type("#w-width input", 65)
    page.click("#generate")
    page.wait_status(lambda t: t.startswith("error:"), timeout=30)
    assert page.status() == "error: Width 65: must be a positive multiple of 8"
    page.type("#w-width input", 64)

    # generate: progress with an ETA appears, then the animation
    page.type("#w-prompt textarea", "a yellow star moving left on a purple checkered background")
    page.type("#w-num_frames input", 8)
    page.type("#w-steps input", 40)
    page.type("#w-seed input", 42)
    page.click("#generate")
    seen = page.wait_status(lambda t: ": done in " in t)
    assert any(": step " in t and "ETA" in t for t in seen), seen
    src = page.find("#preview img").get_attribute("src")
    assert src and ".gif" in src
    page.find("#downloads a")  # download links
    page.shot("page-after-generate")

    # a second, long job: cancelled within a step of asking
    page.type("#w-steps input", 900)
    page.click("#generate")
    page.wait_status(lambda t: ": step " in t)
    page.click("#cancel")
    seen = page.wait_status(lambda t: "cancelled" in t, timeout=60)
    assert "cancelled after step" in seen[-1]
    page.shot("page-after-cancel")

    # reload the first result's settings from its sidecar
    page.type("#w-prompt textarea", "something else")
    page.type("#w-steps input", 3)
    assert page.value("#past input").endswith(".gif")  # the history lists the new result first
    page.click("#load-settings")
    page.wait_status(lambda t: t.startswith("settings of"), timeout=30)
    assert page.value("#w-prompt textarea") == "a yellow star moving left on a purple checkered background"
    assert page.value("#w-steps input") == "40" and page.value("#w-seed input") == "42"
    page.shot("page-after-reload-settings")

    # nothing the page loaded came from anywhere but this server (fonts, scripts, analytics included)
    host = page.driver.current_url.split("/")[2]
    requested = {json.loads(e["message"])["message"].get("params", {}).get("request", {}).get("url", "")
                 for e in page.driver.get_log("performance")}
    network = {u for u in requested if u.startswith(("http:", "https:", "ws:", "wss:"))}  # not chrome://, data:, blob:
    outside = sorted(u for u in network if not u.startswith((f"http://{host}/", f"ws://{host}/")))
    assert not outside, outside
    assert any(u.startswith(f"http://{host}/") for u in network)  # the log did record the page's own requests
