"""Retraction against records no edit touched (issue 25): how far can a retracted fact fall back?

    FACTSTORE_HOME=H python bench/retraction_control.py --run-dir DIR \\
        --dataset ../shared/data/counterfact_val_1000.json --n 1000 [--edits N] \\
        --control ../shared/data/counterfact_500.json --control-n 200 --retract 100 [--seed 0]

DIR is a run folder of `factstore eval --mode lifelong --band B`. The log (its first --edits
active edits) is compiled as registered, then without --retract of its edits drawn at random
(seeded; the store is not changed: a retraction is a compile without them). Three groups of
records are scored on the base model, the whole log and the log without the drawn edits:
- retracted: the records of the drawn edits, which should fall back to their unedited scores;
- kept: the records of the other edits (a seeded sample of --kept-n), which should keep theirs;
- control: records of --control whose subject no edit of the run names (retracted ones
  included). What the log does to them is what it does to facts it never edited (CounterFact
  edits share relations and popular new objects): the floor a retracted fact can fall back to.
Prints a Markdown table (ES, PS, NS per group and compile).
"""

from __future__ import annotations

import argparse
import random
import time

import run_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    run_folder.add_arguments(parser)
    run_folder.add_control_arguments(parser, "records no edit touched")
    parser.add_argument("--retract", type=int, default=100)
    parser.add_argument("--kept-n", type=int, default=200, help="kept records scored (a seeded sample)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from factstore.domain import request_sha256
    from factstore.studies.lifelong import score_variant
    from factstore.weights import band
    from factstore.weights.replay import edit_vectors, soft_settings

    store, session, edits, records = run_folder.open_run(args)
    if not edits or not all(e.band for e in edits):
        raise SystemExit("every edit of the log must be a band edit (registered with --band)")
    soft = band.settings(edits, soft_settings("band"))
    by_request = {request_sha256(r.request): r for r in records}
    drawn = set(random.Random(args.seed).sample(range(len(edits)), min(args.retract, len(edits))))
    groups = {
        "retracted": [by_request[request_sha256(e.request())] for i, e in enumerate(edits) if i in drawn],
        "kept": [by_request[request_sha256(e.request())] for i, e in enumerate(edits) if i not in drawn],
    }
    if len(groups["kept"]) > args.kept_n:
        groups["kept"] = random.Random(args.seed + 1).sample(groups["kept"], args.kept_n)
    groups["control"] = run_folder.unnamed_records(store, session, args.control, args.control_n)
    kept_edits = [e for i, e in enumerate(edits) if i not in drawn]
    compiles = {
        "unedited": lambda m: None,
        f"the log ({len(edits)} edits)": lambda m: band.apply_band(
            m, edits, edit_vectors, session.layer_covariance, soft
        ),
        f"without the {len(drawn)} drawn": lambda m: band.apply_band(
            m, kept_edits, edit_vectors, session.layer_covariance, soft
        ),
    }
    print(
        f"{len(edits)} edits; {', '.join(f'{len(v)} {k}' for k, v in groups.items())} records; seed {args.seed}",
        flush=True,
    )
    print("\n| records | compile | ES | PS | NS | seconds |\n|---|---|---|---|---|---|")
    for group, scored in groups.items():
        for name, apply in compiles.items():
            if group == "kept" and name == "unedited":
                continue  # the run's own curve has it
            clock = time.perf_counter()
            s = score_variant(session, scored, apply, None)
            cells = " | ".join(f"{s[m]:.1f}" for m in ("ES", "PS", "NS"))
            print(f"| {group} ({len(scored)}) | {name} | {cells} | {time.perf_counter() - clock:.0f} |", flush=True)


if __name__ == "__main__":
    main()
