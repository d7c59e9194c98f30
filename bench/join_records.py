"""Join CounterFact files into one, in order, for a lifelong curve longer than one file.

    python bench/join_records.py ../shared/data/counterfact_val_1000.json ../shared/data/counterfact_500.json -o F

Each input is read with factstore's own parser first (a malformed record stops the join with its
file named), then the raw records are written in order. A case_id seen twice is refused: a curve
that registered one record twice would score it twice.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from factstore.datasets import read_records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    rows: list[dict[str, object]] = []
    seen: set[object] = set()
    for path in args.inputs:
        read_records(path)  # validates every record; raises with the file's name
        for row in json.loads(path.read_text()):
            case = row.get("case_id")
            if case is not None and case in seen:
                raise SystemExit(f"{path}: case_id {case} appears in an earlier file")
            seen.add(case)
            rows.append(row)
    args.output.write_text(json.dumps(rows))
    print(f"{len(rows)} records -> {args.output}")


if __name__ == "__main__":
    main()
