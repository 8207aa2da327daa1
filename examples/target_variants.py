#!/usr/bin/env python3
"""Benchmark: which narrowing makes a W8A8 model int16-pair safe at less accuracy cost.

The ``portable`` target narrows 8-bit weights to 7 bits where 8-bit codes could saturate
(toolchain/targets.py). The alternative is to narrow the activations those layers read to 7 bits.
This script registers that variant as a temporary target (``portable-act7``), and one that also
narrows depthwise convolutions (``portable-dw7``: what their exemption is worth), and runs the same
method through the whole pipeline (quantize → export → onnxruntime verify) for ``portable``,
``portable-act7``, ``portable-dw7`` and a full-range target, printing one markdown table.

Usage:
    .venv/bin/python examples/target_variants.py MODEL --arch ARCH --data DATA [--method bnstat]
        [--set key=value ...] [--limit N] [--store DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _no_exemption_class():
    from dataclasses import dataclass

    from toolchain.targets import Target

    @dataclass(frozen=True)
    class NoDepthwiseExemption(Target):
        def layer_bits(self, weight_bits, act_bits, *, depthwise=False):
            return Target.layer_bits(self, weight_bits, act_bits, depthwise=False)
    return NoDepthwiseExemption


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--arch", default=None)
    ap.add_argument("--data", required=True)
    ap.add_argument("--method", default="bnstat")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--store", default="runs")
    a = ap.parse_args()
    from toolchain.artifacts import Store
    from toolchain.methods.config import parse_overrides
    from toolchain.pipeline import run
    from toolchain.quant.scheme import QuantScheme
    from toolchain.targets import TARGETS, Target, register_target
    _NoDepthwiseExemption = _no_exemption_class()
    if "portable-act7" not in TARGETS:
        register_target(Target("portable-act7", "experiment: 7-bit activations into 8-bit-weight layers", True,
                               narrow="act"))
        register_target(_NoDepthwiseExemption("portable-dw7", "experiment: depthwise convs narrowed too", True))
    print(f"| target | FP32 top-1 | QDQ top-1 | drop | agree % | parity on (exact sim) |")
    print("|---|---|---|---|---|---|")
    for target in ("portable", "portable-act7", "portable-dw7", "x86-vnni"):
        r = run(a.model, a.data, load_options={"arch": a.arch}, method=a.method, scheme=QuantScheme(target=target),
                overrides=parse_overrides(a.set), limit=a.limit, latency_runs=0, store=Store(a.store))
        p, v = r.parity.on, r.verify
        print(f"| {target} | {v.fp32.top1:.2f} | {v.quantized.top1:.2f} ± {v.top1_stderr:.2f} | "
              f"{v.top1_drop:.2f} | {v.agreement_top1:.2f} | {p.agreement_top1:.2f}%, "
              f"{p.max_diff_lsb:.0f} LSB, {p.identical:.1f}% identical |", flush=True)


if __name__ == "__main__":
    main()
