"""Careless and hostile arguments: every refusal is one line, exit code 1, and changes nothing;
two compiles of one model do not collide; nothing factstore did not create is deleted."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factstore import api
from factstore.cli.main import main
from factstore.errors import FactStoreError
from factstore.files import staged_folder
from factstore.hub import Hub
from factstore.release import layout

REPO = Path(__file__).resolve().parents[1]
SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture(autouse=True)
def _keep_cwd():  # type: ignore[no-untyped-def]
    here = os.getcwd()
    yield
    os.chdir(here)


def run(*args: str) -> tuple[int, str]:
    """The CLI in this process (fast: no interpreter start); returns (exit code, stderr)."""
    err = io.StringIO()
    old = sys.argv
    sys.argv = ["factstore", *args]
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = old
    return code, err.getvalue()


def snapshot(store) -> object:  # type: ignore[no-untyped-def]
    models = api.list_models(store)
    return [
        (
            m.alias,
            m.revision,
            [(e.id, e.status) for e in api.list_edits(store, m.alias, "all")],
            [(r.version, r.path) for r in api.list_releases(store, m.alias)],
        )
        for m in models
    ]


@SQLITE
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["edit", "show", "99999999999999999999"], "less than or equal to 2147483647"),
        (["edit", "import", "--model", "tiny", "x.json", "--limit", "0"], "greater than or equal to 1"),
        (["eval", "--model", "tiny", "--dataset", "x.json", "--n", "-1"], "greater than or equal to 1"),
        (["trace", "--model", "tiny", "--dataset", "x.json", "--n", "0"], "greater than or equal to 1"),
        (["model", "add", "../../../../escape", "starter:smollm2-135m"], "alias '../../../../escape' is not allowed"),
        (["model", "add", "a" * 201, "/nowhere"], "is not allowed"),
        (["stats", "compute", "--model", "tiny", "--layer", "7"], "layer 7 is outside the model"),
        (["edit", "add", "--model", "tiny", "--prompt", "{} is in\x00", "--subject", "X", "--target", "Y"], "NUL byte"),
        (
            [
                "edit",
                "add",
                "--model",
                "tiny",
                "--prompt",
                "{} is in " + "word " * 400,
                "--subject",
                "X",
                "--target",
                "Y",
            ],
            "the limit is 256",
        ),
        (["ask", "--model", "tiny", "word " * 300], "the limit is 256"),
        (["compile", "--model", "tiny", "--mode", "nonsense"], "unknown compile mode"),
        (["pull", "../../etc", "--out", "/tmp/x"], "is not a Hub repository id"),
        (["edit", "list"], "Missing option '--model'"),
    ],
)
def test_refusals_are_one_line_exit_1_and_change_nothing(
    tiny_store, tmp_path: Path, args: list[str], message: str
) -> None:  # type: ignore[no-untyped-def]
    before = snapshot(tiny_store)
    code, err = run(*args)
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert snapshot(tiny_store) == before


@SQLITE
def test_compile_out_pointing_at_a_file_and_a_bad_database_are_one_line(
    tiny_store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "a-file"
    target.write_text("keep me")
    code, err = run("compile", "--model", "tiny", "--out", str(target))
    assert code == 1 and "is not an empty folder" in err and target.read_text() == "keep me"
    code, err = run(
        "compile", "--model", "tiny", "--out", str(tmp_path / ("a" * 300))
    )  # found by the property test below
    assert code == 1 and "File name too long" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setenv("FACTSTORE_DATABASE_URL", "postgresql+psycopg://alice:s3cret-pw@127.0.0.1:1/none")
    code, err = run("edit", "list", "--model", "tiny")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "s3cret-pw" not in err and "***" in err


@SQLITE
@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    command=st.sampled_from(["edit add", "edit import", "model add", "ask", "compile", "pull"]),
    words=st.lists(
        st.one_of(
            st.text(max_size=30),
            st.sampled_from(["..", "../x", "/", "\x00", "{}", "-1", "0", "v99999999999", "a" * 300]),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_no_argument_makes_the_cli_crash_or_change_the_store_when_it_refuses(
    tiny_store, tmp_path: Path, command: str, words: list[str]
) -> None:  # type: ignore[no-untyped-def]
    os.chdir(
        tmp_path
    )  # relative --out names land in the test's folder, never in the checkout (restored by the fixture below)
    first, second, third = [*words, "p", "T", "1"][:3]
    argv = {
        "edit add": ["edit", "add", "--model", first, "--prompt", second, "--subject", "S", "--target", third],
        "edit import": ["edit", "import", "--model", "tiny", first, "--limit", second],
        "model add": ["model", "add", first, second],
        "ask": ["ask", "--model", "tiny", first, "--top", second],
        "compile": ["compile", "--model", "tiny", "--mode", first, "--out", second],
        "pull": ["pull", first, "--version", second],
    }[command]
    before = snapshot(tiny_store)
    code, err = run(*argv)
    assert code in (0, 1) and "Traceback" not in err and "internal error" not in err, (argv, err)
    if code == 1:
        assert len(err.strip().splitlines()) == 1 and snapshot(tiny_store) == before, (argv, err)


@pytest.mark.database
def test_two_compiles_of_one_model_at_once_give_one_release(tiny_store) -> None:  # type: ignore[no-untyped-def]
    from factstore.domain import EditRequest
    from factstore.editing.session import EditSession

    EditSession(tiny_store, "tiny", device="cpu").add(EditRequest("{} is located in the city of", "The Louvre", "Rome"))
    cmd = [sys.executable, "-m", "factstore.cli.main", "compile", "--model", "tiny", "--json"]
    procs = [
        subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outputs]
    results = [json.loads(out) for out, _ in outputs]
    assert sorted(r["created"] for r in results) == [False, True] and {r["version"] for r in results} == {1}
    assert [r.version for r in api.list_releases(tiny_store, "tiny")] == [1]


def test_leftovers_of_killed_processes_are_swept_and_nothing_else(tmp_path: Path) -> None:
    dead = 2**22 + 12345  # above the kernel's pid_max default of 2^22: no such process
    (tmp_path / f".tmp-v1-{dead}-1").mkdir()
    (tmp_path / f".tmp-v1-{dead}-1" / "model.safetensors").write_bytes(b"half")
    (tmp_path / f".base.safetensors.{dead}-7.tmp").write_bytes(b"half")
    (tmp_path / f".tmp-v1-{os.getpid()}-99").mkdir()  # a live process's work
    (tmp_path / "NOTES.txt").write_text("mine")
    (tmp_path / ".tmp-something-else").mkdir()
    with staged_folder(tmp_path / "v2") as tmp:
        (tmp / "x").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f".tmp-v1-{os.getpid()}-99", "NOTES.txt", ".tmp-something-else", "v2"]
    )


def test_tokens_go_only_to_trusted_endpoints() -> None:
    assert Hub("http://203.0.113.7:8080", token="tok")._token is False  # plain http to another host: never
    assert Hub("http://127.0.0.1:9", token="tok")._token == "tok"
    assert Hub("https://hub.example.org", token="tok")._token == "tok"
    assert Hub(None)._token is None  # the library resolves HF_TOKEN for the default endpoint


@SQLITE
def test_published_files_name_no_local_path(tiny_store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from factstore.domain import EditRequest
    from factstore.editing.session import EditSession

    EditSession(tiny_store, "tiny", device="cpu").add(EditRequest("{} is located in the city of", "The Louvre", "Rome"))
    release, _ = api.compile_release(tiny_store, "tiny")
    local = str(tmp_path)
    for name in ("README.md", "factstore.json"):
        text = (Path(release.path) / name).read_text()
        assert local not in text and "/tmp/" not in text, name
    assert json.loads((Path(release.path) / "factstore.json").read_text())["base"]["source"] == "local"


@SQLITE
def test_a_release_folder_in_the_way_is_moved_aside_not_deleted(
    tiny_store, factstore_home: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from factstore.domain import EditRequest
    from factstore.editing.session import EditSession

    mine = factstore_home / "releases" / "tiny" / "v1"  # another store sharing FACTSTORE_HOME, or a user's notes
    mine.mkdir(parents=True)
    (mine / "NOTES.txt").write_text("mine")
    EditSession(tiny_store, "tiny", device="cpu").add(EditRequest("{} is located in the city of", "The Louvre", "Rome"))
    release, _ = api.compile_release(tiny_store, "tiny")
    assert Path(release.path) == mine and (mine / layout.MANIFEST).exists()
    aside = [p for p in mine.parent.iterdir() if p.name.startswith("v1.moved-")]
    assert len(aside) == 1 and (aside[0] / "NOTES.txt").read_text() == "mine"
    a_file = tmp_path / "a-file"
    a_file.write_text("keep")
    with pytest.raises(FactStoreError, match="is not an empty folder"):
        api.pull_release(
            "alice/x", api.PullOptions(version="v1", out=str(a_file))
        )  # refused before anything is downloaded
    assert a_file.read_text() == "keep"


def test_the_http_schema_and_the_library_refuse_text_at_the_same_length() -> None:
    from factstore.domain import NOTE_CHARS, PROMPT_CHARS, RELATION_CHARS, TEXT_CHARS, EditRequest
    from factstore.server.schemas import EditIn

    fields = EditIn.model_json_schema()["properties"]
    limits = {
        name: fields[name].get("maxLength") or fields[name]["anyOf"][0]["maxLength"]
        for name in fields
        if name != "layer"
    }
    assert limits == {
        "prompt": PROMPT_CHARS,
        "subject": TEXT_CHARS,
        "target": TEXT_CHARS,
        "relation": RELATION_CHARS,
        "note": NOTE_CHARS,
    }
    longest = dict(prompt="{}" + "x" * (PROMPT_CHARS - 2), subject="s" * TEXT_CHARS, target_new="t" * TEXT_CHARS)
    EditRequest(**longest, relation_id="r" * RELATION_CHARS)  # at the limit: taken
    for field, size in (("prompt", PROMPT_CHARS), ("subject", TEXT_CHARS), ("target_new", TEXT_CHARS)):
        with pytest.raises(FactStoreError, match=f"characters long; the limit is {size}"):
            EditRequest(**{**longest, field: longest[field] + "x"})
