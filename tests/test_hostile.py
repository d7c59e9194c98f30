"""Hostile repositories: the suite's Hub serves repositories crafted to escape `pull` or poison
`pull --import-edits`. Each attack is refused with one clear line, nothing outside --out and the
cache changes, and the store is left as it was."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from huggingface_hub import scan_cache_dir
from safetensors.torch import load_file, save_file
from test_hub import _serve

from cli_runner import run
from factstore import api
from factstore.domain import EditRequest
from factstore.editing.session import EditSession
from factstore.errors import HubError, ReleaseVerificationError
from factstore.release import layout, pull
from factstore.storage.store import Store
from hub_server import Entry, HubServer, Repo

REPO = Path(__file__).resolve().parents[1]
GOOD = "alice/good"
PROMPT = "{} is located in the city of"
SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the store is not the subject here


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[HubServer]:
    yield from _serve("lfs", monkeypatch, tmp_path)


@pytest.fixture
def release(one_edit_release: dict[str, bytes], hub: HubServer) -> dict[str, bytes]:
    """The files of a genuine one-edit release (compiled once per worker), in this test's Hub as GOOD."""
    craft(hub, GOOD, one_edit_release)
    return dict(one_edit_release)


@pytest.fixture
def sentinel(tmp_path: Path) -> Callable[[], str]:
    """A tree of the user's files next to everything; returns a hash of it (names, modes, bytes, links)."""
    root = tmp_path / "user"
    (root / "v1").mkdir(parents=True)
    (root / "secret.txt").write_text("do not touch")
    (root / "secret.txt").chmod(0o600)
    (root / "v1" / "NOTES.txt").write_text("mine")
    os.symlink(root / "secret.txt", root / "link")
    os.mkfifo(root / "fifo")

    def digest() -> str:
        h = hashlib.sha256()
        for path in sorted(root.rglob("*")):
            st = path.lstat()
            h.update(f"{path.relative_to(root)}|{st.st_mode}".encode())
            if path.is_file() and not path.is_symlink():
                h.update(path.read_bytes())
            if path.is_symlink():
                h.update(os.readlink(path).encode())
        return h.hexdigest()

    return digest


def craft(server: HubServer, repo_id: str, files: dict[str, bytes], tag: str = "v1", lfs: bool = False) -> None:
    """A repository holding exactly FILES (names taken as given) at one commit tagged TAG (as LFS
    files, whose size the Hub gives in X-Linked-Size, with LFS)."""
    state = server.state
    with state.lock:
        repo = Repo(repo_id, private=False)
        entries = {}
        for name, data in files.items():
            sha = hashlib.sha256(data).hexdigest()
            state.blobs[sha] = data
            entries[name] = Entry(sha, len(data), lfs=lfs)
        commit = state.new_commit(repo, None, entries, "crafted")
        repo.branches["main"] = commit.sha
        repo.tags[tag] = commit.sha
        state.repos[repo_id] = repo


def rehash(files: dict[str, bytes], edit: Callable[[dict], None]) -> dict[str, bytes]:
    """FILES with the manifest changed by EDIT and every file hash made consistent again, so the
    attack reaches the checks behind the hash check."""
    manifest = json.loads(files[layout.MANIFEST])
    edit(manifest)
    manifest["files"] = {
        n: hashlib.sha256(d).hexdigest() for n, d in files.items() if n != layout.MANIFEST and n in manifest["files"]
    }
    return {**files, layout.MANIFEST: json.dumps(manifest).encode()}


def pull_refused(server: HubServer, repo_id: str, out: Path, message: str, store=None, alias: str = "team") -> None:  # type: ignore[no-untyped-def]
    kwargs = {"import_into": store, "alias": alias} if store is not None else {}
    with pytest.raises((ReleaseVerificationError, HubError), match=message) as caught:
        api.pull_release(repo_id, api.PullOptions(version="v1", out=str(out), endpoint=server.url), **kwargs)
    assert "\n" not in str(caught.value)


def _bob(tmp_path: Path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'bob.db'}"
    api.upgrade_database(url)
    return api.open_store(url)


def _manifest_with(files: dict[str, bytes], extra: dict[str, bytes]) -> dict[str, bytes]:
    manifest = json.loads(files[layout.MANIFEST])
    manifest["files"].update({n: hashlib.sha256(d).hexdigest() for n, d in extra.items()})
    return {**files, layout.MANIFEST: json.dumps(manifest).encode()}


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../user/v1/extra.py", "malformed at files"),
        ("/tmp/absolute", "malformed at files"),
        (".hidden", "malformed at files"),
        ("sub/dir.txt", "malformed at files"),
        ("not-in-the-repo.txt", "names files the repository does not hold"),
    ],
)
def test_file_names_that_are_not_plain_names_in_the_repository_are_refused(
    release: dict[str, bytes],
    hub: HubServer,
    tmp_path: Path,
    sentinel: Callable[[], str],
    name: str,
    message: str,
) -> None:
    before = sentinel()
    craft(hub, "eve/names", _manifest_with(release, {name: b"print('owned')"}))
    out = tmp_path / "out"
    pull_refused(hub, "eve/names", out, message)
    assert sentinel() == before and not out.exists()


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (b"{not json", "is not valid JSON"),
        (b"[]", "malformed at the manifest"),
        (json.dumps({"files": ["a"]}).encode(), "malformed at base"),
        (b"\xff\xfe", "is not valid JSON"),
    ],
)
def test_malformed_manifests_are_one_line_refusals(
    release: dict[str, bytes], hub: HubServer, tmp_path: Path, manifest: bytes, message: str
) -> None:
    craft(hub, "eve/manifest", {**release, layout.MANIFEST: manifest})
    pull_refused(hub, "eve/manifest", tmp_path / "out", message)
    assert not (tmp_path / "out").exists()


def test_a_file_that_fails_its_hash_drops_the_cached_commit(
    release: dict[str, bytes], hub: HubServer, tmp_path: Path
) -> None:
    layer_file = next(n for n in release if n.startswith("mlp-down"))
    craft(hub, "eve/hash", {**release, layer_file: release[layer_file][:-4] + b"\0\0\0\0"})
    pull_refused(hub, "eve/hash", tmp_path / "out", layer_file)
    cache = Path(os.environ["HF_HUB_CACHE"])
    assert not [r for repo in scan_cache_dir(cache).repos if repo.repo_id == "eve/hash" for r in repo.revisions]


def test_snapshot_files_that_point_out_of_the_cache_are_not_read(tmp_path: Path) -> None:
    snapshot = tmp_path / "cache" / "models--eve--x" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (tmp_path / "secret").write_text("x")
    os.symlink(tmp_path / "secret", snapshot / "weights.safetensors")
    with pytest.raises(ReleaseVerificationError, match="not a regular file inside the download cache"):
        pull.cached_file(snapshot, "weights.safetensors")


def _nan_vectors(files: dict[str, bytes], tmp_path: Path) -> dict[str, bytes]:
    path = tmp_path / "vectors.safetensors"
    path.write_bytes(files[layout.EDIT_VECTORS])
    tensors = load_file(str(path))
    tensors["edit.00000.value"][0] = math.nan
    save_file(tensors, str(path), metadata={"format": "pt"})
    return {**files, layout.EDIT_VECTORS: path.read_bytes()}


POISON: dict[str, Callable[[dict], None]] = {
    "layer 99": lambda m: m["edits"][0].update(layer=99),
    "a module that is not the down-projection": lambda m: m["edits"][0].update(module="transformer.wte"),
    "a key of the wrong size": lambda m: m["edits"][0].update(key_shape=[7]),
    "a NUL byte in the prompt": lambda m: m["edits"][0].update(prompt="{} is in\x00"),
    "a local corpus path": lambda m: m["edits"][0]["covariance"].update(corpus="/etc/passwd", corpus_sha256="0" * 64),
    "a base model on a local path": lambda m: m["base"].update(source="/home/someone/model"),
    # it would inject lines into the front matter of the card the importer publishes next
    "a licence with a newline": lambda m: m["base"].update(license="mit\ninference: true\nwidget: x"),
    # key statistics a single-layer edit never reads: each would be fetched or computed
    "band statistics on a single-layer edit": lambda m: m["edits"][0].update(
        band_covariances=[{**m["edits"][0]["covariance"], "layer": 0, "tokens": 9_000_000}]
    ),
}
REFUSAL = {
    "layer 99": "layer 99 is outside the model",
    "a module that is not the down-projection": "rewrites 'transformer.wte'",
    "a key of the wrong size": "its key has shape",
    "a NUL byte in the prompt": "malformed at edits.0.prompt",
    "a local corpus path": "not a starter corpus",
    "a base model on a local path": "neither a Hub id nor a starter asset",
    "a licence with a newline": "malformed at base.license",
    "band statistics on a single-layer edit": "key statistics of a band",
}


@SQLITE
@pytest.mark.parametrize("attack", [*POISON, "NaN vectors", "a tag beyond int32"])
def test_poisoned_edit_logs_are_refused_whole(
    release: dict[str, bytes],
    hub: HubServer,
    tmp_path: Path,
    tiny_store,
    sentinel: Callable[[], str],
    attack: str,  # type: ignore[no-untyped-def]
) -> None:
    files, tag = release, "v1"
    if attack == "NaN vectors":
        files = rehash(_nan_vectors(release, tmp_path), lambda m: None)
    elif attack == "a tag beyond int32":
        tag = "v99999999999999999999"
    else:
        files = rehash(release, POISON[attack])
    craft(hub, "eve/poison", files, tag=tag)
    bob = _bob(tmp_path)
    if attack != "a base model on a local path":
        api.add_model(bob, "team", tiny_store.get_base_model("tiny").source)  # bob has the same local base weights
    before = (sentinel(), [m.alias for m in api.list_models(bob)])
    message = {"NaN vectors": "its value is not finite", "a tag beyond int32": "is not a version"}.get(
        attack
    ) or REFUSAL[attack]
    with pytest.raises((ReleaseVerificationError, HubError), match=message):
        api.pull_release(
            "eve/poison",
            api.PullOptions(version=tag, out=str(tmp_path / "out"), endpoint=hub.url),
            import_into=bob,
            alias="team",
        )
    assert (sentinel(), [m.alias for m in api.list_models(bob)]) == before
    if before[1]:
        assert api.list_edits(bob, "team", "all") == [] and api.list_releases(bob, "team") == []


@SQLITE
def test_weights_that_are_not_the_compile_of_the_log_are_refused(
    release: dict[str, bytes], hub: HubServer, tmp_path: Path, tiny_store
) -> None:  # type: ignore[no-untyped-def]
    layer_file = next(n for n in release if n.startswith("mlp-down"))
    path = tmp_path / "layer.safetensors"
    path.write_bytes(release[layer_file])
    tensors = load_file(str(path))
    name = next(iter(tensors))
    tensors[name] = tensors[name] * 1.5  # a backdoor the edit log does not explain
    save_file(tensors, str(path), metadata={"format": "pt"})
    craft(hub, "eve/weights", rehash({**release, layer_file: path.read_bytes()}, lambda m: None))
    bob = _bob(tmp_path)
    api.add_model(bob, "team", tiny_store.get_base_model("tiny").source)
    with pytest.raises(
        ReleaseVerificationError,
        match=f"not a compile of its own edit log .*{layer_file}.*differ\\); nothing was imported$",
    ):
        api.pull_release(
            "eve/weights",
            api.PullOptions(version="v1", out=str(tmp_path / "out"), endpoint=hub.url),
            import_into=bob,
            alias="team",
        )
    assert api.list_edits(bob, "team", "all") == []


def test_the_cli_refuses_a_traversal_in_one_line_with_exit_1(
    release: dict[str, bytes], hub: HubServer, tmp_path: Path, sentinel: Callable[[], str]
) -> None:
    before = sentinel()
    craft(hub, "eve/cli", _manifest_with(release, {"../../user/secret.txt": b"stolen"}))
    done = run("pull", "eve/cli", "--version", "v1", "--out", str(tmp_path / "o"), "--endpoint", hub.url, check=False)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1 and "malformed at files" in done.stderr
    assert sentinel() == before and not (tmp_path / "o").exists()


def _gets(server: HubServer, name: str) -> list[str]:
    return [path for method, path in server.state.log if method == "GET" and path.endswith("/" + name)]


@SQLITE
def test_files_larger_than_they_can_be_are_refused_before_a_byte_is_fetched(  # type: ignore[no-untyped-def]
    release: dict[str, bytes],
    hub: HubServer,
    tmp_path: Path,
    tiny_store,
) -> None:
    from factstore.release.manifest import MAX_MANIFEST_BYTES
    from factstore.release.stats_repo import INDEX, StatsEntry, StatsIndex
    from factstore.weights import stats

    craft(
        hub, "eve/big-manifest", {**release, layout.MANIFEST: release[layout.MANIFEST] + b" " * MAX_MANIFEST_BYTES}
    )  # still valid JSON
    pull_refused(
        hub,
        "eve/big-manifest",
        tmp_path / "out",
        f"{layout.MANIFEST} is .* bytes, more than .* refused before downloading it",
    )
    assert _gets(hub, layout.MANIFEST) == [] and not (tmp_path / "out").exists()

    # a C file larger than its matrix: from a statistics repository, and shipped with a release
    cov = tiny_store.list_covariances(1)[0]
    dim = stats.load_matrix(Path(cov.path)).shape[0]
    big = b"\0" * (stats.max_file_bytes(dim, cov.dtype) + 1)
    sha = hashlib.sha256(big).hexdigest()
    entry = StatsEntry(
        sha256=sha,
        identity=tiny_store.get_base_model("tiny").identity,
        layer=cov.layer,
        module=cov.module,
        corpus="c-corpus.json",
        corpus_sha256=cov.corpus_sha256,
        tokens=cov.tokens,
        dtype=cov.dtype,
    )  # type: ignore[arg-type]
    craft(
        hub,
        "eve/big-stats",
        {INDEX: StatsIndex(files=[entry]).model_dump_json().encode(), stats.shipped_name(sha): big},
        lfs=True,
    )
    bob = _bob(tmp_path)
    api.add_model(bob, "team", tiny_store.get_base_model("tiny").source)
    with pytest.raises(ReleaseVerificationError, match="refused before downloading it"):
        api.pull_stats(bob, "team", "eve/big-stats", endpoint=hub.url)

    def ship_big(manifest: dict) -> None:
        for edit in manifest["edits"]:
            edit["covariance"]["sha256"] = sha

    craft(hub, "eve/big-shipped", rehash({**release, stats.shipped_name(sha): big}, ship_big))
    with pytest.raises(ReleaseVerificationError, match="refused before downloading it"):
        api.pull_release(
            "eve/big-shipped",
            api.PullOptions(version="v1", out=str(tmp_path / "out2"), endpoint=hub.url),
            import_into=bob,
            alias="team",
        )
    assert (
        _gets(hub, stats.shipped_name(sha)) == []
        and bob.list_covariances(1) == []
        and api.list_edits(bob, "team", "all") == []
    )


def test_a_release_that_would_not_fit_on_the_disk_is_refused_before_download(  # type: ignore[no-untyped-def]
    release: dict[str, bytes],
    hub: HubServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from collections import namedtuple

    need = sum(len(data) for name, data in release.items() if name != layout.MANIFEST)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(
        pull.shutil, "disk_usage", lambda _p: usage(10 * need, 9 * need, 2 * need - 1)
    )  # the cache and --out share it
    craft(hub, "eve/fat", release)
    pull_refused(hub, "eve/fat", tmp_path / "out", r"needs .* GB free; free space, or set HF_HOME or --out elsewhere")
    assert not [
        p for m, p in hub.state.log if m == "GET" and "/resolve/" in p and not p.endswith(layout.MANIFEST)
    ]  # nothing fetched
    monkeypatch.setattr(pull.shutil, "disk_usage", lambda _p: usage(10 * need, 8 * need, 2 * need))
    assert api.pull_release(
        "eve/fat", api.PullOptions(version="v1", out=str(tmp_path / "out"), endpoint=hub.url)
    ).verified


def test_a_release_of_a_newer_manifest_format_names_the_version_to_upgrade_to(
    release: dict[str, bytes], hub: HubServer, tmp_path: Path
) -> None:
    from factstore.release.manifest import FORMAT

    assert json.loads(release[layout.MANIFEST])["format"] == FORMAT  # every release says its format
    newer = rehash(
        release, lambda m: m.update(format=FORMAT + 1, factstore_version="9.1.0", a_field_of_the_future=[1, 2])
    )
    craft(hub, "eve/future", newer)
    pull_refused(
        hub,
        "eve/future",
        tmp_path / "o",
        rf"manifest is format {FORMAT + 1}, newer .* pip install -U 'factstore-edit>=9\.1\.0'",
    )
    craft(
        hub, "eve/future-odd", rehash(release, lambda m: m.update(format=FORMAT + 1, factstore_version="x; rm -rf /"))
    )
    pull_refused(
        hub, "eve/future-odd", tmp_path / "p", r"upgrade with: pip install -U factstore-edit$"
    )  # an odd version is not echoed
    assert not (tmp_path / "o").exists() and not (tmp_path / "p").exists()


@SQLITE
def test_an_edit_relabelled_as_another_fact_is_refused_at_import(  # type: ignore[no-untyped-def]
    release: dict[str, bytes], hub: HubServer, tmp_path: Path, tiny_store, sentinel: Callable[[], str]
) -> None:
    """The review's attack: a real edit of one subject, relabelled in the manifest (and card) as
    another subject and object with no old target and no metrics, every hash made consistent."""

    def relabel(manifest: dict) -> None:
        entry = manifest["edits"][0]
        entry.update(subject="The Louvre", target_new="London", target_true=None, metrics={})

    craft(hub, "eve/relabel", rehash(release, relabel))
    bob, before = _bob(tmp_path), sentinel()
    api.add_model(bob, "team", tiny_store.get_base_model("tiny").source)
    with pytest.raises(
        ReleaseVerificationError,
        match=r"edit 1 of the release: its key is not the key of 'The Louvre'.*than its label; nothing was imported$",
    ):
        api.pull_release(
            "eve/relabel",
            api.PullOptions(version="v1", out=str(tmp_path / "out"), endpoint=hub.url),
            import_into=bob,
            alias="team",
        )
    assert api.list_edits(bob, "team", "all") == [] and [r.version for r in api.list_releases(bob, "team")] == []
    assert sentinel() == before
    # the genuine release imports, its labels checked the same way
    pulled = api.pull_release(
        GOOD, api.PullOptions(version="v1", out=str(tmp_path / "good"), endpoint=hub.url), import_into=bob, alias="team"
    )
    assert pulled.imported is not None and pulled.imported.rebuilt_identical
    assert [e.subject for e in api.list_edits(bob, "team")] == ["The Eiffel Tower"]


@SQLITE
def test_an_edit_relabelled_with_another_object_is_refused_at_import(  # type: ignore[no-untyped-def]
    db_url: str, tiny_gpt2_dir: Path, hub: HubServer, tmp_path: Path, sentinel: Callable[[], str]
) -> None:
    """The key check binds a label's subject (and the words before it); its object is bound by
    what the vectors push. A real edit on the suite's trained GPT-2 (Tokyo) relabelled with
    another object is refused naming the object (before, it imported); with other words before
    the subject too, its key gives it away; the genuine release imports."""
    from tiny_models import RELATIONS, Recipe, make_facts

    api.upgrade_database(db_url)
    alice = api.open_store(db_url)
    api.add_model(alice, "facts", str(tiny_gpt2_dir))
    facts = make_facts(Recipe())
    corpus = tmp_path / "facts.json"
    corpus.write_text(
        json.dumps([t.format(f.subject) + " " + f.target + "." for f in facts for t in RELATIONS[f.relation][0]])
    )
    api.compute_stats(alice, "facts", api.StatsOptions(corpus=str(corpus), tokens=2500), device="cpu")
    prompt = RELATIONS["city"][0][0]
    session = EditSession(alice, "facts", device="cpu")
    session.add(EditRequest(prompt, facts[0].subject, "Tokyo"))
    other = _least_pushed(session, alice, "facts")
    release, _ = api.compile_release(alice, "facts", device="cpu")
    files = {p.name: p.read_bytes() for p in Path(release.path).iterdir()}
    bob, before = _bob(tmp_path), sentinel()
    api.add_model(bob, "team", str(tiny_gpt2_dir))
    for repo, label in [
        ("eve/object", {"target_new": other}),
        ("eve/relation", {"prompt": "the city of {}", "target_new": other}),  # the key moves with it
    ]:

        def relabel(manifest: dict, label: dict = label) -> None:
            manifest["edits"][0].update(label, target_true=None, metrics={})

        craft(hub, repo, rehash(files, relabel))
        with pytest.raises(
            ReleaseVerificationError,
            match=rf"edit 1 of the release( does not push its own new object '{other}'|: its key is not the key)",
        ):
            api.pull_release(
                repo,
                api.PullOptions(version="v1", out=str(tmp_path / repo), endpoint=hub.url),
                import_into=bob,
                alias="team",
            )
        assert api.list_edits(bob, "team", "all") == [] and api.list_releases(bob, "team") == []
    assert sentinel() == before
    craft(hub, "alice/tokyo", files)
    pulled = api.pull_release(
        "alice/tokyo",
        api.PullOptions(version="v1", out=str(tmp_path / "good"), endpoint=hub.url),
        import_into=bob,
        alias="team",
    )
    assert pulled.imported is not None and [e.target_new for e in api.list_edits(bob, "team")] == ["Tokyo"]


def _least_pushed(session: EditSession, store: Store, alias: str) -> str:
    """Of some objects, the one whose first token the log's only edit raised least on its prompt,
    measured as the import's check measures it (in the edit's context templates), past the
    middle of the vocabulary: an object its vectors certainly do not push, whatever this
    machine's training of the tiny model made of them."""
    import torch

    from factstore.release.claims import _next_logprobs
    from factstore.rome.hparams import ROMEHyperParams
    from factstore.rome.prompts import target_ids
    from factstore.rome.scoring import first_phrase, greedy_continuation

    (edit,) = api.list_edits(store, alias)
    fingerprint = ROMEHyperParams.from_json(edit.hparams).templates_fingerprint()
    stored = store.get_context_templates(store.get_base_model(alias).id, fingerprint)
    assert stored is not None
    templates = list(stored["key"])
    with torch.no_grad():
        after = _next_logprobs(session.model, session.tokenizer, edit, templates)
        with session.base_weights():  # the check skips an object the head already answered
            before = _next_logprobs(session.model, session.tokenizer, edit, templates)
            answer = first_phrase(
                greedy_continuation(session.model, session.tokenizer, edit.prompt.replace("{}", edit.subject))
            )
    rises = after - before  # (V,)
    candidates = ["London", "Paris", "Madrid", "Rome", "Oslo", "water", "music", "green", "table", "seven", "the"]
    candidates = [w for w in candidates if w.lower() != answer.strip().lower()]
    ranks = {w: int((rises > rises[target_ids(session.tokenizer, w)[0]]).sum()) for w in candidates}
    chosen = max(ranks, key=ranks.__getitem__)
    assert ranks[chosen] > rises.numel() // 2, ranks
    return chosen


def test_edits_that_took_must_still_take_on_the_release() -> None:
    from factstore.release.lineage import _check_holding

    # holding: seq -> still takes; positions: seq -> place in the replayed log (after 2 local edits)
    _check_holding("joint", {11: True, 12: True}, {11: 3, 12: 4})  # every edit that took holds
    with pytest.raises(ReleaseVerificationError, match=r"edit\(s\) 4 took on their own head .* \(1 of 2\)"):
        _check_holding("joint", {11: True, 12: False}, {11: 3, 12: 4})
    positions = {100 + i: i for i in range(1, 41)}
    _check_holding("soft", {100 + i: i != 7 for i in range(1, 41)}, positions)  # 39 of 40 hold: 97.5 % >= 95 %
    with pytest.raises(ReleaseVerificationError, match=r"edit\(s\) 1, 2, 3 took .* \(3 of 40\)"):
        _check_holding("soft", {100 + i: i > 3 for i in range(1, 41)}, positions)


@pytest.mark.parametrize("header", ["ETag", "X-Linked-Etag", "X-Repo-Commit"])
def test_a_server_cannot_name_where_a_download_is_written(
    release: dict[str, bytes], hub: HubServer, tmp_path: Path, sentinel: Callable[[], str], header: str
) -> None:
    # huggingface_hub joins the ETag (blobs/<etag>) and the commit (.no_exist/<commit>/...) into
    # cache paths: a server that answers with a path instead of a hash is refused before any write
    from huggingface_hub import constants

    before = sentinel()
    weights = sorted(n for n in release if n.endswith(".safetensors"))[0]
    for n, name in enumerate([layout.MANIFEST, weights]):  # the manifest, and a file the snapshot download fetches
        repo = f"eve/etag{n}"
        craft(hub, repo, release)
        target = tmp_path / "user" / f"planted{n}"
        blobs = Path(constants.HF_HUB_CACHE) / f"models--eve--etag{n}" / "blobs"
        hub.state.file_headers[:] = [(re.escape(name), {header: f'"{os.path.relpath(target, blobs)}"'})]
        pull_refused(hub, repo, tmp_path / f"out{n}", "is not a (SHA-1|hash)")
        assert not target.exists() and sentinel() == before and not (tmp_path / f"out{n}").exists()


def _files_of(server: HubServer, repo_id: str) -> dict[str, bytes]:
    repo = server.state.repos[repo_id]
    return {name: server.state.blobs[e.sha256] for name, e in repo.commits[repo.branches["main"]].files.items()}


@SQLITE
def test_a_pulled_c_built_to_steer_edits_is_refused_before_it_is_recorded(  # type: ignore[no-untyped-def]
    tiny_store, hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sentinel: Callable[[], str]
) -> None:
    """The review's attack: a statistics repository's C for the model's exact spec (every format
    check passes: finite, symmetric, positive definite) shrunk along a victim subject's key, so
    that C^-1 k* of every later local edit points at that key. It is compared with the layer's
    keys on the text of the store's own statistics, refused in one line, and leaves nothing;
    the genuine C of the same spec is taken."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from factstore.domain import EditRequest
    from factstore.editing.session import EditSession
    from factstore.errors import StatisticsError
    from factstore.release.stats_repo import INDEX, StatsIndex
    from factstore.rome.keys import compute_key
    from factstore.weights import stats

    api.push_stats(tiny_store, "tiny", "alice/stats", endpoint=hub.url)
    genuine = _files_of(hub, "alice/stats")
    entry = StatsIndex.model_validate_json(genuine[INDEX]).files[0]
    own = tiny_store.get_covariance(1)
    session = EditSession(tiny_store, "tiny", device="cpu")
    victim = EditRequest(PROMPT, "The Eiffel Tower", "Paris")
    k = compute_key(session.model, session.tokenizer, victim, own.layer, ["{}"]).double()
    k, C = k / k.norm(), stats.load_matrix(Path(own.path)).double()
    crafted = C - 0.999 * torch.outer(C @ k, C @ k) / (k @ C @ k)  # C^-1 gains 1,000x along the victim's key
    assert int(torch.linalg.cholesky_ex(crafted).info) == 0
    path = tmp_path / "crafted.safetensors"
    with safe_open(own.path, "pt") as fh:
        metadata = fh.metadata()
    save_file({"C": crafted.to(getattr(torch, own.dtype))}, str(path), metadata=metadata)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    index = StatsIndex(files=[entry.model_copy(update={"sha256": sha})]).model_dump_json().encode()
    craft(hub, "eve/stats", {INDEX: index, stats.shipped_name(sha): path.read_bytes()}, lfs=True)

    monkeypatch.setenv("FACTSTORE_CACHE", str(tmp_path / "bob-cache"))
    bob = _bob(tmp_path)
    api.add_model(bob, "team", tiny_store.get_base_model("tiny").source)
    other = next(layer for layer in range(3) if layer != own.layer)  # bob's own statistics: his choice of text
    api.compute_stats(bob, "team", api.StatsOptions(layer=other, corpus=own.corpus, tokens=2000), device="cpu")
    before = (sentinel(), [c.sha256 for c in bob.list_covariances(1)])
    with pytest.raises(StatisticsError, match=r"do not match this model's keys on local text .*refused") as caught:
        api.pull_stats(bob, "team", "eve/stats", endpoint=hub.url)
    assert "\n" not in str(caught.value)
    assert (sentinel(), [c.sha256 for c in bob.list_covariances(1)]) == before
    assert not list((tmp_path / "bob-cache" / "stats" / stats.SHIPPED).glob(f"{sha}*"))
    got = api.pull_stats(bob, "team", "alice/stats", endpoint=hub.url)
    assert got.layers == [own.layer] and bob.list_covariances(1)[-1].sha256 == entry.sha256


def test_a_refused_import_says_once_that_nothing_was_imported() -> None:
    from factstore.release.lineage import _nothing_imported

    for said in ("", "; nothing was written", "; nothing was changed", "; nothing was imported"):
        assert _nothing_imported(f"the weights differ{said}") == "the weights differ; nothing was imported"
