"""The web page in a real browser (Debian's chromium driven by Playwright) against `factstore serve`:
submit a correction through the form, watch it go from pending to active, open its page, check
it against the base model, filter the log, compile through the page and ask the head."""

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
            page.fill("#check-prompt", "Where is The Eiffel Tower? In the city of")
            page.get_by_role("button", name="Check on the head and the base model").click()
            expect(page.locator("#compare h3")).to_have_count(2)  # head and base side by side
            expect(page.locator("#compare .answers").first).to_contain_text("Rome")
            page.get_by_role("link", name="← tiny").click()
            row = page.locator("#log tbody tr").first
            expect(row).to_contain_text("The Eiffel Tower")
            expect(row.locator(".status")).to_have_text("active")
            expect(row).to_contain_text("reviewer")
            page.fill("#q", "nothing like it")
            page.get_by_role("button", name="Filter").click()
            expect(page.locator("#log-count")).to_have_text("no edit matches")
            page.fill("#q", "eiffel")
            page.get_by_role("button", name="Filter").click()
            expect(page.locator("#log tbody tr")).to_have_count(1)
            page.fill("#compile-token", token)
            page.get_by_role("button", name="Compile the current log").click()
            job = page.locator("#job-list tbody tr").first
            expect(job).to_contain_text("compile")
            expect(job.locator(".status")).to_have_text("done", timeout=120_000)  # the page follows the job
            expect(page.locator("#releases")).to_contain_text("v1")
            page.fill("#ask-prompt", "The Eiffel Tower is located in the city of")
            page.get_by_role("button", name="Ask the head and the base model").click()
            expect(page.locator("#compare h3").first).to_contain_text("head (1 edits)")
            shots = Path(os.environ.get("FACTSTORE_SCREENSHOTS", tmp_path))
            shots.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shots / "web-log.png"), full_page=True)
            browser.close()
    finally:
        stop(server)
