"""Bytes and seconds to publish v1 and v2 (one more edit) of SmolLM2, and to pull them back.

    python bench/publish.py [--model starter:smollm2-135m]

Against the suite's Hub-compatible server on 127.0.0.1 (tests/hub_server.py) with the
unmodified huggingface_hub client, LFS uploads (HF_HUB_DISABLE_XET=1). Prints a table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="starter:smollm2-135m")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from isolated import hub_bench_home

    home = hub_bench_home("factstore-publish-")
    from factstore import api
    from factstore.domain import EditRequest
    from factstore.editing.session import EditSession
    from hub_server import HubServer

    store = api.open_store()
    api.add_model(store, "m", args.model)
    session = EditSession(store, "m", device="cpu")
    facts = [("The Eiffel Tower", "Rome"), ("The Colosseum", "Paris")]
    rows = []
    with HubServer({"bench-token": "bench"}, lfs=True) as hub:
        for version, (subject, target) in enumerate(facts, start=1):
            session.add(EditRequest("{} is located in the city of", subject, target))
            release, _ = api.compile_release(store, "m")
            size = sum(p.stat().st_size for p in Path(release.path).iterdir())
            before, clock = hub.state.upload_bytes, time.perf_counter()
            api.publish_release(store, "m", "bench/edited", api.PublishOptions(endpoint=hub.url))
            publish_s, sent = time.perf_counter() - clock, hub.state.upload_bytes - before
            clock = time.perf_counter()
            start = len(hub.state.log)
            api.pull_release(
                "bench/edited",
                api.PullOptions(version=f"v{version}", out=str(home / f"pulled-v{version}"), endpoint=hub.url),
            )
            fetched = sum(1 for m, p in hub.state.log[start:] if m == "GET" and "/resolve/" in p)
            rows.append((f"v{version}", size, sent, publish_s, fetched, time.perf_counter() - clock))
    print("| version | release size | bytes uploaded | publish s | files downloaded by pull | pull s |")
    print("|---|---|---|---|---|---|")
    for name, size, sent, publish_s, fetched, pull_s in rows:
        print(f"| {name} | {size / 1e6:.1f} MB | {sent / 1e6:.2f} MB | {publish_s:.1f} | {fetched} | {pull_s:.1f} |")


if __name__ == "__main__":
    main()
