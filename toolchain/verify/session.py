"""An onnxruntime session around a classifier or a segmentation model: options, I/O names, batching."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..core.errors import InputFileError

#: ORT tensor type string → numpy dtype accepted as model input
_INPUT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def session_options(threads: int,
                    level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                    ) -> ort.SessionOptions:
    """SessionOptions for evaluation: given optimization level, ``intra_op_num_threads=threads``
    (0 = onnxruntime's default, all cores), one inter-op thread, sequential execution, warnings off."""
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return so


def create_session(path: str | Path, so: ort.SessionOptions) -> ort.InferenceSession:
    """Create a CPUExecutionProvider session.

    Raises:
        InputFileError: the file is missing or onnxruntime cannot load it.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"ONNX model not found: {path}", "check the path")
    try:
        return ort.InferenceSession(os.fspath(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # InvalidProtobuf, Fail, NotImplemented … from the C++ side
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputFileError(f"onnxruntime cannot load {path}: {first}",
                             "check it is a complete .onnx file (re-export it with `zqtool export`)") from None


class Classifier:
    """An image model on onnxruntime: first graph input → first output (logits).

    A classifier outputs (N, K) logits; a segmentation model (``task="segmentation"`` in
    :meth:`expect`) outputs (N, K, H', W') per-pixel logits. Handles a dynamic batch dimension
    (any batch size per call) and a static one (e.g. 1: the batch is run in chunks of that
    size, the last chunk padded).

    Args:
        path: the .onnx file.
        threads: intra-op threads (0 = ORT default).

    Raises:
        InputFileError: unloadable model, or an input that is not a float NCHW tensor.
    """

    def __init__(self, path: str | Path, threads: int):
        self.path = Path(path)
        self.session = create_session(self.path, session_options(threads))
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.output_name = self.session.get_outputs()[0].name
        self.num_classes: int | None = None
        #: "classification" or "segmentation" (set by :meth:`expect`)
        self.task = "classification"
        if inp.type not in _INPUT_DTYPES:
            raise InputFileError(f"{self.path}: input {inp.name!r} is {inp.type}, expected a float tensor",
                                 "export an image classifier with a float NCHW input")
        self.input_dtype = _INPUT_DTYPES[inp.type]
        self.input_shape = list(inp.shape)
        if len(self.input_shape) != 4:
            raise InputFileError(
                f"{self.path}: input {inp.name!r} has shape {self.input_shape}, expected NCHW (4 dims)",
                "export an image classifier with an (N, C, H, W) input")
        b = self.input_shape[0]
        #: the model's fixed batch size, or None when the batch dimension is dynamic
        self.static_batch: int | None = b if isinstance(b, int) and b > 0 else None

    @property
    def metadata(self) -> dict[str, str]:
        """The model's ``metadata_props`` (string → string)."""
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def expect(self, input_shape: tuple[int, int, int], num_classes: int, task: str = "classification") -> None:
        """Check the model against a model card: static input dims must equal (C, H, W); the
        output must be (N, num_classes) for a classifier, (N, num_classes, H', W') for a
        segmentation model (static dims checked here; ``logits`` checks the actual output too).

        Raises:
            InputFileError: a static dim or the output's rank differs from the card.
        """
        for got, want in zip(self.input_shape[1:], input_shape):
            if isinstance(got, int) and got > 0 and got != want:
                raise InputFileError(
                    f"{self.path}: input {self.input_name!r} is {self.input_shape} but the model card "
                    f"says (C, H, W) = {tuple(input_shape)}",
                    "use the ONNX files and model card from the same export")
        out = self.session.get_outputs()[0]
        shape = list(out.shape) if out.shape else []
        if task == "segmentation":
            if shape and len(shape) != 4:
                raise InputFileError(
                    f"{self.path}: output {out.name!r} has shape {shape} but the model card says segmentation, "
                    f"which outputs (N, {num_classes}, H, W) per-pixel logits",
                    "use the ONNX files and model card from the same export")
            k = shape[1] if shape else None
        else:
            k = shape[-1] if shape else None
        if isinstance(k, int) and k > 0 and k != num_classes:
            dense = (task != "segmentation" and len(shape) == 4 and shape[1] == num_classes
                     and " (an (N, K, H, W) output is a segmentation model: its card needs task \"segmentation\")"
                     or "")
            raise InputFileError(
                f"{self.path}: output {out.name!r} has shape {shape} but the model card says "
                f"{num_classes} classes{dense}",
                "use the ONNX files and model card from the same export")
        self.num_classes = int(num_classes)
        self.task = task

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def feed(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The input dict for one ``session.run`` call (x already a legal batch)."""
        return {self.input_name: np.ascontiguousarray(x, dtype=self.input_dtype)}

    def pad_batch(self, x: np.ndarray) -> np.ndarray:
        """Pad x (n, C, H, W) with copies of its last image up to the static batch size."""
        b = self.static_batch
        if b is None or len(x) == b:
            return x
        return np.concatenate([x, np.repeat(x[-1:], b - len(x), axis=0)])

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], self.feed(x))[0]

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Run the model.

        Args:
            x: float32 (B, C, H, W).

        Returns:
            float32 logits: (B, num_classes) for a classifier, (B, num_classes, H', W') for a
            segmentation model.

        Raises:
            InputFileError: the output is not of that shape.
        """
        b = self.static_batch
        if b is None:
            out = self._run(x)
        else:
            parts = [self._run(self.pad_batch(x[i:i + b]))[: len(x[i:i + b])] for i in range(0, len(x), b)]
            out = np.concatenate(parts)
        out = np.asarray(out, dtype=np.float32)
        k = self.num_classes
        if self.task == "segmentation":
            if out.ndim != 4 or out.shape[0] != len(x) or (k is not None and out.shape[1] != k):
                raise InputFileError(
                    f"{self.path}: output {self.output_name!r} has shape {tuple(out.shape)} for a batch of {len(x)}, "
                    f"expected ({len(x)}, {k}, H, W) per-pixel logits",
                    "the first output must be the per-pixel logits; use the ONNX files and model card "
                    "from the same export")
            return out
        shape = tuple(out.shape)
        if out.ndim != 2 and out.ndim >= 1 and out.shape[0] == len(x):
            out = out.reshape(len(x), -1)
        if out.ndim != 2 or out.shape[0] != len(x) or (k is not None and out.shape[1] != k):
            dense = (len(shape) == 4 and k is not None and shape[1] == k
                     and " (an (N, K, H, W) output is a segmentation model: its card needs task \"segmentation\")"
                     or "")
            raise InputFileError(
                f"{self.path}: output {self.output_name!r} has shape {shape} for a batch of {len(x)}, "
                f"expected ({len(x)}, {self.num_classes}){dense}",
                "the first output must be the logits; use the ONNX files and model card from the same export")
        return out
