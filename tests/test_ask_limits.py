"""`ask` cannot exhaust the service: a bounded number of asks at once (the rest 503 at once,
holding no thread), a per-client rate (429), its own threads (other requests stay fast while
asks run), and a bounded set of warm heads."""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from factstore import api
from factstore.errors import ServiceBusy, TooManyRequests
from factstore.server.app import create_app
from factstore.server.limits import AskGate, LruCache
from factstore.server.service import ServerSettings
from factstore.storage.store import Store
from service_process import add_random_gpt2

LOCAL = ("127.0.0.1", 50000)
ASK = {"prompt": "The Eiffel Tower is located in the city of", "top": 2}


def test_the_gate_counts_each_client_per_minute_and_bounds_asks_at_once() -> None:
    now = [1000.0]
    gate = AskGate(slots=3, per_minute=3, per_client=2, clock=lambda: now[0])
    gate.admit("a")
    gate.admit("a")
    with pytest.raises(TooManyRequests) as running:  # a's two running asks are its share
        gate.admit("a")
    assert running.value.retry_after == 2
    gate.admit("b")
    with pytest.raises(ServiceBusy):  # three admitted, none released
        gate.admit("c")
    gate.release("a")
    gate.release("a")
    gate.release("b")
    gate.admit("a")  # a's third this minute (the refused ones do not count)
    gate.release("a")
    with pytest.raises(TooManyRequests) as refused:
        gate.admit("a")
    assert refused.value.retry_after == 60
    now[0] += 45
    with pytest.raises(TooManyRequests) as refused:
        gate.admit("a")
    assert refused.value.retry_after == 15
    gate.admit("b")  # another client is not held by a's limit
    gate.release("b")
    now[0] += 15
    gate.admit("a")  # a new minute
    gate.release("a")
    assert gate.admitted == 0


def test_rotating_clients_cannot_wipe_a_throttled_clients_window(monkeypatch: pytest.MonkeyPatch) -> None:
    from factstore.server import limits

    monkeypatch.setattr(limits, "MAX_CLIENTS", 4)
    now = [0.0]
    gate = AskGate(slots=10, per_minute=1, per_client=1, clock=lambda: now[0])
    gate.admit("throttled")
    gate.release("throttled")
    refused = 0
    for i in range(20):  # new addresses each second: the table fills, live windows stay
        now[0] += 1
        try:
            gate.admit(f"rotating {i}")
            gate.release(f"rotating {i}")
        except ServiceBusy:
            refused += 1
    assert refused > 0
    with pytest.raises(TooManyRequests):
        gate.admit("throttled")
    now[0] += 60  # every window over: room again
    gate.admit("someone new")


def test_the_head_cache_lets_the_least_recently_used_go() -> None:
    cache: LruCache[int] = LruCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the newest
    cache.put("c", 3)
    assert cache.keys() == ["a", "c"] and cache.get("b") is None


def _client(store: Store, monkeypatch: pytest.MonkeyPatch, **limits: int) -> TestClient:
    for name, value in limits.items():
        monkeypatch.setenv(f"FACTSTORE_{name.upper()}", str(value))
    return TestClient(create_app(ServerSettings(database_url=store.url, worker=False)), client=LOCAL)


def test_asks_past_the_queue_get_503_at_once_and_other_requests_stay_fast(
    tiny_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    readers = [{"Authorization": f"Bearer {api.create_token(tiny_store, f'r{i}', 'read')[1]}"} for i in range(2)]
    with _client(tiny_store, monkeypatch, ask_threads=1, ask_queue=1, ask_per_minute=1000) as client:
        svc = client.app.state.service  # type: ignore[attr-defined]
        release = threading.Event()
        entered = threading.Semaphore(0)

        def slow_ask(alias: str, prompt: str, top: int) -> dict:
            entered.release()
            release.wait(60)
            return {"prompt": prompt, "top": [], "continuation": "", "edits_applied": 0}

        monkeypatch.setattr(svc, "ask", slow_ask)
        with ThreadPoolExecutor(8) as pool:
            held = [pool.submit(client.post, "/api/v1/models/tiny/ask", json=ASK, headers=h) for h in readers]
            assert entered.acquire(timeout=30)  # one client's ask runs on the single ask thread, the other's waits
            deadline = time.monotonic() + 30
            while svc.ask_gate.admitted < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            clock = time.perf_counter()
            refused = [client.post("/api/v1/models/tiny/ask", json=ASK) for _ in range(5)]
            listed = client.get("/api/v1/models")
            seconds = time.perf_counter() - clock
            release.set()
            answered = [f.result(timeout=60) for f in held]
        assert [r.status_code for r in refused] == [503] * 5
        assert refused[0].headers["Retry-After"] == "2"
        assert refused[0].headers["content-type"].startswith("application/problem+json")
        assert refused[0].json()["title"] == "busy"
        assert listed.status_code == 200 and seconds < 10  # not queued behind the running asks
        assert [r.status_code for r in answered] == [200, 200]
        assert svc.ask_gate.admitted == 0


def test_a_client_past_its_rate_gets_429_and_others_are_served(
    tiny_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = api.create_token(tiny_store, "reader", "read")[1]
    with _client(tiny_store, monkeypatch, ask_per_minute=2) as client:
        assert [client.post("/api/v1/models/tiny/ask", json=ASK).status_code for _ in range(2)] == [200, 200]
        third = client.post("/api/v1/models/tiny/ask", json=ASK)
        assert third.status_code == 429 and 1 <= int(third.headers["Retry-After"]) <= 60
        # the same loopback address with a token is another client
        ok = client.post("/api/v1/models/tiny/ask", json=ASK, headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200


def test_serve_keeps_at_most_ask_heads_models_loaded(
    tiny_store: Store, tmp_path: Path, gpt2_tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    add_random_gpt2(tiny_store, "second", tmp_path, gpt2_tokenizer, seed=1, line="Line: the bridge crosses the river.")
    with _client(tiny_store, monkeypatch, ask_heads=1) as client:
        svc = client.app.state.service  # type: ignore[attr-defined]
        assert client.post("/api/v1/models/tiny/ask", json=ASK).status_code == 200
        assert svc.warm_heads() == ["tiny"]
        assert client.post("/api/v1/models/second/ask", json=ASK).status_code == 200
        assert svc.warm_heads() == ["second"]


def test_serve_bounds_connections_and_idle_keep_alive(tiny_store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve --max-connections N` reaches uvicorn as its concurrency limit (503 past it), with a
    short keep-alive, so slow or idle clients cannot hold every connection."""
    import uvicorn

    from cli_runner import run

    seen: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: seen.update(options))
    monkeypatch.setenv("FACTSTORE_DATABASE_URL", tiny_store.url)
    run("serve", "--max-connections", "7", "--no-worker")
    assert seen["limit_concurrency"] == 7 and seen["timeout_keep_alive"] == 5 and seen["host"] == "127.0.0.1"
    assert seen["http"].header_seconds == 10.0  # the protocol with a deadline for request headers
    run("serve", "--no-worker")
    assert seen["limit_concurrency"] == 200


def _slow_clients_server(store: Store, limit: int) -> tuple[object, int]:
    """A real uvicorn server (serve's protocol and body deadline, short) on a free port."""
    import socket

    import uvicorn

    from factstore.server.deadlines import header_deadline

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = ServerSettings(database_url=store.url, worker=False, body_seconds=1.0)
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        limit_concurrency=limit,
        http=header_deadline(1.0),
        log_level="warning",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    return server, port


def test_clients_that_never_finish_a_request_cannot_take_every_connection(tiny_store: Store) -> None:
    """Slowloris: as many connections as the server's limit, each trickling its request headers
    (or, once headers are whole, its body) a byte at a time. Each is closed at its deadline, so a
    well-behaved client is served and never gets 503."""
    import http.client
    import socket

    server, port = _slow_clients_server(tiny_store, limit=13)  # the 13th connection: the good client
    slow: list[socket.socket] = []
    try:
        for i in range(12):
            s = socket.create_connection(("127.0.0.1", port))
            if i % 2:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers never end
            else:
                s.sendall(b"POST /api/v1/models/tiny/ask HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{")
            slow.append(s)
        for _ in range(12):  # 2.4 s of trickling: past both 1 s deadlines
            for s in slow:
                with contextlib.suppress(OSError):
                    s.send(b"X")
            time.sleep(0.2)
        answers = []
        for s in slow:
            s.settimeout(5)
            try:
                answers.append(s.recv(4096))
            except OSError:
                answers.append(b"")
        assert all(a == b"" for a in answers[1::2]), "a connection whose headers never ended was left open"
        assert all(a.startswith(b"HTTP/1.1 408") for a in answers[0::2]), answers[0][:200]
        client = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        client.request("GET", "/healthz")
        assert client.getresponse().status == 200
    finally:
        for s in slow:
            s.close()
        server.should_exit = True  # type: ignore[attr-defined]
