"""Where ordinary text names something (rome/names.py): what the names moment of C sums over."""

from __future__ import annotations

import pytest

from factstore.rome.names import name_spans, name_tokens


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("The Space Needle is in Seattle.", ["Space Needle", "Seattle"]),
        ("The 1755 Lisbon earthquake hit the Iberian Peninsula.", ["Lisbon", "Iberian Peninsula"]),
        ("In 1900 he moved. Later, Marie Curie won. She left.", ["Marie Curie"]),
        ("written by Ludwig van Beethoven", ["Ludwig", "Beethoven"]),
        ("Beethoven wrote it", []),
        ("plain lower case text, nothing named", []),
        ("Émile Zola lived in Médan", ["Émile Zola", "Médan"]),
        ("", []),
        ("We saw Paris's museums and Wales' hills", ["Paris", "Wales"]),
    ],
)
def test_a_name_is_a_run_of_capitalised_words_not_a_sentences_first_word(text: str, names: list[str]) -> None:
    # where each name ends (its last token's key) and what it reads alone: one span per run of capitals
    ends = [end for _, end in name_spans(text)]
    assert [text[:end].split()[-1] for end in ends] == [name.split()[-1] for name in names]
    assert all(text[end - 1].isalnum() for end in ends)


def test_a_names_last_token_is_the_one_holding_its_last_character() -> None:
    # "Big Ben is tall": tokens "Big", " B", "en", " is", " tall" as (start, end) characters
    offsets = [(0, 3), (3, 5), (5, 7), (7, 10), (10, 15)]
    assert name_tokens(offsets, [7]) == [2]
    assert name_tokens(offsets, [3, 7]) == [0, 2]
    assert name_tokens(offsets, [7, 99]) == [2]  # a name cut off by truncation is left out
    assert name_tokens([(0, 0), *offsets], [7]) == [3]  # a BOS token holds no character
