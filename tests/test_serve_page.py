"""The upload page in a real browser: Debian's Chromium, headless, driven by Selenium through chromedriver.

Upload a real X-ray with the file picker, wait for the answer, check the label, one probability bar per
class, the heatmap image and the baseline warning; then drop a text file on the drop zone and check the
error line. A screenshot goes to the test's tmp dir, and to docs/serve_page.png when
XRAY_SPARK_UPDATE_DOCS=1 (a test run does not rewrite tracked files otherwise).

The shift banner is tested against the session's trained champion (conftest `trained`: its bundle carries
the ShiftModel's reference), served in a thread as above: another hospital's JPEG (figure1) gets the
"Unlike the images this model was trained on" banner with its reasons, a training-folder image none
(screenshot: docs/serve_page_shift.png).

The server is real (uvicorn) with a real ResNet50 (seeded random weights) and a numpy logistic head: the
page is what is tested here; parity with Spark is tests/test_serve.py's job. Without Chromium this skips,
except in CI (`CI` set), where it fails: .ci/run installs `chromium` and `chromium-driver`.
"""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import pytest

from conftest import isolate_mlflow
from serve_utils import predict, random_head_bundle, running
from xray_spark.models.serving_bundle import BundleMeta, load_bundle
from xray_spark.serving.app import Settings, create_app
from xray_spark.serving.predictor import Predictor

pytestmark = pytest.mark.e2e


REPO = Path(__file__).resolve().parents[1]
SENTENCE = "The metadata-only baseline scored as well as this model: it may be reading the source."


def _browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    missing = [name for name, path in (("chromium", chromium), ("chromedriver (chromium-driver)", driver))
               if not path]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip, dev extras)")
    if missing:
        message = f"browser test needs {', '.join(missing)}: apt-get install -y chromium chromium-driver"
        if os.environ.get("CI", "").strip():
            pytest.fail(f"{message} (CI is set, so this is a failure, not a skip)", pytrace=False)
        pytest.skip(message)
    return chromium, driver


@pytest.fixture(scope="module")
def page_server(weights_cache, tmp_path_factory: pytest.TempPathFactory):
    folder = random_head_bundle(tmp_path_factory.mktemp("page") / "bundle",
                                BundleMeta(task="binary", model_name="xray-spark-binary", model_version="3",
                                           baseline_as_good=True, baseline_sentence=SENTENCE))
    predictor = Predictor(load_bundle(folder))
    predictor.warm_up()
    with running(create_app(predictor, Settings())) as base:
        yield base


@pytest.fixture
def browser():
    chromium, driver_path = _browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,860", "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    yield driver
    driver.quit()


def _state(driver) -> str | None:
    return driver.find_element("tag name", "body").get_attribute("data-state")


def _keep_screenshot(driver, tmp_path: Path, name: str) -> Path:
    """The page as it looks now, in tmp_path; copied to docs/<name> when XRAY_SPARK_UPDATE_DOCS=1."""
    shot = tmp_path / name
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("XRAY_SPARK_UPDATE_DOCS") == "1":
        (REPO / "docs").mkdir(exist_ok=True)
        shutil.copyfile(shot, REPO / "docs" / name)
    return shot


def _upload(driver, image: Path) -> None:
    """Choose `image` with the file picker and wait for the page to finish (answer or error)."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.execute_script("document.body.dataset.state = '';")
    driver.find_element("id", "file").send_keys(str(image))
    WebDriverWait(driver, 120).until(lambda d: _state(d) in ("done", "error"))
    assert _state(driver) == "done", driver.find_element("id", "error").text


def test_upload_page_shows_label_bars_heatmap_and_warning(page_server: str, browser, ozturk_dir: Path,
                                                          tmp_path: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    by_id = lambda name: browser.find_element("id", name)  # noqa: E731
    browser.get(page_server + "/")
    WebDriverWait(browser, 30).until(lambda d: "version 3" in by_id("model").text)
    assert "xray-spark-binary" in by_id("model").text
    assert by_id("baseline").is_displayed() and SENTENCE in by_id("baseline").text

    image = sorted((ozturk_dir / "covid").iterdir())[3]
    by_id("file").send_keys(str(image))
    WebDriverWait(browser, 120).until(lambda d: _state(d) in ("done", "error"))
    assert _state(browser) == "done", by_id("error").text
    assert by_id("label").text in ("covid", "no_findings")
    bars = browser.find_elements("css selector", "#bars .bar")
    assert sorted(b.get_attribute("data-label") for b in bars) == ["covid", "no_findings"]
    widths = [float(b.find_element("css selector", ".fill").value_of_css_property("width").rstrip("px"))
              for b in bars]
    assert max(widths) > 0
    top = browser.find_element("css selector", "#bars .bar.top").get_attribute("data-label")
    assert top == by_id("label").text
    WebDriverWait(browser, 30).until(lambda d: d.execute_script(
        "const i = document.getElementById('heatmap'); return i.complete && i.naturalWidth > 0;"))
    assert browser.execute_script("return document.getElementById('heatmap').naturalWidth") == 224
    assert by_id("preview").is_displayed() and "exact" in by_id("heatnote").text
    _keep_screenshot(browser, tmp_path, "serve_page.png")

    # drag and drop a file that is not an image: the decoder's reason is shown, the page keeps working
    browser.execute_script("""
        const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));
        const data = new DataTransfer();
        data.items.add(new File([bytes], "notes.png", {type: "image/png"}));
        document.getElementById("drop").dispatchEvent(
            new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true}));
    """, base64.b64encode(b"meeting notes, not an X-ray\n" * 8).decode())
    WebDriverWait(browser, 60).until(lambda d: _state(d) == "error")
    assert by_id("error").is_displayed() and by_id("error").text.startswith("not_an_image:")


BANNER = "Unlike the images this model was trained on: "


@pytest.fixture(scope="module")
def champion_server(trained, tmp_path_factory: pytest.TempPathFactory):
    """The session's binary champion, from the registry as `serve --model` finds it, served in a thread."""
    from xray_spark.models.serving_mlflow import bundle_for_model

    mp = pytest.MonkeyPatch()
    isolate_mlflow(mp)
    try:
        folder = bundle_for_model(trained.champions["binary"]["uri"], trained.tracking_uri,
                                  cache_dir=tmp_path_factory.mktemp("champion"))
    finally:
        mp.undo()
    bundle = load_bundle(folder)
    assert bundle.shift is not None, "the champion's bundle has no shift reference"
    predictor = Predictor(bundle)
    predictor.warm_up()
    with running(create_app(predictor, Settings())) as base:
        yield base


def test_page_shows_a_banner_for_an_image_unlike_the_training_images(champion_server: str, browser,
                                                                     small_data: Path, data_root: Path,
                                                                     tmp_path: Path, evidence) -> None:
    by_id = lambda name: browser.find_element("id", name)  # noqa: E731
    other = sorted((data_root / "figure1" / "covid").glob("*.jpg"))[0]  # another hospital's 972 px JPEG
    # an image of the training folder the REST answer calls in distribution (most of them: the threshold is
    # the training images' own 99th percentile; a test-split image may still be unusual)
    candidates = [p for label in ("covid", "no_findings") for p in sorted((small_data / label).iterdir())[:3]]
    answers = {p: predict(champion_server, p.read_bytes()).json() for p in candidates}
    usual = next(p for p, a in answers.items() if a["in_distribution"] is True)
    odd = predict(champion_server, other.read_bytes()).json()
    assert odd["in_distribution"] is False and odd["shift_reasons"], odd
    evidence(f"serve page shift: training-folder image score {answers[usual]['shift_score']:.2f}, figure1 "
             f"JPEG score {odd['shift_score']:.2f} ({'; '.join(odd['shift_reasons'])})")

    browser.get(champion_server + "/")
    _upload(browser, usual)
    assert not by_id("shift").is_displayed() and by_id("shift").text == ""

    _upload(browser, other)
    banner = by_id("shift")
    assert banner.is_displayed() and banner.text.startswith(BANNER), banner.text
    assert banner.text == BANNER + "; ".join(odd["shift_reasons"])
    assert by_id("label").text in ("covid", "no_findings")  # the prediction is still shown beside it
    _keep_screenshot(browser, tmp_path, "serve_page_shift.png")

    _upload(browser, sorted(p for p in answers if answers[p]["in_distribution"] is True)[-1])
    assert not by_id("shift").is_displayed()  # the banner belongs to the image it was shown for
