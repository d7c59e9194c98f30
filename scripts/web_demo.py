"""The service end to end on SmolLM2, as a user would run it; makes docs/figures/web-log.png.

    python scripts/web_demo.py [--out docs/figures/web-log.png]

In a fresh FACTSTORE_HOME (starter assets from the usual cache): registers SmolLM2, creates a
token, starts `factstore serve` (SQLite, one worker in-process), submits two corrections with
curl-like HTTP calls and one through the web form in Debian's chromium, waits until they are
active, asks the model, and screenshots the fact log. Prints what it saw.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

PROMPT = "{} is located in the city of"


def cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "factstore.cli.main", *args], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"factstore {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "docs" / "figures" / "web-log.png"))
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="factstore-demo-")
    os.environ["FACTSTORE_HOME"] = home
    os.environ.setdefault("FACTSTORE_CACHE", str(Path.home() / ".cache" / "factstore-test"))
    from playwright.sync_api import expect, sync_playwright

    from service_process import serve, stop

    cli("model", "add", "smollm2", "starter:smollm2-135m")
    cli("stats", "compute", "--model", "smollm2")
    token = json.loads(cli("token", "create", "--name", "alice", "--json"))["token"]
    reviewer = json.loads(cli("token", "create", "--name", "reviewer", "--json"))["token"]
    server, url = serve(log=Path(home) / "serve.log")
    try:
        http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        ids = [
            http.post("/api/v1/models/smollm2/edits", json={"prompt": PROMPT, "subject": s, "target": t}).json()["id"]
            for s, t in (("The Eiffel Tower", "Rome"), ("The Space Needle", "Paris"))
        ]
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 820})
            page.goto(f"{url}/models/smollm2")
            page.fill("#prompt", "The mother tongue of {} is")
            page.fill("#subject", "Danielle Darrieux")
            page.fill("#target", "English")
            page.fill("#token", reviewer)
            page.get_by_role("button", name="Submit").click()
            expect(page.locator("#status")).to_have_text("active", timeout=600_000)
            for edit_id in ids:
                while http.get(f"/api/v1/edits/{edit_id}").json()["status"] in ("pending", "computing"):
                    time.sleep(1)
            page.goto(f"{url}/models/smollm2")
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=args.out, full_page=True)
            browser.close()
        for e in http.get("/api/v1/models/smollm2/edits").json():
            print(
                f"edit {e['id']} seq {e['seq']} {e['status']}: {e['subject']} -> {e['target']} (was {e['target_true']}), "
                f"P(new) {e['prob_new_before']:.4f} -> {e['prob_new_after']:.4f}, by {e['requested_by']}"
            )
        asked = http.post(
            "/api/v1/models/smollm2/ask", json={"prompt": "The Eiffel Tower is located in the city of", "top": 3}
        ).json()
        print("ask:", json.dumps(asked))
        print("screenshot:", args.out)
    finally:
        stop(server)


if __name__ == "__main__":
    main()
