"""How far an honest band edit's stored keys are from the keys an importer measures (issue 25).

    python bench/band_drift.py --run-dir DIR [--alias smollm2] [--samples 16]

DIR is the run folder of a lifelong run registered with --band (its store holds the edits).
For SAMPLES edits spread over the log, the importer's check (release/claims.py) is repeated:
the band compile of the edits before it, then each layer's key of its subject measured with the
edit's own asks of the layers below written. Registration measured a batch together, so
batch-mates' asks moved the keys above the lowest layer a little; this prints the relative
differences per band position, against claims.KEY_TOLERANCE (lowest layer, and every key of a
single-layer edit) and claims.BAND_KEY_TOLERANCE (the rest). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--alias", default="smollm2")
    parser.add_argument("--samples", type=int, default=16)
    args = parser.parse_args()

    import torch

    from factstore import arch
    from factstore.editing.session import EditSession
    from factstore.release import claims
    from factstore.rome.hparams import ROMEHyperParams
    from factstore.rome.keys import compute_key, subject_states
    from factstore.storage.store import Store
    from factstore.weights import band
    from factstore.weights.replay import edit_vectors

    store = Store(f"sqlite:///{Path(args.run_dir) / 'lifelong.db'}")
    session = EditSession(store, args.alias, device="cpu")
    edits = sorted(session.applied, key=lambda e: e.seq)
    soft, top = band.settings(edits, (0.0, 0.0)), band.tops(edits)
    model, tok = session.model, session.tokenizer
    layers = sorted({a.layer for e in edits for a in e.band})
    with torch.no_grad(), session.base_weights():
        base = {
            layer: (arch.down_proj_weight(model, layer).clone(), arch.down_proj_bias(model, layer)) for layer in layers
        }
        picks = sorted({round(i * (len(edits) - 1) / max(1, args.samples - 1)) for i in range(args.samples)})
        errors: dict[str, list[float]] = {}
        for i in picks:
            edit = edits[i]
            earlier, last = band.collect(edits[:i], edit_vectors, base.__getitem__)
            for layer, (W0, _) in base.items():
                rows, delta = earlier.get(layer), None
                if rows:
                    C = session.layer_covariance(last[layer], layer)
                    delta = band.layer_delta(rows, C, band.layer_soft(soft, layer, top))
                band.write_layer(model, layer, W0, delta)
            templates = session.templates(ROMEHyperParams.from_json(edit.hparams)).key
            k_star = compute_key(model, tok, edit.request(), edit.layer, templates).double()
            stored = edit_vectors(edit)[0].double()
            errors.setdefault("k*", []).append(float((k_star - stored).norm() / stored.norm()))
            prompts = [band.key_prompts(edit.request(), templates, band.plain_weight(edit))]
            for j, ask in enumerate(edit.band):
                here = subject_states(model, tok, prompts, ask.layer, ask.layer)[0][0].double()
                want = band.vector(ask.key).double()
                errors.setdefault(f"layer {ask.layer} (band position {j})", []).append(
                    float((here - want).norm() / want.norm())
                )
                rows = [*earlier.get(ask.layer, []), (band.vector(ask.key), band.vector(ask.target))]
                soft_here = band.layer_soft(soft, ask.layer, top)
                delta = band.layer_delta(rows, session.layer_covariance(edit, ask.layer), soft_here)
                band.write_layer(model, ask.layer, base[ask.layer][0], delta)
    print(
        f"{len(picks)} of {len(edits)} edits; tolerances {claims.KEY_TOLERANCE:g} (lowest layer), {claims.BAND_KEY_TOLERANCE:g} (others)"
    )
    print("| key | median | max |\n|---|---|---|")
    for name, values in errors.items():
        values.sort()
        print(f"| {name} | {values[len(values) // 2]:.2g} | {values[-1]:.2g} |")


if __name__ == "__main__":
    main()
