"""Parity of the exported ONNX file with the torch simulation (ARCHITECTURE.md, "the contract").

Each onnxruntime optimization level is compared with the simulation that computes what it runs:

- ``off`` (ORT_DISABLE_ALL): the QDQ graph runs Q/DQ and every op in float32, which is what
  the fake-quant forward does; the logits agree to about an LSB (a float Conv summing in a
  different order can, rarely, move a value across a rounding boundary).
- ``on`` / ``extended`` / ``basic``: onnxruntime fuses DQ → op → Q into integer kernels
  (QLinearConv, QGemm, QLinearAdd …); the reference is the integer-exact simulation
  (:func:`toolchain.quant.exact.exact_forward`), which sums the codes in int32 and requantizes
  as those kernels do. On a target whose ranges cannot saturate the CPU's kernels the logits
  are then bit-identical on x86-64.

Differences are expressed in output LSBs, as Brevitas' ORT tests do.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import torch

from ..quant.exact import exact_forward
from ..quant.model import QuantizedModel
from ..reports import ParityLevel, ParityResult

#: optimization levels → onnxruntime GraphOptimizationLevel names ("both" in check_parity = off + on)
LEVELS = {"off": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
          "on": "ORT_ENABLE_ALL"}


def ort_session(path: str | os.PathLike, optimization: str = "on", *, threads: int | None = None,
                optimized_model_filepath: str | os.PathLike | None = None):
    """A CPU onnxruntime session at optimization level ``"off"`` (ORT_DISABLE_ALL), ``"basic"``,
    ``"extended"`` (QDQ fusion into QLinearConv etc.) or ``"on"`` (ORT_ENABLE_ALL: plus layout
    transforms such as NCHWc / NHWC).

    ``optimized_model_filepath`` saves the graph onnxruntime actually runs (to see which
    ops were fused into integer kernels).
    """
    import onnxruntime as ort

    if optimization not in LEVELS:
        raise ValueError(f"optimization must be one of {tuple(LEVELS)}, got {optimization!r}")
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[optimization])
    if threads:
        so.intra_op_num_threads = threads
    if optimized_model_filepath is not None:
        so.optimized_model_filepath = str(optimized_model_filepath)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _run_ort(sess, x: np.ndarray, batch_size: int) -> np.ndarray:
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)])


def output_lsb(reference: np.ndarray, bits: int = 8) -> float:
    """The output LSB used to express differences: the step of a ``bits``-bit grid spanning the
    reference logits' observed range, ``(max − min) / (2**bits − 1)`` (float64).

    The deploy scheme leaves logits in float (QGemm dequantizes its int32 result), so there is no
    output quantizer whose scale could serve; this is the step an 8-bit output would have had.
    """
    span = float(reference.max() - reference.min()) if reference.size else 0.0
    return span / (2 ** bits - 1) if span > 0 else 1.0


#: which simulation each optimization level of a QDQ file is compared with
REFERENCE = {"off": "fakequant", "basic": "exact", "extended": "exact", "on": "exact"}
#: formats onnxruntime runs in float at every level (INT4/UINT4 Q/DQ has no integer kernels on the CPU EP)
FLOAT_FORMATS = ("int4", "fp32")


def _file_format(path) -> str:
    import json

    import onnx
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    try:
        return json.loads(props.get("zqtool.format", '"qdq"'))
    except ValueError:
        return "qdq"


@torch.no_grad()
def _run_torch(qmodel: QuantizedModel, x: torch.Tensor, batch_size: int, reference: str = "fakequant") -> np.ndarray:
    qmodel.eval()
    fn = exact_forward if reference == "exact" else (lambda m, t: m(t))
    return torch.cat([fn(qmodel, x[i:i + batch_size]) for i in range(0, len(x), batch_size)]).numpy()


def check_parity(qmodel: QuantizedModel, qdq_path: str | os.PathLike, inputs: torch.Tensor, *,
                 optimization: str = "both", batch_size: int = 256, threads: int | None = None) -> ParityResult:
    """Compare the torch simulation with onnxruntime on the same inputs.

    Args:
        qmodel: the quantized model that was exported (run as is: its quantizers' modes apply);
            its output is (N, K) logits or (N, K, H, W) per-pixel logits.
        qdq_path: the exported ONNX file (qdq, int4 or fp32).
        inputs: (N, C, H, W) float32 inputs in the normalized input space.
        optimization: ``"off"`` (ORT_DISABLE_ALL), ``"on"`` (ORT_ENABLE_ALL), ``"both"`` (off and
            on), or ``"basic"`` / ``"extended"``.
        batch_size: inputs per run.
        threads: onnxruntime intra-op threads (None: its default).

    Returns:
        a :class:`~toolchain.reports.ParityResult`, one :class:`~toolchain.reports.ParityLevel` per
        level run (``to_dict()``: ``{level: stats}``, e.g. ``{"off": …, "on": …}``), where stats has
        - ``reference``: the simulation compared with (``"fakequant"`` for ``off``, ``"exact"``
          — the integer-exact simulation — for the fused levels; ``"fakequant"`` throughout for
          an int4 or fp32 file, which onnxruntime runs in float);
        - ``agreement_top1``: % of inputs whose argmax logit is the same; for a dense-prediction
          (segmentation) model, whose outputs are (N, K, H, W), % of pixels whose argmax over the
          K class logits is the same (``argmax(1)`` compares (N, H, W) class maps);
        - ``identical``: % of logits (all N·K, or N·K·H·W, values) that are bit-identical;
        - ``max_abs_diff``: max |logits_ort − logits_torch| (float units);
        - ``max_diff_lsb`` / ``mean_diff_lsb``: max / mean of that difference in output LSBs
          (:func:`output_lsb`: the step of an 8-bit grid over the reference logits' range);
        - ``lsb``: that step, in logit units;
        - ``n``: number of inputs (0, with the other fields None, for empty ``inputs``);
        - ``first_difference`` (fused levels, only when not bit-identical): the first quantized
          tensor whose codes differ, the onnxruntime kernel that produced it and why
          (:func:`toolchain.export.divergence.first_divergence`, on up to 8 differing inputs).

    Raises:
        ValueError: ``inputs`` not 4-D, or an unknown ``optimization``.
    """
    levels = ["off", "on"] if optimization == "both" else [optimization]
    for lv in levels:
        if lv not in LEVELS:
            raise ValueError(f"optimization must be 'off', 'on', 'both' (or 'basic'/'extended'), got {optimization!r}")
    if inputs.numel() == 0:  # nothing to compare (e.g. an empty eval set)
        return ParityResult(**{lv: ParityLevel(n=0) for lv in levels})
    if inputs.ndim != 4:
        raise ValueError(f"inputs must be (N, C, H, W), got shape {tuple(inputs.shape)}")
    x = inputs.detach().float().contiguous()
    fmt = _file_format(qdq_path)
    reference = {lv: "fakequant" if fmt in FLOAT_FORMATS else REFERENCE[lv] for lv in levels}
    refs = {kind: _run_torch(qmodel, x, batch_size, kind) for kind in sorted(set(reference.values()))}
    xn = x.numpy()
    scale = output_lsb(refs.get("exact", refs.get("fakequant")))
    result = {}
    for lv in levels:
        ref = refs[reference[lv]]
        sess = ort_session(qdq_path, lv, threads=threads)
        out = _run_ort(sess, xn, batch_size)
        diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
        lsb = diff / scale
        level = ParityLevel(
            reference=reference[lv],
            agreement_top1=float(100.0 * np.mean(out.argmax(1) == ref.argmax(1))),
            identical=float(100.0 * np.mean(out == ref)),
            max_abs_diff=float(diff.max()) if diff.size else 0.0,
            max_diff_lsb=float(lsb.max()),
            mean_diff_lsb=float(lsb.mean()),
            lsb=scale,
            n=int(len(x)),
        )
        if level.diverged:
            from .divergence import first_divergence
            rows = np.flatnonzero((out != ref).reshape(len(out), -1).any(1))[:8]
            level = dataclasses.replace(level, first_difference=first_divergence(qmodel, qdq_path,
                                                                                 x[torch.from_numpy(rows)]))
        result[lv] = level
    return ParityResult(**result)
