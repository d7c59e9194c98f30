"""Load and faults against real processes: `serve` on PostgreSQL with two workers taking 200
submissions from 20 concurrent clients; the database stopped and started under a running service."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from factstore import api
from factstore.storage.store import Store
from service_process import add_random_gpt2, free_port, serve, start, stop

PROMPT = "{} is located in the city of"
PG_URL = os.environ.get("FACTSTORE_TEST_DATABASE_URL")
needs_postgres = pytest.mark.skipif(not PG_URL, reason="FACTSTORE_TEST_DATABASE_URL is not set")
pytestmark = [pytest.mark.slow, pytest.mark.database]


def _wait(condition, seconds: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


@needs_postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_200_submissions_from_20_clients_two_http_processes_two_workers(  # type: ignore[no-untyped-def]
    tiny_store: Store, tmp_path: Path, gpt2_tokenizer
) -> None:
    add_random_gpt2(
        tiny_store,
        "second",
        tmp_path,
        gpt2_tokenizer,
        seed=1,
        line="Line: the bridge crosses the wide river near the market.",
    )
    token = api.create_token(tiny_store, "load", "write")[1]
    server, url = serve("--processes", "2", log=tmp_path / "serve.log")  # state only in the database
    # two workers on a 2-core machine: one core each (2x2 threads fighting made this 3x slower)
    workers = [
        start("worker", "--batch", "16", "--poll", "0.1", "--threads", "1", log=tmp_path / f"worker{i}.log")
        for i in range(2)
    ]
    jobs = [(alias, i) for i in range(100) for alias in ("tiny", "second")]

    def client(chunk: list[tuple[str, int]]) -> list[int]:
        ids = []
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
            for alias, i in chunk:
                body = {"prompt": PROMPT, "subject": f"Tower {i}", "target": "Rome"}
                response = http.post(
                    f"/api/v1/models/{alias}/edits", json=body, headers={"Idempotency-Key": f"{alias}-{i}"}
                )
                assert response.status_code == 202, response.text
                ids.append(response.json()["id"])
        return ids

    try:
        _wait(lambda: len(_children(server.pid)) == 2, 60, "two HTTP processes")
        with ThreadPoolExecutor(20) as pool:
            submitted = [i for ids in pool.map(client, [jobs[k::20] for k in range(20)]) for i in ids]
        assert len(set(submitted)) == 200
        _wait(
            lambda: (
                not (set(e.status for a in ("tiny", "second") for e in api.list_log(tiny_store, a, "all")) - {"active"})
            ),
            600,
            "200 edits",
        )
    finally:
        for process in workers:
            stop(process)
        http_processes = _children(server.pid)
        assert stop(server) == 0 and not [p for p in http_processes if Path(f"/proc/{p}").exists()]
    for alias in ("tiny", "second"):
        log = api.list_log(tiny_store, alias, "all")
        assert len(log) == 100 and {e.status for e in log} == {"active"}  # none lost, none added
        assert sorted(e.seq for e in log if e.seq is not None) == list(
            range(1, 101)
        )  # distinct seq: each computed once
    assert sorted(e.id for a in ("tiny", "second") for e in api.list_log(tiny_store, a, "all")) == sorted(submitted)


def _children(pid: int) -> list[int]:
    """The serving processes PID started (uvicorn spawns them; not multiprocessing's tracker)."""
    found = Path(f"/proc/{pid}/task/{pid}/children")
    children = [int(c) for c in found.read_text().split()] if found.exists() else []
    return [c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def _pg_bin(name: str) -> str | None:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(found[-1]) if found else shutil.which(name)


def _as_postgres(*command: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", *command], check=True, capture_output=True, timeout=120)


@pytest.mark.skipif(
    not _pg_bin("initdb") or not shutil.which("runuser") or os.geteuid() != 0,
    reason="needs PostgreSQL's initdb and root (to run a throwaway cluster as the postgres user)",
)
def test_the_database_stopped_and_started_under_a_running_service(
    tmp_path: Path, gpt2_tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """A throwaway cluster (never the machine's shared one): 503 while it is down, recovery by itself, nothing lost."""
    cluster = Path(
        tempfile.mkdtemp(prefix="factstore-pg-")
    )  # outside pytest's private tmp: the postgres user must reach it
    cluster.chmod(0o755)
    data = cluster / "data"
    data.mkdir()
    shutil.chown(data, "postgres")
    port = free_port()
    pg_ctl = _pg_bin("pg_ctl")
    assert pg_ctl
    _as_postgres(str(_pg_bin("initdb")), "-D", str(data), "-A", "trust", "-U", "postgres")
    start_db = [
        pg_ctl,
        "-D",
        str(data),
        "-o",
        f"-p {port} -k {data} -c listen_addresses=127.0.0.1",
        "-w",
        "-l",
        str(data / "log"),
        "start",
    ]
    _as_postgres(*start_db)
    try:
        url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
        monkeypatch.setenv("FACTSTORE_DATABASE_URL", url)
        api.upgrade_database(url)
        store = api.open_store(url)
        add_random_gpt2(
            store, "tiny", tmp_path, gpt2_tokenizer, seed=0, line="Paragraph: the river runs through the old town."
        )
        token = api.create_token(store, "ops", "write")[1]
        store.close()
        server, base = serve(
            "--worker", env={"FACTSTORE_DATABASE_URL": url, "FACTSTORE_LEASE_SECONDS": "3"}, log=tmp_path / "serve.log"
        )
        http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        try:

            def post(i: int) -> httpx.Response:
                return http.post(
                    "/api/v1/models/tiny/edits", json={"prompt": PROMPT, "subject": f"Tower {i}", "target": "Rome"}
                )

            first = [post(i) for i in range(4)]
            assert [r.status_code for r in first] == [202] * 4, first[0].text
            ids = [r.json()["id"] for r in first]
            _as_postgres(pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop")
            down = [post(9), http.get("/api/v1/models"), http.get("/readyz")]
            assert [r.status_code for r in down] == [503, 503, 503]
            assert down[0].json()["title"] == "database unavailable" and "Traceback" not in down[0].text
            assert not any(word in r.text for r in down for word in ("postgresql", "127.0.0.1", "5432", str(port)))
            _as_postgres(*start_db)
            _wait(lambda: http.get("/readyz").status_code == 200, 60, "readiness after the restart")
            ids += [post(i).json()["id"] for i in range(4, 6)]
            _wait(
                lambda: all(http.get(f"/api/v1/edits/{i}").json()["status"] == "active" for i in ids), 180, "every edit"
            )
            log = http.get("/api/v1/models/tiny/edits?status=all").json()
            assert sorted(e["id"] for e in log) == sorted(ids) and sorted(e["seq"] for e in log) == list(range(1, 7))
        finally:
            http.close()
            stop(server)  # uvicorn shuts down gracefully, then re-raises SIGTERM
        after = api.open_store(url)
        assert after.list_live_workers(60) == []  # the in-process worker recorded its clean exit
        after.close()
    finally:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True
        )
        shutil.rmtree(cluster, ignore_errors=True)
