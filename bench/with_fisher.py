"""Run a factstore command with every v* optimised in the output Fisher's metric (issue 25 experiment).

    python bench/with_fisher.py EPS -- FACTSTORE ARGS...
    python bench/with_fisher.py 0.1 -- eval --model smollm2 --mode lifelong ...

Each new edit's delta is P u with P = (F / mean + EPS I)^(-1/2) and Adam on u (bench/quiet_values.py
measures single edits so). F, the output Fisher at the edit layer's MLP output, is computed once
per layer from 64 rows of the default statistics corpus on the model as the first edit finds it
(the base, for a log started empty) and kept in FACTSTORE_HOME/fisher-LAYER.pt, so a resumed run
uses the same F. An experiment: the edits' recorded hyperparameters do not say it, so a log
registered this way compiles as any other but cannot be recomputed from its settings.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch


def fisher_for(model: Any, module: Any, layer: int, tokenizer: Any) -> torch.Tensor:
    """F / its mean eigenvalue (d, d) (quiet_values.fisher), cached per layer in FACTSTORE_HOME."""
    from quiet_values import fisher

    from factstore.weights import corpus

    path = Path(os.environ.get("FACTSTORE_HOME", Path.home() / ".factstore")) / f"fisher-{layer}.pt"
    if path.exists():
        return torch.load(path)
    text = corpus.load_corpus()
    F = fisher(model, module, corpus.rows(tokenizer, text.texts[:64], 128))
    torch.save(F, path)
    return F


def main() -> None:
    if "--" not in sys.argv[2:]:
        raise SystemExit(__doc__)
    split = sys.argv.index("--")
    eps, rest = float(sys.argv[1]), sys.argv[split + 1 :]
    sys.path.insert(0, str(Path(__file__).parent))
    from quiet_values import metric, preconditioned

    from factstore.rome import values

    plain = values._Run
    made: dict[int, Any] = {}

    def run(model: Any, module: Any, parts: Any, hp: Any, device: Any, loop: str) -> Any:
        if hp.layer not in made:
            F = fisher_for(model, module, hp.layer, _tokenizer(model))
            made[hp.layer] = preconditioned(metric(F, eps), plain)
        return made[hp.layer](model, module, parts, hp, device, loop)

    values._Run = run  # type: ignore[assignment,misc]
    from factstore.cli.main import main as factstore

    sys.argv = ["factstore", *rest]
    factstore()


def _tokenizer(model: Any) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model.name_or_path)


if __name__ == "__main__":
    main()
