"""zqtool: zero-shot low-bit quantization of PyTorch CNNs to fully integer QDQ ONNX.

The four stages are exposed as functions (the CLI only parses arguments and
calls them)::

    from toolchain import pipeline
    from toolchain.quant.scheme import QuantScheme
    from toolchain.verify import verify

    fp = pipeline.load_stage("resnet20.th", arch="resnet20")
    q = pipeline.quantize_stage(fp, method="bnstat", scheme=QuantScheme.from_bits(8))
    onnx = pipeline.export_stage(q)
    report = verify(onnx.qdq_path, "test.npz", fp_path=onnx.fp32_path)

Importing ``toolchain`` imports neither torch nor onnxruntime: ``toolchain.core``,
``toolchain.verify`` and ``toolchain.data`` must run on a device where only numpy and
onnxruntime are installed.
"""

__version__ = "0.1.0"
