"""Reading files of facts: every malformed file is one clear error naming the record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from factstore.datasets import read_known_facts, read_records, read_requests
from factstore.errors import ImportFileError
from factstore.rome.hparams import default_hparams, has_measured_layer

REPO = Path(__file__).resolve().parents[1]
COUNTERFACT = REPO / "tests" / "data" / "counterfact_8.json"


def test_counterfact_records_and_requests_read_alike() -> None:
    records = read_records(COUNTERFACT, 3)
    requests = read_requests(COUNTERFACT, 3)
    first = json.loads(COUNTERFACT.read_text())[0]
    assert [r.request for r in records] == requests
    assert (
        requests[0].subject == first["requested_rewrite"]["subject"]
        and requests[0].target_new == first["requested_rewrite"]["target_new"]["str"]
    )
    assert records[0].paraphrases == tuple(first["paraphrase_prompts"]) and records[0].neighbours == tuple(
        first["neighborhood_prompts"]
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe not utf-8", "is not UTF-8 text"),
        (b'{"prompt": "x"}', "holds a JSON dict, not a list of records"),
        (b"[1, 2]", "record 1 of f.json is a JSON int, not an object"),
        (b"[{", "is not valid JSON"),
        (b"[]", "holds no records"),
        (b'[{"prompt": "{} is in", "subject": "X", "target": 7}]', "record 1 of f.json: target_new must be a string"),
        (b'[{"prompt": "{} is in", "subject": "X"}]', "record 1 of f.json: it has no target_new (or target)"),
        (
            b'[{"prompt": "{} is in", "subject": "X", "target": "Y"}, {"prompt": "no slot", "subject": "X", "target": "Y"}]',
            "record 2 of f.json: the prompt must contain",
        ),
    ],
)
def test_malformed_request_files_are_one_line_errors(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "f.json"
    path.write_bytes(content)
    with pytest.raises(ImportFileError, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
        read_requests(path)
    assert "\n" not in str(caught.value)


def test_limits_below_one_are_refused_and_a_csv_needs_its_columns(tmp_path: Path) -> None:
    for limit in (0, -1):
        with pytest.raises(ImportFileError, match=f"at least 1, not {limit}"):
            read_requests(COUNTERFACT, limit)
    csv = tmp_path / "e.csv"
    csv.write_text("prompt,subject,target\n{} is in,The Louvre,Berlin\n")
    assert [(r.subject, r.target_new) for r in read_requests(csv)] == [("The Louvre", "Berlin")]
    csv.write_bytes(b"prompt,subject,target\n{} is in,Caf\xe9,Rome\n")  # Latin-1, not UTF-8
    with pytest.raises(ImportFileError, match="is not UTF-8 text"):
        read_requests(csv)


def test_records_need_their_true_object_and_known_facts_their_subject(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(
        json.dumps([{"requested_rewrite": {"prompt": "{} is in", "subject": "X", "target_new": {"str": "Y"}}}])
    )
    with pytest.raises(ImportFileError, match=r"record 1 of r\.json: it has no target_true"):
        read_records(path)
    path.write_text(
        json.dumps(
            [
                {"subject": "Big Ben", "prompt": "Big Ben is in", "attribute": "London"},
                {"subject": "Louvre", "prompt": "The museum is in", "attribute": "Paris"},
            ]
        )
    )
    assert read_known_facts(path, 1)[0].template == "{} is in"
    with pytest.raises(ImportFileError, match=r"record 2 of r\.json: the prompt does not contain the subject 'Louvre'"):
        read_known_facts(path)


def test_a_layer_chosen_by_analogy_gives_way_to_a_traced_one() -> None:
    assert has_measured_layer("llama", 30, 576)  # SmolLM2-135M: swept (docs/hparams.md)
    assert not has_measured_layer("gemma3_text", 18, 640)  # Gemma 3 270M: by analogy, so tracing decides
    assert default_hparams("gemma3_text", 18, 640).layer == 4
