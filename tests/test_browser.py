"""The web page in a real browser (Debian's chromium driven by Playwright) against `factstore serve`:
submit a correction through the form, watch it go from pending to active, open its page."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from factstore import api
from factstore.storage.store import Store
from service_process import serve, stop

CHROMIUM = os.environ.get("FACTSTORE_TEST_CHROMIUM", "/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    not shutil.which(CHROMIUM), reason=f"{CHROMIUM} is missing: apt-get install -y chromium (scripts/setup.sh does)"
)


@pytest.mark.parametrize(
    "db_url", ["sqlite"], indirect=True
)  # one browser run: the pages do not depend on the database
def test_submit_through_the_form_and_watch_it_compute(tiny_store: Store, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    token = api.create_token(tiny_store, "reviewer", "write")[1]
    server, url = serve(log=tmp_path / "serve.log")  # the embedded default: one worker in-process
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{url}/")
            page.get_by_role("link", name="tiny").click()
            page.fill("#prompt", "{} is located in the city of")
            page.fill("#subject", "The Eiffel Tower")
            page.fill("#target", "Rome")
            page.fill("#token", token)
            page.get_by_role("button", name="Submit").click()
            expect(page.locator("h1")).to_contain_text("Edit 1")
            expect(page.locator("#status")).to_have_text(
                "active", timeout=120_000
            )  # pending -> computing -> active, live
            expect(page.locator("#p-new")).to_contain_text("→")
            page.get_by_role("link", name="← tiny").click()
            row = page.locator("#log tbody tr").first
            expect(row).to_contain_text("The Eiffel Tower")
            expect(row.locator(".status")).to_have_text("active")
            expect(row).to_contain_text("reviewer")
            shots = Path(os.environ.get("FACTSTORE_SCREENSHOTS", tmp_path))
            shots.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shots / "web-log.png"), full_page=True)
            browser.close()
    finally:
        stop(server)
