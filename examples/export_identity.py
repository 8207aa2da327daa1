"""Behaviour-unchanged check for refactors: the same commands, the same bytes.

Runs a fixed list of `zqtool quantize` + `zqtool export` commands (ResNet-20 minmax/bnstat W8 and
W4 from ../shared, GZNQ/LRQ/ZAQ W4 on a tiny model with short schedules), hashes every exported
ONNX file and records the key paths of a `zqtool run` report, then either writes that manifest
(``--write M.json``) or compares it with one written before the change (``--compare M.json``) and
exits 1 on any difference. Prints one table row per command.

    python examples/export_identity.py --write /tmp/before.json      # on the old tree
    python examples/export_identity.py --compare /tmp/before.json    # on the new tree

The caches of both runs must be separate (``--store``, a fresh temporary directory by default), or
the second run would only re-read the first one's files. Threads are pinned to 1 so that float
sums are taken in the same order.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
R20 = SHARED / "models" / "resnet20-12fca82f.th"
TINY_GZNQ = ["num_images=20", "synthesis.batch_size=10", "iterations=5", "ft_steps=4", "student.batch_size=8"]
TINY_LRQ = ["rounds=3", "warmup_rounds=2", "batch_size=8", "nz=16", "ngf=8", "calib_batches=1"]
TINY_ZAQ = ["rounds=3", "batch_size=8", "calib_batches=1"]


def tiny_model(tmp: Path) -> Path:
    """The tests' tinynet state_dict (tests/helpers.py), rebuilt here so the script stands alone."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import tiny_state_dict_file
    return tiny_state_dict_file(tmp)


def tiny_data(tmp: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp / "tiny.npz"
    np.savez(path, images=rng.integers(0, 256, (40, 8, 8, 1), dtype=np.uint8),
             labels=rng.integers(0, 10, 40).astype(np.int64))
    return path


def cases(tmp: Path) -> list[tuple[str, list[str]]]:
    tiny = str(tiny_model(tmp))
    out: list[tuple[str, list[str]]] = []
    if R20.exists():
        for method in ("minmax", "bnstat"):
            for bits in (8, 4):
                out.append((f"resnet20 {method} W{bits}", [str(R20), "--arch", "resnet20", "--method", method,
                                                           "--bits", str(bits)]))
    else:
        print(f"# {R20} missing: ResNet-20 cases skipped", file=sys.stderr)
    for method, sets in (("gznq", TINY_GZNQ), ("lrq", TINY_LRQ), ("zaq", TINY_ZAQ)):
        args = [tiny, "--arch", "tinynet", "--method", method, "--bits", "4"]
        for s in sets:
            args += ["--set", s]
        out.append((f"tinynet {method} W4", args))
    out.append(("tinynet bnstat W8 x86-vnni", [tiny, "--arch", "tinynet", "--method", "bnstat", "--bits", "8",
                                               "--target", "x86-vnni", "--set", "num_images=16",
                                               "--set", "iterations=5"]))
    return out


def zq(*args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "toolchain.cli", *args], capture_output=True, text=True, env=env)
    if res.returncode:
        raise SystemExit(f"zqtool {' '.join(args)} failed:\n{res.stderr[-2000:]}")
    return res.stdout.strip().splitlines()[-1]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def key_paths(obj, prefix: str = "") -> list[str]:
    """Sorted dotted key paths of a JSON object (lists: the first element's keys)."""
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append(prefix + k)
            out += key_paths(v, prefix + k + ".")
    elif isinstance(obj, list) and obj and isinstance(obj[0], dict):
        out += key_paths(obj[0], prefix + "[].")
    return sorted(set(out))


def manifest(store: Path, only: str | None = None) -> dict:
    tmp = store / "inputs"
    tmp.mkdir(parents=True, exist_ok=True)
    result: dict = {"exports": {}, "report_keys": None}
    for name, args in cases(tmp):
        if only and only not in name:
            continue
        run_dir = zq("quantize", *args, "--out", str(store))
        onnx_dir = Path(zq("export", run_dir)).parent  # it prints model.qdq.onnx
        hashes = {p.name: sha(p) for p in sorted(onnx_dir.glob("*.onnx"))}
        result["exports"][name] = hashes
        print(f"{name:32s} " + "  ".join(f"{k} {v[:12]}" for k, v in hashes.items()), flush=True)
    report = store / "report.json"
    tiny = str(tiny_model(tmp))
    zq("run", tiny, "--arch", "tinynet", "--data", str(tiny_data(tmp)), "--method", "minmax", "--bits", "8",
       "--out", str(store), "--latency-runs", "2", "--json", str(report))
    result["report_keys"] = key_paths(json.loads(report.read_text()))
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", type=Path, help="write the manifest here")
    g.add_argument("--compare", type=Path, help="compare with this manifest; exit 1 on a difference")
    ap.add_argument("--only", default=None, help="only the cases whose name contains this (e.g. tinynet)")
    ap.add_argument("--store", type=Path, default=None, help="artifact store (default: a fresh temp dir)")
    a = ap.parse_args()
    store = a.store or Path(tempfile.mkdtemp(prefix="zq-identity-"))
    m = manifest(store, a.only)
    if a.write:
        a.write.write_text(json.dumps(m, indent=1))
        print(f"wrote {a.write}")
        return 0
    ref = json.loads(a.compare.read_text())
    bad = [n for n in m["exports"] if ref["exports"].get(n) != m["exports"][n]]
    missing_keys = sorted(set(ref["report_keys"]) - set(m["report_keys"]))
    extra_keys = sorted(set(m["report_keys"]) - set(ref["report_keys"]))
    for n in bad:
        print(f"DIFFERENT: {n}")
    if missing_keys or extra_keys:
        print(f"report keys: missing {missing_keys}, new {extra_keys}")
    print("identical" if not bad and not missing_keys and not extra_keys else "CHANGED")
    return 1 if bad or missing_keys else 0


if __name__ == "__main__":
    raise SystemExit(main())
