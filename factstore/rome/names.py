"""Where ordinary text names something: each capitalised run of words, and its last token.

An edit's key is the down-projection input at its subject's last token. Keys like it are a
small part of ordinary text, so the second moment C of all its tokens barely weighs them, and a
long log's soft solve moves other subjects' outputs freely (issue 25: never-edited facts rise
with the log). The names of the statistics corpus are a sample of subjects no edit names;
`covariance.accumulate` sums their keys (each name read alone) beside C so that a band solve
can weigh them more.

A name is a run of words that start with a capital letter, separated by single spaces ("Space
Needle"; in "by Ludwig van Beethoven", "Ludwig" and "Beethoven" are two); a run of one word
that starts a text or a sentence is not one ("The", "In", "He"). Scripts without case have no
names here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_WORD = re.compile(r"[^\W\d_][\w'’-]*")
_POSSESSIVE = re.compile(r"['’]s?$")  # "Paris's", "Wales'": the name ends before it, as an edit's subject does
_SENTENCE_END = re.compile(r"(^|[.!?:;\"'”’)\]]\s*|\n\s*)$")


def name_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of each name of TEXT, in order."""
    ends: list[tuple[int, int]] = []
    run_start = run_end = -1
    words = 0
    for match in _WORD.finditer(text):
        capital = match.group()[0].isupper()
        joined = run_end >= 0 and text[run_end : match.start()] == " "
        if capital and joined:
            run_end, words = match.end(), words + 1
            continue
        if run_end >= 0:
            _close(text, run_start, run_end, words, ends)
        run_start, run_end, words = (match.start(), match.end(), 1) if capital else (-1, -1, 0)
    if run_end >= 0:
        _close(text, run_start, run_end, words, ends)
    return ends


def _close(text: str, start: int, end: int, words: int, spans: list[tuple[int, int]]) -> None:
    if words > 1 or not _SENTENCE_END.search(text[max(0, start - 3) : start]):
        possessive = _POSSESSIVE.search(text, start, end)
        spans.append((start, possessive.start() if possessive else end))


def name_tokens(offsets: Sequence[tuple[int, int]], ends: Sequence[int]) -> list[int]:
    """Indices of the tokens that hold the last character of each name (OFFSETS: each token's
    (start, end) characters, as a fast tokenizer's offset mapping gives them); names cut off by
    truncation are left out."""
    found: list[int] = []
    i = 0
    for end in ends:
        while i < len(offsets) and not (offsets[i][0] < end <= offsets[i][1]):
            i += 1
        if i == len(offsets):
            break
        found.append(i)
    return found
