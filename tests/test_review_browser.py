"""The review page in a real headless Chromium against a real `whaleid serve`.

A reviewer queues three photos; compares the first with its candidates (cycling through the
picked individual's gallery photos) and confirms it (the gallery then holds it, and the next
frame of that photo ranks the individual first with the confirmed photo as evidence); skips the
second; reloads without losing the place; is refused the reserved id with the API's own
message; registers a new individual and undoes it, all from the keyboard. A second server on
the same gallery with WHALEID_OPEN_IDENTIFY shows that looking needs no key and that
registering without a write key shows the API's refusal.

Debian's `chromium` and `chromium-driver` drive it through selenium, pointed at the system
browser and driver: nothing is downloaded (SE_OFFLINE). Screenshots of each step are saved in
a temporary folder (or WHALEID_REVIEW_SCREENSHOTS), printed at the end.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures.service import (
    GALLERY_INDIVIDUALS,
    GALLERY_PHOTOS,
    Server,
    catalogue_photos,
    next_frame,
)

from bench.server import ServeProcess

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Checked before any fixture is set up, so a machine without a browser starts no server for it.
_MISSING = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)] + (
    ["the selenium package"] if importlib.util.find_spec("selenium") is None else []
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(2700),
    pytest.mark.skipif(
        bool(_MISSING),
        reason=f"no {', '.join(_MISSING)}: apt-get install chromium chromium-driver "
        "(and pip install selenium) to run the review page in a browser",
    ),
]
ENTER, ARROW_LEFT = "\ue007", "\ue012"  # selenium's Keys.ENTER, Keys.ARROW_LEFT
WAIT = 90.0  # seconds for the page to answer (identify on a loaded CPU)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    with pytest.MonkeyPatch.context() as env:
        # Selenium Manager must not look for (or download) a browser or a driver.
        env.setenv("SE_OFFLINE", "true")
        options = Options()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
            options.add_argument(arg)
        options.add_argument("--window-size=1280,800")
        driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    viewport(driver, 1280, 800)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def screens(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[Any, str], None]]:
    folder_name = os.environ.get("WHALEID_REVIEW_SCREENSHOTS")
    folder = Path(folder_name) if folder_name else tmp_path_factory.mktemp("review-screens")
    folder.mkdir(parents=True, exist_ok=True)

    def shot(driver: Any, name: str) -> None:
        driver.save_screenshot(str(folder / f"{name}.png"))

    yield shot
    print(f"\nreview page screenshots: {folder}")


def viewport(driver: Any, width: int, height: int) -> None:
    """The page's own size (not the window's, which includes the browser's frame)."""
    metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)


def inside(driver: Any, selector: str) -> bool:
    """The element is wholly in the viewport: usable without scrolling."""
    script = (
        "const r = document.querySelector(arguments[0]).getBoundingClientRect();"
        "return r.top >= 0 && r.left >= 0 && r.bottom <= innerHeight && r.right <= innerWidth;"
    )
    return bool(driver.execute_script(script, selector))


def wait(driver: Any, condition: Callable[[Any], Any], what: str) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT).until(condition)
    except TimeoutException:
        notice = driver.execute_script("return document.getElementById('notice').textContent")
        raise AssertionError(f"timed out waiting for {what}; notice: {notice!r}") from None


def by_id(driver: Any, element_id: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def press(driver: Any, keys: str) -> None:
    """Keys typed on the page itself (not in a field), as a reviewer's shortcuts."""
    from selenium.webdriver.common.action_chains import ActionChains

    driver.execute_script("document.activeElement.blur()")
    ActionChains(driver).send_keys(keys).perform()


def cards(driver: Any) -> list[str]:
    script = (
        "return [...document.querySelectorAll('#candidates .card')].map(c => c.dataset.individual)"
    )
    return list(driver.execute_script(script))


def notice(driver: Any) -> str:
    return str(by_id(driver, "notice").text)


def current_name(driver: Any) -> str:
    script = "return document.querySelector('#queue li.current .name')?.textContent || ''"
    return str(driver.execute_script(script))


def open_page(driver: Any, server: ServeProcess, key: str | None) -> None:
    driver.get(f"{server.url}/review")
    field = by_id(driver, "key")
    field.clear()
    if key:
        field.send_keys(key)
        driver.execute_script("document.getElementById('key').dispatchEvent(new Event('change'))")


def queue(driver: Any, *photos: Path) -> None:
    by_id(driver, "files").send_keys("\n".join(str(p) for p in photos))


def candidates_shown(driver: Any) -> list[str] | None:
    ids = cards(driver)
    return ids if len(ids) == 5 else None


def test_review_loop(
    browser: Any, screens: Callable[[Any, str], None], edit_service: Server, catalogue: Path
) -> None:
    photos = catalogue_photos(catalogue)
    known = list(photos)[2]
    held_back = photos[known][GALLERY_PHOTOS]  # not in the gallery
    skipped = photos[list(photos)[4]][GALLERY_PHOTOS]
    stranger = photos[list(photos)[GALLERY_INDIVIDUALS + 50]][0]

    open_page(browser, edit_service, edit_service.write_key)
    screens(browser, "01-empty")
    queue(browser, held_back, skipped, stranger)

    # The query with its crop drawn, its five candidates, the best known one picked.
    ids = wait(browser, candidates_shown, "five candidates")
    assert current_name(browser) == held_back.name
    assert "new_individual" in ids and known in ids, ids
    answer_crop = browser.execute_script("return state.answer.crop")
    boxes = browser.execute_script("return document.querySelectorAll('#query-overlay rect').length")
    assert boxes == (1 if answer_crop else 0)
    press(browser, str(ids.index(known) + 1))
    wait(browser, lambda d: by_id(d, "confirm-id").text == known, "the pick")
    wait(
        browser,
        lambda d: d.execute_script("return !!document.getElementById('evidence-img').naturalWidth"),
        "the evidence photo",
    )
    screens(browser, "02-candidates")
    # A click on the gallery photo shows the individual's next one; <- goes back.
    by_id(browser, "evidence-photo").click()
    wait(browser, lambda d: "photo 2 of 3" in by_id(d, "evidence-caption").text, "photo 2")
    press(browser, ARROW_LEFT)
    wait(browser, lambda d: "photo 1 of 3" in by_id(d, "evidence-caption").text, "photo 1")
    # At 1280 x 800 the query, the evidence, the candidates and the actions fit on one screen.
    for selector in ("#query-img", "#evidence-img", "#candidates", "#confirm", "#skip"):
        assert inside(browser, selector), selector

    # Matched keypoints, where an answer carries them, are drawn from the query photo to the
    # evidence photo (local matching is not in this service yet: the answer is given them).
    ends = browser.execute_script(
        """
        const p = state.answer.predictions[state.picked];
        const q = document.getElementById('query-img'), g = document.getElementById('evidence-img');
        const record = state.photoRecords.get(p.evidence.image_id);
        p.evidence.matches = [[0, 0, record.width, record.height],
                              [q.naturalWidth, q.naturalHeight, 0, 0]];
        drawLines();
        const box = document.getElementById('compare').getBoundingClientRect();
        const lines = [...document.querySelectorAll('#lines line')].map(l =>
            ['x1', 'y1', 'x2', 'y2'].map(k => Number(l.getAttribute(k))));
        const at = (r) =>
            [r.left - box.left, r.top - box.top, r.right - box.left, r.bottom - box.top];
        return {lines, q: at(q.getBoundingClientRect()), g: at(g.getBoundingClientRect())};
        """
    )
    (qx, qy, qr, qb), (gx, gy, gr, gb) = ends["q"], ends["g"]
    assert ends["lines"] == [
        pytest.approx([qx, qy, gr, gb], abs=1.5),
        pytest.approx([qr, qb, gx, gy], abs=1.5),
    ]
    screens(browser, "02b-match-lines")
    browser.execute_script(
        "delete state.answer.predictions[state.picked].evidence.matches; drawLines()"
    )

    # A tablet: nothing wider than the screen, the actions still there.
    viewport(browser, 820, 1180)
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 820
    assert inside(browser, "#confirm")
    screens(browser, "02c-tablet")
    viewport(browser, 1280, 800)

    # "This is X": the photo is stored with X, the page says which image, and moves on.
    press(browser, ENTER)
    stored = wait(browser, lambda d: re.search(r"Stored .* as image (\d+)", notice(d)), "stored")
    image_id = int(stored.group(1))
    wait(browser, lambda d: current_name(d) == skipped.name, "the next photo")
    wait(browser, candidates_shown, "the next photo's candidates")
    screens(browser, "03-confirmed-next")
    press(browser, "s")
    wait(browser, lambda d: current_name(d) == stranger.name, "the photo after the skipped one")
    with edit_service.client(edit_service.read_key) as client:
        detail = client.get(f"/gallery/individuals/{known}").json()
        assert {"id": image_id, "filename": held_back.name} in [
            {"id": i["id"], "filename": i["filename"]} for i in detail["images"]
        ]
        # The next frame of the burst: the confirmed photo is what now answers it.
        files = {"image": ("next-frame.jpg", next_frame(held_back), "image/jpeg")}
        answer = client.post("/identify", files=files).json()
    top = answer["predictions"][0]
    assert top["individual_id"] == known and top["evidence"]["image_id"] == image_id

    # A reload keeps the queue and the place in it.
    browser.refresh()
    wait(browser, candidates_shown, "the candidates after a reload")
    assert current_name(browser) == stranger.name
    states = browser.execute_script(
        "return [...document.querySelectorAll('#queue li .state')].map(s => s.textContent)"
    )
    assert states == [f"this is {known}", "skipped", "to review"]

    # New individual: the reserved id is refused with the API's message; a free one is stored.
    press(browser, "n")
    browser.switch_to.active_element.send_keys("new_individual\n")
    refused = wait(browser, lambda d: "reserved" in notice(d) and notice(d), "the refusal")
    assert "422" in refused and "not stored" in refused
    screens(browser, "04-reserved-refused")
    new_id = by_id(browser, "new-id")
    new_id.clear()
    new_id.send_keys("review-newcomer")
    by_id(browser, "new-species").send_keys("orca")
    by_id(browser, "new-submit").click()
    made = wait(
        browser, lambda d: re.search(r"as image (\d+), registered as new", notice(d)), "new"
    )
    new_image = int(made.group(1))
    screens(browser, "05-new-individual")
    with edit_service.client(edit_service.read_key) as client:
        detail = client.get("/gallery/individuals/review-newcomer").json()
    assert detail["species"] == "orca" and [i["id"] for i in detail["images"]] == [new_image]
    assert "all 3 reviewed" in by_id(browser, "progress").text

    # Undo (within the minute) deletes that image and puts the photo back in the queue.
    press(browser, "u")
    wait(browser, lambda d: f"image {new_image} deleted" in notice(d), "the undo")
    with edit_service.client(edit_service.read_key) as client:
        assert client.get(f"/gallery/images/{new_image}").status_code == 404
    assert "2 of 3 reviewed" in by_id(browser, "progress").text
    screens(browser, "06-undone")


@pytest.fixture(scope="module")
def open_service(
    edit_service: Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServeProcess]:
    """A second server on edit_service's gallery and keys, with WHALEID_OPEN_IDENTIFY."""
    server = ServeProcess(
        tmp_path_factory.mktemp("open-service"),
        {**edit_service.env, "WHALEID_OPEN_IDENTIFY": "true"},
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_review_with_identify_open_and_no_write_key(
    browser: Any,
    screens: Callable[[Any, str], None],
    edit_service: Server,
    open_service: ServeProcess,
    catalogue: Path,
) -> None:
    photos = catalogue_photos(catalogue)
    query = photos[list(photos)[3]][GALLERY_PHOTOS]

    # No key: identify answers (looking is open); registering shows the API's 401.
    open_page(browser, open_service, None)
    queue(browser, query)
    ids = wait(browser, candidates_shown, "candidates without a key")
    press(browser, "1")
    if ids[0] == "new_individual":
        press(browser, "2")
    press(browser, ENTER)
    missing = wait(browser, lambda d: "not stored" in notice(d) and notice(d), "the 401")
    assert "401 missing_key" in missing and "write key" in missing
    screens(browser, "07-no-key")

    # A read key: the gallery's photos show, registering shows the API's 403.
    open_page(browser, open_service, edit_service.read_key)
    wait(browser, candidates_shown, "candidates with a read key")
    wait(
        browser,
        lambda d: d.execute_script("return !!document.getElementById('evidence-img').naturalWidth"),
        "the evidence photo",
    )
    press(browser, ENTER)
    refused = wait(browser, lambda d: "not stored" in notice(d) and notice(d), "the 403")
    assert "403 forbidden" in refused and "scope read" in refused
    with edit_service.client(edit_service.read_key) as client:
        individual = client.get(f"/gallery/individuals/{list(photos)[3]}").json()
    assert query.name not in [i["filename"] for i in individual["images"]]
