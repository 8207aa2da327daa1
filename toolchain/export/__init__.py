"""Stage 3: QDQ ONNX export of a quantized model, and the torch-vs-onnxruntime parity check."""

from .onnx_writer import INT4_OPSET, QDQ_OPSET, SimplifyWarning, build_onnx, output_scale, write_fp32, write_qdq
from .parity import check_parity

__all__ = ["write_qdq", "write_fp32", "build_onnx", "check_parity", "output_scale", "SimplifyWarning",
           "QDQ_OPSET", "INT4_OPSET"]
