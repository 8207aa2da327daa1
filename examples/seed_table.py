"""Print the seed table of examples/seeds.sh from its `zqtool run --json` reports.

    python examples/seed_table.py OUT_DIR/seeds BITS REFERENCE_METHOD [METHOD...]

Reads OUT_DIR/seeds/<method>-w<BITS>-seed<S>.json. Rows: the seeds that every method has a report
for (a missing report is named on stderr and its seed left out, so the paired gaps stay paired),
then mean ± sample standard deviation (n - 1) over those seeds. Columns: QDQ top-1 (%) per method
and, for every other method, its gap to the reference method on the same seed.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path


def top1_by_seed(folder: Path, method: str, bits: str) -> dict[int, float]:
    """{seed: onnxruntime top-1 (%)} of the reports ``<method>-w<bits>-seed<S>.json`` in ``folder``."""
    out = {}
    for f in folder.glob(f"{method}-w{bits}-seed*.json"):
        m = re.fullmatch(rf"{re.escape(method)}-w{bits}-seed(\d+)\.json", f.name)
        if m:
            out[int(m.group(1))] = json.loads(f.read_text())["quantized"]["top1"]
    return out


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.fmean(values):.2f} ± {sd:.2f}"


def main(argv: list[str]) -> None:
    if len(argv) < 3:
        sys.exit("usage: python examples/seed_table.py SEEDS_DIR BITS REFERENCE_METHOD [METHOD...]")
    folder, bits, methods = Path(argv[0]), argv[1], argv[2:]
    acc = {m: top1_by_seed(folder, m, bits) for m in methods}
    all_seeds = set().union(*acc.values())
    seeds = sorted(s for s in all_seeds if all(s in a for a in acc.values()))
    for m in methods:
        missing = sorted(all_seeds - set(acc[m]))
        if missing:
            print(f"{m}: no report for seed(s) {missing}; left out of the table", file=sys.stderr)
    if not seeds:
        sys.exit(f"no seed has a report for every method in {folder}")
    ref, others = methods[0], methods[1:]
    gaps = {m: [acc[m][s] - acc[ref][s] for s in seeds] for m in others}

    def row(*cells) -> str:
        return "| " + " | ".join(cells) + " |"

    print("\n" + row(f"seed (W{bits}A{bits})", *methods, *(f"{m} − {ref}" for m in others)))
    print(row(*["---"] * (1 + len(methods) + len(others))))
    for i, s in enumerate(seeds):
        print(row(str(s), *(f"{acc[m][s]:.2f}" for m in methods), *(f"{g[i]:+.2f}" for g in gaps.values())))
    print(row(f"mean ± sd ({len(seeds)} seeds)", *(mean_sd([acc[m][s] for s in seeds]) for m in methods),
              *(("+" if statistics.fmean(g) >= 0 else "") + mean_sd(g) for g in gaps.values())))


if __name__ == "__main__":
    main(sys.argv[1:])
