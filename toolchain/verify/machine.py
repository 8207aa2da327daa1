"""The CPU a model is verified on, and whether its integer ranges are exact there (torch-free).

Two questions, answered from the machine and from the model:

- :func:`cpu_info`: the CPU model, architecture and the ISA flags that decide which
  onnxruntime integer kernels run (``avx2``, ``avx512_vnni``, ``avx_vnni``, ``amx_int8`` on
  x86; ``asimd`` (NEON), ``asimddp`` (dot product), ``i8mm`` on ARM64), read from the OS
  (``/proc/cpuinfo`` on Linux, ``sysctl`` on macOS) — never guessed from the model name.
  ``int16_pair_saturation`` is True on x86-64 CPUs without VNNI/AMX, whose u8×s8 kernels add
  pairs of products in int16 with saturation (:mod:`toolchain.targets`).
- :func:`saturation_risks`: the integer layers of a QDQ model whose codes can saturate such a
  pair sum (``2 · qmax_act · max|w| > 32,767``), read from the ONNX graph itself, so it holds
  for any QDQ model, not only zqtool's.
"""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..targets import INT16_MAX, is_depthwise, pair_sum_bound

#: the ISA flags recorded in reports (the ones that select onnxruntime's integer kernels)
X86_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8")
ARM_FLAGS = ("asimd", "asimddp", "i8mm", "sve", "sve2")
_VNNI = ("avx512_vnni", "avx_vnni", "amx_int8")


@dataclass(frozen=True)
class CpuInfo:
    """What the verifying machine's CPU is.

    Attributes:
        model: the CPU model name ("Intel(R) Xeon(R) …"), or "unknown".
        arch: ``platform.machine()`` ("x86_64", "aarch64", "arm64", …).
        flags: the recorded ISA flags present (subset of X86_FLAGS / ARM_FLAGS), sorted.
        source: where the flags were read ("/proc/cpuinfo", "sysctl" or "none").
    """

    model: str
    arch: str
    flags: tuple[str, ...] = field(default_factory=tuple)
    source: str = "none"

    @property
    def is_x86(self) -> bool:
        return self.arch.lower() in ("x86_64", "amd64", "i686", "i386")

    @property
    def int16_pair_saturation(self) -> bool | None:
        """True when onnxruntime's u8×s8 kernels on this CPU saturate int16 pair sums (x86 without
        VNNI/AMX); False when they are exact; None when the flags could not be read."""
        if not self.is_x86:
            return False if self.arch.lower() in ("aarch64", "arm64") else None
        if self.source == "none":
            return None
        return not any(f in self.flags for f in _VNNI)

    @property
    def native_target(self) -> str:
        """The ``--target`` that uses full 8-bit ranges exactly on this CPU ("portable" if none does)."""
        if self.arch.lower() in ("aarch64", "arm64"):
            return "arm64"
        if self.is_x86 and self.int16_pair_saturation is False:
            return "x86-vnni"
        return "portable"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["flags"] = list(self.flags)
        d["int16_pair_saturation"] = self.int16_pair_saturation
        d["native_target"] = self.native_target
        return d


def _parse_proc_cpuinfo(text: str) -> tuple[str, set[str]]:
    model, flags = "unknown", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "processor") and model == "unknown" and not value.strip().isdigit():
            model = value.strip() or model
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


def cpu_info(proc_cpuinfo: str | os.PathLike = "/proc/cpuinfo", *, machine: str | None = None) -> CpuInfo:
    """Read the CPU model and ISA flags from the OS (Linux ``/proc/cpuinfo``, macOS ``sysctl``).

    Args:
        proc_cpuinfo: the cpuinfo file to read (tests pass another machine's).
        machine: the architecture (default ``platform.machine()``).
    """
    arch = machine or platform.machine() or "unknown"
    path = Path(proc_cpuinfo)
    if path.is_file():
        try:
            model, flags = _parse_proc_cpuinfo(path.read_text(errors="replace"))
        except OSError:
            model, flags = "unknown", set()
        else:
            wanted = X86_FLAGS + ARM_FLAGS
            return CpuInfo(model, arch, tuple(sorted(f for f in flags if f in wanted)), "/proc/cpuinfo")
    if platform.system() == "Darwin":
        try:
            model = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                   text=True, timeout=5).stdout.strip() or "unknown"
        except (OSError, subprocess.SubprocessError):
            model = "unknown"
        # Apple silicon: NEON and the dot-product instructions are always present
        flags = ("asimd", "asimddp") if arch.lower() in ("arm64", "aarch64") else ()
        return CpuInfo(model, arch, flags, "sysctl")
    return CpuInfo(platform.processor() or "unknown", arch, (), "none")


def probe_int16_pair_saturation() -> bool | None:
    """Measure whether this onnxruntime, on this CPU, saturates int16 pair sums in QLinearConv.

    Runs a 1×1 QLinearConv over 64 input channels with every uint8 code 255 and every int8
    weight 127 (exact accumulator 255·127·64 = 2,072,640; with ``vpmaddubsw`` each pair
    saturates at 32,767 and the sum is 1,048,544) and compares its output code with the exact
    one. Measured, not inferred from flags, so it also holds under an emulator or on a CPU the
    flag list does not know. Takes milliseconds.

    Returns:
        True (saturates), False (exact), or None when the ``onnx`` package is not installed.
    """
    try:
        import numpy as np
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    cin, acc = 64, 255 * 127 * 64
    x_scale, w_scale = np.float32(0.01), np.float32(0.01)
    y_scale = np.float32(x_scale * w_scale * acc / 200.0)  # the exact accumulator maps to code ~200
    inits = {"xs": np.array(x_scale), "xz": np.array(0, np.uint8), "w": np.full((1, cin, 1, 1), 127, np.int8),
             "ws": np.array([w_scale]), "wz": np.zeros(1, np.int8), "ys": np.array(y_scale),
             "yz": np.array(0, np.uint8)}
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"])
    graph = helper.make_graph([node], "int16_pair_probe",
                              [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, cin, 1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 1, 1, 1])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    got = int(sess.run(None, {"x": np.full((1, cin, 1, 1), 255, np.uint8)})[0].reshape(-1)[0])
    exact = int(np.clip(np.round(np.float32(acc) * np.float32(x_scale * w_scale / y_scale)), 0, 255))
    return got != exact


# --------------------------------------------------------------------------- the model's side
@dataclass(frozen=True)
class SaturationRisk:
    """One integer layer whose codes can saturate an int16 pair sum.

    Attributes:
        node: the ONNX node name of the Conv/Gemm/MatMul.
        qmax_act: the largest uint8 code its input can hold (255, or a Clip's bound).
        qmax_weight: the largest |int8 weight code| in its weight tensor.
        bound: ``2 · qmax_act · qmax_weight`` (> 32,767).
    """

    node: str
    qmax_act: int
    qmax_weight: int
    bound: int


def _const_int(init: dict, name: str):
    import numpy as np
    from onnx import numpy_helper
    t = init.get(name)
    return None if t is None else np.asarray(numpy_helper.to_array(t))


def saturation_risks(model_path: str | os.PathLike) -> list[SaturationRisk] | None:
    """The Conv/Gemm/MatMul nodes of a QDQ model whose uint8 × int8 codes can saturate.

    A node counts when its activation input is ``DequantizeLinear`` of uint8 codes and its weight
    ``DequantizeLinear`` of an int8 initializer, and it is not a depthwise convolution. The activation's ``qmax`` is 255 unless the codes
    pass a ``Clip`` with a constant upper bound on their way from the ``QuantizeLinear``.

    Returns:
        The risky nodes in graph order (empty when none), or None when the ``onnx`` package is
        not installed (the device verifier may run without it) or the file is not an ONNX
        protobuf (an ORT-format ``.ort`` model).
    """
    try:
        import numpy as np
        import onnx
    except ImportError:
        return None
    try:
        m = onnx.load(os.fspath(model_path), load_external_data=False)
    except Exception:  # an .ort flatbuffer, or anything onnx cannot parse: no graph to read
        return None
    g = m.graph
    init = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    code_ops = {"MaxPool", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Pad", "Transpose",
                "Identity", "Split", "Concat", "Clip", "Relu"}

    def act_qmax(codes: str) -> int | None:
        """The largest code on the path back to the QuantizeLinear, or None if not uint8 codes."""
        qmax, seen = 255, set()
        name = codes
        while name in producer and name not in seen:
            seen.add(name)
            n = producer[name]
            if n.op_type == "QuantizeLinear":
                zp = _const_int(init, n.input[2]) if len(n.input) > 2 and n.input[2] else None
                return qmax if zp is None or zp.dtype == np.uint8 else None
            if n.op_type == "Clip" and len(n.input) > 2 and n.input[2]:
                hi = _const_int(init, n.input[2])
                if hi is None and n.input[2] in producer and producer[n.input[2]].op_type == "Constant":
                    hi = onnx.numpy_helper.to_array(producer[n.input[2]].attribute[0].t)
                if hi is not None:
                    qmax = min(qmax, int(np.asarray(hi).reshape(-1)[0]))
            if n.op_type not in code_ops:
                return None
            name = n.input[0]
        return None

    risks = []
    for n in g.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul") or len(n.input) < 2:
            continue
        x, w = (producer.get(n.input[0]), producer.get(n.input[1]))
        if x is None or w is None or x.op_type != "DequantizeLinear" or w.op_type != "DequantizeLinear":
            continue
        codes = _const_int(init, w.input[0])
        if codes is None or codes.dtype != np.int8:
            continue
        group = next((a.i for a in n.attribute if a.name == "group"), 1) if n.op_type == "Conv" else 1
        if n.op_type == "Conv" and codes.ndim == 4 and is_depthwise(codes.shape[0], codes.shape[1], group):
            continue  # MLAS's depthwise kernel widens products to int32: it cannot saturate
        qa = act_qmax(x.input[0])
        if qa is None:
            continue
        qw = int(np.abs(codes.astype(np.int32)).max()) if codes.size else 0
        bound = pair_sum_bound(qa, qw)
        if bound > INT16_MAX:
            risks.append(SaturationRisk(n.name or n.output[0], qa, qw, bound))
    return risks


def saturation_warning(risks: list[SaturationRisk] | None, saturates: bool | None, cpu: CpuInfo) -> str | None:
    """The one-line warning verify prints when the model's ranges can saturate on this CPU, else None.

    Args:
        risks: :func:`saturation_risks` of the model.
        saturates: whether this CPU's kernels saturate (the probe's answer, else the flags').
        cpu: the CPU, for the message.
    """
    if not risks or saturates is not True:
        return None
    names = ", ".join(r.node for r in risks[:4]) + (f" and {len(risks) - 4} more" if len(risks) > 4 else "")
    return (f"{len(risks)} integer layer(s) can saturate onnxruntime's int16 pair sums on this CPU "
            f"({cpu.model}: its u8×s8 kernels saturate, measured), so their results differ from the exact "
            f"ones: {names}; re-quantize with --target portable")
