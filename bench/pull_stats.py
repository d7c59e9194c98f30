"""Seconds for a teammate to `pull --import-edits` a SmolLM2 release and add one edit, with and
without key statistics shipped in the release.

    python bench/pull_stats.py [--model starter:smollm2-135m]

Alice registers the model, edits one fact and publishes `--with-stats` to the suite's
Hub-compatible server on 127.0.0.1 (tests/hub_server.py; LFS uploads). Bob, on a machine with the
model but no key statistics (an empty statistics cache), pulls it with `--import-edits` twice,
into fresh stores: once ignoring the shipped C (as for a release published without
--with-stats: he computes C), once using it; each time he then adds one edit. Prints a table; run it with
nothing else heavy on the machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="starter:smollm2-135m")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from isolated import hub_bench_home

    home = hub_bench_home("factstore-pull-stats-")
    from factstore import api
    from factstore.domain import EditRequest
    from factstore.editing.session import EditSession
    from hub_server import HubServer

    alice = api.open_store()
    api.add_model(alice, "m", args.model)
    EditSession(alice, "m", device="cpu").add(EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome"))
    shared_stats = Path(os.environ["FACTSTORE_CACHE"]) / "stats"
    rows = []
    from factstore.release import pull as pull_module

    real_fetcher = pull_module.shipped_stats
    repo = "bench/edited"
    with HubServer({"bench-token": "bench"}, lfs=True) as hub:
        api.publish_release(alice, "m", repo, api.PublishOptions(endpoint=hub.url, with_stats=True))
        for with_stats in (False, True):
            # without: the release's C files are ignored, as for a release published without --with-stats
            pull_module.shipped_stats = (
                real_fetcher if with_stats else (lambda *_a, **_k: lambda _sha, _max_bytes: None)
            )
            # bob: the same model assets, an empty statistics cache, a store of his own
            bob_cache = Path(tempfile.mkdtemp(prefix="factstore-bob-cache-"))
            for entry in Path(os.environ["FACTSTORE_CACHE"]).iterdir():
                if entry.name not in ("stats", "release-files"):
                    (bob_cache / entry.name).symlink_to(entry)
            os.environ["FACTSTORE_CACHE"] = str(bob_cache)
            url = f"sqlite:///{home / f'bob-{with_stats}.db'}"
            api.upgrade_database(url)
            bob = api.open_store(url)
            api.add_model(bob, "team", args.model)
            clock = time.perf_counter()
            api.pull_release(
                repo,
                api.PullOptions(version="v1", out=str(home / f"pulled-{with_stats}"), endpoint=hub.url),
                import_into=bob,
                alias="team",
            )
            pull_s = time.perf_counter() - clock
            clock = time.perf_counter()
            EditSession(bob, "team", device="cpu").add(
                EditRequest("{} is located in the city of", "The Colosseum", "Paris")
            )
            edit_s = time.perf_counter() - clock
            rows.append((repo, with_stats, pull_s, edit_s))
            os.environ["FACTSTORE_CACHE"] = str(shared_stats.parent)
            shutil.rmtree(bob_cache, ignore_errors=True)
    print("| release | C shipped | pull --import-edits s | then edit add s |\n|---|---|---|---|")
    for repo, with_stats, pull_s, edit_s in rows:
        print(f"| {repo} | {'yes' if with_stats else 'no (computed)'} | {pull_s:.1f} | {edit_s:.1f} |")


if __name__ == "__main__":
    main()
