"""Print a markdown results table from `zqtool run --json` reports (one row per model/method/bits).

    python examples/results_table.py runs/baselines/*.json

Reports of the same run at several thread counts are merged into one row (latency per thread count).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def main(paths: list[str]) -> None:
    rows: dict[tuple, dict] = defaultdict(dict)
    for p in paths:
        r = json.loads(Path(p).read_text())
        q = r["quantize"]
        s = q["scheme"]
        key = (r["meta"].get("arch") or Path(p).stem, q["method"], s["wbits"], s["abits"], s["first_last_bits"])
        row = rows[key]
        row["report"] = r
        row.setdefault("latency", {})[r["latency_ms"]["threads"]] = (r["latency_ms"]["fp32"]["p50"],
                                                                     r["latency_ms"]["quantized"]["p50"])
    threads = sorted({t for row in rows.values() for t in row["latency"]})
    head = ["model", "method", "W/A (first/last)", "FP32 top-1", "QDQ top-1", "Δ top-1", "agree %",
            "integer convs", "quantize s"] + [f"p50 ms FP32 → QDQ ({t} thr)" for t in threads] + \
           ["MB FP32 → QDQ", "parity (opt off / on)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for (arch, method, w, a, fl), row in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1], -kv[0][2])):
        r = row["report"]
        fp, qt = r["fp32"]["top1"], r["quantized"]["top1"]
        io = r["integer_ops"]
        par = r.get("parity") or {}
        par_s = " / ".join(f"{par[k]['agreement_top1']:.1f}%, {par[k]['max_diff_lsb']:.0f} LSB" for k in ("off", "on")
                           if par.get(k))
        lat = [f"{row['latency'][t][0]:.2f} → {row['latency'][t][1]:.2f}" if t in row["latency"] else "–"
               for t in threads]
        cells = [arch, method, f"W{w}A{a} ({fl})", f"{fp:.2f}", f"{qt:.2f} ± {r['top1_stderr']:.2f}",
                 f"{qt - fp:+.2f}",
                 f"{r['agreement_top1']:.2f}", f"{io['conv_integer']}/{io['conv_total']}",
                 f"{r['quantize'].get('method_s') or 0:.0f}"] + lat + \
                [f"{r['bytes']['fp32'] / 1e6:.2f} → {r['bytes']['quantized'] / 1e6:.2f}", par_s]
        print("| " + " | ".join(cells) + " |")
    n = {row["report"]["n_images"] for row in rows.values()}
    print(f"\n{', '.join(map(str, sorted(n)))} images; onnxruntime {next(iter(rows.values()))['report'].get('ort_version')}")


if __name__ == "__main__":
    main(sys.argv[1:])
