"""End to end in a real browser: headless Chromium uploads an image, clicks Restore and sees
the before/after result appear; and its fake camera streams into the Webcam tab.

Needs the `selenium` package plus a Chromium and its chromedriver (Debian: `apt-get install
chromium chromium-driver`). Skips when any of them is missing. Paths can be given with
RESTORE_CHROMIUM and RESTORE_CHROMEDRIVER; the driver is never downloaded. Set
RESTORE_SCREENSHOTS=DIR to keep screenshots of the page.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from restore import ui  # noqa: E402
from restore.io.images import write_image  # noqa: E402


def _find(env: str, names: list[str]) -> str | None:
    if os.environ.get(env):
        return os.environ[env] if Path(os.environ[env]).is_file() else None
    return next((p for p in map(shutil.which, names) if p), None)


CHROMIUM = _find("RESTORE_CHROMIUM", ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"])
DRIVER = _find("RESTORE_CHROMEDRIVER", ["chromedriver"])

pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="needs Chromium and chromedriver (apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--disable-extensions", "--no-first-run",
                # a synthetic camera (a test pattern) that needs no permission prompt
                "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)  # an explicit driver: no download
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ui-browser")
    with pytest.MonkeyPatch.context() as mp:  # a small camera picture keeps the live test quick on a CPU
        mp.setattr(ui, "LIVE_CAMERA", {"video": {"width": {"ideal": 160}, "height": {"ideal": 120}}})
        demo = ui.build_demo(backend="torch", allow_untrained=True, engines_dir=tmp / "engines",
                             output_dir=tmp / "out")
    try:
        _, url, _ = ui.launch(demo, host="127.0.0.1", prevent_thread_lock=True, quiet=True)
        yield url
    finally:
        ui.close(demo)


def _shot(driver, name: str) -> None:
    folder = os.environ.get("RESTORE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / name))


def _upload_and_restore(driver, photo, timeout_shot: str) -> list:
    """Upload `photo` on the Image tab, click Restore, wait for the before/after pair and the
    download link; returns the natural sizes of the two result images."""
    wait = WebDriverWait(driver, 60)
    css = lambda sel: driver.find_elements(By.CSS_SELECTOR, sel)  # noqa: E731
    css("#img-input input[type=file]")[0].send_keys(str(photo))
    wait.until(lambda _: css("#img-input img"))  # uploaded and previewed
    css("#img-restore")[0].click()
    try:
        wait.until(lambda _: len(css("#img-result img")) >= 2 and css("#img-file a"))
    except TimeoutException:
        _shot(driver, timeout_shot)
        raise
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#img-result img'))"
        ".map(i => [i.naturalWidth, i.naturalHeight]);")


def test_upload_restore_and_see_the_result(app, browser, tmp_path):
    y, x = np.mgrid[0:32, 0:32].astype(np.float32) / 31
    photo = write_image(tmp_path / "photo.png", np.stack([x, y, 1 - x * y], -1))
    wait = WebDriverWait(browser, 60)
    css = lambda sel: browser.find_elements(By.CSS_SELECTOR, sel)  # noqa: E731

    browser.get(app)
    wait.until(lambda _: css("#img-input input[type=file]"))
    sizes = _upload_and_restore(browser, photo, "ui-browser-timeout.png")
    assert sizes == [[64, 64], [64, 64]]  # before (resized to the output) and after, ×2
    assert "photo-lipt-tiny-x2-sr" in css("#img-file")[0].text  # the full-fidelity download
    assert css("#img-file a")[0].get_attribute("href").endswith("photo-lipt-tiny-x2-sr.png")
    assert css("#backend-box textarea")[0].get_attribute("value") == "torch"
    assert "32×32 8-bit RGB → 64×64" in css("#img-info")[0].text
    assert not css(".toast-body.error")  # no error toast
    _shot(browser, "ui-image-tab.png")


def test_webcam_tab_streams_restored_frames(app, browser):
    # The webcam widget re-renders while it starts the camera: an element found a moment ago can
    # be gone, so every find-and-click is retried until it lands.
    wait = WebDriverWait(browser, 90, ignored_exceptions=(StaleElementReferenceException,))
    css = lambda sel: browser.find_elements(By.CSS_SELECTOR, sel)  # noqa: E731

    def click_last(found):
        elements = found()
        if not elements:
            return False
        elements[-1].click()
        return True

    browser.get(app)
    wait.until(lambda _: click_last(lambda: [t for t in css("button[role=tab]") if t.text.strip() == "Webcam"]))
    wait.until(lambda _: click_last(
        lambda: [e for e in css("#cam-input *") if e.text.strip() == "Click to Access Webcam"]))
    wait.until(lambda _: click_last(
        lambda: [b for b in css("#cam-input button") if b.is_displayed() and b.text.strip() == "Record"]))
    try:
        wait.until(lambda _: css("#cam-output img") and "restored" in css("#cam-stats")[0].text)
    except TimeoutException:
        _shot(browser, "ui-browser-webcam-timeout.png")
        raise
    stats = css("#cam-stats")[0].text
    assert "fps achieved (target 10)" in stats and "lipt-tiny-x2-sr on torch" in stats
    cam, out = browser.execute_script(
        "const v = document.querySelector('#cam-input video'), i = document.querySelector('#cam-output img');"
        "return [[v.videoWidth, v.videoHeight], [i.naturalWidth, i.naturalHeight]];")
    assert cam[0] > 0 and out == [2 * cam[0], 2 * cam[1]]  # a restored (×2) camera frame
    _shot(browser, "ui-webcam-tab.png")
    [b for b in css("#cam-input button") if b.is_displayed() and "Stop" in b.text][0].click()


def test_pick_iptv2_denoise_with_a_noise_level(app, browser, tmp_path):
    """The picker lists IPT-V2 per task; choosing denoise shows the noise slider and restores."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:32, 0:32].astype(np.float32) / 31
    noisy = np.clip(np.stack([x, y, 1 - x * y], -1) + rng.normal(0, 0.1, (32, 32, 3)), 0, 1)
    photo = write_image(tmp_path / "noisy.png", noisy.astype(np.float32))
    wait = WebDriverWait(browser, 60)
    css = lambda sel: browser.find_elements(By.CSS_SELECTOR, sel)  # noqa: E731
    visible = lambda sel: any(e.is_displayed() for e in css(sel))  # noqa: E731

    browser.get(app)
    wait.until(lambda _: css("#img-restorer input"))
    assert not visible("#extra-noise_level")  # LIPT (the default) takes no noise level
    css("#img-restorer input")[0].click()
    option = lambda: [li for li in css("li.item") if "iptv2 — denoise" in li.text]  # noqa: E731
    wait.until(lambda _: option())
    option()[0].click()
    wait.until(lambda _: visible("#extra-noise_level"))
    sizes = _upload_and_restore(browser, photo, "ui-browser-iptv2-timeout.png")
    assert sizes == [[32, 32], [32, 32]]  # same-size restoration
    assert "noisy-iptv2-tiny-x1-denoise" in css("#img-file")[0].text
    assert not css(".toast-body.error")
    _shot(browser, "ui-iptv2-denoise.png")


def test_self_ensemble_checkbox_restores_and_says_so(app, browser, tmp_path):
    y, x = np.mgrid[0:24, 0:40].astype(np.float32)
    photo = write_image(tmp_path / "ens.png", np.stack([np.sin(x / 3), np.cos(y / 2), x * y / 960], -1) * 0.5 + 0.5)
    wait = WebDriverWait(browser, 60)
    css = lambda sel: browser.find_elements(By.CSS_SELECTOR, sel)  # noqa: E731

    browser.get(app)
    wait.until(lambda _: css("#img-ensemble input[type=checkbox]"))
    css("#img-ensemble input[type=checkbox]")[0].click()
    sizes = _upload_and_restore(browser, photo, "ui-browser-ensemble-timeout.png")
    assert sizes == [[80, 48], [80, 48]]
    wait.until(lambda _: "self-ensemble" in css("#img-info")[0].text)
