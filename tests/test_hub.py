"""Publishing releases to a Hub and pulling them back, against the Hub-compatible server in
hub_server.py, through the unmodified huggingface_hub client. Every test runs twice: with
HF_HUB_DISABLE_XET=1 (LFS uploads) and with Xet available and the server answering
`uploadMode: regular` for every file.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from cli_runner import run, run_json
from factstore import api
from factstore.domain import EditRequest
from factstore.editing.session import EditSession
from factstore.errors import (
    CompileError,
    EditStateError,
    HubAuthError,
    HubError,
    HubNotFound,
    HubUnreachable,
    PublishConflict,
    ReleaseDegraded,
    ReleaseVerificationError,
)
from factstore.release import layout
from factstore.weights.replay import constraint_errors
from hub_server import HubServer

REPO = Path(__file__).resolve().parents[1]
NAME = "alice/tiny-edits"
PROMPT = "{} is located in the city of"
FACTS = [("The Eiffel Tower", "Rome"), ("The Louvre", "Berlin"), ("Big Ben", "Paris")]
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def _serve(kind: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A fresh local Hub; the client points at it with a clean cache and alice's token in HF_TOKEN."""
    from huggingface_hub import constants

    lfs = kind == "lfs"
    cache = tmp_path / "hf-home" / "hub"
    # huggingface_hub reads these at import; the environment carries them to subprocesses
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", lfs)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf-home" / "stored_tokens"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1" if lfs else "0")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("HF_TOKEN", "tok-alice")
    with HubServer({"tok-alice": "alice", "tok-bob": "bob"}, lfs=lfs) as server:
        yield server


@pytest.fixture(params=["lfs", "xet-regular"])
def hub(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    yield from _serve(request.param, monkeypatch, tmp_path)


@pytest.fixture
def lfs_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    """For tests whose subject does not depend on how files travel."""
    yield from _serve("lfs", monkeypatch, tmp_path)


def _add(store, alias: str, facts: list[tuple[str, str]]) -> None:  # type: ignore[no-untyped-def]
    session = EditSession(store, alias, device="cpu")
    for subject, target in facts:
        session.add(EditRequest(PROMPT, subject, target))


def _fresh_store(tmp_path: Path, name: str):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / name}.db"
    api.upgrade_database(url)
    return api.open_store(url)


def _constraint_errors(folder: str | Path, store, alias: str = "tiny") -> list[float]:  # type: ignore[no-untyped-def]
    """||W k* - v*|| / ||v*|| of every active edit of ALIAS on the model loaded from FOLDER with plain transformers."""
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    edits = api.list_edits(store, alias)
    errors = constraint_errors(model, edits)
    return [errors[e.id] for e in edits]


def _downloads(server: HubServer, start: int) -> set[str]:
    return {
        path.split("/resolve/", 1)[1].split("/", 1)[1]
        for method, path in server.state.log[start:]
        if method == "GET" and "/resolve/" in path
    }


def test_v1_v2_round_trip_only_changed_bytes_travel(tiny_store, hub: HubServer, tmp_path: Path, gpt2_tokenizer) -> None:  # type: ignore[no-untyped-def]
    _add(tiny_store, "tiny", FACTS[:2])
    v1 = api.publish_release(tiny_store, "tiny", NAME, api.PublishOptions(endpoint=hub.url))
    assert (v1.version, v1.tag, v1.already) == (1, "v1", False) and len(v1.commit) == 40
    v1_bytes = hub.state.upload_bytes
    again = api.publish_release(tiny_store, "tiny", NAME, api.PublishOptions(endpoint=hub.url))
    assert again.already and again.commit == v1.commit and hub.state.upload_bytes == v1_bytes

    _add(tiny_store, "tiny", FACTS[2:])
    v2 = api.publish_release(tiny_store, "tiny", NAME, api.PublishOptions(endpoint=hub.url))
    v2_bytes = hub.state.upload_bytes - v1_bytes
    repo = hub.state.repos[NAME]
    assert (v2.version, v2.tag) == (2, "v2") and repo.commits[v2.commit].parent == v1.commit
    assert repo.tags == {"v1": v1.commit, "v2": v2.commit} and repo.branches["main"] == v2.commit
    # one more edit changes one MLP shard, the card, the manifest and the edit vectors
    assert v2_bytes < v1_bytes / 10, (v1_bytes, v2_bytes)

    start = len(hub.state.log)
    p1 = api.pull_release(NAME, api.PullOptions(version="v1", out=str(tmp_path / "v1"), endpoint=hub.url))
    assert (p1.version, p1.commit, p1.verified) == ("v1", v1.commit, True)
    assert "base-00001-of-00001.safetensors" in _downloads(hub, start)
    start = len(hub.state.log)
    p2 = api.pull_release(
        NAME, api.PullOptions(version=None, out=str(tmp_path / "v2"), endpoint=hub.url)
    )  # default: the newest version
    assert (p2.version, p2.commit) == ("v2", v2.commit)
    fetched = _downloads(hub, start)
    assert "base-00001-of-00001.safetensors" not in fetched and "factstore.json" in fetched

    releases = {r.version: r for r in api.list_releases(tiny_store, "tiny")}
    assert {v: (r.status, r.tag, r.hub_commit) for v, r in releases.items()} == {
        1: ("published", "v1", v1.commit),
        2: ("published", "v2", v2.commit),
    }
    local = Path(releases[2].path)
    assert all((tmp_path / "v2" / f).read_bytes() == (local / f).read_bytes() for f in layout.file_hashes(local))
    # the pulled models, loaded with plain transformers, hold their edits (W k* = v*) and only theirs
    on_v1, on_v2 = _constraint_errors(p1.path, tiny_store), _constraint_errors(p2.path, tiny_store)
    assert max(on_v1[:2]) <= 1e-3 and on_v1[2] > 1e-2 and max(on_v2) <= 1e-3, (on_v1, on_v2)


@SQLITE_ONLY
def test_two_concurrent_publishers_one_wins(tiny_store, hub: HubServer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _add(tiny_store, "tiny", FACTS[:1])
    api.publish_release(tiny_store, "tiny", NAME, api.PublishOptions(endpoint=hub.url))
    bob = _fresh_store(tmp_path, "bob")
    api.add_model(bob, "team", tiny_store.get_base_model("tiny").source)  # the base is a local folder: bob registers it
    api.pull_release(NAME, api.PullOptions(version="v1", endpoint=hub.url), import_into=bob, alias="team")
    _add(tiny_store, "tiny", FACTS[1:2])
    _add(bob, "team", FACTS[2:3])
    # compile first: transformers' model loading is not thread-safe; publishing is what races here
    api.compile_release(tiny_store, "tiny")
    api.compile_release(bob, "team")

    hub.state.hold = threading.Event()  # both reach the commit call before either lands
    outcomes: dict[str, object] = {}

    def publish(who: str, store, alias: str) -> None:  # type: ignore[no-untyped-def]
        try:
            outcomes[who] = api.publish_release(store, alias, NAME, api.PublishOptions(endpoint=hub.url))
        except Exception as exc:
            outcomes[who] = exc

    threads = [threading.Thread(target=publish, args=a) for a in (("alice", tiny_store, "tiny"), ("bob", bob, "team"))]
    for t in threads:
        t.start()
    while sum(1 for m, p in hub.state.log if m == "POST" and "/commit/" in p) < 2 and all(
        t.is_alive() for t in threads
    ):
        threading.Event().wait(0.05)
    hub.state.hold.set()
    for t in threads:
        t.join(60)
    conflicts = [o for o in outcomes.values() if isinstance(o, PublishConflict)]
    winners = [o for o in outcomes.values() if not isinstance(o, Exception)]
    assert len(conflicts) == 1 and len(winners) == 1, outcomes
    repo = hub.state.repos[NAME]
    assert repo.tags["v2"] == repo.branches["main"] == winners[0].commit  # type: ignore[attr-defined]


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("route", "when", "times"),
    [
        ("/tag/", "before", 1),  # the commit landed, the tag did not
        ("/commit/", "after", 1),  # the commit landed but its answer was lost
    ],
)
def test_interrupted_publish_is_finished_by_a_rerun(
    tiny_store, hub: HubServer, route: str, when: str, times: int
) -> None:  # type: ignore[no-untyped-def]
    _add(tiny_store, "tiny", FACTS[:1])
    api.publish_release(tiny_store, "tiny", NAME, api.PublishOptions(endpoint=hub.url))
    _add(tiny_store, "tiny", FACTS[1:2])
    hub.state.drop.extend([("POST", route, when)] * times)
    try:
        api.publish_release(tiny_store, "tiny", NAME, api.PublishOptions(endpoint=hub.url))
    except HubUnreachable:
        broken = api.list_releases(tiny_store, "tiny")[-1]
        assert broken.version == 2 and broken.status == "built" and "v2" not in hub.state.repos[NAME].tags
    hub.state.drop.clear()  # the network is back
    done = api.publish_release(tiny_store, "tiny", NAME, api.PublishOptions(endpoint=hub.url))
    repo = hub.state.repos[NAME]
    assert done.version == 2 and repo.tags["v2"] == repo.branches["main"] == done.commit
    assert len(repo.commits) == 3  # the repo's first commit, v1, v2: nothing committed twice
    assert api.list_releases(tiny_store, "tiny")[-1].status == "published"


@SQLITE_ONLY
def test_publish_through_a_network_outage_is_finished_by_a_rerun(tiny_store, lfs_hub: HubServer) -> None:  # type: ignore[no-untyped-def]
    """The commit call fails through all of huggingface_hub's retries; nothing lands, the release stays built."""
    _add(tiny_store, "tiny", FACTS[:1])
    lfs_hub.state.drop.extend([("POST", "/commit/", "before")] * 20)
    with pytest.raises(HubUnreachable, match="rerun"):
        api.publish_release(tiny_store, "tiny", NAME, api.PublishOptions(endpoint=lfs_hub.url))
    release = api.list_releases(tiny_store, "tiny")[-1]
    assert release.status == "built" and release.hub_commit is None and not lfs_hub.state.repos[NAME].tags
    lfs_hub.state.drop.clear()  # the network is back
    done = api.publish_release(tiny_store, "tiny", NAME, api.PublishOptions(endpoint=lfs_hub.url))
    assert (
        lfs_hub.state.repos[NAME].tags == {"v1": done.commit}
        and api.list_releases(tiny_store, "tiny")[-1].status == "published"
    )


@SQLITE_ONLY
def test_publish_sends_exactly_the_manifest_files_of_an_intact_folder(tiny_store, hub: HubServer) -> None:  # type: ignore[no-untyped-def]
    _add(tiny_store, "tiny", FACTS[:1])
    release, _ = api.compile_release(tiny_store, "tiny")
    folder = Path(release.path)
    (folder / ".env").write_text("OPENAI_API_KEY=sk-secret\n")  # left there by a user
    (folder / "notes.txt").write_text("private")
    done = api.publish_release(tiny_store, "tiny", NAME, api.PublishOptions(endpoint=hub.url))
    published = set(hub.state.repos[NAME].commits[done.commit].files) - {".gitattributes"}
    assert published == set(layout.read_manifest(folder).files) | {layout.MANIFEST}

    _add(tiny_store, "tiny", FACTS[1:2])
    v2, _ = api.compile_release(tiny_store, "tiny")
    card = Path(v2.path) / "README.md"
    card.write_text(card.read_text() + "changed by hand")
    with pytest.raises(CompileError, match="was changed after it was built"):
        api.publish_release(tiny_store, "tiny", NAME, api.PublishOptions(endpoint=hub.url))
    assert set(hub.state.repos[NAME].tags) == {"v1"}


@SQLITE_ONLY
def test_tampered_file_is_detected_and_nothing_is_written(tiny_store, hub: HubServer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _add(tiny_store, "tiny", FACTS[:1])
    release = api.publish_release(tiny_store, "tiny", NAME, api.PublishOptions(endpoint=hub.url))
    layer_file = next(f for f in hub.state.repos[NAME].resolve("v1").files if f.startswith("mlp-down"))
    entry = hub.state.repos[NAME].resolve("v1").files[layer_file]
    original = hub.state.blobs[entry.sha256]
    hub.state.tamper(NAME, "v1", layer_file, original[:-8] + bytes(8))  # same size, last weights zeroed
    out = tmp_path / "pulled"
    with pytest.raises(ReleaseVerificationError, match=layer_file):
        api.pull_release(NAME, api.PullOptions(version=release.commit, out=str(out), endpoint=hub.url))
    assert not out.exists()


@SQLITE_ONLY
def test_private_repo_tokens_and_failures_are_one_line_errors(
    tiny_store, hub: HubServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    _add(tiny_store, "tiny", FACTS[:1])
    api.publish_release(tiny_store, "tiny", NAME, api.PublishOptions(private=True, endpoint=hub.url))
    assert hub.state.repos[NAME].private
    with pytest.raises(HubNotFound, match="not found"):
        api.pull_release("alice/no-such-repo", api.PullOptions(endpoint=hub.url))
    with pytest.raises(HubNotFound, match="v9"):
        api.pull_release(NAME, api.PullOptions(version="v9", endpoint=hub.url))
    with pytest.raises(HubUnreachable, match="cannot reach"):
        api.pull_release(NAME, api.PullOptions(endpoint="http://127.0.0.1:9"))
    with pytest.raises(HubError, match="plain http is allowed only to this machine"):
        api.pull_release(NAME, api.PullOptions(endpoint="http://192.0.2.1:9"))  # TEST-NET: refused before any request
    monkeypatch.setenv("HF_TOKEN", "tok-bob")  # a valid token without write access to alice/
    _add(tiny_store, "tiny", FACTS[1:2])
    with pytest.raises(HubAuthError, match="write access"):
        api.publish_release(tiny_store, "tiny", NAME, api.PublishOptions(endpoint=hub.url))
    monkeypatch.setenv("HF_TOKEN", "not-a-token")
    with pytest.raises(HubAuthError, match="refused the token"):
        api.publish_release(tiny_store, "tiny", NAME, api.PublishOptions(endpoint=hub.url))
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HubNotFound, match="private"):
        api.pull_release(NAME, api.PullOptions(version="v1", endpoint=hub.url))
    assert all(r.status == "published" or r.hub_commit is None for r in api.list_releases(tiny_store, "tiny"))


@SQLITE_ONLY
def test_import_edits_then_edit_and_publish_v3(tiny_store, hub: HubServer, tmp_path: Path, gpt2_tokenizer) -> None:  # type: ignore[no-untyped-def]
    _add(tiny_store, "tiny", FACTS[:1])
    api.publish_release(tiny_store, "tiny", NAME, api.PublishOptions(endpoint=hub.url))
    _add(tiny_store, "tiny", FACTS[1:2])
    v2 = api.publish_release(tiny_store, "tiny", NAME, api.PublishOptions(endpoint=hub.url))

    bob = _fresh_store(tmp_path, "bob")
    with pytest.raises(
        ReleaseVerificationError, match="neither a Hub id nor a starter asset"
    ):  # never a local path a release names
        api.pull_release(NAME, api.PullOptions(version="v2", endpoint=hub.url), import_into=bob, alias="team")
    assert api.list_models(bob) == []
    api.add_model(bob, "team", tiny_store.get_base_model("tiny").source)
    pulled = api.pull_release(NAME, api.PullOptions(version="v2", endpoint=hub.url), import_into=bob, alias="team")
    assert pulled.imported is not None and pulled.imported.model_dump() == {
        "alias": "team",
        "base_revision": tiny_store.get_base_model("tiny").revision,
        "edits_added": 2,
        "edits_total": 2,
        "release": 2,
        "rebuilt_identical": True,
    }
    theirs = api.list_edits(tiny_store, "tiny")
    mine = api.list_edits(bob, "team")
    assert [(e.key_sha256, e.value_sha256, e.subject) for e in mine] == [
        (e.key_sha256, e.value_sha256, e.subject) for e in theirs
    ]
    assert api.publish_release(
        bob, "team", NAME, api.PublishOptions(endpoint=hub.url)
    ).already  # the imported v2 is the same release

    _add(bob, "team", FACTS[2:])
    v3 = api.publish_release(bob, "team", NAME, api.PublishOptions(endpoint=hub.url))
    assert v3.version == 3 and hub.state.repos[NAME].commits[v3.commit].parent == v2.commit
    p3 = api.pull_release(NAME, api.PullOptions(version="v3", out=str(tmp_path / "v3"), endpoint=hub.url))
    manifest = json.loads((Path(p3.path) / layout.MANIFEST).read_text())
    assert [e["subject"] for e in manifest["edits"]] == [s for s, _ in FACTS]
    assert max(_constraint_errors(p3.path, bob, "team")) <= 1e-3


@SQLITE_ONLY
def test_cli_publish_and_pull_json(tiny_store, lfs_hub: HubServer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    hub = lfs_hub
    _add(tiny_store, "tiny", FACTS[:1])

    def cli(*args: str) -> dict:
        done = run(*args, "--endpoint", hub.url, "--json")
        assert "tok-alice" not in done.stdout + done.stderr
        return json.loads(done.stdout)

    published = cli("publish", "--model", "tiny", "--repo", NAME)
    assert {k: published[k] for k in ("repo", "version", "tag")} == {"repo": NAME, "version": 1, "tag": "v1"}
    pulled = cli("pull", NAME, "--version", "v1", "--out", str(tmp_path / "out"))
    assert pulled["commit"] == published["commit"] and pulled["verified"] and pulled["version"] == "v1"
    assert Path(pulled["path"], layout.MANIFEST).exists()
    listed = run("releases", "list", "--model", "tiny", "--json")
    assert json.loads(listed.stdout)[0]["hub_commit"] == published["commit"]
    bad = run("pull", NAME, "--version", "v7", "--endpoint", hub.url, check=False)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "v7" in bad.stderr
    again = run("publish", "--model", "tiny", "--repo", NAME, "--with-stats", "--endpoint", hub.url)
    assert (
        again.returncode == 0 and "already published" in again.stdout and "stats push" in again.stdout
    )  # says why no statistics went


@pytest.mark.skipif(
    not (os.environ.get("FACTSTORE_LIVE_HUB") == "1" and os.environ.get("HF_TOKEN")),
    reason="live Hub test: set FACTSTORE_LIVE_HUB=1 and HF_TOKEN",
)
@SQLITE_ONLY
def test_live_hub_round_trip(tiny_store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from huggingface_hub import HfApi, constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    hf = HfApi()
    repo = f"{hf.whoami()['name']}/factstore-live-test-{os.getpid()}"
    try:
        _add(tiny_store, "tiny", FACTS[:1])
        published = api.publish_release(tiny_store, "tiny", repo, api.PublishOptions(private=True))
        pulled = api.pull_release(repo, api.PullOptions(version=published.tag, out=str(tmp_path / "live")))
        assert pulled.commit == published.commit and pulled.verified
        AutoModelForCausalLM.from_pretrained(pulled.path)
    finally:
        hf.delete_repo(repo, missing_ok=True)


def _own_stats_elsewhere(store, alias: str, theirs) -> None:  # type: ignore[no-untyped-def]
    """Key statistics of the store's own on another layer than THEIRS: the text on which a
    pulled C is compared with the model's keys before it is taken (weights/plausible.py)."""
    other = next(layer for layer in range(3) if layer != theirs.layer)
    api.compute_stats(store, alias, api.StatsOptions(layer=other, corpus=theirs.corpus, tokens=2000), device="cpu")


def _no_corpus_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any pass over a corpus for key statistics fails the test."""
    from factstore.weights import stats

    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("key statistics were computed")

    monkeypatch.setattr(stats, "accumulate", refuse)


@SQLITE_ONLY
def test_publish_with_stats_ships_each_c_once_and_the_puller_computes_none(  # type: ignore[no-untyped-def]
    tiny_store,
    lfs_hub: HubServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from factstore.hub import Hub
    from factstore.weights import stats

    sent: list[dict] = []
    real_upload = Hub.upload
    monkeypatch.setattr(
        Hub,
        "upload",
        lambda self, *a, **k: (
            sent.append(dict(a[6] if len(a) > 6 else k.get("extra") or {})) or real_upload(self, *a, **k)
        ),
    )
    _add(tiny_store, "tiny", FACTS[:1])
    api.publish_release(tiny_store, "tiny", NAME, api.PublishOptions(endpoint=lfs_hub.url, with_stats=True))
    _add(tiny_store, "tiny", FACTS[1:2])
    v2 = api.publish_release(tiny_store, "tiny", NAME, api.PublishOptions(endpoint=lfs_hub.url, with_stats=True))
    cov = tiny_store.get_covariance(api.list_edits(tiny_store, "tiny")[0].covariance_id)
    assert [list(s) for s in sent] == [[stats.shipped_name(cov.sha256)], []]  # v2 uses the same C: nothing sent for it
    assert stats.shipped_name(cov.sha256) in lfs_hub.state.repos[NAME].commits[v2.commit].files

    monkeypatch.setenv("FACTSTORE_CACHE", str(tmp_path / "bob-cache"))  # bob's machine has no statistics
    bob = _fresh_store(tmp_path, "bob")
    api.add_model(bob, "team", tiny_store.get_base_model("tiny").source)
    _own_stats_elsewhere(bob, "team", cov)
    _no_corpus_pass(monkeypatch)
    pulled = api.pull_release(NAME, api.PullOptions(version="v2", endpoint=lfs_hub.url), import_into=bob, alias="team")
    assert pulled.imported and pulled.imported.edits_added == 2
    _add(bob, "team", FACTS[2:])  # the next edit uses the shipped C
    used = [e.covariance_id for e in api.list_edits(bob, "team")]
    assert len(used) == 3 and len(set(used)) == 1 and bob.get_covariance(used[0]).sha256 == cov.sha256


@SQLITE_ONLY
def test_a_tampered_shipped_c_is_refused(
    tiny_store, lfs_hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    from factstore.weights import stats

    _add(tiny_store, "tiny", FACTS[:1])
    api.publish_release(tiny_store, "tiny", NAME, api.PublishOptions(endpoint=lfs_hub.url, with_stats=True))
    cov = tiny_store.get_covariance(api.list_edits(tiny_store, "tiny")[0].covariance_id)
    data = bytearray(Path(cov.path).read_bytes())
    data[-4] ^= 0x01  # one bit of the last entry of C
    lfs_hub.state.tamper(NAME, "v1", stats.shipped_name(cov.sha256), bytes(data))
    monkeypatch.setenv("FACTSTORE_CACHE", str(tmp_path / "bob-cache"))
    bob = _fresh_store(tmp_path, "bob")
    api.add_model(bob, "team", tiny_store.get_base_model("tiny").source)
    with pytest.raises(ReleaseVerificationError, match="do not match the sha256 recorded for them"):
        api.pull_release(NAME, api.PullOptions(version="v1", endpoint=lfs_hub.url), import_into=bob, alias="team")
    assert api.list_edits(bob, "team") == [] and bob.list_covariances(1) == []
    assert not list(
        (tmp_path / "bob-cache" / "stats").rglob("*.safetensors")
    )  # nothing left that a later edit could take for its own


@SQLITE_ONLY
def test_stats_push_and_pull_through_a_repository_of_their_own(  # type: ignore[no-untyped-def]
    tiny_store,
    lfs_hub: HubServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stats_repo = "alice/tiny-stats"
    first = api.push_stats(tiny_store, "tiny", stats_repo, endpoint=lfs_hub.url)
    assert first.uploaded == 1 and first.files == 1
    assert api.push_stats(tiny_store, "tiny", stats_repo, endpoint=lfs_hub.url).uploaded == 0  # stored once
    _add(tiny_store, "tiny", FACTS[:1])
    api.publish_release(tiny_store, "tiny", NAME, api.PublishOptions(endpoint=lfs_hub.url))
    with pytest.raises(PublishConflict, match="holds factstore releases"):
        api.push_stats(tiny_store, "tiny", NAME, endpoint=lfs_hub.url)

    monkeypatch.setenv("FACTSTORE_CACHE", str(tmp_path / "bob-cache"))
    bob = _fresh_store(tmp_path, "bob")
    api.add_model(bob, "mine", tiny_store.get_base_model("tiny").source)
    _own_stats_elsewhere(bob, "mine", tiny_store.get_covariance(1))
    _no_corpus_pass(monkeypatch)
    got = api.pull_stats(bob, "mine", stats_repo, endpoint=lfs_hub.url)
    layer = tiny_store.get_covariance(1).layer
    assert got.layers == [layer] and got.skipped == 0
    _add(bob, "mine", FACTS[:1])  # no statistics computed: the pulled C is the layer's
    assert (
        bob.get_covariance(api.list_edits(bob, "mine")[0].covariance_id).sha256 == tiny_store.get_covariance(1).sha256
    )


@SQLITE_ONLY
def test_the_health_gate_refuses_a_degraded_release_unless_allowed(  # type: ignore[no-untyped-def]
    db_url: str,
    tiny_gpt2_dir: Path,
    gpt2_tokenizer,
    lfs_hub: HubServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tiny_models import RELATIONS, TRAINED_EDIT_SETTINGS, Recipe, fact_sentences, make_facts

    monkeypatch.setenv("FACTSTORE_HEALTH_TOKENS", "400")
    facts = make_facts(Recipe())
    # subjects given two homes each that contradict what the model knows (other cities: reachable targets)
    edited = [f for f in facts if f.relation == "city"][-6:]
    templates = RELATIONS["city"][0][:2]
    # The held-out text the health check reads: the model's own greedy continuations of the edited
    # prompts. The tiny model was trained on object tokens only, so on its fact sentences every
    # other token costs ~18 nats and any update that flattens its predictions *lowers* their
    # perplexity (by 9 % on one machine's training); on its own argmax text the base is at its best,
    # so an update that moves these predictions raises perplexity whatever the training gave (+228 % on one machine).
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    continuations = []
    for fact in edited:
        for template in templates:
            ids = gpt2_tokenizer(template.format(fact.subject), return_tensors="pt").input_ids
            out = model.generate(  # type: ignore[operator]
                ids, attention_mask=ids.new_ones(ids.shape), do_sample=False, max_new_tokens=16, pad_token_id=0
            )
            continuations.append(gpt2_tokenizer.decode(out[0]))
    api.upgrade_database(db_url)
    store = api.open_store(db_url)
    api.add_model(store, "facts", str(tiny_gpt2_dir))
    corpus = tmp_path / "facts.json"  # C reads the fact sentences; health reads the continuations after them
    corpus.write_text(json.dumps(fact_sentences(Recipe()) + continuations))
    api.compute_stats(store, "facts", api.StatsOptions(layer=2, corpus=str(corpus), tokens=2500), device="cpu")
    session = EditSession(store, "facts", device="cpu")
    # the trained model's edit settings: without them its edits do not take
    session.settings.defaults = replace(session.settings.defaults, **TRAINED_EDIT_SETTINGS)
    cities = [o.strip() for o in RELATIONS["city"][2]]
    for i, fact in enumerate(edited):
        others = [c for c in cities if c != fact.target]
        for j, template in enumerate(templates):
            session.add(EditRequest(template, fact.subject, others[(i + 3 * j) % len(others)]))
    # soft, every edit accepted: whether an exact compile holds two homes at once depends on the
    # trained model's last bits; the gate judges whatever compiles
    release, _ = api.compile_release(store, "facts", api.CompileOptions(mode="soft", min_efficacy=0.0))
    health = json.loads(Path(release.path, layout.MANIFEST).read_text())["scores"]["health"]
    assert health["corpus"] == "local" and health["heldout_tokens"] >= 300
    rise = health["perplexity_rise_pct"]
    assert rise > 2, health  # the log damages the model: the gate has something to refuse
    monkeypatch.setenv("FACTSTORE_MAX_PERPLEXITY_RISE", "2")  # below it, whatever this machine's training gave
    assert "## Health" in Path(release.path, "README.md").read_text()
    compiled = run_json("compile", "--model", "facts", "--mode", "soft", "--json")
    assert compiled["scores"]["health"] == health  # type: ignore[index]
    from fastapi.testclient import TestClient

    from factstore.server.app import create_app
    from factstore.server.service import ServerSettings

    with TestClient(create_app(ServerSettings(database_url=db_url, worker=False)), client=("127.0.0.1", 5000)) as web:
        assert f"({rise:+.1f} %)" in web.get("/models/facts").text
    with pytest.raises(ReleaseDegraded) as refused:
        api.publish_release(store, "facts", NAME, api.PublishOptions(endpoint=lfs_hub.url, mode="soft"))
    assert f"rose {rise:.1f} %" in str(refused.value) and "\n" not in str(refused.value)
    assert "--mode soft" not in str(refused.value)  # a soft release has the soft solve already
    assert NAME not in lfs_hub.state.repos  # nothing was sent
    done = run("publish", "--model", "facts", "--mode", "soft", "--repo", NAME, "--endpoint", lfs_hub.url, check=False)
    assert done.returncode == 1 and f"rose {rise:.1f} %" in done.stderr
    published = api.publish_release(
        store, "facts", NAME, api.PublishOptions(endpoint=lfs_hub.url, mode="soft", allow_degraded=True)
    )
    assert published.version == release.version and not published.already


def test_the_health_refusal_advises_the_soft_solve_only_to_an_exact_release() -> None:
    from factstore.release.health import check_publishable

    scores = {"health": {"perplexity_rise_pct": 40.0, "perplexity_base": 10.0, "perplexity": 14.0}}
    for mode, advised in (("joint", True), ("sequential", True), ("band", False), ("soft", False)):
        with pytest.raises(ReleaseDegraded) as refused:
            check_publishable(3, scores, allow_degraded=False, mode=mode)
        assert ("compile with --mode soft" in str(refused.value)) is advised, mode
    check_publishable(3, scores, allow_degraded=True, mode="band")  # --allow-degraded: no refusal


def test_the_download_check_reads_the_etag_huggingface_hub_uses() -> None:
    import httpx2

    from factstore.hub import check_download_headers

    sha = "a" * 64

    def response(path: str, **headers: str) -> httpx2.Response:
        return httpx2.Response(302, headers=headers, request=httpx2.Request("HEAD", f"https://hub.example{path}"))

    resolve = "/alice/m/resolve/" + "b" * 40 + "/model.safetensors"
    check_download_headers(
        response(resolve, **{"X-Linked-Etag": f'"{sha}"', "ETag": 'W/"2d-redirect"'})
    )  # a real LFS redirect
    check_download_headers(response("/api/models/alice/m", ETag='W/"not-a-path"'))  # listings make no path
    for bad in ({"ETag": '"../../x"'}, {"X-Linked-Etag": '"../x"', "ETag": f'"{sha}"'}, {"X-Repo-Commit": "../.."}):
        with pytest.raises(ReleaseVerificationError, match="refused before anything was written"):
            check_download_headers(response(resolve, **bad))


def test_a_publish_job_waits_for_a_worker_with_hub_credentials_which_rebuilds_and_publishes_it(  # type: ignore[no-untyped-def]
    tiny_store, lfs_hub: HubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Publish as a job: queued through the API (no token in it), taken only by a worker with
    Hub credentials of its own; the worker here lacks the release folder (built elsewhere) and
    writes the same version again, byte for byte, before it publishes."""
    import shutil

    from factstore.worker.loop import Worker, WorkerSettings

    _add(tiny_store, "tiny", FACTS[:2])
    release, _ = api.compile_release(tiny_store, "tiny")
    queued = run_json("publish", "--model", "tiny", "--repo", NAME, "--queue")  # the CLI's way to queue it
    assert isinstance(queued, dict) and queued["params"]["version"] == release.version
    job = api.get_job(tiny_store, queued["id"])
    assert job.status == "pending" and job.waiting == "no worker serving tiny is running"
    settings = WorkerSettings(poll=0.01, listen=False, device="cpu")

    monkeypatch.delenv("HF_TOKEN")  # a worker without credentials does not take it, and the job says why
    monkeypatch.setenv("FACTSTORE_PUBLISH_REPOS", "alice/*")  # where a job may send the worker's token
    bare = Worker(tiny_store, settings)
    tiny_store.register_worker(bare.id, [], bare.kinds)
    assert "publish" not in bare.kinds and not bare.turn()
    waiting = api.get_job(tiny_store, job.id)
    assert waiting.status == "pending" and "Hub credentials" in (waiting.waiting or "")
    tiny_store.stop_worker(bare.id)

    shutil.rmtree(release.path)  # as on a host that did not compile it
    monkeypatch.setenv("HF_TOKEN", "tok-alice")
    monkeypatch.setenv("HF_ENDPOINT", lfs_hub.url)  # the worker's own Hub
    publisher = Worker(tiny_store, settings)
    tiny_store.register_worker(publisher.id, [], publisher.kinds)
    assert "publish" in publisher.kinds and publisher.turn()
    done = api.get_job(tiny_store, job.id)
    assert done.status == "done", done.error
    assert done.result is not None and done.result["tag"] == f"v{release.version}" and not done.result["already"]
    published = tiny_store.get_latest_release(1)
    assert published is not None and (published.version, published.status) == (release.version, "published")
    assert published.hub_commit == done.result["commit"] == lfs_hub.state.repos[NAME].tags[f"v{release.version}"]
    assert layout.verify_folder(Path(release.path)) is not None  # the same release, written here again

    _add(tiny_store, "tiny", FACTS[2:])  # a log that moved on is not what v1 was: refused before any work
    with pytest.raises(EditStateError, match="not compiled yet"):
        api.queue_publish(tiny_store, "tiny", NAME)
    stale, _ = api.queue_publish(tiny_store, "tiny", NAME, api.PublishOptions(version=release.version))
    assert publisher.turn()
    failed = api.get_job(tiny_store, stale.id)
    assert failed.status == "failed" and "not the release of tiny's current log" in (failed.error or "")
    elsewhere, _ = api.queue_publish(tiny_store, "tiny", "bob/other", api.PublishOptions(version=release.version))
    assert publisher.turn()  # a write token does not choose where the worker's token goes
    refused = api.get_job(tiny_store, elsewhere.id)
    assert refused.status == "failed" and "may not publish to bob/other" in (refused.error or "")
    assert "bob/other" not in lfs_hub.state.repos
    tiny_store.stop_worker(publisher.id)


def test_a_hub_repository_carries_statistics_between_workers(lfs_hub, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """FACTSTORE_STATS_SHARE=hub:NS/NAME: a file put by one worker is fetched by another; a name
    the share does not hold is absent, not an error; a path a job could choose is refused."""
    from factstore.config import SettingsError
    from factstore.weights import share

    monkeypatch.setenv("HF_ENDPOINT", lfs_hub.url)
    monkeypatch.setenv("FACTSTORE_STATS_SHARE", "hub:alice/team-stats")
    found = share.configured()
    assert isinstance(found, share.HubShare)
    name = f"{'a' * 64}.shard-0-of-2.{'b' * 16}.safetensors"
    (tmp_path / "sums").write_bytes(b"partial sums")
    found.put(tmp_path / "sums", name)
    assert found.fetch(name, tmp_path / "back", max_bytes=1000) and (tmp_path / "back").read_bytes() == b"partial sums"
    assert not found.fetch(f"{'c' * 64}.safetensors", tmp_path / "none", max_bytes=1000)
    with pytest.raises(ValueError, match="not a statistics share file name"):
        found.fetch("../../etc/passwd", tmp_path / "x", max_bytes=1000)
    monkeypatch.setenv("FACTSTORE_STATS_SHARE", "relative/folder")
    with pytest.raises(SettingsError, match="absolute folder or hub:NS/NAME"):
        share.configured()
