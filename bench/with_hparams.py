"""Run a factstore command with the default hyperparameters of a model family overridden (sweeps).

    python bench/with_hparams.py MODEL_TYPE NAME=VALUE [NAME=VALUE ...] -- FACTSTORE ARGS...
    python bench/with_hparams.py llama band_boost=2 -- eval --model smollm2 --mode lifelong ...

MODEL_TYPE is a transformers model type with a row in factstore/rome/hparams.py's defaults
(llama: SmolLM2-135M); each NAME=VALUE (a number) replaces that field for every size of that
family, as if the row said it. Edits record their hyperparameters, so a log registered this way
keeps them: a later `factstore` run continues it with the logged band settings.
"""

from __future__ import annotations

import dataclasses
import sys


def main() -> None:
    if "--" not in sys.argv[2:]:
        raise SystemExit(__doc__)
    split = sys.argv.index("--")
    model_type, pairs, rest = sys.argv[1], sys.argv[2:split], sys.argv[split + 1 :]
    from factstore.rome import hparams

    fields = {f.name for f in dataclasses.fields(hparams.ROMEHyperParams)}
    changes: dict[str, float | int] = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in fields:
            raise SystemExit(f"unknown hyperparameter {name!r}; fields: {', '.join(sorted(fields))}")
        changes[name] = int(value) if value.lstrip("-").isdigit() else float(value)
    rows = [r for r in hparams._DEFAULTS if r.model_type == model_type]
    if not rows:
        raise SystemExit(f"no default row for model type {model_type!r}")
    hparams._DEFAULTS = tuple(
        dataclasses.replace(r, params={**r.params, **changes}) if r.model_type == model_type else r
        for r in hparams._DEFAULTS
    )
    from factstore.cli.main import main as factstore

    sys.argv = ["factstore", *rest]
    factstore()


if __name__ == "__main__":
    main()
