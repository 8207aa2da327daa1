"""The device bundle: one folder with everything a target CPU needs to verify a quantized model.

``zqtool bundle RUN_OR_ONNX --out DIR`` writes::

    model.qdq.onnx    the deployed model            model.fp32.onnx   its FP32 reference
    model.qdq.ort     (--ort) onnxruntime's ORT format, converted for the target platform
    verify.pyz        the torch-free verifier (toolchain.core + .data + .verify, a stdlib zipapp)
    test.npz | data/  (--data) the eval data, copied
    README.txt        the one command to run
    bundle.json       manifest: model card, target, file sizes and sha256

On the device: ``python3 verify.pyz model.qdq.onnx --data test.npz --threads 4 --json report.json``
(numpy and onnxruntime; Pillow for image folders). ``deploy/check_arm64.sh DIR`` runs it on an
emulated aarch64 CPU and compares with the host.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import zipapp
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .artifacts import atomic_dir
from .core.errors import ConfigError, InputFileError
from .core.keys import file_sha256
from .targets import TARGETS

#: the torch-free modules the verifier needs (paths inside the ``toolchain`` package)
VERIFIER_FILES = ("__init__.py", "targets.py")
#: the torch-free packages it needs: the core (model card, errors), the eval-set readers, verify
VERIFIER_DIRS = ("core", "data", "verify")
#: ORT-format conversion platform per target (portable: edge devices first)
ORT_PLATFORM = {"arm64": "arm", "portable": "arm", "x86-vnni": "amd64"}

_MAIN = '''import sys
from toolchain.verify.device import main
sys.exit(main())
'''


@dataclass(frozen=True)
class Bundle:
    """What :func:`write_bundle` wrote. ``dir``: the bundle folder; ``files``: name → bytes."""

    dir: Path
    files: dict[str, int]
    target: str
    command: str


def model_target(qdq: Path) -> str:
    """The deployment target recorded in a zqtool QDQ file (``zqtool.target``), or "portable"."""
    import onnx
    m = onnx.load(str(qdq), load_external_data=False)
    props = {p.key: p.value for p in m.metadata_props}
    return json.loads(props["zqtool.target"]) if "zqtool.target" in props else "portable"


def check_target(recorded: str, wanted: str | None) -> str:
    """The bundle's target: ``wanted`` if the model was quantized for it (or for ``portable``).

    Raises:
        ConfigError: an unknown target, or a model quantized for another CPU family.
    """
    if wanted is None:
        return recorded
    if wanted not in TARGETS:
        raise ConfigError(f"--target must be one of {', '.join(TARGETS)}, got {wanted!r}")
    if recorded not in ("portable", wanted):
        raise ConfigError(f"the model was quantized for --target {recorded}, not for {wanted}",
                          f"re-quantize with --target {wanted} (or --target portable)")
    return wanted


def build_verifier(out: Path) -> Path:
    """Write ``verify.pyz``: a zipapp of the torch-free verifier (runs with ``python3 verify.pyz``)."""
    pkg = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "app"
        for rel in VERIFIER_FILES:
            dst = root / "toolchain" / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(pkg / rel, dst)
        for d in VERIFIER_DIRS:
            shutil.copytree(pkg / d, root / "toolchain" / d, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        (root / "__main__.py").write_text(_MAIN)
        zipapp.create_archive(root, out, interpreter="/usr/bin/env python3", compressed=True)
    return out


def convert_to_ort(qdq: Path, out_dir: Path, platform: str) -> Path:
    """Convert a QDQ file to ORT format with onnxruntime's own tool for ``platform`` ("arm"/"amd64").

    Raises:
        InputFileError: the converter failed (its last output line in the message).
    """
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / qdq.name
        shutil.copy2(qdq, src)
        proc = subprocess.run([sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort",
                               "--target_platform", platform, str(src)], capture_output=True, text=True)
        made = src.with_suffix(".ort")
        if proc.returncode != 0 or not made.is_file():
            last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise InputFileError(f"onnxruntime's ORT-format converter failed on {qdq}: {last[0]}")
        dst = out_dir / made.name
        shutil.copyfile(made, dst)
    return dst


def write_bundle(qdq: Path, out: Path, *, fp32: Path | None = None, data: Path | None = None,
                 target: str | None = None, ort: bool = False) -> Bundle:
    """Write a device bundle for QDQ model ``qdq`` into the new folder ``out`` (atomic).

    Args:
        qdq: the quantized ``.qdq.onnx``; ``fp32``: its FP32 reference (default: ``model.fp32.onnx``
            beside it, if present).
        data: eval data to include (an .npz, or a folder with labels.csv).
        target: the device family ("arm64", "portable", "x86-vnni"); checked against the model's.
        ort: also write the ORT-format model for the target's platform.

    Raises:
        InputFileError: a missing model or data file; ``out`` exists and is not empty.
        ConfigError: the model was quantized for another target.
    """
    qdq = Path(qdq)
    if not qdq.is_file():
        raise InputFileError(f"{qdq} does not exist", "pass a run directory or a .qdq.onnx file")
    if fp32 is None and (qdq.parent / "model.fp32.onnx").is_file():
        fp32 = qdq.parent / "model.fp32.onnx"
    if data is not None and not Path(data).exists():
        raise InputFileError(f"{data} does not exist", "pass an .npz or a folder with labels.csv")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise InputFileError(f"{out} exists and is not empty", "choose a new --out folder (nothing was written)")
    tgt = check_target(model_target(qdq), target)
    with atomic_dir(out) as d:
        d.chmod(0o755)
        shutil.copyfile(qdq, d / "model.qdq.onnx")
        if fp32 is not None:
            shutil.copyfile(fp32, d / "model.fp32.onnx")
        if ort:
            convert_to_ort(d / "model.qdq.onnx", d, ORT_PLATFORM[tgt])
        build_verifier(d / "verify.pyz")
        data_name = None
        if data is not None:
            data = Path(data)
            data_name = "test.npz" if data.is_file() else "data"
            if data.is_file():
                shutil.copyfile(data, d / data_name)
            else:  # plain copies (0644 files, 0755 folders), not the source's modes (often read-only)
                shutil.copytree(data, d / data_name, copy_function=shutil.copyfile)
                for sub in [d / data_name, *(d / data_name).rglob("*")]:
                    sub.chmod(0o755 if sub.is_dir() else 0o644)
        command = ("python3 verify.pyz model.qdq.onnx --data " + (data_name or "TEST.npz")
                   + " --threads 4 --json report.json")
        (d / "README.txt").write_text(_readme(tgt, command, ort, fp32 is not None))
        for p in d.iterdir():
            if p.is_file():
                p.chmod(0o755 if p.suffix == ".pyz" else 0o644)
        files = {p.name: p.stat().st_size for p in sorted(d.iterdir()) if p.is_file()}
        manifest = {"zqtool_version": __version__, "target": tgt, "command": command,
                    "files": {n: {"bytes": b, "sha256": file_sha256(d / n)} for n, b in files.items()}}
        (d / "bundle.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return Bundle(out, files, tgt, command)


def _readme(target: str, command: str, ort: bool, has_fp32: bool) -> str:
    lines = [f"zqtool device bundle (target: {target}, zqtool {__version__})", "",
             "Install on the device (64-bit Python 3.9+):  python3 -m pip install numpy onnxruntime  "
             "(and pillow for an image folder)", "", "Run:", f"  {command}", ""]
    if ort:
        lines += ["The ORT-format model verifies the same way:", "  " + command.replace("model.qdq.onnx", "model.qdq.ort"),
                  ""]
    if not has_fp32:
        lines += ["(no model.fp32.onnx: the FP32 column and the agreement stay empty)", ""]
    lines += ["Latency is measured at batch 1 with --threads intra-op threads; compare models only at equal",
              "thread counts. --save-outputs out.npz keeps the quantized outputs for a host/device comparison.", ""]
    return "\n".join(lines)
