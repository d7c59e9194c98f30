"""GE of a finished band run's compile against the unedited model (issue 25's GE gate).

    FACTSTORE_HOME=H python bench/band_fluency.py --run-dir DIR --dataset ../shared/data/counterfact_val_1000.json \\
        [--edits N] [--sample 50]

For a run folder registered without fluency (a run folder cannot add it later): the log's band
compile at its registered settings (its stored asks, weight, rho) and the base model, each
scored on the first --sample records with generations sampled as `eval --mode lifelong` samples
them (each record's own prompt and paraphrases, FluencySettings' defaults, seed 0). Prints GE
and its change.
"""

from __future__ import annotations

import argparse
import time

import run_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    run_folder.add_arguments(parser)
    parser.add_argument("--sample", type=int, default=50)
    args = parser.parse_args()
    args.n = args.sample

    from factstore.options import FluencySettings
    from factstore.studies.lifelong import score_variant

    log = run_folder.BandLog(argparse.Namespace(**vars(args), heldout_tokens=0))
    fluency = FluencySettings()
    rows = []
    for name, deltas in (("unedited", {}), (f"band compile of {len(log.edits)} edits", log.deltas())):
        clock = time.perf_counter()
        s = score_variant(log.session, log.records, run_folder.applier(deltas), None, fluency)
        rows.append((name, s["GE"], time.perf_counter() - clock))
    base = rows[0][1]
    print(f"| model | GE ({len(log.records)} records) | change | seconds |\n|---|---|---|---|")
    for name, ge, seconds in rows:
        print(f"| {name} | {ge:.3f} | {100 * (ge / base - 1):+.1f} % | {seconds:.0f} |")


if __name__ == "__main__":
    main()
