"""Where onnxruntime's fused integer graph first departs from the integer-exact simulation.

When parity at a fused level is not bit-identical, :func:`first_divergence` says which
quantized tensor first holds different codes, which onnxruntime kernel produced it, and the
likely reason. How: onnxruntime saves the graph it optimized (ORT_ENABLE_EXTENDED: the QDQ
fusions, no layout changes), every intermediate tensor of that graph becomes an output, and
the graph runs again with optimizations off — the fused kernels (QLinearConv, QLinearAdd …)
are ordinary nodes there, so their outputs can be read. The codes of each activation
quantizer of the simulation are compared with the tensor onnxruntime names after it
(``<quantizer path>.q``, or ``.clip`` for sub-8-bit codes), in graph order.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..quant.exact import ExactInterpreter
from ..quant.model import QuantizedModel

#: why a kernel's codes can differ from the exact simulation
REASONS = {
    "QLinearConv": "int16 pair sums saturate in onnxruntime's u8×s8 kernel on this CPU (x86 without VNNI): "
                   "re-quantize with --target portable",
    "QGemm": "int16 pair sums saturate in onnxruntime's u8×s8 kernel on this CPU (x86 without VNNI)",
    "QLinearAdd": "this CPU's QLinearAdd requantizes differently (ARM64: ~22-bit fixed point, ties away from zero)",
    "QLinearGlobalAveragePool": "this CPU's QLinearGlobalAveragePool requantizes differently (ARM64: fixed point)",
}


def _reason(op: str) -> str:
    """The likely reason for ``op``'s codes to differ, given this CPU (saturation only where it can happen)."""
    if op in ("QLinearConv", "QGemm"):
        from ..verify.machine import cpu_info
        if cpu_info().int16_pair_saturation is False:
            return (f"onnxruntime's {op} rounds differently from the exact simulation on this CPU "
                    "(not int16 saturation: it has VNNI/dot-product kernels); typically one code in 10^5")
    return REASONS.get(op, f"onnxruntime's {op} computes these codes differently from the exact simulation")


def _exact_codes(qmodel: QuantizedModel, x: torch.Tensor) -> dict[str, np.ndarray]:
    codes: dict[str, np.ndarray] = {}

    class Recorder(ExactInterpreter):
        def on_codes(self, quantizer_path, c):
            codes[quantizer_path] = c.q.numpy()

    with torch.no_grad():
        Recorder(qmodel.gm, fused_add=qmodel.scheme.fused_add).run(x.float())
    return codes


def first_divergence(qmodel: QuantizedModel, qdq_path: str | os.PathLike, inputs: torch.Tensor) -> dict | None:
    """The first activation quantizer whose codes differ between onnxruntime and the exact simulation.

    Args:
        qmodel: the exported quantized model.
        qdq_path: its QDQ ONNX file.
        inputs: (N, C, H, W) float32 inputs (a few: those whose logits differ).

    Returns:
        None when every quantizer's codes agree (or the graph's tensors cannot be matched), else
        ``{"quantizer", "ort_op", "differing", "total", "max_code_diff", "reason"}``.
    """
    import onnx
    import onnxruntime as ort

    from .parity import ort_session
    exact = _exact_codes(qmodel, inputs)
    with tempfile.TemporaryDirectory() as tmp:
        opt = Path(tmp) / "opt.onnx"
        ort_session(qdq_path, "extended", optimized_model_filepath=opt)
        m = onnx.load(str(opt))
        producer = {o: n for n in m.graph.node for o in n.output}
        wanted = {}
        for path in exact:
            for suffix in (".clip", ".q"):
                if path + suffix in producer:
                    wanted[path] = path + suffix
                    break
        del m.graph.output[:]
        for name in wanted.values():
            m.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
        full = Path(tmp) / "all.onnx"
        onnx.save(m, str(full))
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.log_severity_level = 3
        try:
            sess = ort.InferenceSession(str(full), so, providers=["CPUExecutionProvider"])
            names = [o.name for o in sess.get_outputs()]
            outs = dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: inputs.numpy()})))
        except Exception:  # e.g. UINT4 tensors numpy cannot hold: no diagnosis, the parity numbers stand
            return None
    for path, codes in exact.items():  # graph order
        name = wanted.get(path)
        if name is None or name not in outs:
            continue
        got = outs[name].astype(np.float64)
        if got.size != codes.size:
            continue
        d = np.abs(got.reshape(codes.shape) - codes)
        if d.max() > 0:
            op = producer[name].op_type if name in producer else "?"
            if op == "Clip":  # sub-8-bit codes: the kernel is the one feeding the Clip
                src = producer.get(producer[name].input[0])
                op = src.op_type if src is not None else op
            return {"quantizer": path, "ort_op": op, "differing": int((d > 0).sum()), "total": int(d.size),
                    "max_code_diff": int(d.max()),
                    "reason": _reason(op)}
    return None
