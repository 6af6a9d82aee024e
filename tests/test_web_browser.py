"""The review web app in a real browser (Debian chromium driven by Playwright) against a real
`whaleid serve`: log in, upload a survey, review it with the keyboard, export, and see the catalog grow."""

import csv
import io
import os
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from webapp import PASSWORD, Server, build_catalog
from whaleid.store.catalog import CatalogStore

pytestmark = pytest.mark.browser
CHROMIUM = Path("/usr/bin/chromium")
DEMO_PASSWORD = "demo reviewer password"
KNOWN = 5  # individuals in the catalog: every one of them is among a photo's top 5


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium not installed (make browser installs it where root)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


def _log_in(page, url: str, name: str = "demo", password: str = DEMO_PASSWORD) -> None:
    page.goto(f"{url}/")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/")


def _survey(tmp_path: Path, synth_csv: Path, model: Path) -> tuple[Path, list[Path], str]:
    """A catalog of KNOWN fins (one photo of each held back) and a survey of 6 photos: a held-back photo
    of fin A first, then photos of fins not in the catalog and of other known fins."""
    table = pd.read_csv(synth_csv)
    ids = sorted(table["individual_id"].unique())
    known = table[table["individual_id"].isin(ids[:KNOWN])]
    held = known.groupby("individual_id").tail(1)
    known.drop(held.index).to_csv(tmp_path / "known.csv", index=False)
    store = CatalogStore.create(tmp_path / "catalog", model.parent)
    images = synth_csv.parent / "images"
    store.intake.import_catalog(tmp_path / "known.csv", images)
    unknown = table[table["individual_id"].isin(ids[KNOWN : KNOWN + 3])].groupby("individual_id").head(1)
    names = [held["image"].iloc[0], *unknown["image"].iloc[:2], *held["image"].iloc[1:3], unknown["image"].iloc[2]]
    return store.dir, [images / n for n in names], held["individual_id"].iloc[0]


def _upload(page, url: str, files: list[Path], place: str) -> dict:
    page.goto(f"{url}/upload")
    page.fill("input[name=date]", "2026-08-15")
    page.fill("input[name=place]", place)
    page.set_input_files("#photos", [str(f) for f in files])
    page.click("#upload-button")
    page.wait_for_selector("#review-link:not([hidden])", timeout=120_000)
    assert page.locator("#file-list li.ok").count() == len(files)
    jobs = page.request.get(f"{url}/api/jobs").json()
    return next(j for j in jobs if j["kind"] == "upload" and j["state"] == "done" and j["files"] == len(files))


def _state(page, url: str, photo: int) -> dict:
    return page.request.get(f"{url}/api/photos/{photo}").json()


def test_upload_review_with_the_keyboard_export_and_the_catalog_grows(tmp_path, synth_csv, model, browser):
    catalog, files, fin_a = _survey(tmp_path, synth_csv, model)
    server = Server(catalog, "--demo", env={"WHALEID_DEMO_PASSWORD": DEMO_PASSWORD})
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        url = server.url
        hosts = set()  # every asset is served by whaleid itself: no CDN
        page.on("request", lambda request: hosts.add(request.url.split("/")[2]))
        _log_in(page, url)
        before = page.request.get(f"{url}/api/stats").json()
        job = _upload(page, url, files, "keyboard bay")
        photos = job["result"]["photos"]
        assert len(photos) == 6 and job["result"]["added"] == 6

        page.click("#review-link")
        page.wait_for_url(f"{url}/review/{photos[0]}")
        rank = page.locator(f'.candidate[data-individual="{fin_a}"]').get_attribute("data-rank")
        _compare(page)
        page.keyboard.press(rank)  # confirm fin A
        page.wait_for_url(f"{url}/review/{photos[1]}")
        page.keyboard.press("n")  # a fin not in the catalog
        page.wait_for_url(f"{url}/review/{photos[2]}")
        page.keyboard.press("u")  # can't tell
        page.wait_for_url(f"{url}/review/{photos[3]}")
        page.keyboard.press("z")  # this photo has no decision: Z says which one a second Z undoes
        page.wait_for_selector(f"#review-status:has-text('on photo {photos[2]}')")
        page.keyboard.press("z")  # undo the can't-tell
        page.wait_for_url(f"{url}/review/{photos[2]}")
        page.wait_for_selector("#photo-state:text('pending')")
        page.keyboard.press("j")
        page.wait_for_url(f"{url}/review/{photos[3]}")
        page.keyboard.press("k")
        page.wait_for_url(f"{url}/review/{photos[2]}")

        confirmed, new, undone = (_state(page, url, p)["photo"] for p in photos[:3])
        assert (confirmed["state"], confirmed["individual"]) == ("confirmed", fin_a)
        assert new["state"] == "confirmed" and new["individual"].startswith("WID-")
        assert undone["state"] == "pending"

        page.goto(f"{url}/export")
        with page.expect_download() as download:
            page.click("#export-happywhale")
        rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
        assert {"species", "individual_id", "image"} <= set(rows[0])
        assert sum(r["individual_id"] == new["individual"] for r in rows) == 1

        after = page.request.get(f"{url}/api/stats").json()
        assert after["individuals"] == before["individuals"] + 1
        assert after["confirmed"] == before["confirmed"] + 2 and after["pending"] == before["pending"] + 4
        page.goto(f"{url}/")
        assert page.locator("#count-individuals").inner_text() == str(after["individuals"])

        again = tmp_path / "again.jpg"  # a further photo of fin A: the confirmed photo, saved again
        Image.open(files[0]).save(again, quality=70)
        further = _upload(page, url, [again], "keyboard bay, day 2")["result"]["photos"][0]
        page.goto(f"{url}/review/{further}")
        first = page.locator(".candidate").first
        assert first.get_attribute("data-individual") == fin_a
        assert float(_state(page, url, further)["candidates"][0]["score"]) > 0.95
        page.goto(f"{url}/api/docs")  # the API's documentation, from local files too
        page.wait_for_selector(".opblock")
        assert hosts == {f"127.0.0.1:{server.port}"}
    finally:
        server.stop()


def _compare(page) -> None:
    """Click-to-zoom: query and candidate side by side, zoomed and panned together; Esc closes."""
    page.locator(".candidate img.zoomable").first.click()
    page.wait_for_selector("#compare:not([hidden])")
    page.mouse.move(700, 500)
    page.mouse.wheel(0, -300)
    page.mouse.down()
    page.mouse.move(760, 540)
    page.mouse.up()
    left, right = (page.locator(f"#compare-{side}").evaluate("e => e.style.transform") for side in ("left", "right"))
    assert left == right and "scale(1)" not in left and "translate(0px, 0px)" not in left
    page.keyboard.press("Escape")
    page.wait_for_selector("#compare", state="hidden")


def test_serve_demo_builds_a_catalog_to_review_within_two_minutes(tmp_path, browser):
    """`whaleid serve DIR --demo` on an empty folder: catalog, photos waiting, a reviewer; screenshots of
    the dashboard and the review page go to $WHALEID_SCREENSHOTS (the ones in docs/ come from here)."""
    started = time.monotonic()
    server = Server(tmp_path / "demo", "--demo", env={"WHALEID_DEMO_PASSWORD": DEMO_PASSWORD})
    ready = time.monotonic() - started
    try:
        assert ready < 120, f"the demo took {ready:.0f} s to answer"
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        _log_in(page, server.url)
        assert int(page.locator("#count-pending").inner_text()) > 0
        _shoot(page, "dashboard.png")
        page.goto(f"{server.url}/review")
        page.wait_for_selector(".candidate[data-rank='5']")
        _images_loaded(page)
        _shoot(page, "review.png")
        _matched_points_are_drawn_in_the_comparison(page, server.url)
    finally:
        server.stop()


def _matched_points_are_drawn_in_the_comparison(page, url: str) -> None:
    """The demo re-ranks: comparing a photo with a candidate's draws the pairs its second stage verified, as
    many on each side as the API counts; a pair with none says so. Screenshots: compare-matches*.png."""
    counts = {}
    for item in page.request.get(f"{url}/api/queue?limit=8").json():
        for c in page.request.get(f"{url}/api/photos/{item['photo']}").json()["candidates"]:
            for photo in c["photos"]:
                found = page.request.get(f"{url}/api/photos/{item['photo']}/matches/{photo['id']}").json()
                counts[item["photo"], photo["id"]] = found["count"]
    assert found["matcher"] == "lightglue" and found["detector"] == "aliked"
    many = max(counts, key=counts.get)
    none = next(pair for pair, n in counts.items() if n == 0)
    assert counts[many] >= 10, counts
    for (query, other), name in ((many, "compare-matches.png"), (none, "compare-no-matches.png")):
        page.goto(f"{url}/review/{query}")
        page.locator(f"img.zoomable[data-photo='{other}']").click()
        page.wait_for_selector("#compare-matches:not(:text('Matching…'))")
        said = page.locator("#compare-matches").inner_text()
        for side in ("left", "right"):
            assert page.locator(f"#compare-{side}-marks circle").count() == counts[query, other]
        if counts[query, other]:
            assert said.startswith(f"{counts[query, other]} matched points (ALIKED + LightGlue)")
            assert page.locator("#compare-left-label").inner_text() == f"Query: photo {query}"
            assert page.locator("#compare-right-label").inner_text().startswith("Candidate ")
            _images_loaded(page)
            _shoot(page, name)
            page.keyboard.press("m")  # hides them, and says M shows them again
            assert not page.locator("#compare-left-marks").is_visible()
            assert page.locator("#compare-matches").inner_text().endswith("M shows them")
            page.keyboard.press("m")
            assert page.locator("#compare-left-marks").is_visible()
        else:
            assert said == "No matched points between these two photos (ALIKED + LightGlue)."
            _images_loaded(page)
            _shoot(page, name)


def _images_loaded(page, timeout: float = 60.0) -> None:
    """The images in view decoded (lazy ones further down load only when scrolled to).

    Polled from here: the page's CSP rightly forbids the eval that wait_for_function needs."""
    deadline = time.monotonic() + timeout
    shown = (
        "Array.from(document.images).filter(i => !i.closest('[hidden]') && i.getBoundingClientRect().top < innerHeight)"
    )
    while not page.evaluate(f"{shown}.every(i => i.complete && i.naturalWidth > 0)"):
        assert time.monotonic() < deadline, "images still loading"
        time.sleep(0.2)


def _shoot(page, name: str) -> None:
    folder = os.environ.get("WHALEID_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / name), full_page=False)


@pytest.fixture(scope="module")
def served(tmp_path_factory, synth_csv, model):
    """`whaleid serve` over the web tests' catalog (5 individuals, a survey waiting), with its users."""
    store = build_catalog(tmp_path_factory.mktemp("served"), synth_csv, model)
    server = Server(store.dir)
    yield server.url
    server.stop()


def _reviewer(browser, url: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    _log_in(page, url, "reviewer", PASSWORD)
    return page


def _press(page, key: str) -> None:
    """A key that decides or undoes: the page moves on once the server has answered."""
    with page.expect_navigation(timeout=30_000):
        page.keyboard.press(key)


def test_z_undoes_the_decision_of_the_photo_on_screen(browser, served):
    page = _reviewer(browser, served)
    decided, other = (q["photo"] for q in page.request.get(f"{served}/api/queue").json()[:2])
    page.goto(f"{served}/review/{decided}")
    _press(page, "n")
    page.goto(f"{served}/review/{other}")
    _press(page, "u")  # this tab's last decision, on another photo
    page.goto(f"{served}/review/{decided}")
    _press(page, "z")
    assert page.url == f"{served}/review/{decided}"
    assert _state(page, served, decided)["photo"]["state"] == "pending"
    assert _state(page, served, other)["photo"]["state"] == "unsure"

    page.keyboard.press("z")  # nothing to undo here now: it says what a second Z would undo, and waits
    page.wait_for_selector(f"#review-status:has-text('on photo {other}')")
    assert _state(page, served, other)["photo"]["state"] == "unsure"
    _press(page, "z")
    assert page.url == f"{served}/review/{other}"
    assert _state(page, served, other)["photo"]["state"] == "pending"


def test_the_comparison_says_which_side_is_which_and_1_to_5_confirm_there(browser, served):
    page = _reviewer(browser, served)
    photo = page.request.get(f"{served}/api/queue").json()[0]["photo"]
    page.goto(f"{served}/review/{photo}")
    candidate = page.locator(".candidate", has=page.locator("img.zoomable")).last
    rank, individual = candidate.get_attribute("data-rank"), candidate.get_attribute("data-individual")
    candidate.locator("img.zoomable").first.click()
    page.wait_for_selector("#compare:not([hidden])")
    assert page.locator("#compare-left-label").inner_text(timeout=5_000) == f"Query: photo {photo}"
    assert page.locator("#compare-right-label").inner_text() == f"Candidate {rank}: {individual} ({rank} confirms)"
    page.wait_for_selector("#compare-matches:text('no re-ranking')")  # this catalog's model has no second stage
    assert page.locator("#compare-right-marks circle").count() == 0
    _press(page, rank)
    decided = _state(page, served, photo)["photo"]
    assert (decided["state"], decided["individual"]) == ("confirmed", individual)


def test_review_these_photos_shows_only_once_an_upload_left_photos_to_review(browser, served, tmp_path):
    page = _reviewer(browser, served)
    page.goto(f"{served}/upload")
    link = page.locator("#review-link")
    page.evaluate("document.getElementById('upload-status').hidden = false")  # as while a job waits its turn
    assert not link.is_visible()
    useless = tmp_path / "notes.jpg"
    useless.write_text("not a photo")
    page.fill("input[name=place]", "nothing usable")
    page.set_input_files("#photos", [str(useless)])
    page.click("#upload-button")
    page.wait_for_selector("#job-status:text('No photo could be used.')")
    assert page.locator("#file-list li.refused").count() == 1
    assert not link.is_visible()
