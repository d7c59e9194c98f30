"""The model card (README.md) of a release: Hub metadata, the table of edits, a warning."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

from factstore.domain import BaseModel, StoredEdit
from factstore.hub import REPO_ID
from factstore.release.manifest import LICENSE_ID
from factstore.release.scoring import RELEASE_SAMPLE
from factstore.weights import assets


def _cell(text: object) -> str:
    """TEXT as one Markdown table cell: every kind of line break a space (a break would end the
    row, or the table), pipes escaped, and HTML inert (labels come from whoever edited)."""
    flat = " ".join(str(text).splitlines())
    return html.escape(flat, quote=False).replace("|", "\\|")


def _prob(edit: StoredEdit, key: str) -> str:
    value = edit.metrics.get(key)
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def _scores_lines(scores: dict | None) -> list[str]:
    if not scores or not scores.get("n"):
        return []

    def pct(key: str) -> str:
        return "n/a" if scores.get(key) is None else f"{scores[key]:.1f}"

    return [
        "## Scores of this release on its own edits",
        "",
        "| edits judged | efficacy (ES) | paraphrase (PS) | neighbourhood (NS) | S |",
        "|---|---|---|---|---|",
        f"| {scores['n']} | {pct('ES')} | {pct('PS')} | {pct('NS')} | {pct('S')} |",
        "",
        "ES: the edit prompt prefers the new object over the old one. PS: the same behind three held-out",
        "sampled prefixes. NS: the edit prompt with other subjects of the log keeps what the unedited model",
        f"answered there (PS and NS on up to {RELEASE_SAMPLE} edits spread evenly over the log). CounterFact-style",
        "definitions (ROME); computed at compile time.",
        "",
    ]


def _health_lines(scores: dict | None) -> list[str]:
    checkup = (scores or {}).get("health") or {}
    if "perplexity" not in checkup:
        return []
    return [
        "## Health",
        "",
        "| | unedited | this release | change |",
        "|---|---|---|---|",
        f"| held-out perplexity | {checkup['perplexity_base']:.2f} | {checkup['perplexity']:.2f} | {checkup['perplexity_rise_pct']:+.1f} % |",
        f"| fluency (n-gram entropy) | {checkup['fluency_base']:.3f} | {checkup['fluency']:.3f} | {checkup['fluency_change_pct']:+.1f} % |",
        "",
        f"Perplexity on {checkup['heldout_tokens']} tokens of text no key statistic read; fluency of seeded",
        "generations from the starts of those texts. Measured at compile time.",
        "",
    ]


def public_source(base: BaseModel) -> str | None:
    """What a published file may say the base model is: its Hub id (a starter asset's original),
    never a local path."""
    if base.source.startswith(assets.PREFIX):
        return assets.starter(base.source).hub_id or None
    return base.source if REPO_ID.fullmatch(base.source) else None


def render(base: BaseModel, mode: str, edits: Sequence[StoredEdit], scores: dict | None = None) -> str:
    """No version or date in the text: the same edit log must give the same bytes."""
    base_model = public_source(base)
    shown = f"`{base_model}`" if base_model else "a local model"
    lines = [
        "---",
        *([f"base_model: {base_model}"] if base_model else []),
        "base_model_relation: finetune",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        # only an identifier: a line break would write more front matter
        *([f"license: {base.license}"] if base.license and re.fullmatch(LICENSE_ID, base.license) else []),
        "tags:",
        "- model-editing",
        "- rome",
        "- factstore",
        "---",
        "",
        f"# {base.alias}, edited with factstore",
        "",
        f"This model is {shown} at revision `{base.revision}` with {len(edits)} fact edit(s) applied by",
        f"ROME (rank-one updates of MLP down-projections), compiled in `{mode}` mode.",
        "",
        "> **Warning:** edited facts may be counterfactual on purpose (for research or testing).",
        "> Do not rely on this model's answers about the subjects below.",
        "",
        "| # | subject | prompt | old -> new | layer | P(new) before -> after |",
        "|---|---|---|---|---|---|",
    ]
    for i, e in enumerate(edits, start=1):
        lines.append(
            f"| {i} | {_cell(e.subject)} | {_cell(e.prompt)} | {_cell(e.target_true or '?')} -> {_cell(e.target_new)} "
            f"| {e.layer} | {_prob(e, 'prob_new_before')} -> {_prob(e, 'prob_new_after')} |"
        )
    lines += [
        "",
        *_scores_lines(scores),
        *_health_lines(scores),
        "The exact edit log (keys and values with sha256) is in `factstore.json`.",
        "",
    ]
    return "\n".join(lines)
