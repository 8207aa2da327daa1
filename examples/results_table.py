"""Print one markdown results table from `zqtool compare` outputs (compare.json) and/or
`zqtool run --json` reports, e.g. to combine several models into README's table.

    python examples/results_table.py runs/readme/resnet20/compare.json runs/readme/mobilenet_v2/compare.json
    python examples/results_table.py runs/baselines/*.json

Rows of a compare.json keep their order; run reports of the same model/method/scheme at several
thread counts are merged into one row (latency per thread count). The formatting lives in
toolchain/compare/render.py (the same table `zqtool compare` writes to compare.md).
"""

from __future__ import annotations

import sys

from toolchain.compare import load_rows, markdown_footer, markdown_table


def main(paths: list[str]) -> None:
    if not paths:
        sys.exit("usage: python examples/results_table.py COMPARE_OR_RUN_JSON...")
    rows = load_rows(paths)
    print(markdown_table(rows))
    print(markdown_footer(rows), end="")


if __name__ == "__main__":
    main(sys.argv[1:])
