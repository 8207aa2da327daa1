#!/usr/bin/env python3
"""Benchmark: a QDQ model on an AVX2-only x86 CPU (no VNNI), emulated, vs this CPU and the exact simulation.

onnxruntime's u8×s8 kernels on x86 CPUs without VNNI saturate int16 pair sums (see
toolchain/targets.py). This script shows what such a CPU computes without having one: it runs
the quantized ONNX model with onnxruntime inside ``qemu-x86_64 -cpu Haswell-noTSX`` (user-mode
emulation of an AVX2 CPU; onnxruntime picks its kernels from the emulated CPUID), natively, and
through zqtool's integer-exact torch simulation, and prints one row per model:

    top-1 on the labels for each, top-1 agreement with the FP32 model (run natively: float
    kernels are ISA-independent up to float rounding), and the emulated run's parity with the
    exact simulation (agreement, bit-identical logits, max difference in output LSBs).

Usage (after `zqtool run …`; RUN = the quantize dir, ONNX = the export dir, both printed by run):
    apt-get install qemu-user         # once
    .venv/bin/python examples/avx2_emulated.py Q_DIR ONNX_DIR DATA [--limit 256] [--label NAME]

Emulated integer kernels run ~250× slower than native ones: keep --limit small for 224×224 models.
Latency under emulation means nothing and is not measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
QEMU_CPU = "Haswell-noTSX"

#: the child: logits of one ONNX model on the first N eval images (torch-free, run under qemu too)
CHILD = r"""
import sys, json, numpy as np
sys.path.insert(0, sys.argv[1])
from toolchain.data import open_eval_set
from toolchain.verify.machine import probe_int16_pair_saturation
from toolchain.verify.model_card import read_model_meta
from toolchain.verify.session import Classifier
model, data, limit, out = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
clf = Classifier(model, 1)
meta = read_model_meta(clf.metadata, model)
ev = open_eval_set(data, limit)
xs, ys = zip(*ev.batches(meta, 32))
np.savez(out, logits=np.concatenate([clf.logits(x) for x in xs]), labels=np.concatenate(ys))
print(json.dumps({"int16_pair_saturation": probe_int16_pair_saturation()}))
"""


def logits(model: Path, data: str, limit: int, emulate: bool) -> tuple[np.ndarray, np.ndarray, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.npz"
        cmd = [sys.executable, "-c", CHILD, str(ROOT), str(model), data, str(limit), str(out)]
        if emulate:
            cmd = ["qemu-x86_64", "-cpu", QEMU_CPU] + cmd
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"error: {' '.join(cmd[:4])} … failed: {r.stderr.strip().splitlines()[-1:]}")
        info = json.loads(r.stdout.strip().splitlines()[-1])
        z = np.load(out)
        return z["logits"], z["labels"], info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("q_dir", type=Path)
    ap.add_argument("onnx_dir", type=Path)
    ap.add_argument("data")
    ap.add_argument("--limit", type=int, default=256)
    ap.add_argument("--label", default=None, help="row name (default: method, scheme and target)")
    ap.add_argument("--json", type=Path, default=None, help="also write the row as JSON")
    a = ap.parse_args()
    if shutil.which("qemu-x86_64") is None:
        sys.exit("error: qemu-x86_64 not found; install it with `apt-get install qemu-user`")
    sys.path.insert(0, str(ROOT))
    import torch

    from toolchain.export.parity import output_lsb
    from toolchain.pipeline import QArtifact
    from toolchain.quant.exact import exact_forward
    from toolchain.data import open_eval_set

    q = QArtifact.open(a.q_dir)
    qdq, fp32 = a.onnx_dir / "model.qdq.onnx", a.onnx_dir / "model.fp32.onnx"
    fp_logits, labels, _ = logits(fp32, a.data, a.limit, emulate=False)
    nat, _, nat_info = logits(qdq, a.data, a.limit, emulate=False)
    emu, _, emu_info = logits(qdq, a.data, a.limit, emulate=True)
    x = torch.from_numpy(np.concatenate([b for b, _ in open_eval_set(a.data, a.limit).batches(q.fp.meta, 64)]))
    qm = q.model()
    ex = torch.cat([exact_forward(qm, x[i:i + 64]) for i in range(0, len(x), 64)]).numpy()

    def top1(z):
        return 100.0 * float(np.mean(z.argmax(1) == labels))

    def agree(z, ref):
        return 100.0 * float(np.mean(z.argmax(1) == ref.argmax(1)))
    lsb = output_lsb(ex)
    row = {
        "model": a.label or f"{q.fp.meta.arch} {q.method} {q.scheme.tag} {q.scheme.target}",
        "n": int(len(labels)), "fp32_top1": top1(fp_logits),
        "native_top1": top1(nat), "avx2_top1": top1(emu), "exact_top1": top1(ex),
        "native_agree_fp32": agree(nat, fp_logits), "avx2_agree_fp32": agree(emu, fp_logits),
        "avx2_vs_exact_agree": agree(emu, ex), "avx2_vs_exact_identical": 100.0 * float(np.mean(emu == ex)),
        "avx2_vs_exact_max_lsb": float(np.abs(emu.astype(np.float64) - ex).max() / lsb),
        "native_vs_exact_identical": 100.0 * float(np.mean(nat == ex)),
        "native_saturates": nat_info["int16_pair_saturation"], "emulated_saturates": emu_info["int16_pair_saturation"],
        "host_cpu": next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
                         "unknown") if os.path.exists("/proc/cpuinfo") else "unknown",
        "emulated_cpu": f"qemu-x86_64 -cpu {QEMU_CPU}",
    }
    cols = [("model", "model", "{}"), ("n", "n", "{}"), ("FP32", "fp32_top1", "{:.2f}"),
            ("native", "native_top1", "{:.2f}"), ("AVX2 emu", "avx2_top1", "{:.2f}"), ("exact sim", "exact_top1", "{:.2f}"),
            ("agree FP32 native/AVX2", None, None), ("AVX2 vs exact: agree / identical / max LSB", None, None)]
    cells = [row["model"], str(row["n"]), f"{row['fp32_top1']:.2f}", f"{row['native_top1']:.2f}",
             f"{row['avx2_top1']:.2f}", f"{row['exact_top1']:.2f}",
             f"{row['native_agree_fp32']:.2f} / {row['avx2_agree_fp32']:.2f}",
             f"{row['avx2_vs_exact_agree']:.2f}% / {row['avx2_vs_exact_identical']:.1f}% / {row['avx2_vs_exact_max_lsb']:.1f}"]
    print("| " + " | ".join(c for c, _, _ in cols) + " |")
    print("|" + "---|" * len(cols))
    print("| " + " | ".join(cells) + " |")
    print(f"int16 pair saturation probe: native {row['native_saturates']}, emulated {row['emulated_saturates']}; "
          f"host {row['host_cpu']}; native vs exact identical {row['native_vs_exact_identical']:.1f}%")
    if a.json:
        a.json.write_text(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
