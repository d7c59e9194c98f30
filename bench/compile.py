"""Compile time against a plain transformers load + save of the same checkpoint.

    python bench/compile.py [--sizes 1 100 1000] [--model starter:smollm2-135m]

Edits are synthetic but realistic: keys are real down-projection inputs of the base model on
Wikipedia text, values are W k + b moved by a random vector of the same norm; their texts
are CounterFact requests (prompt, subject, new and old object), so every compile also scores
each edit on the release (efficacy, paraphrase, neighbourhood: the forward passes a real
log costs). They are written to a temporary store as ordinary edit rows. Prints seconds and
the ratio to load + save (the issue's target: <= 1.3x at 1,000 edits on SmolLM2).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--model", default="starter:smollm2-135m")
    parser.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact_500.json")
    )
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="factstore-bench-"))
    os.environ["FACTSTORE_HOME"] = str(home)

    import torch
    from transformers import AutoModelForCausalLM

    from factstore import api, arch
    from factstore.datasets import read_requests
    from factstore.domain import EditRequest, NewEdit
    from factstore.options import CompileOptions
    from factstore.release import build
    from factstore.rome.hparams import default_hparams
    from factstore.weights import checkpoints, corpus, stats
    from factstore.weights.vectors import to_bytes

    store = api.open_store()
    base, _ = api.add_model(store, "bench", args.model)
    loaded = checkpoints.load(base.source, expected=base.revision, device="cpu")
    model, tok = loaded.model, loaded.tokenizer
    layer = default_hparams(model.config.model_type, arch.num_layers(model), model.config.hidden_size).layer
    text = corpus.load_corpus()
    stats_file = stats.compute(
        model, tok, stats.stats_spec(loaded.ref.revision, model, layer, text, 20_000, "float32"), text
    )
    cov = store.create_covariance(base.id, stats_file.spec.key(), record=stats.covariance_record(stats_file, text))

    texts = read_requests(args.data)
    keys = real_keys(model, tok, text.texts, layer, max(args.sizes))
    W, b = arch.down_proj_weight(model, layer), arch.down_proj_bias(model, layer)
    gen = torch.Generator().manual_seed(0)

    clock = time.perf_counter()
    plain = AutoModelForCausalLM.from_pretrained(loaded.ref.local_path)
    plain.save_pretrained(home / "plain")
    baseline = time.perf_counter() - clock
    print(f"load + save_pretrained: {baseline:.2f} s")
    print(
        f"{'edits':>6} {'mode':>10} {'compile s':>10} {'ratio':>6} {'load':>6} {'apply':>6} {'score':>6} {'write':>6}"
    )
    done = 0
    for size in sorted(args.sizes):
        for i in range(done, size):
            k = keys[i]
            out = W @ k + (0 if b is None else b)
            v = out + torch.randn(out.shape, generator=gen) * out.norm() / out.numel() ** 0.5
            kb, ks = to_bytes(k)
            vb, vs = to_bytes(v)
            text = texts[i % len(texts)]
            store.create_edit(
                base.id,
                NewEdit(
                    request=EditRequest(text.prompt, text.subject, text.target_new),
                    target_true=text.target_true,
                    layer=layer,
                    module=arch.down_proj_name(model, layer),
                    key=kb,
                    key_shape=ks,
                    value=vb,
                    value_shape=vs,
                    hparams={},
                    hparams_fingerprint="0" * 64,
                    covariance_id=cov.id,
                    metrics={},
                ),
            )
        done = size
        for mode in ("joint", "sequential"):
            clock, laps = time.perf_counter(), {}
            try:
                options = CompileOptions(mode=mode, out=str(home / f"{mode}-{size}"))
                build.build(store, "bench", options, device="cpu", timings=laps)
                seconds = time.perf_counter() - clock
                phases = " ".join(f"{laps.get(p, 0.0):>6.2f}" for p in ("load", "apply", "score", "write"))
                print(f"{size:>6} {mode:>10} {seconds:>10.2f} {seconds / baseline:>6.2f} {phases}", flush=True)
            except Exception as exc:
                print(f"{size:>6} {mode:>10} refused: {str(exc)[:90]}", flush=True)
    shutil.rmtree(home, ignore_errors=True)


def real_keys(model, tok, texts, layer: int, n: int, max_cosine: float = 0.9):  # type: ignore[no-untyped-def]
    """n down-projection inputs at distinct token positions of ordinary text, no two closer
    than MAX_COSINE (real edits have distinct subjects; near-copies of one key with different
    values are a contradiction no compile can satisfy)."""
    import torch

    from factstore.rome.hooks import layer_inputs
    from factstore.rome.prompts import pad_right

    keys_found: list[torch.Tensor] = []
    directions: list[torch.Tensor] = []
    for lo in range(0, len(texts), 8):
        ids, mask = pad_right([tok(t, truncation=True, max_length=128)["input_ids"] for t in texts[lo : lo + 8]])
        with torch.no_grad():
            keys = layer_inputs(model, layer, ids, mask)[mask.bool()]
        for k in keys[::7]:  # spread over positions
            unit = k / k.norm()
            if directions and float((torch.stack(directions) @ unit).max()) >= max_cosine:
                continue
            keys_found.append(k)
            directions.append(unit)
            if len(keys_found) == n:
                return torch.stack(keys_found)
    raise SystemExit(f"the corpus gave only {len(keys_found)} distinct keys; ask for fewer edits")


if __name__ == "__main__":
    main()
