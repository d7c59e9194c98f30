"""Key statistics as jobs (issue 26): shard jobs on different hosts (here, different caches)
hand their sums through the statistics share; the merge, blocked until every shard is in,
gives the single pass's C (to rounding), and a worker on yet another host fetches that C from
the share instead of computing it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from factstore import api
from factstore.errors import InvalidEditRequest, TooManyRequests
from factstore.progress import SILENT
from factstore.results import StatsLayers
from factstore.storage.store import Store
from factstore.weights import checkpoints, stats
from factstore.worker import jobs, stats_jobs

STATS_KINDS = ("stats-shard", "stats-merge")


@pytest.fixture
def shared(tiny_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The tiny model's corpus file stands in for a starter corpus (every host here can read it)."""
    monkeypatch.setenv("FACTSTORE_STATS_SHARE", str(tmp_path / "share"))
    corpus = tiny_store.get_covariance(1).corpus
    monkeypatch.setattr(stats_jobs, "is_starter_corpus", lambda name: name == corpus)
    return corpus


def _on_host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, host: str) -> Path:
    cache = tmp_path / host
    monkeypatch.setenv("FACTSTORE_CACHE", str(cache))
    return cache


@pytest.mark.database  # the queue holds the merge back until its shards are in
def test_shard_jobs_merge_into_the_single_pass_and_other_hosts_fetch_the_result(
    tiny_store: Store, shared: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = api.StatsOptions(layers=(0, 1), corpus=shared, tokens=1500)
    merge, created = api.queue_stats(tiny_store, "tiny", options, 2, requested_by="me")
    assert created and merge.kind == "stats-merge" and len(merge.params["after"]) == 2
    assert "stats-shard" in jobs.runnable_kinds() and "stats-merge" in jobs.runnable_kinds()

    for worker in ("w0", "w1", "w2"):  # live: the jobs they hold are not orphans to take over
        tiny_store.register_worker(worker, [], STATS_KINDS)
    claimed = [tiny_store.claim_job(f"w{i}", None, 60.0, kinds=STATS_KINDS) for i in range(2)]
    assert [j.id for j in claimed if j] == merge.params["after"]
    assert tiny_store.claim_job("w2", None, 60.0, kinds=STATS_KINDS) is None  # the merge waits for its shards
    assert tiny_store.get_job(merge.id).waiting == "its shard jobs have not all ended"
    for i, job in enumerate(claimed):
        assert job is not None
        _on_host(monkeypatch, tmp_path, f"host{i}")
        done = jobs.run(tiny_store, job, f"w{i}", "cpu")
        assert done is not None and done.status == "done", done and done.error
    assert len(list((tmp_path / "share" / "factstore-stats").glob("*.shard-*"))) == 4  # a file per layer and shard

    # layer 0's C computed by a single pass meanwhile (and recorded): the merge keeps it, never overwrites it
    _on_host(monkeypatch, tmp_path, "single")
    first = api.compute_stats(
        tiny_store, "tiny", api.StatsOptions(layers=(0,), corpus=shared, tokens=1500), device="cpu"
    )
    assert isinstance(first, StatsLayers)
    single_0 = first.layers[0]
    merger = tiny_store.claim_job("w2", None, 60.0, kinds=STATS_KINDS)
    assert merger is not None and merger.id == merge.id
    _on_host(monkeypatch, tmp_path, "host2")
    merged = jobs.run(tiny_store, merger, "w2", "cpu")
    assert merged is not None and merged.status == "done" and merged.result is not None, merged and merged.error
    rows = merged.result["layers"]
    assert [r["layer"] for r in rows] == [0, 1]
    assert (rows[0]["id"], rows[0]["sha256"]) == (single_0.id, single_0.sha256)
    assert stats.file_sha256(Path(single_0.path)) == single_0.sha256  # its file untouched

    # the single pass of the same layers on a machine of its own
    _on_host(monkeypatch, tmp_path, "single")
    base = tiny_store.get_base_model("tiny")
    planned = stats_jobs.plan_specs(base, [0, 1], shared, 1500, SILENT)
    loaded = checkpoints.load(base.source, expected=base.revision, device="cpu")
    single = stats.compute_many(loaded.model, loaded.tokenizer, planned.specs, planned.corpus)
    for one, row in zip(single, rows, strict=True):  # the same keys summed in another order
        together = stats.load_matrix(Path(tiny_store.get_covariance(row["id"]).path), row["sha256"])
        assert torch.allclose(stats.load_matrix(one.path, one.sha256), together, rtol=1e-6, atol=0)
    assert sum(done.result["tokens"] for done in map(tiny_store.get_job, merge.params["after"])) == single[0].tokens

    # a worker on a fourth host, the merging and single-pass hosts gone: C comes from the share, nothing computed
    shutil.rmtree(tmp_path / "host2")
    shutil.rmtree(tmp_path / "single")
    fourth = _on_host(monkeypatch, tmp_path, "host3")
    monkeypatch.setattr(stats, "compute_many", lambda *a, **k: pytest.fail("computed instead of fetched"))
    from factstore.editing.session import EditSession

    session = EditSession(tiny_store, "tiny", device="cpu")
    found = session.covariances([0, 1], session.hparams(1))
    assert [c.id for c in found] == [r["id"] for r in rows]
    assert all(Path(c.path).parent == fourth / "stats" and stats.file_sha256(Path(c.path)) == c.sha256 for c in found)


def test_a_failed_shard_fails_its_merge_and_bad_requests_are_refused(
    tiny_store: Store, shared: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(InvalidEditRequest, match="starter corpus every host can fetch"):
        api.queue_stats(tiny_store, "tiny", api.StatsOptions(layers=(0,), corpus="/etc/passwd"), 2)
    with pytest.raises(InvalidEditRequest, match="outside tiny's layers"):
        api.queue_stats(tiny_store, "tiny", api.StatsOptions(layers=(0, 99), corpus=shared), 2)
    with pytest.raises(InvalidEditRequest, match="1 to 64 shard jobs"):
        api.queue_stats(tiny_store, "tiny", api.StatsOptions(layers=(0,), corpus=shared), 0)
    assert tiny_store.list_jobs(tiny_store.get_base_model("tiny").id) == []  # nothing half-queued

    with pytest.raises(TooManyRequests, match="2 jobs of this requester"):  # 2 shards and a merge: 3
        api.queue_stats(tiny_store, "tiny", api.StatsOptions(layers=(0,), corpus=shared), 2, max_pending=2)
    assert tiny_store.list_jobs(tiny_store.get_base_model("tiny").id) == []  # nothing half-queued

    merge, _ = api.queue_stats(tiny_store, "tiny", api.StatsOptions(layers=(0,), corpus=shared, tokens=800), 2)
    for worker in ("w0", "w1"):
        tiny_store.register_worker(worker, [], STATS_KINDS)
    first = tiny_store.claim_job("w0", None, 60.0, kinds=STATS_KINDS)
    assert first is not None
    tiny_store.finish_job(first.id, "w0", error="the host ran out of disk")
    second = tiny_store.claim_job("w1", None, 60.0, kinds=STATS_KINDS)
    assert second is not None and second.kind == "stats-shard"
    _on_host(monkeypatch, tmp_path, "host1")
    assert (done := jobs.run(tiny_store, second, "w1", "cpu")) is not None and done.status == "done"
    merger = tiny_store.claim_job("w1", None, 60.0, kinds=STATS_KINDS)
    assert merger is not None and merger.id == merge.id
    failed = jobs.run(tiny_store, merger, "w1", "cpu")
    assert failed is not None and failed.status == "failed"
    assert failed.error == f"shard job {first.id} is failed: the host ran out of disk"

    # the share holds other bytes under a recorded shard's name: the merge refuses them
    merge, _ = api.queue_stats(tiny_store, "tiny", api.StatsOptions(layers=(1,), corpus=shared, tokens=800), 1)
    shard = tiny_store.claim_job("w1", None, 60.0, kinds=STATS_KINDS)
    assert shard is not None
    handed = jobs.run(tiny_store, shard, "w1", "cpu")  # (not `done`: pytest's rewrite of the walrus above keeps it)
    assert handed is not None and handed.result is not None
    recorded = handed.result["files"][0]["name"]
    (tmp_path / "share" / "factstore-stats" / recorded).write_bytes(b"not the sums")
    merger = tiny_store.claim_job("w1", None, 60.0, kinds=STATS_KINDS)
    _on_host(monkeypatch, tmp_path, "host2")
    assert merger is not None
    refused = jobs.run(tiny_store, merger, "w1", "cpu")
    assert refused is not None and refused.status == "failed" and "does not hold shard job" in str(refused.error)

    # a shard cancelled while running ends cancelled, and its merge fails naming it
    api.queue_stats(tiny_store, "tiny", api.StatsOptions(layers=(2,), corpus=shared, tokens=800), 1)
    shard = tiny_store.claim_job("w1", None, 60.0, kinds=STATS_KINDS)
    assert shard is not None and shard.kind == "stats-shard"
    tiny_store.cancel_job(shard.id)
    stopped = jobs.run(tiny_store, shard, "w1", "cpu")
    assert stopped is not None and stopped.status == "cancelled"
    merger = tiny_store.claim_job("w1", None, 60.0, kinds=STATS_KINDS)
    assert merger is not None and merger.kind == "stats-merge"
    ended = jobs.run(tiny_store, merger, "w1", "cpu")
    assert ended is not None and ended.error == f"shard job {shard.id} is cancelled: cancelled while running"


def test_statistics_jobs_over_http_wait_for_a_worker_with_a_share(tiny_store: Store, shared: str) -> None:
    from fastapi.testclient import TestClient

    from factstore.server.app import create_app
    from factstore.server.service import ServerSettings

    headers = {"Authorization": f"Bearer {api.create_token(tiny_store, 'team', 'write')[1]}"}
    reader = {"Authorization": f"Bearer {api.create_token(tiny_store, 'reader', 'read')[1]}"}
    body = {"layers": [0, 1], "jobs": 3, "corpus": shared, "tokens": 1000}
    app = create_app(ServerSettings(database_url=tiny_store.url, worker=False))
    with TestClient(app, client=("127.0.0.1", 50000)) as client:
        assert client.post("/api/v1/models/tiny/stats", json=body, headers=reader).status_code == 403
        sent = client.post("/api/v1/models/tiny/stats", json=body, headers={**headers, "Idempotency-Key": "k1"})
        assert sent.status_code == 202, sent.text
        job = sent.json()
        assert job["kind"] == "stats-merge" and len(job["params"]["after"]) == 3 and job["waiting"]
        again = client.post("/api/v1/models/tiny/stats", json=body, headers={**headers, "Idempotency-Key": "k1"})
        assert again.json()["id"] == job["id"] and again.headers["Idempotent-Replayed"] == "true"
        assert len(client.get("/api/v1/models/tiny/jobs", headers=headers).json()) == 4  # a retry queued nothing
        bad = client.post("/api/v1/models/tiny/stats", json={**body, "layers": ["0; rm"]}, headers=headers)
        assert bad.status_code == 422
