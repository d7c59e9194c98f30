"""Ordinary text for the key statistics: the starter corpus or a user's files."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factstore.errors import StatisticsError
from factstore.progress import SILENT, Reporter
from factstore.rome.covariance import TEXT_TOKENS
from factstore.weights import assets

DEFAULT_CORPUS = "starter:wiki-vital"


@dataclass(frozen=True)
class Corpus:
    name: str
    sha256: str  # of the canonical JSON list of texts: the cache key part
    texts: list[str]


def is_starter_corpus(name: str) -> bool:
    """NAME is starter:X for a starter asset of kind corpus (one factstore may download by name)."""
    found = assets.STARTERS.get(name.removeprefix(assets.PREFIX)) if name.startswith(assets.PREFIX) else None
    return found is not None and found.kind == "corpus"


def _read_texts(path: Path) -> list[str]:
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        if not isinstance(data, list) or not all(isinstance(t, str) for t in data):
            raise StatisticsError(f"{path} must hold a JSON list of strings")
        return data
    if path.suffix == ".jsonl":
        return [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]
    return [block.strip() for block in path.read_text().split("\n\n") if block.strip()]  # paragraphs


def load_corpus(name_or_path: str = DEFAULT_CORPUS, progress: Reporter = SILENT) -> Corpus:
    """A starter corpus (starter:wiki-vital), a .json list, a .jsonl with "text", or a text file of paragraphs."""
    if name_or_path.startswith(assets.PREFIX):
        texts = json.loads((assets.asset_dir(name_or_path, progress) / "texts.json").read_text())
    else:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise StatisticsError(f"no corpus at {name_or_path}: give {DEFAULT_CORPUS} or a .txt/.json/.jsonl file")
        try:
            texts = _read_texts(path)
        except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            raise StatisticsError(
                f'cannot read the corpus {path} ({type(exc).__name__}): give UTF-8 text, a JSON list of strings or JSON lines with "text"'
            ) from None
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise StatisticsError(f"the corpus {name_or_path} holds no text")
    blob = json.dumps(texts, ensure_ascii=False, separators=(",", ":")).encode()
    return Corpus(name=name_or_path, sha256=hashlib.sha256(blob).hexdigest(), texts=texts)


def rows(tokenizer: Any, texts: list[str], max_length: int = TEXT_TOKENS) -> list[list[int]]:
    return [list(tokenizer(t, truncation=True, max_length=max_length)["input_ids"]) for t in texts]


def texts_covering(corpus: Corpus, tokenizer: Any, tokens: int, max_length: int = TEXT_TOKENS) -> int:
    """How many texts from the front of CORPUS the key statistics read to sum TOKENS keys."""
    seen = 0
    for i, text in enumerate(corpus.texts):
        if seen >= tokens:
            return i
        seen += len(rows(tokenizer, [text], max_length)[0])
    return len(corpus.texts)


def held_out(
    corpus: Corpus,
    tokenizer: Any,
    tokens: int,
    used_tokens: int,
    max_length: int = TEXT_TOKENS,
    at_least: int | None = None,
) -> list[list[int]]:
    """Token rows of about TOKENS tokens from the end of CORPUS, none of them among the texts
    that key statistics of USED_TOKENS read from its front: text the statistics never saw.
    With AT_LEAST, fewer tokens than asked are enough when there are at least that many."""
    first_free = texts_covering(corpus, tokenizer, used_tokens, max_length)
    out: list[list[int]] = []
    total = 0
    for i in range(len(corpus.texts) - 1, first_free - 1, -1):
        if total >= tokens:
            break
        row = rows(tokenizer, [corpus.texts[i]], max_length)[0]
        out.append(row)
        total += len(row)
    if total < (tokens if at_least is None else min(at_least, tokens)):
        raise StatisticsError(
            f"{corpus.name} has only {total} tokens beyond the {used_tokens} the key statistics read; give fewer held-out tokens"
        )
    return out[::-1]
