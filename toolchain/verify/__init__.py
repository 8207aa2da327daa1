"""Stage 4: verify a quantized QDQ ONNX model on onnxruntime (torch-free).

:func:`verify` measures FP32 and quantized top-1/top-5 accuracy on labelled data,
their top-1 agreement, batch-1 latency percentiles, file sizes, and which
Conv/Gemm/MatMul nodes onnxruntime actually runs as integer kernels. For a segmentation
model (model card ``task="segmentation"``, (N, K, H, W) outputs) it measures per-pixel
agreement and mIoU against the FP32 model, and with masks pixel accuracy and mIoU of both
(:mod:`toolchain.verify.segmentation`).
It returns a :class:`~.results.VerifyReport` (``to_dict()``: the JSON report);
:func:`render_report` / :func:`report_text` turn it into a table.

Needs numpy and onnxruntime; Pillow to decode image folders; ``onnx`` optionally
(integer-op inspection falls back to onnxruntime profiling); ``rich`` optionally
(render_report). Never imports torch, so it runs on a Raspberry Pi or an Android shell.
"""

from .integer_ops import inspect_integer_ops
from .latency import measure_latency
from .model_card import read_model_meta
from .report import render_report, report_text
from .results import VerifyReport
from .runner import verify

__all__ = ["VerifyReport", "inspect_integer_ops", "measure_latency", "read_model_meta", "render_report",
           "report_text", "verify"]
