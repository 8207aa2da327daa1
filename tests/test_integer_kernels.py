"""The integer-exact simulation's kernels against onnxruntime's own QLinear ops (toolchain.quant.integer_kernels).

On x86-64 MLAS's kernels are what the simulation computes, bit for bit; on ARM64 QLinearAdd and
QLinearGlobalAveragePool requantize in fixed point, so a code may move by one there.
"""

from __future__ import annotations

import platform

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from toolchain.quant import integer_kernels as K

IS_X86 = platform.machine().lower() in ("x86_64", "amd64")
MAX_CODE_DIFF = 0 if IS_X86 else 1


def _run(node, inputs: dict, consts: dict, out_shape, out_type=TensorProto.UINT8, opset=13):
    graph = helper.make_graph(
        [node], "k", [helper.make_tensor_value_info(k, TensorProto.UINT8, v.shape) for k, v in inputs.items()],
        [helper.make_tensor_value_info(node.output[0], out_type, out_shape)],
        [numpy_helper.from_array(v, k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, inputs)[0]


def _scales(rng, n):
    return [(np.float32(rng.uniform(0.005, 0.1)), int(rng.integers(0, 256)),
             np.float32(rng.uniform(0.005, 0.1)), int(rng.integers(0, 256)),
             np.float32(rng.uniform(0.01, 0.2)), int(rng.integers(0, 256))) for _ in range(n)]


@pytest.mark.parametrize("seed", [0, 1])
def test_qlinear_add_matches_onnxruntime_on_every_code_pair(seed):
    a, b = np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8), indexing="ij")
    a, b = a.reshape(1, 1, 256, 256), b.reshape(1, 1, 256, 256)
    for sa, za, sb, zb, sy, zy in _scales(np.random.default_rng(seed), 4):
        consts = {"sa": np.array(sa), "za": np.array(za, np.uint8), "sb": np.array(sb), "zb": np.array(zb, np.uint8),
                  "sy": np.array(sy), "zy": np.array(zy, np.uint8)}
        node = helper.make_node("QLinearAdd", ["a", "sa", "za", "b", "sb", "zb", "sy", "zy"], ["y"],
                                domain="com.microsoft")
        ref = _run(node, {"a": a, "b": b}, consts, list(a.shape)).astype(np.float64)
        got = K.qlinear_add(torch.from_numpy(a).double(), torch.tensor(sa), za, torch.from_numpy(b).double(),
                            torch.tensor(sb), zb, torch.tensor(sy), zy, 255).numpy()
        assert np.abs(got - ref).max() <= MAX_CODE_DIFF


def test_qlinear_conv_requantization_matches_onnxruntime():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (2, 16, 6, 6)).astype(np.uint8)
    w = rng.integers(-63, 64, (8, 16, 3, 3)).astype(np.int8)  # portable ranges: exact on every CPU
    bias = rng.integers(-5000, 5000, 8).astype(np.int32)
    xs, xz, ws, ys, yz = np.float32(0.02), 7, rng.uniform(0.001, 0.01, 8).astype(np.float32), np.float32(0.3), 11
    consts = {"xs": np.array(xs), "xz": np.array(xz, np.uint8), "w": w, "ws": ws, "wz": np.zeros(8, np.int8),
              "ys": np.array(ys), "yz": np.array(yz, np.uint8), "bias": bias}
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "bias"], ["y"],
                            pads=[1, 1, 1, 1])
    ref = _run(node, {"x": x}, consts, [2, 8, 6, 6]).astype(np.float64)
    acc = torch.nn.functional.conv2d(torch.from_numpy(x).double() - xz, torch.from_numpy(w).double(),
                                     torch.from_numpy(bias).double(), padding=1)
    got = K.requantize(acc, K.conv_multiplier(torch.tensor(xs), torch.from_numpy(ws), torch.tensor(ys)), yz, 255)
    assert np.array_equal(got.numpy(), ref)


def test_qlinear_global_average_pool_matches_onnxruntime():
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (3, 5, 7, 7)).astype(np.uint8)
    for xs, xz, ys, yz in [(np.float32(0.05), 0, np.float32(0.03), 0), (np.float32(0.011), 9, np.float32(0.013), 131)]:
        consts = {"xs": np.array(xs), "xz": np.array(xz, np.uint8), "ys": np.array(ys), "yz": np.array(yz, np.uint8)}
        node = helper.make_node("QLinearGlobalAveragePool", ["x", "xs", "xz", "ys", "yz"], ["y"],
                                domain="com.microsoft", channels_last=0)
        ref = _run(node, {"x": x}, consts, [3, 5, 1, 1]).astype(np.float64)
        got = K.qlinear_global_avg_pool(torch.from_numpy(x).double(), torch.tensor(xs), xz, torch.tensor(ys), yz, 255)
        assert np.abs(got.numpy() - ref).max() <= MAX_CODE_DIFF


def test_requantize_rounds_half_to_even_and_saturates():
    acc = torch.tensor([[1.0, 3.0, 5.0, -100.0, 1e6]]).double().reshape(1, 5)
    got = K.requantize(acc, torch.full((5,), 0.5), 0, 255).reshape(-1).tolist()
    assert got == [0.0, 2.0, 2.0, 0.0, 255.0]  # 0.5→0, 1.5→2, 2.5→2, clamp below, clamp above
    assert K.requantize(acc, torch.full((5,), 0.5), 10, 15).reshape(-1).tolist() == [10.0, 12.0, 12.0, 0.0, 15.0]


def test_qlinear_add_matches_onnxruntime_over_many_scales():
    """Many (scale, zero point) sets: catches a float step done in another order (e.g. the offset's FMA)."""
    names = ["a", "sa", "za", "b", "sb", "zb", "sy", "zy"]
    types = [TensorProto.UINT8, TensorProto.FLOAT, TensorProto.UINT8] * 2 + [TensorProto.FLOAT, TensorProto.UINT8]
    graph = helper.make_graph([helper.make_node("QLinearAdd", names, ["y"], domain="com.microsoft")], "add",
                              [helper.make_tensor_value_info(n, t, [4096] if n in "ab" else []) for n, t in zip(names, types)],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [4096])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    worst = 0
    for sa, za, sb, zb, sy, zy in _scales(rng, 300):
        a, b = (rng.integers(0, 256, 4096).astype(np.uint8) for _ in range(2))
        feed = {"a": a, "sa": np.array(sa), "za": np.array(za, np.uint8), "b": b, "sb": np.array(sb),
                "zb": np.array(zb, np.uint8), "sy": np.array(sy), "zy": np.array(zy, np.uint8)}
        ref = sess.run(None, feed)[0].astype(np.float64)
        got = K.qlinear_add(torch.from_numpy(a).double(), torch.tensor(sa), za, torch.from_numpy(b).double(),
                            torch.tensor(sb), zb, torch.tensor(sy), zy, 255).numpy()
        worst = max(worst, float(np.abs(got - ref).max()))
    assert worst <= MAX_CODE_DIFF
