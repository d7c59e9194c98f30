"""Ordinary text for the key statistics: the starter corpus or a user's files."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from factstore.errors import StatisticsError
from factstore.progress import SILENT, Reporter
from factstore.weights import assets

DEFAULT_CORPUS = "starter:wiki-vital"


@dataclass(frozen=True)
class Corpus:
    name: str
    sha256: str  # of the canonical JSON list of texts: the cache key part
    texts: list[str]


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
            raise StatisticsError(f"cannot read the corpus {path} ({type(exc).__name__}): give UTF-8 text, a JSON list of strings or JSON lines with \"text\"") from None
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise StatisticsError(f"the corpus {name_or_path} holds no text")
    blob = json.dumps(texts, ensure_ascii=False, separators=(",", ":")).encode()
    return Corpus(name=name_or_path, sha256=hashlib.sha256(blob).hexdigest(), texts=texts)
