"""The CLI end to end with a tiny random GPT-2: in-process (cli_runner) where the command is the
subject, in real processes where the process is (kills, concurrent writers, what importing loads)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from cli_runner import run as cli
from cli_runner import run_json as cli_json
from factstore.storage.store import Store
from factstore.weights import checkpoints
from tiny_models import random_gpt2

REPO = Path(__file__).resolve().parents[1]
EIFFEL = ["--prompt", "{} is located in the city of", "--subject", "The Eiffel Tower", "--target", "Rome"]


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "factstore.cli.main", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def tiny(tiny_store) -> str:  # type: ignore[no-untyped-def]
    return "tiny"


def test_setup_commands(db_url: str, tmp_path: Path, gpt2_tokenizer) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "tiny-model"
    random_gpt2(seed=0).save_pretrained(folder)
    gpt2_tokenizer.save_pretrained(folder)
    assert cli_json("db", "upgrade")["current"] == cli_json("db", "current")["head"]
    added = cli_json("model", "add", "tiny", str(folder))
    assert added["created"] and added["revision"].startswith("sha256:") and added["model_type"] == "gpt2"
    assert cli_json("model", "add", "tiny", str(folder))["created"] is False
    assert [m["alias"] for m in cli_json("model", "list")] == ["tiny"]


def test_add_list_show_retract(tiny: str) -> None:
    added = cli_json("edit", "add", "--model", tiny, *EIFFEL)
    assert {
        "id",
        "seq",
        "layer",
        "status",
        "prob_new_before",
        "prob_new_after",
        "prob_true_before",
        "prob_true_after",
    } <= added.keys()
    assert added["seq"] == 1 and added["status"] == "active" and added["layer"] == 1
    listed = cli_json("edit", "list", "--model", tiny)
    assert [(e["id"], e["subject"], e["target"], e["status"]) for e in listed] == [
        (added["id"], "The Eiffel Tower", "Rome", "active")
    ]
    shown = cli_json("edit", "show", str(added["id"]))
    assert shown["key_shape"] == [256] and shown["value_shape"] == [64] and len(shown["key_sha256"]) == 64
    again = cli_json("edit", "add", "--model", tiny, *EIFFEL[:-1], "Berlin")
    assert again["superseded"] == [added["id"]] and again["seq"] == 2
    assert cli_json("edit", "list", "--model", tiny, "--status", "superseded")[0]["id"] == added["id"]
    assert cli_json("edit", "retract", str(again["id"]))["status"] == "retracted"
    assert cli_json("edit", "list", "--model", tiny) == []


def test_ask_shows_top_tokens_and_a_continuation(tiny: str, tiny_store) -> None:  # type: ignore[no-untyped-def]
    prompt = "The Eiffel Tower is located in"
    result = cli_json("ask", "--model", tiny, prompt, "--top", "3")
    loaded = checkpoints.load(tiny_store.get_base_model(tiny).source, device="cpu")
    ids = torch.tensor([loaded.tokenizer(prompt)["input_ids"]])
    with torch.no_grad():
        probs = torch.softmax(loaded.model(input_ids=ids).logits[0, -1], -1)
    expected = probs.topk(3)
    assert [t["token"] for t in result["top"]] == [loaded.tokenizer.decode([int(i)]) for i in expected.indices]
    assert [t["prob"] for t in result["top"]] == pytest.approx(expected.values.tolist(), abs=1e-5)
    greedy = loaded.model.generate(ids, max_new_tokens=12, do_sample=False, use_cache=False, pad_token_id=0)[
        0, ids.shape[1] :
    ]
    assert result["continuation"] == loaded.tokenizer.decode(greedy, skip_special_tokens=True)
    plain = cli("ask", "--model", tiny, prompt, "--top", "3").stdout
    assert f"prompt: {prompt!r}" in plain.splitlines()[0]  # the prompt on its own line, never squeezed into a column


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["edit", "add", "--model", "nope", *EIFFEL], "no model with alias 'nope'"),
        (["edit", "add", "--model", "tiny", "--prompt", "is in", "--subject", "X", "--target", "Y"], "exactly once"),
        (["edit", "add", "--model", "tiny", *EIFFEL, "--layer", "9"], "outside the model"),
        (["edit", "retract", "42"], "no edit with id 42"),
        (["edit", "show", "42"], "no edit with id 42"),
        (["model", "add", "other", "/no/such/folder"], "does not exist"),
    ],
)
def test_user_errors_are_one_line_and_change_nothing(tiny: str, args: list[str], message: str) -> None:
    done = cli(*args, check=False)
    assert done.returncode == 1
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert cli_json("edit", "list", "--model", tiny, "--status", "all") == []


def test_unreachable_database_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACTSTORE_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    done = cli("edit", "list", "--model", "x", check=False)
    assert done.returncode == 1 and "cannot reach the database" in done.stderr


def test_listing_does_not_import_torch(tiny: str) -> None:
    code = "import sys; sys.argv = ['factstore', '{}', 'list'{}]; from factstore.cli.main import main\ntry: main()\nexcept SystemExit: pass\nprint('torch' in sys.modules)"
    for group, extra in (("edit", ", '--model', 'tiny'"), ("model", "")):
        done = subprocess.run(
            [sys.executable, "-c", code.format(group, extra)],
            cwd=REPO,
            capture_output=True,
            text=True,
            env=os.environ.copy(),
        )
        assert done.stdout.strip().splitlines()[-1] == "False", done.stderr


@pytest.mark.slow  # real processes, each loading torch
@pytest.mark.database
def test_concurrent_edit_adds_lose_and_duplicate_nothing(tiny: str) -> None:
    subjects = ["The Eiffel Tower", "The Louvre", "Big Ben"]  # three writers race for seq; each process loads torch
    procs = [
        start(
            "edit",
            "add",
            "--model",
            tiny,
            "--prompt",
            "{} is located in the city of",
            "--subject",
            s,
            "--target",
            "Rome",
            "--json",
        )
        for s in subjects
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outputs]
    edits = cli_json("edit", "list", "--model", tiny)
    assert sorted(e["subject"] for e in edits) == sorted(subjects)
    assert sorted(e["seq"] for e in edits) == [1, 2, 3]


def _wait_for(predicate: Callable[[], bool], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.2)


def _has_loaded_torch(pid: int) -> bool:
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.slow  # real processes, each loading torch
@pytest.mark.database
def test_killed_edit_add_leaves_nothing_and_a_rerun_completes(tiny: str, db_url: str) -> None:
    proc = start("edit", "add", "--model", tiny, *EIFFEL)
    _wait_for(
        lambda: _has_loaded_torch(proc.pid) or proc.poll() is not None
    )  # loading and computing: the row comes last
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the edit finished before it could be killed"
    assert Store(db_url).list_edits(1, "all") == []
    cli("edit", "add", "--model", tiny, *EIFFEL)
    assert len(cli_json("edit", "list", "--model", tiny)) == 1


# one database: the subject is the process killed mid-import and the rerun; an import
# interrupted on both databases is test_queue's test_a_rerun_import_finishes_requests_...
@pytest.mark.slow  # real processes, each loading torch
def test_import_validates_first_then_resumes_after_a_kill(
    tiny: str, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the rerun waits for the killed import's hold on the model to lapse: 3 s, not the default 30
    monkeypatch.setenv("FACTSTORE_LEASE_SECONDS", "3")
    records = json.loads((REPO / "tests" / "data" / "counterfact_8.json").read_text())
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            [
                records[0],
                {"requested_rewrite": {"prompt": "no placeholder", "subject": "X", "target_new": {"str": "Y"}}},
            ]
        )
    )
    done = cli("edit", "import", "--model", tiny, str(bad), check=False)
    assert done.returncode == 1 and "record 2" in done.stderr
    assert cli_json("edit", "list", "--model", tiny, "--status", "all") == []

    good = tmp_path / "cf.json"
    good.write_text(json.dumps(records))
    store = Store(db_url)
    proc = start("edit", "import", "--model", tiny, str(good), "--batch", "2")  # 4 optimisations, not 8
    _wait_for(lambda: len(store.list_edits(1, "all")) >= 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = store.list_edits(1, "all")
    assert 2 <= len(kept) < 8
    result = cli_json("edit", "import", "--model", tiny, str(good), "--batch", "2")
    assert result["skipped"] == len(kept) and result["added"] == 8 - len(kept)
    edits = cli_json("edit", "list", "--model", tiny)
    assert len(edits) == 8 and sorted(e["seq"] for e in edits) == list(range(1, 9))
    assert edits[0]["subject"] == records[0]["requested_rewrite"]["subject"]


def test_csv_import(tiny: str, tmp_path: Path) -> None:
    path = tmp_path / "edits.csv"
    path.write_text(
        "prompt,subject,target\n{} is located in the city of,The Louvre,Berlin\n{} is located in the city of,Big Ben,Paris\n"
    )
    assert cli_json("edit", "import", "--model", tiny, str(path))["added"] == 2
    path.write_text("prompt,subject\nx,y\n")
    done = cli("edit", "import", "--model", tiny, str(path), check=False)
    assert done.returncode == 1 and "record 1 of edits.csv: it has no target_new (or target)" in done.stderr


@pytest.mark.parametrize(
    "db_url", ["sqlite"], indirect=True
)  # the command line's side; both databases are in test_queue
def test_tokens_and_the_queue_from_the_command_line(tiny: str) -> None:
    created = cli_json("token", "create", "--name", "ci-bot", "--scope", "write")
    assert created["name"] == "ci-bot" and created["scope"] == "write" and created["token"].startswith("fst_")
    listed = cli("token", "list", "--json").stdout
    assert "ci-bot" in listed and created["token"] not in listed  # the secret is shown once, never again
    assert "exists already" in cli("token", "create", "--name", "ci-bot", check=False).stderr
    assert cli_json("token", "revoke", "ci-bot")["revoked"] is True
    queued = cli("edit", "add", "--model", tiny, *EIFFEL, "--queue")
    edit_id = int(queued.stdout.strip())
    [pending] = cli_json("edit", "list", "--model", tiny)  # the default view shows the queue too
    assert (pending["id"], pending["status"], pending["seq"]) == (edit_id, "pending", None)
    assert cli_json("edit", "show", str(edit_id))["status"] == "pending"
    assert cli_json("worker", "--until-idle", "--poll", "0.1")["computed"] == 1
    assert cli_json("edit", "show", str(edit_id))["status"] == "active"
    refused = cli(
        "edit",
        "add",
        "--model",
        tiny,
        "--prompt",
        "no braces",
        "--subject",
        "X",
        "--target",
        "Y",
        "--queue",
        check=False,
    )
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and "exactly once" in refused.stderr
    assert [(e["id"], e["seq"]) for e in cli_json("edit", "list", "--model", tiny, "--status", "all")] == [(edit_id, 1)]


def test_progress_in_a_log_is_a_line_now_and_then_and_short_work_stays_quiet(capsys) -> None:  # type: ignore[no-untyped-def]
    from factstore.cli.progress import Lines

    with Lines(every=0.0).task("registering", 3) as advance:
        for n in (1, 2, 3):
            advance(n)
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        "registering: 1/3 ...",
        "registering: 2/3 ...",
        "registering: 3/3 ...",
        "registering: 3/3 done",
    ]
    with Lines(every=3600.0).task("quick", None) as advance:
        advance(1)
    assert capsys.readouterr().err == ""
