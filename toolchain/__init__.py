"""zqtool: zero-shot low-bit quantization of PyTorch CNNs to fully integer QDQ ONNX.

The four stages are exposed as functions (the CLI only parses arguments and
calls them)::

    from toolchain import pipeline
    fp = pipeline.load_stage("resnet20.th", arch="resnet20")
    q = pipeline.quantize_stage(fp, method="bnstat", bits=8)
    onnx_dir = pipeline.export_stage(q)
    report = toolchain.verify.verify(onnx_dir / "model.qdq.onnx", data="test.npz")

Importing ``toolchain`` imports neither torch nor onnxruntime: ``toolchain.verify``
and ``toolchain.data`` must run on a device where only numpy and onnxruntime
are installed.
"""

__version__ = "0.1.0"
